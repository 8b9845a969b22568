"""A restricted unpickler for ocropy/kraken ``.pyrnn`` models: data only, never code.

An exact whitelist of (module, name) pairs is admitted (see ``../shared/LEGACY-MODELS.md`` §5);
every one maps to something of ours: ocrolib/kraken classes become inert attribute bags,
numpy's array and dtype hooks become stubs that keep the raw bytes (checked against the
shape and a numeric dtype, never handed to numpy's unpickling code), ``defaultdict(list)``
becomes a plain dict. Anything else (another global, a persistent id, an extension code, a
dunder attribute, an object array) raises :class:`UnsafeModel`. There is no fallback to
plain ``pickle``. Input is sniffed for gzip/bz2 from its magic bytes and decompressed with
a cap, so a bomb is refused after ``max_bytes`` without being held in memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

from .errors import UnsafeModel

DEFAULT_MAX_BYTES = 2 * 1024**3  # unsaved nets carry large state buffers; 2 GiB stays a bound

_NET_MODULES = ("ocrolib.lstm", "lstm.lstm", "kraken.lib.lstm")
_NET_CLASSES = ("SeqRecognizer", "Stacked", "Parallel", "Reversed", "LSTM", "Softmax", "Codec",
                # other ocrolib networks: admitted as inert bags so the refusal can name them
                "LSTM1", "Logreg", "MLP", "Network", "BIDILSTM")
_LINEEST_MODULES = ("ocrolib.lineest", "kraken.lib.lineest")
_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")

# numeric dtypes only: (kind+size) -> struct code; "O" (objects), "V" (void), "U"/"S" are refused
_NUMERIC = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
            "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}


class Holder:
    """An ocrolib/kraken object as plain data: its class name and attributes, nothing callable."""

    kind = "object"

    def __new__(cls, *args: Any) -> "Holder":
        # INST/OBJ create old-style instances through __new__ alone (no __init__): set up here.
        if args:
            raise UnsafeModel(f"{cls.kind} was constructed with arguments; a pickled model never is")
        obj = super().__new__(cls)
        obj.attrs = {}
        return obj

    def __init__(self, *args: Any) -> None:
        pass  # arguments were refused in __new__

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafeModel(f"{self.kind} has a state of type {type(state).__name__}; expected attributes")
        for key, value in state.items():
            if not isinstance(key, str) or key.startswith("__"):
                raise UnsafeModel(f"{self.kind} sets attribute {key!r}; refused")
            self.attrs[key] = value

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _holder(name: str) -> type[Holder]:
    return type(name, (Holder,), {"kind": name, "__module__": __name__})


_HOLDERS: dict[str, type[Holder]] = {n: _holder(n) for n in (*_NET_CLASSES, "CenterNormalizer")}


class FunctionRef:
    """A reference to a pickled function (``normalize_nfkc``): a name, never callable."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<function {self.name}>"


class NDArrayType:
    """Stands for ``numpy.ndarray`` as the first argument of ``_reconstruct``."""


class ListFactory:
    """Stands for ``list`` as the factory of ``defaultdict(list)``."""


class DType:
    """A numpy dtype as a code (``f8``...) and byte order; only numeric codes are admitted."""

    def __init__(self, code: Any, align: Any = 0, copy: Any = 1) -> None:
        if not isinstance(code, str) or code not in _NUMERIC:
            raise UnsafeModel(f"array dtype {code!r} is not numeric (object or structured arrays are refused)")
        self.code = code
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise UnsafeModel(f"malformed dtype state {state!r:.80}")
        if len(state) > 3 and state[3] is not None:  # names: a structured dtype
            raise UnsafeModel("structured array dtypes are refused")
        self.order = "<" if state[1] in ("|", "=") else state[1]

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return int(self.code[1:])


