"""A restricted unpickler for ocropy/kraken ``.pyrnn`` models: data only, never code, bounded memory.

Code: an exact whitelist of (module, name) pairs is admitted (:data:`WHITELIST`); every one maps
to something of ours: ocrolib/kraken classes become inert attribute bags,
numpy's array and dtype hooks become stubs that keep the raw bytes (checked against the shape
and a numeric dtype, never handed to numpy's unpickling code), ``defaultdict(list)`` becomes a
plain dict. Anything else (another global, a persistent id, an extension code, a dunder
attribute, an object array, a state on something that has none) raises :class:`UnsafeModel`.
There is no fallback to plain ``pickle``.

Memory: the pickle stream is run by a small stack machine of our own (:class:`_Loader`), not by
``pickle.Unpickler``: the C unpickler cannot be hooked per opcode, and the pure-Python one reads
a string of whatever length the stream states before anyone could object. Only the opcodes of
protocols 0-2 are known to it, and every one is charged against an allocation budget
(``max_alloc``, default :data:`DEFAULT_MAX_ALLOC`) *before* it allocates anything whose size
the stream chooses, at what CPython really takes (measured with :mod:`tracemalloc`, rounded up):

- each opcode costs :data:`OPCODE_COST`, the most any opcode allocates besides what is charged
  below (a stack slot, a MARK's list, a memo slot, a number from a 64-character line); this also
  bounds the time, to about 8 million opcodes for the default budget;
- each new container or object (tuple, list, dict, network object, dtype, array) costs
  :data:`OBJECT_COST`: itself and its entry in the loader's table of weights;
- a string's length is read first and charged before its bytes are read; strings above
  :data:`READ_CHUNK` are read in pieces as they arrive (charged twice: the pieces are joined), so
  a length field alone allocates nothing; a protocol-0 text line is read in pieces too, each
  charged as it arrives; decoding is charged before it starts, at the decoder's peak (a UTF-8
  decoder may widen its buffer twice: 6 bytes a byte);
- each item put into a list, tuple, dict or object state costs a slot, and every container
  records its *weight*: what a full copy of it would take, its items' weights included;
- the memo is a list indexed by the memo number. A pickler numbers its memo 0, 1, 2, ... as it
  writes (fraktur-jze from 1), so an index above the number of opcodes read so far is refused:
  the list never has more slots than there were opcodes, and memo numbers chosen to collide in
  one hash bucket (multiples of 2**61-1 hash alike in CPython, which made a dict memo quadratic)
  have nothing to collide in;
- dict keys are strings (hashed with Python's per-process random key) and integers below 2**31
  (which hash to themselves); anything else (floats, tuples, larger integers, objects) is
  refused before it is hashed: such keys can be built to share one hash value, and inserting
  n of them into a dict takes n**2 steps;
- a reference to an object built earlier (memo ``GET``/``BINGET``/``LONG_BINGET`` and ``DUP``)
  is charged that object's whole weight again, as if it were a copy. A stream cannot loop, so
  this bounds what any consumer that copies or prints the result could build from it: the
  "one 64 KiB string referenced 400 000 times" bomb (965 bytes gzipped) and nested
  "billion laughs" lists run out of budget after a few thousand references, having
  allocated next to nothing. So that a weight stays true, a list, dict or object that has been
  referenced again may not grow afterwards (pickles of trees, as pyrnn models are, never do).

So when the loader refuses, it has allocated the budget at most, plus a few MiB of buffers (the
constants cover the worst case of each opcode, a growing dict's old table included). Real models
are far below it: kraken's toy (7 MB of pickle, 5000-step state buffers) is charged 15 MB,
fraktur-jze 9 MB; an unsaved ocropy net of 100 states keeps ~150 MB of 5000-step buffers
(LEGACY-MODELS.md §5), charged ~300 MB.
Python 2 strs of :data:`BYTES_FROM` bytes or more (array payloads) stay bytes, so they are held
once, not also as latin-1 text. Input is sniffed for gzip/bz2 from its magic bytes and the
decompressed stream is capped too (``max_bytes``), so a decompression bomb is refused without
being held in memory.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import itertools
import math
import pickletools
import struct
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import UnsafeModel, UserInputError

DEFAULT_MAX_BYTES = 2 * 1024**3  # decompressed stream: unsaved nets carry large state buffers
DEFAULT_MAX_ALLOC = 1024**3  # everything the loader builds, charged before it is built

# What CPython 3.11 takes, measured with tracemalloc and rounded up:
OPCODE_COST = 128  # any opcode's fixed part: a stack slot, a MARK's list (65 B), a memo slot, a number (65 B)
OBJECT_COST = 384  # a new container or object (a Holder with its attribute dict: 160 B) and its weight entry (190 B)
HEADER = 80  # a str, bytes or int object around the bytes a length field states (33-76 B)
SLOT = 8  # one reference inside a list or tuple
DICT_SLOT = 96  # one key/value pair inside a dict: its entry, index and free third (76 B while the table grows)
MAX_KEY = 2**31  # integer dict keys must be below this in size: smaller integers hash to themselves
# A text decoder writes 1 byte a character until it meets a wider one, then copies into a buffer of 2,
# then of 4 bytes a character while the narrower one is still held: 6 bytes for each input byte.
DECODE_COST = 6
BYTES_FROM = 1024  # a Python 2 str this long (an array payload) stays bytes instead of latin-1 text
MAX_NUMBER_LINE = 64  # INT/LONG/FLOAT/GET/PUT text arguments
MAX_NAME_LINE = 256  # GLOBAL/INST module and class names
MAX_LONG_BYTES = 64  # LONG4: a pyrnn model's integers are small
MAX_DIM = 2**31 - 1  # a pyrnn model's arrays are small in every dimension
MAX_NDIM = 32  # numpy's own limit when these models were written
READ_CHUNK = 1 << 20  # longer strings are read in pieces of this size
MAX_DEPTH = 100  # containers and objects nested deeper are refused (both real models nest 16 levels)

_NET_MODULES = ("ocrolib.lstm", "lstm.lstm", "kraken.lib.lstm")
_NET_CLASSES = ("SeqRecognizer", "Stacked", "Parallel", "Reversed", "LSTM", "Softmax", "Codec",
                # other ocrolib networks: admitted as inert bags so the refusal can name them
                "LSTM1", "Logreg", "MLP", "Network", "BIDILSTM")
_LINEEST_MODULES = ("ocrolib.lineest", "kraken.lib.lineest")
_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")

# numeric dtypes only: (kind+size) -> struct code; "O" (objects), "V" (void), "U"/"S" are refused
_NUMERIC = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
            "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}


def describe(value: Any) -> str:
    """A short description of an untrusted value for a message: never its full repr.

    A repr of a pickled structure can be far larger than the structure (shared references are
    printed once per reference), so messages name the type and at most 40 characters.
    """
    if isinstance(value, (str, bytes)):
        return f"{type(value).__name__} {value[:40]!r}{'...' if len(value) > 40 else ''}"
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**12 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, (Holder, FunctionRef, RawArray, DType)):
        return repr(value)
    if isinstance(value, type):
        return f"the class {value.__name__}"
    return f"a {type(value).__name__}"


def clip(text: str, limit: int = 120) -> str:
    """Outside text for a message: as is when short and printable, else its clipped repr."""
    return text if len(text) <= limit and text.isprintable() else repr(text[:limit])


class Holder:
    """An ocrolib/kraken object as plain data: its class name and attributes, nothing callable."""

    kind = "object"

    def __init__(self) -> None:
        self.attrs: dict[str, Any] = {}
        self.built = False

    def __setstate__(self, state: Any) -> None:
        """Take the attributes of an old-style instance (a dict of names); once."""
        if self.built:
            raise UnsafeModel(f"{self.kind} is given a state twice; a pickled model never does that")
        if type(state) is not dict:
            raise UnsafeModel(f"{self.kind} has a state of type {type(state).__name__}; expected attributes")
        for key, value in state.items():
            if not isinstance(key, str) or key.startswith("__"):
                raise UnsafeModel(f"{self.kind} sets attribute {describe(key)}; refused")
            self.attrs[key] = value
        self.built = True

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _holder(name: str) -> type[Holder]:
    return type(name, (Holder,), {"kind": name, "__module__": __name__})


_HOLDERS: dict[str, type[Holder]] = {n: _holder(n) for n in (*_NET_CLASSES, "CenterNormalizer")}


class FunctionRef:
    """A reference to a pickled function (``normalize_nfkc``): a name, never callable, never given a state."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<function {self.name}>"


