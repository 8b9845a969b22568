"""``inspect``: name a model's format from its bytes, and say whether loading it can execute code.

pyrnn pickles and pyrnn-bidi HDF5 files are opened (safely) and described: kind, input
height, hidden size, output classes and the codec's characters. Other formats OCR-D
processors use are recognised and named, without loading them.
"""

from __future__ import annotations

import bz2
import gzip
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnsafeModel, UserInputError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # pickled magic number


@dataclass(frozen=True)
class ModelInfo:
    """What ``inspect`` reports."""

    path: str
    format: str
    executes_code: str  # "no" | "yes" | "possible"
    note: str
    kind: str | None = None  # pyrnn | pyrnn-bidi
    input_height: int | None = None
    hidden: int | None = None
    output_classes: int | None = None
    codec: list[str] | None = None
    details: dict = field(default_factory=dict)


def _head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _decompressed_head(path: Path, head: bytes) -> bytes:
    try:
        if head.startswith(b"\x1f\x8b"):
            with gzip.open(path) as fh:
                return fh.read(64)
        if head.startswith(b"BZh"):
            with bz2.open(path) as fh:
                return fh.read(64)
    except (OSError, EOFError, zlib.error):  # damaged compression: not recognisable as a pickle
        return b""
    return head


def _looks_pickled(data: bytes) -> bool:
    # protocol 2+ starts with PROTO; protocol 0/1 pyrnn files start with MARK then INST/GLOBAL
    return (len(data) > 1 and data[0] == 0x80 and data[1] <= 5) or data[:1] in (b"(", b"c")


def _pyrnn(path: Path) -> ModelInfo:
    from . import pyrnn

    m = pyrnn.load_model(path)
    note = ("ocropy/kraken pickle, loaded here by a restricted unpickler (data only). Plain pickle.load "
            "would execute whatever the file names; convert it with `modelsync convert`.")
    if m.codec is None:
        note += " It has no codec: its characters are unknown."
    return ModelInfo(str(path), "pyrnn (pickled ocropy/kraken BIDILSTM)", "yes", note, "pyrnn", m.input_height,
                     m.hidden, m.output_classes, list(m.codec) if m.codec is not None else None,
                     {"line_normalizer": m.has_normalizer})


def _hdf5(path: Path) -> ModelInfo:
    try:
        import h5py  # noqa: F401  (only whether the legacy extra is there)
    except ImportError:
        return ModelInfo(str(path), "HDF5", "possible",
                         "an HDF5 file; install the legacy extra (pip install 'ocrd-modelsync[legacy]') to tell "
                         "a kraken pyrnn-bidi model from a Keras model")
    from . import hdf5model

    kind, keras, info = hdf5model.examine(path)  # a damaged file: UnsafeModel
    if info is not None:
        return ModelInfo(str(path), "kraken HDF5 (pyrnn-bidi)", "no", "numbers only: float32 arrays and a codec",
                         info.kind, info.input_height, info.hidden, info.output_classes, list(info.codec),
                         {"datasets": info.datasets})
    if keras:
        return ModelInfo(str(path), "Keras HDF5 model", "possible",
                         "a whole Keras model: Lambda layers carry marshalled Python bytecode that Keras runs when "
                         "loading (Keras 3 refuses it unless safe_mode=False); weights-only files are plain arrays")
    return ModelInfo(str(path), "HDF5", "no", f"an HDF5 file of unknown kind ({kind!r})")


def _zip(path: Path) -> ModelInfo:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, UnicodeDecodeError):
        return ModelInfo(str(path), "zip archive (damaged)", "no", "its directory of members cannot be read")
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return ModelInfo(str(path), "PyTorch checkpoint (zip)", "yes",
                         "torch.load unpickles data.pkl, which can run any code; only torch.load(..., "
                         "weights_only=True) (the default from PyTorch 2.6) restricts it")
    return ModelInfo(str(path), "zip archive", "no", f"{len(names)} members; not a model by itself")


def _directory(path: Path) -> ModelInfo:
    try:
        names = [p.name for p in path.iterdir()]
    except OSError as err:
        raise UserInputError(f"{path}: cannot list the directory: {err.strerror or err}") from None
    if any(n.endswith((".ckpt.json", ".ckpt.h5", ".ckpt.index")) or n == "saved_model.pb" for n in names):
        return ModelInfo(str(path), "Calamari checkpoint directory", "possible",
                         "TensorFlow/Keras weights and a JSON configuration; a .ckpt.h5 whole model with Lambda "
                         "layers can run Python bytecode when Keras loads it, weights alone cannot")
    return ModelInfo(str(path), "directory", "no", f"{len(names)} entries; no known model layout")


def identify(path: Path) -> ModelInfo:
    """Describe the model at ``path``; raises UnsafeModel for a pickle the restricted unpickler refuses."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise UserInputError(f"{path}: {err.strerror or 'cannot be read'}; check the path") from None
    if stat.S_ISDIR(mode):
        return _directory(path)
    if not stat.S_ISREG(mode):
        raise UserInputError(f"{path}: not a regular file or directory (a device, socket or pipe); give a model file")
    try:
        head = _head(path)
    except OSError as err:
        raise UserInputError(f"{path}: cannot read it: {err.strerror or err}. Check its permissions.") from None
    if head.startswith(HDF5_MAGIC):
        return _hdf5(path)
    if head.startswith(b"PK\x03\x04"):
        return _zip(path)
    if head.startswith(TORCH_LEGACY_MAGIC):
        return ModelInfo(str(path), "PyTorch checkpoint (legacy pickle)", "yes",
                         "torch.load unpickles it, which can run any code unless weights_only=True")
    inner = _decompressed_head(path, head)
    name = path.name.lower()
    if ".pyrnn" in name:
        return _pyrnn(path)  # named as one: it is one, or it is refused (never reported as harmless)
    if _looks_pickled(inner):
        try:
            return _pyrnn(path)
        except UnsafeModel:
            pass
        return ModelInfo(str(path), "Python pickle", "yes",
                         "unpickling can run any code; detectron2/PyTorch .pkl/.pth files are pickles")
    if name.endswith(".traineddata"):
        return ModelInfo(str(path), "Tesseract traineddata", "no", "a table of Tesseract components (data only)")
    if name.endswith(".mlmodel"):
        return ModelInfo(str(path), "kraken mlmodel (CoreML protobuf)", "no",
                         "a protobuf message: weights and metadata, no code")
    if name.endswith((".pt", ".pth")):
        return ModelInfo(str(path), "PyTorch checkpoint", "yes", "torch.load unpickles it")
    return ModelInfo(str(path), "unknown", "possible", "not a format modelsync knows")

