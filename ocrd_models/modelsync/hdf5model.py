"""kraken's ``pyrnn-bidi`` HDF5 layout (kraken 0.3.2-0.6.x): write it from a pyrnn model, read it back.

A flat file: 17 float32 datasets directly under ``/`` (see :mod:`pyrnn` for the names) and
one root attribute, ``kind = "pyrnn-bidi"``. Needs numpy and h5py, the ``legacy`` extra.
Written to a temp file beside the target and renamed into place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .atomic import fsync_dir, remove_path, temp_name
from .errors import MissingExtra, UnsafeModel, UserInputError
from .pyrnn import CODEC, GATES, KIND, PEEPHOLES, SOFTMAX_BIAS, SOFTMAX_WEIGHTS, PyrnnModel
from .safepickle import RawArray

EXTRA_HINT = "pip install 'ocrd-modelsync[legacy]'"


def check_extra() -> None:
    """Raise MissingExtra now (before any work) unless numpy and h5py can be imported."""
    _libs()


def _libs() -> tuple[Any, Any]:
    try:
        import h5py
        import numpy
    except ImportError as err:
        raise MissingExtra(
            f"reading and writing HDF5 models needs numpy and h5py, which are not installed ({err.name} is "
            f"missing). Install the optional extra: {EXTRA_HINT}") from None
    return numpy, h5py


def _f32(np: Any, arr: RawArray, shape: tuple[int, ...] | None = None) -> Any:
    assert arr.dtype is not None
    values = np.frombuffer(arr.data, dtype=np.dtype(arr.dtype.order + arr.dtype.code))
    values = values.reshape(arr.shape, order="F" if arr.fortran else "C")
    out = values.astype("<f4")
    return out.reshape(shape) if shape is not None else out


def datasets(model: PyrnnModel) -> dict[str, Any]:
    """The 17 arrays of the layout, as float32 numpy arrays, by dataset name."""
    np, _ = _libs()
    if model.codec is None:
        raise UserInputError("the model has no codec, so its characters are unknown and kraken could not use "
                             "it; supply one with `modelsync convert --codec '' --codec a ...` (code order)")
    out: dict[str, Any] = {}
    for name, arr in model.lstm.items():
        short = name.rsplit(".", 1)[1]
        out[name] = _f32(np, arr, (model.hidden, 1) if short in PEEPHOLES else None)
    w2 = _f32(np, model.softmax)
    out[SOFTMAX_BIAS] = np.ascontiguousarray(w2[:, :1])
    out[SOFTMAX_WEIGHTS] = np.ascontiguousarray(w2[:, 1:])
    codes = [0] + [ord(c) for c in model.codec[1:]]
    out[CODEC] = np.array(codes, dtype="<f4").reshape(-1, 1)
    return out


def write(model: PyrnnModel, target: Path, before_rename: Callable[[Path], None] | None = None) -> Path:
    """Write ``target`` in kraken's layout, atomically (a temp name beside it, then a rename).

    ``before_rename(temp)`` may check the finished temp file and raise to keep it out of place.
    """
    _, h5py = _libs()
    arrays = datasets(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_name(target.parent, target.name)
    try:
        with h5py.File(temp, "w", libver="earliest") as f:
            f.attrs["kind"] = KIND  # h5py stores a str as a scalar variable-length UTF-8 string, as kraken did
            for name in sorted(arrays):
                f.create_dataset(name, data=arrays[name], dtype="<f4", track_times=False)
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename(temp)
        os.replace(temp, target)
        fsync_dir(target.parent)
    finally:
        remove_path(temp)  # only left over when something failed
    return target


@dataclass(frozen=True)
class Hdf5Info:
    """What ``inspect`` reports of a pyrnn-bidi HDF5 file."""

    kind: str
    input_height: int
    hidden: int
    output_classes: int
    codec: tuple[str, ...]
    datasets: int


def read(path: Path) -> Hdf5Info:
    """Read and check a pyrnn-bidi HDF5 file as kraken's reader would."""
    np, h5py = _libs()
    try:
        with h5py.File(path, "r") as f:
            kind = f.attrs.get("kind")
            if isinstance(kind, bytes):
                kind = kind.decode("utf-8", "replace")
            if kind != KIND:
                raise UnsafeModel(f"{path.name}: an HDF5 file, but its kind is {kind!r}, not {KIND!r}")
            names = list(f.keys())
            wgi = f[".bidilstm.0.parallel.0.lstm." + GATES[0]]
            hidden, cols = wgi.shape
            codec = np.asarray(f[CODEC][()]).ravel()
            chars = ("",) + tuple(chr(int(x)) for x in codec[1:])
            return Hdf5Info(str(kind), cols - hidden - 1, hidden, len(codec), chars, len(names))
    except (KeyError, ValueError, TypeError, OSError) as err:
        raise UnsafeModel(f"{path.name}: not a complete pyrnn-bidi HDF5 model ({err})") from None
