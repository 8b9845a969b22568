"""kraken's ``pyrnn-bidi`` HDF5 layout (kraken 0.3.2-0.6.x): write it from a pyrnn model, read it back.

A flat file: 17 float32 datasets directly under ``/`` (see :mod:`pyrnn` for the names) and
one root attribute, ``kind = "pyrnn-bidi"``. Needs numpy and h5py, the ``legacy`` extra.
Written to a temp file beside the target and renamed into place.

Reading a file we did not just write means feeding it to libhdf5, C code that trusts what it
parses: one byte changed in the global heap of kraken's own toy model makes it loop forever, other
damage makes it ask for gigabytes. So :func:`read` and :func:`examine` parse in a child
process limited in CPU time, address space and wall time; a child that crashes, hangs or runs out
is reported as an unsafe or invalid model (:class:`UnsafeModel`), and this process never runs
libhdf5 on an untrusted file.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..atomic import fsync_dir, remove_path, temp_name
from ..errors import InstallError, MissingExtra, UnsafeModel, UserInputError, filesystem_error
from .pyrnn import (CODEC, FORWARD, GATES, KIND, MAX_SIZE, PEEPHOLES, REVERSED, SOFTMAX_BIAS, SOFTMAX_WEIGHTS,
                    PyrnnModel)
from .safepickle import RawArray, clip

# What a damaged or hostile HDF5 file makes h5py/libhdf5 raise: the file's fault, never ours.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError,
             MemoryError, UnicodeError)
MAX_ATTR_BYTES = 4096  # the root attribute ``kind`` is a short string
PROBE_CPU_SECONDS = 10  # a real model is read in a fraction of this, imports included
PROBE_WALL_SECONDS = 120  # a generous bound for a loaded machine (CPU time is the real limit)
PROBE_MEMORY = 2 * 1024**3  # address space of the child: numpy and h5py need a few hundred MB
_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding ocrd_models: the child runs this code

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
    if target.is_dir():
        raise UserInputError(f"{target} is a directory; give the HDF5 file to write with -o/--output")
    temp = target  # named in an error until the temp name exists
    try:
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
    except InstallError:
        raise
    except OSError as err:
        raise filesystem_error(_with_errno(err), temp, "write") from None
    return target


def _with_errno(err: OSError) -> OSError:
    """h5py's OSError names the errno only in its text ("errno = 28"): recover it for the message."""
    if err.errno is None:
        found = re.search(r"errno = (\d+)", str(err))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
    return err


@dataclass(frozen=True)
class Hdf5Info:
    """What ``inspect`` reports of a pyrnn-bidi HDF5 file."""

    kind: str
    input_height: int
    hidden: int
    output_classes: int
    codec: tuple[str, ...]
    datasets: int


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """``path`` opened read-only by h5py; whatever a damaged file makes it raise becomes UnsafeModel."""
    _, h5py = _libs()
    try:
        with h5py.File(path, "r") as f:
            yield f
    except (UnsafeModel, UserInputError):
        raise
    except H5_ERRORS as err:
        text = str(err)
        raise UnsafeModel(f"{path.name}: not a readable HDF5 file ({clip(text, 200)}); it is damaged or not "
                          "a model. Download it again or convert it again.") from None


def _kind(f: Any) -> tuple[Any, bool]:
    """The root attribute ``kind`` (None when absent, a placeholder when not a short string); whether Keras wrote it."""
    keras = "keras_version" in f.attrs or "model_config" in f.attrs
    if "kind" not in f.attrs:
        return None, keras
    attr = f.attrs.get_id("kind")
    if attr.dtype.kind not in ("S", "O", "U") or attr.shape not in ((), (1,)) \
            or attr.get_storage_size() > MAX_ATTR_BYTES:
        return f"<{attr.dtype} attribute of shape {attr.shape}>", keras
    kind = f.attrs["kind"]
    if getattr(kind, "shape", ()) == (1,):
        kind = kind[0]
    if isinstance(kind, bytes):
        kind = kind.decode("utf-8", "replace")
    return (kind if isinstance(kind, str) else f"<{type(kind).__name__}>"), keras


def _describe_here(path: Path) -> tuple[str | None, bool]:
    with _opened(path) as f:
        kind, keras = _kind(f)
    return (kind[:200] if kind is not None else None), keras


def examine(path: Path) -> tuple[str | None, bool, Hdf5Info | None]:
    """The root ``kind`` attribute (clipped), whether it is a Keras model, and for a pyrnn-bidi file its reading.

    One limited child process parses it (see the module docstring); a damaged file, or a
    pyrnn-bidi file kraken could not read, raises :class:`UnsafeModel`.
    """
    doc = _probe("examine", path)
    info = doc["info"]
    return doc["kind"], doc["keras"], _info(info) if info is not None else None


def _info(doc: dict) -> Hdf5Info:
    return Hdf5Info(**{**doc, "codec": tuple(doc["codec"])})


def _dataset(f: Any, name: str, path: Path) -> Any:
    _, h5py = _libs()
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset):
        raise UnsafeModel(f"{path.name}: not a complete pyrnn-bidi HDF5 model: {name!r} is "
                          f"{'missing' if ds is None else 'not a dataset'}")
    if len(ds.shape) != 2 or ds.dtype.kind != "f":
        raise UnsafeModel(f"{path.name}: {name!r} has shape {ds.shape} and type {ds.dtype}; kraken's layout has "
                          "two-dimensional float arrays")
    return ds