class NDArrayType:
    """Stands for ``numpy.ndarray`` as the first argument of ``_reconstruct``."""


class ListFactory:
    """Stands for ``list`` as the factory of ``defaultdict(list)``."""


def _flag(value: Any) -> bool:
    # numpy pickles pass 0/1 or False/True here
    return type(value) in (int, bool) and value in (0, 1)


class DType:
    """A numpy dtype as a code (``f8``...) and byte order; only numeric codes are admitted.

    Pickled as ``dtype(code, align, copy)`` then a BUILD with numpy's dtype state: version 3
    ``(3, order, subarray, names, fields, elsize, alignment, flags)`` or version 4, which adds
    ``metadata``. A numeric dtype has no subarray, names, fields or metadata (None), elsize and
    alignment -1 or its own size, and flags 0; anything else is refused.
    """

    def __init__(self, code: Any, align: Any = 0, copy: Any = 1) -> None:
        if not isinstance(code, str) or code not in _NUMERIC:
            raise UnsafeModel(f"array dtype {describe(code)} is not numeric (object or structured arrays are refused)")
        if not (_flag(align) and _flag(copy)):
            raise UnsafeModel(f"dtype {code} is created with arguments {describe(align)}, {describe(copy)}; "
                              "numpy pickles 0 or 1 there")
        self.code = code
        self.order = "<"
        self.built = False

    def __setstate__(self, state: Any) -> None:
        """Take numpy's dtype state (see the class docstring); once."""
        if self.built:
            raise UnsafeModel(f"dtype {self.code} is given a state twice")
        if type(state) is not tuple or len(state) not in (8, 9):
            raise UnsafeModel(f"malformed dtype state: {describe(state)}, expected numpy's tuple of 8 or 9")
        version, order, subarray, names, fields, elsize, alignment, flags = state[:8]
        metadata = state[8] if len(state) == 9 else None
        if type(version) is not int or version != len(state) - 5:
            raise UnsafeModel(f"malformed dtype state: version {describe(version)} with {len(state)} fields")
        valid_orders = ("|",) if self.itemsize == 1 else ("<", ">", "=")
        if not isinstance(order, str) or order not in valid_orders:
            raise UnsafeModel(f"malformed dtype state: byte order {describe(order)} for {self.code}")
        if subarray is not None or names is not None or fields is not None or metadata is not None:
            raise UnsafeModel("structured, sub-array or annotated array dtypes are refused")
        for label, value in (("element size", elsize), ("alignment", alignment)):
            if type(value) is not int or value not in (-1, self.itemsize):
                raise UnsafeModel(f"malformed dtype state: {label} {describe(value)} for {self.code}")
        if type(flags) is not int or flags != 0:
            raise UnsafeModel(f"malformed dtype state: flags {describe(flags)} (a numeric dtype has none)")
        self.order = "<" if order in ("|", "=") else order
        self.built = True

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return int(self.code[1:])

    def __repr__(self) -> str:
        return f"<dtype {self.code}>"