class RawArray:
    """An array as raw bytes + shape + dtype, checked for consistency; converted by :meth:`values`."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: DType | None = None
        self.fortran = False
        self.data = b""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafeModel("malformed array state")
        if len(state) == 5:
            state = state[1:]  # (version, shape, dtype, fortran, raw); very old numpy omits the version
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, DType):
            raise UnsafeModel("array without a numeric dtype")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise UnsafeModel(f"malformed array shape {shape!r:.80}")
        if isinstance(raw, str):
            raw = raw.encode("latin-1")  # a Python 2 str read with encoding='latin1'
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafeModel(f"array payload is a {type(raw).__name__}, not bytes (object arrays are refused)")
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise UnsafeModel(f"array of shape {shape} and dtype {dtype.code} needs "
                              f"{math.prod(shape) * dtype.itemsize} bytes, the file has {len(raw)}")
        self.shape, self.dtype, self.fortran, self.data = shape, dtype, bool(fortran), bytes(raw)

    def values(self) -> list[float]:
        """The elements in C order as Python numbers (small arrays; the converter uses numpy)."""
        assert self.dtype is not None
        n = math.prod(self.shape)
        flat = list(struct.unpack(f"{self.dtype.order}{n}{_NUMERIC[self.dtype.code]}", self.data))
        if self.fortran and len(self.shape) > 1:
            rows, cols = self.shape[0], n // self.shape[0]
            flat = [flat[r + c * rows] for r in range(rows) for c in range(cols)]
        return flat

    def __repr__(self) -> str:
        return f"<array {self.dtype.code if self.dtype else '?'} {self.shape}>"


def _reconstruct(cls: Any, shape: Any = (0,), code: Any = b"b") -> RawArray:
    if cls is not NDArrayType:
        raise UnsafeModel("_reconstruct called for something other than numpy.ndarray")
    return RawArray()


def _scalar(dtype: Any, raw: Any = b"") -> float | int:
    if not isinstance(dtype, DType):
        raise UnsafeModel("numpy scalar without a numeric dtype")
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise UnsafeModel("malformed numpy scalar")
    return struct.unpack(f"{dtype.order}{_NUMERIC[dtype.code]}", raw)[0]


def _defaultdict(factory: Any = None, *rest: Any) -> dict:
    if factory is not ListFactory or rest:
        raise UnsafeModel("defaultdict with a factory other than list; refused")
    return {}


def _whitelist() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {}
    for mod in _NET_MODULES:
        for name in _NET_CLASSES:
            table[(mod, name)] = _HOLDERS[name]
        table[(mod, "normalize_nfkc")] = FunctionRef("normalize_nfkc")
    for mod in _LINEEST_MODULES:
        table[(mod, "CenterNormalizer")] = _HOLDERS["CenterNormalizer"]
    for mod in _NUMPY_MULTIARRAY:
        table[(mod, "_reconstruct")] = _reconstruct
        table[(mod, "scalar")] = _scalar
    table[("numpy", "ndarray")] = NDArrayType
    table[("numpy", "dtype")] = DType
    table[("collections", "defaultdict")] = _defaultdict
    table[("__builtin__", "list")] = ListFactory
    table[("builtins", "list")] = ListFactory
    return table


WHITELIST = _whitelist()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return WHITELIST[(module, name)]
        except (KeyError, TypeError):
            raise UnsafeModel(f"it references {module}.{name}, which is not part of a pyrnn model") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeModel("it uses persistent ids, which a pyrnn model never does")


class _CappedReader(io.RawIOBase):
    """A decompressed stream that fails once more than ``cap`` bytes come out."""

    def __init__(self, raw: Any, cap: int, label: str) -> None:
        self._raw, self._cap, self._label, self.count = raw, cap, label, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._raw.readinto(buf)
        self.count += n
        if self.count > self._cap:
            raise UnsafeModel(f"it decompresses to more than {self._cap} bytes (a decompression bomb?)")
        return n


def compression(head: bytes) -> str:
    """``gzip``, ``bz2`` or ``plain``, from the first bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bz2"
    return "plain"


def load(path: Path, max_bytes: int | None = None) -> Any:
    """Unpickle ``path`` with the whitelist; raise :class:`UnsafeModel` for anything else.

    ``max_bytes`` caps the decompressed stream (default :data:`DEFAULT_MAX_BYTES`).
    """
    label = path.name
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as fh:
            kind = compression(fh.read(4))
            fh.seek(0)
            raw: Any = fh
            if kind == "gzip":
                raw = gzip.GzipFile(fileobj=fh)
            elif kind == "bz2":
                raw = bz2.BZ2File(fh)
            stream = io.BufferedReader(_CappedReader(raw, max_bytes, label), 1 << 20)
            return _Unpickler(stream, encoding="latin1").load()
    except UnsafeModel as err:
        raise UnsafeModel(f"{label}: unsafe or invalid model: {err}") from None
    except RecursionError:
        raise UnsafeModel(f"{label}: unsafe or invalid model: nested too deeply") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            OSError, zlib.error, MemoryError, struct.error, UnicodeDecodeError) as err:
        if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile) and err.errno is not None:
            raise UnsafeModel(f"{label}: cannot read the model: {err.strerror or err}") from None
        raise UnsafeModel(f"{label}: unsafe or invalid model: {type(err).__name__}: {err}") from None