def _shapes(f: Any, path: Path) -> tuple[int, int, int]:
    """Check every dataset kraken's reader takes; return (hidden, input height, output classes)."""
    hidden, cols = _dataset(f, FORWARD + GATES[0], path).shape
    n_out = _dataset(f, CODEC, path).shape[0]
    ni = cols - hidden - 1
    for what, value in (("hidden size", hidden), ("input height", ni), ("number of output classes", n_out)):
        if not 1 <= value <= MAX_SIZE:
            raise UnsafeModel(f"{path.name}: not a usable pyrnn-bidi model: its {what} is {value}, expected a "
                              f"number from 1 to {MAX_SIZE}")
    expected = {prefix + g: (hidden, cols) for prefix in (FORWARD, REVERSED) for g in GATES}
    expected.update({prefix + p: (hidden, 1) for prefix in (FORWARD, REVERSED) for p in PEEPHOLES})
    expected.update({SOFTMAX_BIAS: (n_out, 1), SOFTMAX_WEIGHTS: (n_out, 2 * hidden), CODEC: (n_out, 1)})
    for name, shape in expected.items():
        got = _dataset(f, name, path).shape
        if got != shape:
            raise UnsafeModel(f"{path.name}: inconsistent pyrnn-bidi model: {name!r} has shape {got}, "
                              f"expected {shape}")
    return hidden, ni, n_out


def _chars(values: Any, path: Path) -> tuple[str, ...]:
    """kraken's reading of the codec: chr() of each code, slot 0 the blank; refused unless each is a character."""
    chars = [""]
    for x in values[1:]:
        x = float(x)
        if not (math.isfinite(x) and x == int(x) and 0 < x <= 0x10FFFF) or 0xD800 <= x <= 0xDFFF:
            raise UnsafeModel(f"{path.name}: invalid codec: {x!r} is not the code point of a character")
        chars.append(chr(int(x)))
    return tuple(chars)


def _read_here(path: Path) -> Hdf5Info:
    np, _ = _libs()
    with _opened(path) as f:
        kind, _ = _kind(f)
        if kind != KIND:
            found = "missing" if kind is None else repr(kind[:80])
            raise UnsafeModel(f"{path.name}: an HDF5 file, but its kind is {found}, not {KIND!r}")
        hidden, ni, n_out = _shapes(f, path)
        codec = np.asarray(f[CODEC][()], dtype="<f8").ravel()  # (n_out, 1) floats: at most 8 MB
        return Hdf5Info(kind, ni, hidden, n_out, _chars(codec, path), len(f))


def read(path: Path) -> Hdf5Info:
    """Read and check a pyrnn-bidi HDF5 file as kraken's reader would; UnsafeModel if it is not one.

    Parsed in a limited child process (see the module docstring).
    """
    return _info(_probe("read", path))


_CHILD = ("import sys; sys.path.insert(0, {root!r}); "
          "from ocrd_models.modelsync.legacy.hdf5model import _probe_main; _probe_main()")


def _probe(what: str, path: Path) -> dict:
    """Run :func:`_probe_main` on ``path`` in a child limited in CPU, memory and time; its answer or UnsafeModel."""
    _libs()  # MissingExtra here, with the install hint, rather than from the child
    # -P: the current directory (perhaps where the untrusted file came from) is not searched for modules
    cmd = [sys.executable, "-P", "-c", _CHILD.format(root=_ROOT), what, os.fspath(path.absolute()),
           str(PROBE_CPU_SECONDS), str(PROBE_MEMORY)]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_WALL_SECONDS)
    except subprocess.TimeoutExpired:
        raise UnsafeModel(f"{path.name}: reading it as HDF5 did not finish within {PROBE_WALL_SECONDS} s; the file is "
                          "damaged or built to hang readers. Nothing was read from it.") from None
    except OSError as err:
        raise InstallError(f"cannot start a helper process to read {path.name}: {err.strerror or err}; free some "
                           "memory or processes and run the command again") from None
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = None
    if proc.returncode != 0 or not isinstance(doc, dict):
        how = (f"was stopped by signal {-proc.returncode}" if proc.returncode < 0
               else f"failed (exit status {proc.returncode})")
        raise UnsafeModel(f"{path.name}: the HDF5 library {how} while reading it, within limits of "
                          f"{PROBE_CPU_SECONDS} s of CPU and {PROBE_MEMORY >> 20} MiB; the file is damaged or built "
                          "to crash readers. Nothing was read from it.")
    if "unsafe" in doc:
        raise UnsafeModel(str(doc["unsafe"]))
    return doc["ok"]


def _plain(info: Hdf5Info) -> dict:
    return {**info.__dict__, "codec": list(info.codec)}


def _probe_main() -> None:
    """The child's side of :func:`_probe`: limit itself, parse, print one JSON document."""
    what, path, cpu, memory = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    try:
        import resource
    except ImportError:
        resource = None  # type: ignore[assignment]  # no limits on this platform: the wall-time bound remains
    if resource is not None:
        for which, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory)):
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)  # an inherited, lower limit stays
            try:
                resource.setrlimit(which, (value, value))
            except (ValueError, OSError):
                pass
    try:
        if what == "read":
            doc: dict = {"ok": _plain(_read_here(path))}
        else:
            kind, keras = _describe_here(path)
            info = _plain(_read_here(path)) if kind == KIND else None
            doc = {"ok": {"kind": kind, "keras": keras, "info": info}}
    except UnsafeModel as err:
        doc = {"unsafe": str(err)}
    except MemoryError:
        doc = {"unsafe": f"{path.name}: reading it as HDF5 needs more than {memory >> 20} MiB; the file is damaged "
                         "or built to exhaust memory. Nothing was read from it."}
    sys.stdout.write(json.dumps(doc))
