"""An ocropy/kraken pyrnn model as checked data: the BIDILSTM weights, sizes and codec.

Built from :mod:`safepickle`'s inert objects. Only the exact structure kraken converted is
accepted, ``SeqRecognizer{lstm: Stacked[Parallel(LSTM, Reversed(LSTM)), Softmax]}``, with
consistent shapes; anything else is refused naming what was found. Needs no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import safepickle
from ..errors import UnsafeModel, UserInputError
from .safepickle import Holder, RawArray, describe

KIND = "pyrnn-bidi"
GATES = ("WGI", "WGF", "WGO", "WCI")  # (ns, na)
PEEPHOLES = ("WIP", "WFP", "WOP")  # (ns,) in the pickle, (ns, 1) in the HDF5 file
FORWARD = ".bidilstm.0.parallel.0.lstm."
REVERSED = ".bidilstm.0.parallel.1.reversed.0.lstm."
SOFTMAX_BIAS = ".bidilstm.1.softmax.w"
SOFTMAX_WEIGHTS = ".bidilstm.1.softmax.W"
CODEC = "codec"
MAX_SIZE = 1_000_000  # input height, hidden states, output classes: real models have tens to hundreds
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True)
class PyrnnModel:
    """What a converter and ``inspect`` need of a pyrnn model."""

    input_height: int  # Ni
    hidden: int  # ns
    codec: tuple[str, ...] | None  # code -> character, code 0 = '' (None: the pickle has none)
    output_classes: int  # No
    lstm: dict[str, RawArray]  # FORWARD/REVERSED + gate/peephole name -> array
    softmax: RawArray  # W2: (No, 2*ns + 1), column 0 the bias
    has_normalizer: bool


def _what(obj: Any) -> str:
    if isinstance(obj, Holder):
        return obj.kind
    if isinstance(obj, str):
        return f"a string ({obj[:40]!r})"
    return type(obj).__name__


def _size(value: Any, what: str) -> int:
    """``value`` as a size of the network: an int from 1 to :data:`MAX_SIZE`."""
    if type(value) is not int or not 1 <= value <= MAX_SIZE:
        raise UnsafeModel(f"not a usable pyrnn model: its {what} is {describe(value)}, expected a number from 1 "
                          f"to {MAX_SIZE}")
    return value


def _need(obj: Any, kind: str, where: str) -> Holder:
    if not isinstance(obj, Holder) or obj.kind != kind:
        raise UnsafeModel(f"not a pyrnn BIDILSTM model: expected {kind} at {where}, found {_what(obj)}")
    return obj


def _array(holder: Holder, name: str, shape: tuple[int, ...], where: str) -> RawArray:
    arr = holder.attrs.get(name)
    if not isinstance(arr, RawArray):
        raise UnsafeModel(f"not a pyrnn BIDILSTM model: {where}.{name} is {_what(arr)}, not an array")
    if arr.shape != shape:
        raise UnsafeModel(f"inconsistent model: {where}.{name} has shape {arr.shape}, expected {shape}")
    return arr


def _lstm(net: Holder, prefix: str, where: str, ni: int) -> tuple[int, dict[str, RawArray]]:
    wgi = net.attrs.get("WGI")
    if not isinstance(wgi, RawArray) or len(wgi.shape) != 2:
        raise UnsafeModel(f"not a pyrnn BIDILSTM model: {where}.WGI is {_what(wgi)}")
    ns, na = wgi.shape
    _size(ns, f"{where}'s number of hidden states")
    if na != 1 + ni + ns:
        raise UnsafeModel(f"inconsistent model: {where} gates have {na} columns, expected 1 + {ni} + {ns}")
    out = {prefix + g: _array(net, g, (ns, na), where) for g in GATES}
    out.update({prefix + p: _array(net, p, (ns,), where) for p in PEEPHOLES})
    return ns, out


def _codec(codec: Any, n_out: int) -> tuple[str, ...] | None:
    if codec is None:
        return None
    c2c = _need(codec, "Codec", "codec").attrs.get("code2char")
    if not isinstance(c2c, dict) or not c2c:
        raise UnsafeModel(f"invalid codec: code2char is {describe(c2c)}; it must map the codes 0..N-1 to characters")
    if not all(type(k) is int for k in c2c) or sorted(c2c) != list(range(len(c2c))):
        raise UnsafeModel("invalid codec: code2char must map exactly the integer codes 0..N-1 to characters")
    chars = tuple(c2c[i] for i in range(len(c2c)))
    if not all(isinstance(c, str) for c in chars) or chars[0] != "":
        raise UnsafeModel("invalid codec: code 0 must be '' and every entry a character")
    _check_codec(chars, n_out)
    return chars


def _check_codec(chars: tuple[str, ...], n_out: int) -> None:
    bad = [c for c in chars[1:] if len(c) != 1]
    if bad:
        raise UnsafeModel(f"the codec has multi-character labels ({', '.join(repr(c[:20]) for c in bad[:5])}); "
                          "kraken's HDF5 format stores one code point per class and cannot hold them")
    surrogates = [c for c in chars[1:] if 0xD800 <= ord(c) <= 0xDFFF]
    if surrogates:
        # half of a UTF-16 pair is no character: it cannot be shown, nor written as UTF-8
        raise UnsafeModel(f"the codec has lone surrogate code points ({', '.join(map(repr, surrogates[:5]))}), "
                          "which are not characters")
    if len(chars) != n_out:
        raise UnsafeModel(f"inconsistent model: the codec has {len(chars)} entries, the softmax {n_out} outputs")
    if list(chars[1:]) != sorted(chars[1:]) or len(set(chars)) != len(chars):
        # kraken's reader re-sorts the characters: unsorted codes would be read back permuted
        raise UnsafeModel("the codec is not in sorted order; kraken would read it back permuted")


def from_object(root: Any) -> PyrnnModel:
    """Check the unpickled object graph and pick out what the HDF5 layout keeps."""
    seq = _need(root, "SeqRecognizer", "the top")
    ni = _size(seq.attrs.get("Ni"), "input height (SeqRecognizer.Ni)")
    stacked = _need(seq.attrs.get("lstm"), "Stacked", "SeqRecognizer.lstm")
    nets = stacked.attrs.get("nets")
    if not isinstance(nets, (list, tuple)) or len(nets) != 2:
        raise UnsafeModel(f"not a pyrnn BIDILSTM model: Stacked.nets is {_what(nets)} of "
                          f"{len(nets) if isinstance(nets, (list, tuple)) else '?'} networks, expected 2")
    parallel = _need(nets[0], "Parallel", "Stacked.nets[0]")
    softmax = _need(nets[1], "Softmax", "Stacked.nets[1]")
    pnets = parallel.attrs.get("nets")
    if not isinstance(pnets, (list, tuple)) or len(pnets) != 2:
        raise UnsafeModel("not a pyrnn BIDILSTM model: Parallel.nets must hold a forward and a reversed LSTM")
    fwd = _need(pnets[0], "LSTM", "Parallel.nets[0]")
    rev = _need(_need(pnets[1], "Reversed", "Parallel.nets[1]").attrs.get("net"), "LSTM", "Reversed.net")
    ns, lstm = _lstm(fwd, FORWARD, "forward LSTM", ni)
    ns_rev, rev_arrays = _lstm(rev, REVERSED, "reversed LSTM", ni)
    if ns_rev != ns:
        raise UnsafeModel(f"inconsistent model: forward LSTM has {ns} states, reversed {ns_rev}")
    lstm.update(rev_arrays)
    w2 = softmax.attrs.get("W2")
    if not isinstance(w2, RawArray) or len(w2.shape) != 2 or w2.shape[1] != 2 * ns + 1:
        raise UnsafeModel(f"inconsistent model: Softmax.W2 is {_what(w2)}, expected (outputs, {2 * ns + 1})")
    n_out = _size(w2.shape[0], "number of output classes (Softmax.W2 rows)")
    return PyrnnModel(ni, ns, _codec(seq.attrs.get("codec"), n_out), n_out, lstm, w2,
                      isinstance(seq.attrs.get("lnorm"), Holder))


def load_model(path: Path, max_bytes: int | None = None) -> PyrnnModel:
    """Load and check a ``.pyrnn[.gz|.bz2]`` model without executing anything from it."""
    _not_hdf5(path)
    obj = safepickle.load(path, max_bytes)
    try:
        return from_object(obj)
    except UnsafeModel as err:
        raise UnsafeModel(f"{path.name}: {err}") from None


def _not_hdf5(path: Path) -> None:
    """An HDF5 file is already converted: say so instead of reporting a malformed pickle."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(HDF5_MAGIC))
    except OSError:
        return  # safepickle.load reports an unreadable file
    if head == HDF5_MAGIC:
        raise UserInputError(f"{path.name} is an HDF5 file, not a pyrnn pickle: there is nothing to convert "
                             f"(`modelsync inspect {path.name}` describes it)")


def with_codec(model: PyrnnModel, chars: list[str]) -> PyrnnModel:
    """The model with a codec supplied by the caller (kraken-toy has none); a bad one is UserInputError."""
    chars_t = tuple(chars)
    if not chars_t or chars_t[0] != "":
        raise UserInputError("a supplied codec must start with '' (code 0, the blank): --codec '' --codec a ...")
    try:
        _check_codec(chars_t, model.output_classes)
    except UnsafeModel as err:
        raise UserInputError(f"the supplied codec does not fit: {err}") from None
    return PyrnnModel(model.input_height, model.hidden, chars_t, model.output_classes, model.lstm,
                      model.softmax, model.has_normalizer)