class RawArray:
    """An array as raw bytes + shape + dtype, checked for consistency; converted by :meth:`values`."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: DType | None = None
        self.fortran = False
        self.data = b""
        self.built = False

    def __setstate__(self, state: Any) -> None:
        """Take numpy's array state ``(1, shape, dtype, fortran, raw)`` (very old numpy: no version); once."""
        if self.built:
            raise UnsafeModel("an array is given a state twice")
        if type(state) is not tuple or len(state) not in (4, 5):
            raise UnsafeModel(f"malformed array state: {describe(state)}, expected numpy's tuple of 4 or 5")
        if len(state) == 5:
            if type(state[0]) is not int or state[0] != 1:
                raise UnsafeModel(f"malformed array state: version {describe(state[0])}")
            state = state[1:]
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, DType):
            raise UnsafeModel("array without a numeric dtype")
        if not (type(shape) is tuple and len(shape) <= MAX_NDIM
                and all(type(n) is int and n >= 0 for n in shape)):
            raise UnsafeModel(f"malformed array shape: {describe(shape)}")
        if not _flag(fortran):
            raise UnsafeModel(f"malformed array state: fortran order is {describe(fortran)}")
        if isinstance(raw, str):
            if len(raw) != math.prod(shape) * dtype.itemsize:
                raw = b""  # refused just below, without encoding a string of the wrong size
            else:
                raw = raw.encode("latin-1")  # a short Python 2 str read as latin-1 text
        if type(raw) is not bytes:
            raise UnsafeModel(f"array payload is a {type(raw).__name__}, not bytes (object arrays are refused)")
        needed = math.prod(shape) * dtype.itemsize
        if len(raw) != needed:
            raise UnsafeModel(f"array of shape {clip(str(shape))} and dtype {dtype.code} needs {describe(needed)} "
                              f"bytes, the file has {len(raw)}")
        if any(n > MAX_DIM for n in shape):
            # only possible beside a zero: an empty array claiming an absurd extent
            raise UnsafeModel(f"array of shape {clip(str(shape))} has a dimension above {MAX_DIM}")
        self.shape, self.dtype, self.fortran, self.data = shape, dtype, bool(fortran), raw
        self.built = True

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
        return f"<array {self.dtype.code if self.dtype else '?'} {self.shape if self.built else '(no state)'}>"


def _reconstruct(*args: Any) -> RawArray:
    # numpy pickles exactly _reconstruct(ndarray, (0,), 'b'); the real shape comes with BUILD
    if len(args) != 3 or args[0] is not NDArrayType:
        raise UnsafeModel("_reconstruct called for something other than numpy.ndarray")
    if args[1] != (0,) or type(args[1]) is not tuple or args[2] not in ("b", b"b"):
        raise UnsafeModel(f"_reconstruct called with {describe(args[1])}, {describe(args[2])}; "
                          "numpy pickles (0,), 'b'")
    return RawArray()


def _scalar(*args: Any) -> float | int:
    if len(args) != 2 or not isinstance(args[0], DType):
        raise UnsafeModel("numpy scalar without a numeric dtype")
    dtype, raw = args
    if isinstance(raw, str):
        raw = raw.encode("latin-1") if len(raw) == dtype.itemsize else b""
    if type(raw) is not bytes or len(raw) != dtype.itemsize:
        raise UnsafeModel("malformed numpy scalar")
    return struct.unpack(f"{dtype.order}{_NUMERIC[dtype.code]}", raw)[0]


def _defaultdict(*args: Any) -> dict:
    if args != (ListFactory,):
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
_CALLABLE = (DType, _reconstruct, _scalar, _defaultdict)  # what REDUCE may call; holders are never called
_MUTABLE = (list, dict, Holder, DType, RawArray)  # what a later opcode can still change


def _find(module: str, name: str) -> Any:
    try:
        return WHITELIST[(module, name)]
    except KeyError:
        raise UnsafeModel(f"it references {clip(module + '.' + name)}, which is not part of a pyrnn model") from None


def _named(obj: Any) -> str:
    for (module, name), value in WHITELIST.items():
        if value is obj:
            return f"{module}.{name}"
    return describe(obj)


class _Loader:
    """Runs a protocol 0-2 pickle stream over the whitelist, charging the budget before it allocates."""

    def __init__(self, stream: Any, max_alloc: int) -> None:
        self._read, self._readline = stream.read, stream.readline
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        # indexed by memo number; never longer than the opcodes read so far (see _put_at)
        self.memo: list[Any] = []
        self.opcodes = 0
        self.limit, self.spent = max_alloc, 0
        # id -> (the object, kept alive so ids stay unique; its weight; its nesting depth)
        self._weights: dict[int, tuple[Any, int, int]] = {}
        self._shared: set[int] = set()  # ids of mutable objects pushed again by GET/DUP: frozen from then on

    # -- the budget ---------------------------------------------------------------------------------

    def charge(self, n: int, why: str) -> None:
        """Count ``n`` bytes about to be allocated; refuse once the budget is exceeded."""
        self.spent += n
        if self.spent > self.limit:
            raise UnsafeModel(f"loading it would take more than {self.limit // 2**20} MiB of memory ({why}); "
                              "a pyrnn model needs far less, so this looks like a memory bomb and nothing more "
                              "is built")

    def weight(self, obj: Any) -> int:
        """What a full copy of ``obj`` would take: its tracked weight, a string's or number's size."""
        entry = self._weights.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        if type(obj) in (str, bytes, int, float):
            return sys.getsizeof(obj)  # immutable and exact: not tracked, which would cost more than they do
        return HEADER  # None, a bool, a whitelisted global: a copy is a reference

    def depth(self, obj: Any) -> int:
        """How deeply ``obj`` nests containers and objects (0 for anything not tracked)."""
        entry = self._weights.get(id(obj))
        return entry[2] if entry is not None and entry[0] is obj else 0

    @staticmethod
    def check_depth(depth: int) -> None:
        """Refuse nesting deeper than :data:`MAX_DEPTH`."""
        if depth > MAX_DEPTH:
            # hashing, comparing or printing a deeper tuple recurses in C and can crash the interpreter
            raise UnsafeModel(f"it nests containers more than {MAX_DEPTH} levels deep; a pyrnn model nests 16")

    def track(self, obj: Any, weight: int, depth: int = 0) -> Any:
        """Record ``obj``'s weight and depth (charged :data:`OBJECT_COST` the first time); return it."""
        self.check_depth(depth)
        if id(obj) not in self._weights:  # an entry keeps its object alive: an id is never reused
            self.charge(OBJECT_COST, "objects")
        self._weights[id(obj)] = (obj, weight, depth)
        return obj

    def grow(self, obj: Any, added: int, inner: int) -> None:
        """``obj`` (a list, dict or object) gains items weighing ``added``, nested ``inner`` deep.

        Refused once ``obj`` has been referenced again: its weight was charged as it was then.
        """
        if id(obj) in self._shared:
            raise UnsafeModel(f"{describe(obj)} is changed after it was referenced again; a pickled pyrnn model "
                              "never does that (it is how a pickle multiplies memory)")
        self.track(obj, self.weight(obj) + added, max(self.depth(obj), inner + 1))

    # -- reading ------------------------------------------------------------------------------------

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (charged by the caller: twice when above :data:`READ_CHUNK`)."""
        if n <= READ_CHUNK:
            data = self._read(n)
        else:
            # In pieces: a length field alone must not make us allocate what the stream never delivers.
            pieces, left = [], n
            while left:
                piece = self._read(min(left, READ_CHUNK))
                if not piece:
                    break
                pieces.append(piece)
                left -= len(piece)
            data = b"".join(pieces)
        if len(data) != n:
            raise UnsafeModel("the pickle ends in the middle of an opcode (truncated?)")
        return data

    def charge_read(self, n: int, why: str) -> None:
        """Charge reading ``n`` bytes: once, or twice when the pieces are joined."""
        self.charge((2 * n if n > READ_CHUNK else n) + HEADER, why)

    def line(self, limit: int, what: str) -> bytes:
        """A short text argument up to its newline, at most ``limit`` bytes; read no further than that."""
        data = self._readline(limit + 1)
        if not data.endswith(b"\n"):
            if len(data) > limit:
                raise UnsafeModel(f"{what} is longer than {limit} bytes")
            raise UnsafeModel("the pickle ends in the middle of an opcode (truncated?)")
        return data[:-1]

    def long_line(self, why: str) -> memoryview:
        """A text argument of any length up to its newline (a view without it), charged as it arrives.

        Read in pieces of :data:`READ_CHUNK`, so a line longer than the budget is refused after
        at most one piece more than the budget; joining the pieces is charged again.
        """
        pieces: list[bytes] = []
        while True:
            piece = self._readline(READ_CHUNK)
            self.charge(len(piece) + HEADER, why)
            if not piece:
                raise UnsafeModel("the pickle ends in the middle of an opcode (truncated?)")
            pieces.append(piece)
            if piece.endswith(b"\n"):
                break
        if len(pieces) > 1:
            self.charge(sum(map(len, pieces)), why)  # the joined copy, while the pieces are still held
            piece = b"".join(pieces)
        del pieces
        return memoryview(piece)[:-1]  # a view: slicing off the newline copies nothing

    # -- the stack ----------------------------------------------------------------------------------

    def pop(self) -> Any:
        """The top of the stack, removed."""
        if not self.stack:
            raise UnsafeModel("malformed pickle: an opcode needs a value and the stack is empty")
        return self.stack.pop()

    def top(self) -> Any:
        """The top of the stack."""
        if not self.stack:
            raise UnsafeModel("malformed pickle: an opcode needs a value and the stack is empty")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        """The items pushed since the last MARK."""
        if not self.metastack:
            raise UnsafeModel("malformed pickle: an opcode needs a MARK and there is none")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def push_string(self, data: bytes) -> None:
        """A Python 2 ``str``: latin-1 text when short (names, codec entries), bytes when long (array payloads)."""
        if len(data) >= BYTES_FROM:
            self.stack.append(data)
            return
        self.charge(len(data) + HEADER, "a string")
        self.stack.append(data.decode("latin-1"))

    def push_reference(self, obj: Any) -> None:
        """An object built earlier, pushed again: charged its whole weight, as a copy would be."""
        self.charge(SLOT + self.weight(obj), "references repeating one object")
        if isinstance(obj, _MUTABLE):
            self._shared.add(id(obj))
        self.stack.append(obj)

    def container(self, obj: Any, items: Any, slot: int) -> None:
        """Push a new tuple/list/dict holding ``items`` (already on the stack, so already charged)."""
        self.stack.append(self.track(obj, OBJECT_COST + sum(slot + self.weight(i) for i in items),
                                     1 + max((self.depth(i) for i in items), default=0)))

    # -- running ------------------------------------------------------------------------------------

    def run(self) -> Any:
        """Execute the stream up to STOP and return its value."""
        while True:
            op = self._read(1)
            if not op:
                raise UnsafeModel("the pickle ends before its STOP opcode (truncated?)")
            self.charge(OPCODE_COST, "too many opcodes")
            self.opcodes += 1
            handler = _DISPATCH.get(op[0])
            if handler is None:
                raise UnsafeModel(_refusal(op[0]))
            if handler is _stop:
                return self.finish()
            handler(self)

    def finish(self) -> Any:
        """The value at STOP: exactly one object, every MARK closed."""
        if self.metastack or len(self.stack) != 1:
            raise UnsafeModel(f"malformed pickle: STOP with {len(self.stack)} values on the stack and "
                              f"{len(self.metastack)} open MARKs")
        return self.stack[0]


# -- opcode handlers (protocols 0-2; pickletools documents each) -----------------------------------------

def _stop(ld: _Loader) -> None:
    raise AssertionError("handled by _Loader.run")


def _proto(ld: _Loader) -> None:
    version = ld.read(1)[0]
    if version > 2:
        raise UnsafeModel(f"it is a pickle of protocol {version}; pyrnn models were written by Python 2 with "
                          "protocol 0-2")


def _mark(ld: _Loader) -> None:
    ld.metastack.append(ld.stack)
    ld.stack = []


def _pop(ld: _Loader) -> None:
    if ld.stack:
        ld.stack.pop()
    else:
        ld.pop_mark()


def _pop_mark(ld: _Loader) -> None:
    ld.pop_mark()


def _dup(ld: _Loader) -> None:
    ld.push_reference(ld.top())


def _const(value: Any) -> Callable[[_Loader], None]:
    def push(ld: _Loader) -> None:
        ld.stack.append(value)
    return push


def _int(ld: _Loader) -> None:
    data = ld.line(MAX_NUMBER_LINE, "an INT argument")
    ld.stack.append(True if data == b"01" else False if data == b"00" else int(data))  # Python 2 bools


def _long(ld: _Loader) -> None:
    data = ld.line(MAX_NUMBER_LINE, "a LONG argument")
    ld.stack.append(int(data[:-1] if data.endswith(b"L") else data))


def _binint(ld: _Loader) -> None:
    ld.stack.append(struct.unpack("<i", ld.read(4))[0])


def _binint1(ld: _Loader) -> None:
    ld.stack.append(ld.read(1)[0])


def _binint2(ld: _Loader) -> None:
    ld.stack.append(struct.unpack("<H", ld.read(2))[0])


def _push_long(ld: _Loader, n: int) -> None:
    # the n bytes, then an int of 30 bits a 4-byte digit (1.07 n bytes): up to 255 bytes, so charged
    ld.charge(2 * n + 2 * HEADER, "an integer")
    ld.stack.append(int.from_bytes(ld.read(n), "little", signed=True))


def _long1(ld: _Loader) -> None:
    _push_long(ld, ld.read(1)[0])


def _long4(ld: _Loader) -> None:
    n = struct.unpack("<i", ld.read(4))[0]
    if not 0 <= n <= MAX_LONG_BYTES:
        raise UnsafeModel(f"an integer of {n} bytes; a pyrnn model's integers are small")
    _push_long(ld, n)


def _float(ld: _Loader) -> None:
    ld.stack.append(float(ld.line(MAX_NUMBER_LINE, "a FLOAT argument")))


def _binfloat(ld: _Loader) -> None:
    ld.stack.append(struct.unpack(">d", ld.read(8))[0])


def _string(ld: _Loader) -> None:
    data = ld.long_line("a string")
    if len(data) < 2 or data[:1] != data[-1:] or data[:1] not in (b"'", b'"'):
        raise UnsafeModel("malformed pickle: a STRING argument is not quoted")
    ld.charge(len(data) + HEADER, "a string")  # the decoded bytes, never longer than the line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an unknown escape such as "\\ " stays as it is, as in Python 2
        decoded = codecs.escape_decode(data[1:-1])[0]  # a view of the line: no copy
    del data
    ld.push_string(decoded)


def _binstring(ld: _Loader) -> None:
    n = struct.unpack("<i", ld.read(4))[0]
    if n < 0:
        raise UnsafeModel("malformed pickle: a string of negative length")
    ld.charge_read(n, "a string")
    ld.push_string(ld.read(n))


def _short_binstring(ld: _Loader) -> None:
    n = ld.read(1)[0]
    ld.charge_read(n, "a string")
    ld.push_string(ld.read(n))


def _unicode(ld: _Loader) -> None:
    data = ld.long_line("a string")
    ld.charge(DECODE_COST * len(data) + HEADER, "a string")
    text = str(data, "raw-unicode-escape")
    del data
    ld.stack.append(text)


def _binunicode(ld: _Loader) -> None:
    n = struct.unpack("<I", ld.read(4))[0]
    ld.charge_read(n, "a string")
    ld.charge(DECODE_COST * n + HEADER, "a string")
    ld.stack.append(str(ld.read(n), "utf-8", "surrogatepass"))


def _empty(factory: type) -> Callable[[_Loader], None]:
    def push(ld: _Loader) -> None:
        ld.stack.append(ld.track(factory(), OBJECT_COST))  # track() charges it
    return push


def _tuple_n(n: int) -> Callable[[_Loader], None]:
    def push(ld: _Loader) -> None:
        if len(ld.stack) < n:
            raise UnsafeModel("malformed pickle: an opcode needs a value and the stack is empty")
        items = tuple(ld.stack[-n:])
        del ld.stack[-n:]
        ld.container(items, items, SLOT)
    return push


def _tuple(ld: _Loader) -> None:
    items = ld.pop_mark()
    ld.charge(SLOT * len(items), "a tuple")
    ld.container(tuple(items), items, SLOT)


def _list(ld: _Loader) -> None:
    items = ld.pop_mark()
    ld.charge(SLOT * len(items), "a list")
    ld.container(items, items, SLOT)


def _check_key(key: Any) -> None:
    # A string's hash is keyed per process; an integer below 2**31 hashes to itself. Others can be
    # made to collide: integers j*(2**61-1) all hash to 0, a tuple's hash is computed from its
    # items', so n such keys make a dict take n**2 steps. A pyrnn model's keys are names and codes.
    kind = type(key)
    if kind is str or kind is bytes or (kind is int and -MAX_KEY < key < MAX_KEY):
        return
    if kind in (list, dict):
        raise UnsafeModel(f"malformed pickle: {describe(key)} used as a dict key")
    raise UnsafeModel(f"{describe(key)} is used as a dict key; a pyrnn model's keys are names and integers below "
                      "2**31 (other keys can be built to share one hash value and make loading take hours)")


def _pairs(ld: _Loader, items: list[Any]) -> tuple[Iterator[tuple[Any, Any]], int, int]:
    """Check the keys of ``items`` (key, value, ...); their pairs, weight and depth."""
    if len(items) % 2:
        raise UnsafeModel("malformed pickle: a dict with a key and no value")
    ld.charge(DICT_SLOT * (len(items) // 2), "a dict")
    for key in itertools.islice(items, 0, None, 2):
        _check_key(key)
    depth = max((ld.depth(i) for i in items), default=0)
    ld.check_depth(depth + 1)
    flat = iter(items)
    return zip(flat, flat), sum(DICT_SLOT + ld.weight(i) for i in items), depth


def _dict(ld: _Loader) -> None:
    pairs, weight, depth = _pairs(ld, ld.pop_mark())
    ld.stack.append(ld.track(dict(pairs), OBJECT_COST + weight, depth + 1))


def _target(ld: _Loader, kind: type) -> Any:
    obj = ld.top()
    if type(obj) is not kind:
        raise UnsafeModel(f"malformed pickle: adds items to {describe(obj)}, not a {kind.__name__}")
    return obj


def _append(ld: _Loader) -> None:
    value = ld.pop()
    target = _target(ld, list)
    ld.charge(SLOT, "a list")
    ld.grow(target, SLOT + ld.weight(value), ld.depth(value))
    target.append(value)


def _appends(ld: _Loader) -> None:
    items = ld.pop_mark()
    target = _target(ld, list)
    ld.charge(SLOT * len(items), "a list")
    ld.grow(target, sum(SLOT + ld.weight(i) for i in items), max((ld.depth(i) for i in items), default=0))
    target.extend(items)


def _setitem(ld: _Loader) -> None:
    value, key = ld.pop(), ld.pop()
    _setitems_from(ld, [key, value])


def _setitems(ld: _Loader) -> None:
    _setitems_from(ld, ld.pop_mark())


def _setitems_from(ld: _Loader, items: list[Any]) -> None:
    target = _target(ld, dict)
    pairs, weight, depth = _pairs(ld, items)
    ld.grow(target, weight, depth)
    target.update(pairs)  # straight in: no second dict of the pairs


def _memo_index(ld: _Loader, data: bytes) -> int:
    index = int(data)
    if index < 0:
        raise UnsafeModel("malformed pickle: a negative memo index")
    return index


_ABSENT = object()  # a memo slot below the highest memo number that no PUT has filled


def _get_at(ld: _Loader, index: int) -> None:
    obj = ld.memo[index] if index < len(ld.memo) else _ABSENT
    if obj is _ABSENT:
        raise UnsafeModel(f"malformed pickle: memo entry {describe(index)} is read before it is written")
    ld.push_reference(obj)


def _get(ld: _Loader) -> None:
    _get_at(ld, _memo_index(ld, ld.line(MAX_NUMBER_LINE, "a GET argument")))


def _binget(ld: _Loader) -> None:
    _get_at(ld, ld.read(1)[0])


def _long_binget(ld: _Loader) -> None:
    _get_at(ld, struct.unpack("<I", ld.read(4))[0])


def _put_at(ld: _Loader, index: int) -> None:
    obj = ld.top()
    memo = ld.memo
    if index < len(memo):
        memo[index] = obj
        return
    if index > ld.opcodes:
        # Picklers number memo entries 0, 1, 2, ... as they write them: never above the opcodes so far.
        number = index if index < 10**12 else f"of {index.bit_length()} bits"
        raise UnsafeModel(f"malformed pickle: memo number {number} after {ld.opcodes} opcodes; a pickler numbers "
                          "its memo 0, 1, 2, ... as it writes it, so no number is above the opcodes before it")
    # at most one slot per opcode read, each covered by its OPCODE_COST
    memo.extend(itertools.repeat(_ABSENT, index - len(memo)))
    memo.append(obj)


def _put(ld: _Loader) -> None:
    _put_at(ld, _memo_index(ld, ld.line(MAX_NUMBER_LINE, "a PUT argument")))


def _binput(ld: _Loader) -> None:
    _put_at(ld, ld.read(1)[0])


def _long_binput(ld: _Loader) -> None:
    _put_at(ld, struct.unpack("<I", ld.read(4))[0])


def _names(ld: _Loader) -> tuple[str, str]:
    module = ld.line(MAX_NAME_LINE, "a module name").decode("utf-8")
    return module, ld.line(MAX_NAME_LINE, "a class name").decode("utf-8")


def _global(ld: _Loader) -> None:
    ld.stack.append(_find(*_names(ld)))


def _instantiate(ld: _Loader, cls: Any, args: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Holder)):
        raise UnsafeModel(f"it creates an instance of {_named(cls)}; only ocrolib/kraken network classes are "
                          "instantiated in a pyrnn model")
    if args:
        raise UnsafeModel(f"{cls.kind} was constructed with arguments; a pickled model never is")
    ld.stack.append(ld.track(cls(), OBJECT_COST))


def _inst(ld: _Loader) -> None:
    cls = _find(*_names(ld))
    _instantiate(ld, cls, ld.pop_mark())


def _obj(ld: _Loader) -> None:
    items = ld.pop_mark()
    if not items:
        raise UnsafeModel("malformed pickle: OBJ without a class")
    _instantiate(ld, items[0], items[1:])


def _newobj(ld: _Loader) -> None:
    args = ld.pop()
    cls = ld.pop()
    if type(args) is not tuple:
        raise UnsafeModel("malformed pickle: NEWOBJ arguments are not a tuple")
    _instantiate(ld, cls, args)


def _reduce(ld: _Loader) -> None:
    args = ld.pop()
    func = ld.top()
    if not any(func is c for c in _CALLABLE):
        raise UnsafeModel(f"it calls {_named(func)}, which a pyrnn model never calls")
    if type(args) is not tuple:
        raise UnsafeModel(f"malformed pickle: {_named(func)} is called with {describe(args)}, not a tuple")
    result = func(*args)
    ld.stack[-1] = ld.track(result, OBJECT_COST) if isinstance(result, _MUTABLE) else result


def _build(ld: _Loader) -> None:
    state = ld.pop()
    inst = ld.top()
    if not isinstance(inst, (Holder, DType, RawArray)):
        raise UnsafeModel(f"it sets a state on {_named(inst)}; in a pyrnn model only network objects, arrays "
                          "and dtypes have one")
    payload = state[-1] if type(state) is tuple and state else None
    if isinstance(inst, RawArray) and isinstance(payload, str):
        ld.charge(len(payload) + HEADER, "an array")  # a short latin-1 payload is encoded back to bytes
    if isinstance(inst, Holder) and type(state) is dict:
        ld.charge(DICT_SLOT * len(state), "object attributes")  # copied into the holder's own dict
    ld.grow(inst, ld.weight(state), ld.depth(state))
    inst.__setstate__(state)


def _refuse(message: str) -> Callable[[_Loader], None]:
    def refuse(ld: _Loader) -> None:
        raise UnsafeModel(message)
    return refuse


def _refusal(code: int) -> str:
    op = pickletools.code2op.get(chr(code))
    if op is None:
        return f"malformed pickle: invalid opcode {code:#04x}"
    return (f"it uses the pickle opcode {op.name} (protocol {op.proto}), which pyrnn models, written by Python 2 "
            "with protocol 0-2, never contain")


_PERSISTENT = "it uses persistent ids, which a pyrnn model never does"
_EXTENSION = "it uses extension registry codes (EXT1/EXT2/EXT4), which a pyrnn model never does"

_DISPATCH: dict[int, Callable[[_Loader], None]] = {ord(k): v for k, v in {
    ".": _stop, "\x80": _proto, "(": _mark, "0": _pop, "1": _pop_mark, "2": _dup,
    "N": _const(None), "\x88": _const(True), "\x89": _const(False),
    "I": _int, "L": _long, "J": _binint, "K": _binint1, "M": _binint2, "\x8a": _long1, "\x8b": _long4,
    "F": _float, "G": _binfloat,
    "S": _string, "T": _binstring, "U": _short_binstring, "V": _unicode, "X": _binunicode,
    "]": _empty(list), "}": _empty(dict), ")": _const(()),
    "l": _list, "t": _tuple, "d": _dict, "\x85": _tuple_n(1), "\x86": _tuple_n(2), "\x87": _tuple_n(3),
    "a": _append, "e": _appends, "s": _setitem, "u": _setitems,
    "g": _get, "h": _binget, "j": _long_binget, "p": _put, "q": _binput, "r": _long_binput,
    "c": _global, "i": _inst, "o": _obj, "\x81": _newobj, "R": _reduce, "b": _build,
    "P": _refuse(_PERSISTENT), "Q": _refuse(_PERSISTENT),
    "\x82": _refuse(_EXTENSION), "\x83": _refuse(_EXTENSION), "\x84": _refuse(_EXTENSION),
}.items()}


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


def load(path: Path, max_bytes: int | None = None, max_alloc: int | None = None) -> Any:
    """Unpickle ``path`` with the whitelist; raise :class:`UnsafeModel` for anything else.

    ``max_bytes`` caps the decompressed stream (default :data:`DEFAULT_MAX_BYTES`), ``max_alloc``
    what loading may allocate (default :data:`DEFAULT_MAX_ALLOC`). A file that cannot be opened
    raises :class:`UserInputError`.
    """
    label = path.name
    max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    max_alloc = DEFAULT_MAX_ALLOC if max_alloc is None else max_alloc
    try:
        fh = open(path, "rb")
    except OSError as err:
        raise UserInputError(f"{path}: cannot read the model: {err.strerror or err}. Check the path and its "
                             "permissions.") from None
    try:
        with fh:
            kind = compression(fh.read(4))
            fh.seek(0)
            raw: Any = fh
            if kind == "gzip":
                raw = gzip.GzipFile(fileobj=fh)
            elif kind == "bz2":
                raw = bz2.BZ2File(fh)
            stream = io.BufferedReader(_CappedReader(raw, max_bytes, label), 1 << 20)
            return _Loader(stream, max_alloc).run()
    except UnsafeModel as err:
        raise UnsafeModel(f"{label}: unsafe or invalid model: {err}") from None
    except (ValueError, TypeError, EOFError, OSError, zlib.error, MemoryError, struct.error, OverflowError,
            RecursionError) as err:
        # malformed numbers, escapes or UTF-8 (ValueError), damaged compression (OSError, EOFError,
        # zlib.error), unhashable keys (TypeError): the input, never us
        if isinstance(err, OSError) and not isinstance(err, gzip.BadGzipFile) and err.errno is not None:
            raise UserInputError(f"{path}: cannot read the model: {err.strerror or err}") from None
        raise UnsafeModel(f"{label}: unsafe or invalid model: {type(err).__name__}: {clip(str(err))}") from None
