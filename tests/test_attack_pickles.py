"""Attacks on the legacy-model readers: pickles that exhaust memory or time, malformed states and shapes, damaged HDF5.

Every payload is assembled here, opcode by opcode (protocol 2, as ocropy wrote them). Memory bombs
run in a child process limited to 1 GiB of address space with a generous timeout, so a regression
fails instead of taking the machine down; the child's peak RSS shows that the refusal came before
the allocation, or (for files that really need the budget) that it stayed within the budget. Memo
numbers and dict keys built to share one hash bucket run with a 60 s timeout: refused in seconds,
where they took minutes to hours. Each opcode, repeated until a 16 MiB budget runs out, is traced
with tracemalloc: what it allocates is what it is charged. Every run checks that nothing was written (a snapshot of the whole test directory,
the sandbox's HOME/XDG dirs and an outside canary included) and that the exit code is the
documented one, never 1 ("a bug").
"""

from __future__ import annotations

import bz2
import gzip
import io
import random
import resource
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, Model, sha256

from ocrd_models.modelsync.legacy import pyrnn, safepickle
from ocrd_models.modelsync.errors import UnsafeModel, UserInputError

h5py = pytest.importorskip("h5py", reason="the legacy extra (numpy, h5py) is part of the test install")
np = pytest.importorskip("numpy")

PYRNN = FIXTURES / "pyrnn"
FRAKTUR = PYRNN / "fraktur-jze.pyrnn.gz"
TOY_GZ = PYRNN / "kraken-toy.pyrnn.gz"
TOY_HDF5 = PYRNN / "kraken-toy.hdf5"
LIMIT = 1 << 30  # address space of a child that opens a bomb
PROC = "ocrd-cis-ocropy-recognize"


# -- a protocol-2 pickle assembler -------------------------------------------------------------------

def s(text: str | bytes) -> bytes:
    """A Python 2 str: SHORT_BINSTRING, or BINSTRING from 256 bytes."""
    data = text.encode("latin-1") if isinstance(text, str) else text
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def u(text: str) -> bytes:
    """A Python 2 unicode: BINUNICODE."""
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def i(n: int) -> bytes:
    """An int: BININT1, BININT or LONG1."""
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def tup(*items: bytes) -> bytes:
    """MARK items TUPLE."""
    return b"(" + b"".join(items) + b"t"


DTYPE_STATE = tup(i(3), s("<"), b"N", b"N", b"N", i(-1), i(-1), i(0))  # numpy's, as in both real models


def dtype(code: str = "f8", state: bytes = DTYPE_STATE, args: bytes | None = None) -> bytes:
    """numpy.dtype(code, 0, 1) then BUILD with ``state``."""
    return b"cnumpy\ndtype\n" + (args or tup(s(code), i(0), i(1))) + b"R" + state + b"b"


def array(shape: tuple[int, ...], code: str = "f8", raw: bytes | None = None, dt: bytes | None = None,
          state: bytes | None = None, reconstruct_args: bytes | None = None) -> bytes:
    """numpy's pickle of an array: _reconstruct(ndarray, (0,), 'b') then BUILD (1, shape, dtype, False, raw)."""
    n = 1
    for d in shape:
        n *= d
    if raw is None:
        raw = struct.pack(f"<{n}{dict(f8='d', f4='f', i4='i')[code]}", *([1] * n))
    state = state or tup(i(1), tup(*[i(d) for d in shape]), dt or dtype(code), b"\x89", s(raw))
    args = reconstruct_args or (b"cnumpy\nndarray\n" + tup(i(0)) + s("b") + b"\x87")
    return b"cnumpy.core.multiarray\n_reconstruct\n" + args + b"R" + state + b"b"


def obj(name: str, attrs: dict[str, bytes], module: str = "ocrolib.lstm") -> bytes:
    """An old-style instance: MARK GLOBAL OBJ, then BUILD with a dict of attributes."""
    body = b"".join(s(k) + v for k, v in attrs.items())
    return b"(c" + module.encode() + b"\n" + name.encode() + b"\no}(" + body + b"ub"


def pairs(items: list[tuple[bytes, bytes]]) -> bytes:
    """EMPTY_DICT MARK key value ... SETITEMS."""
    return b"}(" + b"".join(k + v for k, v in items) + b"u"


def lstm(ni: int, ns: int, **arrays: bytes) -> bytes:
    """ocrolib's LSTM: four gates (ns, 1+ni+ns) and three peepholes (ns,)."""
    attrs = {g: array((ns, 1 + ni + ns)) for g in ("WGI", "WGF", "WGO", "WCI")}
    attrs.update({p: array((ns,)) for p in ("WIP", "WFP", "WOP")})
    attrs.update(arrays)
    return obj("LSTM", attrs)


def codec(chars: tuple[str, ...]) -> bytes:
    """ocrolib's Codec: code2char {0: '', 1: u'a', ...}."""
    return obj("Codec", {"code2char": pairs([(i(k), s(c) if k == 0 else u(c)) for k, c in enumerate(chars)])})


NFKC = b"cocrolib.lstm\nnormalize_nfkc\n"


def model(ni: int = 2, ns: int = 1, chars: tuple[str, ...] = ("", "a", "b"), codec_bytes: bytes | None = None,
          ni_bytes: bytes | None = None, fwd: bytes | None = None, rev: bytes | None = None,
          w2: bytes | None = None, normalize: bytes = NFKC, extra: dict[str, bytes] | None = None) -> bytes:
    """A complete, valid (unless told otherwise) ocropy SeqRecognizer BIDILSTM pickle."""
    softmax = obj("Softmax", {"W2": w2 or array((len(chars), 2 * ns + 1))})
    parallel = obj("Parallel", {"nets": tup(fwd or lstm(ni, ns), obj("Reversed", {"net": rev or lstm(ni, ns)}))})
    stacked = obj("Stacked", {"nets": b"](" + parallel + softmax + b"e"})
    return b"\x80\x02" + obj("SeqRecognizer", {
        "Ni": ni_bytes or i(ni), "lstm": stacked, "codec": codec_bytes if codec_bytes is not None else codec(chars),
        "normalize": normalize, **(extra or {})}) + b"."


# -- running and watching ----------------------------------------------------------------------------

def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory below ``root``: size and mtime (a directory's changes with its entries)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


class World:
    """The sandbox plus an input directory and an outside canary; checks nothing changed."""

    def __init__(self, sandbox, tmp_path: Path):
        self.sandbox, self.root = sandbox, tmp_path
        self.inputs = tmp_path / "inputs"
        self.inputs.mkdir()
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "canary").write_text("untouched")
        self.before: dict | None = None

    def put(self, name: str, data: bytes) -> Path:
        """Write an input file, then take the snapshot everything is compared with."""
        path = self.inputs / name
        path.write_bytes(data)
        self.before = _snapshot(self.root)
        return path

    def unchanged(self) -> bool:
        """True if nothing below the test directory was created, changed or removed."""
        return _snapshot(self.root) == self.before


@pytest.fixture
def world(sandbox, tmp_path):
    return World(sandbox, tmp_path)


def _refused(r, code: int = 10) -> None:
    assert r.code == code, (r.code, r.err)
    assert "Traceback" not in r.err and "This is a bug" not in r.err, r.err
    assert len(r.err.strip().splitlines()) <= 3, r.err  # one paragraph, not a dump


def _cli(world: World, path: Path, out: Path | None = None) -> dict[str, object]:
    """inspect and convert (to ``out``) in-process; the results by command."""
    out = out or world.inputs / "out.hdf5"
    return {"inspect": world.sandbox.run("inspect", str(path)),
            "convert": world.sandbox.run("convert", str(path), "-o", str(out))}


_CHILD = """
import atexit, sys

def peak():  # this process's own high-water mark (ru_maxrss would include the forking pytest's)
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write("\\nVmHWM " + line.split()[1] + "\\n")

atexit.register(peak)
from ocrd_models.modelsync.cli import main
main()
"""


def run_limited(sandbox, *args: str, limit: int = LIMIT, timeout: float = 300) -> tuple[int, str, int]:
    """The CLI in a child with RLIMIT_AS = ``limit``: (exit code, stderr, peak RSS in KiB).

    The timeout only turns a hang into a failure (TimeoutExpired: the child is killed, the test fails).
    """
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=sandbox.project, env=sandbox.env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          preexec_fn=cap, timeout=timeout)
    err = proc.stderr.decode("utf-8", "replace")
    text, _, peak = err.rpartition("\nVmHWM ")
    assert peak.strip().isdigit(), err  # the child ran to its exit handler
    return proc.returncode, text, int(peak)


# -- memory bombs -----------------------------------------------------------------------------------

BIG = s(b"A" * 65536)  # one 64 KiB string


def _as_dtype_state(container: bytes) -> bytes:
    """``container`` given as the state of a numpy dtype (BUILD): where the reported bomb put it.

    A refusal that prints or copies the state (the old ``malformed dtype state {state!r}``)
    expands every reference into a copy.
    """
    return b"\x80\x02cnumpy\ndtype\n" + tup(s("f8"), i(0), i(1)) + b"R" + container + b"b."


def _tuple_bomb() -> bytes:
    """The reported 965-byte file: a tuple of 400 000 memo references (BINGET) to one 64 KiB string."""
    return b"(" + BIG + b"q\x00" + b"h\x00" * 399_999 + b"t"


def _list_bomb() -> bytes:
    """A list of 400 000 memo references (LONG_BINGET) to one 64 KiB string."""
    return b"](" + BIG + b"r\x00\x00\x00\x00" + b"j\x00\x00\x00\x00" * 399_999 + b"e"


def _nested_bomb() -> bytes:
    """Billion laughs: each of 40 levels a list of ten memo references to the level below."""
    out = s("lol") + b"q\x000"
    for level in range(1, 41):
        out += b"](" + (b"h" + bytes([level - 1])) * 10 + b"eq" + bytes([level]) + b"0"
    return out + b"h" + bytes([40])


def _dict_bomb() -> bytes:
    """A dict of 300 000 keys, each value a memo reference to one 64 KiB string."""
    return b"}(" + i(0) + BIG + b"q\x00" + b"".join(b"J" + struct.pack("<i", k) + b"h\x00"
                                                  for k in range(1, 300_000)) + b"u"


def _dup_tuple_bomb() -> bytes:
    """A long string repeated in a tuple by DUP, 400 000 times."""
    return b"(" + BIG + b"2" * 399_999 + b"t"


BOMBS = {"tuple of 400 000 references (the 965-byte report)": _tuple_bomb, "list of memo references": _list_bomb,
         "nested lists (billion laughs)": _nested_bomb, "dict of references": _dict_bomb,
         "tuple of DUPs": _dup_tuple_bomb}


def test_nested_bomb_is_what_it_says():
    data = _nested_bomb()
    # 40 levels of 10 references: a full copy would hold 10**40 strings; the stream is a few hundred bytes
    assert data.count(b"eq") == 40 and len(data) < 1200


@pytest.mark.parametrize("label", list(BOMBS))
def test_memory_bombs_are_refused_before_they_allocate(world, label):
    payload = gzip.compress(_as_dtype_state(BOMBS[label]()), 9, mtime=0)
    if "965" in label:
        assert len(payload) < 1000  # the report's 965 bytes (gzip headers differ by a few)
    path = world.put("bomb.pyrnn.gz", payload)
    for args in (("inspect", str(path)), ("convert", str(path), "-o", str(world.inputs / "out.hdf5"))):
        code, err, peak_kib = run_limited(world.sandbox, *args)
        assert code == 10, (label, args[0], code, err)
        assert "more than 1024 MiB of memory" in err and "MemoryError" not in err, (label, err)
        assert "Traceback" not in err and "This is a bug" not in err
        assert peak_kib < 300 * 1024, (label, args[0], peak_kib)  # refused long before the limit
    assert world.unchanged()


def test_distinct_strings_stop_at_the_budget(world, monkeypatch):
    # Not a reference trick: 64 distinct 1 MiB strings really are 64 MiB; a 16 MiB budget stops them
    # after at most 16 MiB, whatever the decompressed stream could still deliver.
    monkeypatch.setattr(safepickle, "DEFAULT_MAX_ALLOC", 16 << 20)
    chunk = s(b"B" * (1 << 20))
    path = world.put("many.pyrnn.bz2", bz2.compress(b"\x80\x02(" + chunk * 64 + b"t."))
    with pytest.raises(UnsafeModel, match="more than 16 MiB of memory"):
        safepickle.load(path)
    r = world.sandbox.run("inspect", str(path))
    _refused(r)
    assert "more than 16 MiB" in r.err
    assert world.unchanged()


def test_a_string_longer_than_the_file_is_not_allocated(world):
    # BINSTRING claims 500 MB and ends after 3 bytes: within the budget, but it is read in pieces as
    # they arrive, so the short read is refused without 500 MB ever being allocated.
    path = world.put("liar.pyrnn", b"\x80\x02T" + struct.pack("<i", 500_000_000) + b"abc")
    code, err, peak_kib = run_limited(world.sandbox, "inspect", str(path))
    assert code == 10 and "truncated" in err, err
    assert peak_kib < 300 * 1024, peak_kib
    assert world.unchanged()


def test_deep_nesting_is_refused_before_it_crashes_the_interpreter(world):
    # A million TUPLE1s wrap None a million levels deep; used as a dict key, hashing it recurses in C
    # and the interpreter dies of a segmentation fault (exit -11: no message, no code of ours).
    deep_key = b"\x80\x02}N" + b"\x85" * 1_000_000 + b"Ns."
    deep_list = b"\x80\x02N" + b"](" * 500 + b"e" * 500 + b"."  # lists in lists, appended inside out
    for label, payload in (("a deep tuple as a dict key", deep_key), ("lists 500 deep", deep_list)):
        path = world.put("deep.pyrnn", payload)
        code, err, _ = run_limited(world.sandbox, "inspect", str(path))
        assert code == 10 and "levels deep" in err, (label, code, err)
        assert world.unchanged(), label


def test_real_models_fit_the_budget_with_room_to_spare(monkeypatch):
    spent = {}
    run = safepickle._Loader.run

    def counting(self):
        try:
            return run(self)
        finally:
            spent[self] = self.spent

    monkeypatch.setattr(safepickle._Loader, "run", counting)
    for path in (FRAKTUR, TOY_GZ):
        spent.clear()
        safepickle.load(path)
        (charged,) = spent.values()
        assert charged < safepickle.DEFAULT_MAX_ALLOC // 16, (path.name, charged)


# -- hash collisions: keys chosen to share one hash bucket -------------------------------------------------

M61 = 2**61 - 1  # CPython hashes an integer modulo this prime: every multiple of it hashes to 0
COLLIDING = 150_000  # a dict of that many colliding keys took about 200 s (40 000: 12 s, 160 000: 234 s)


def _colliding_puts() -> bytes:
    """The reported file: protocol 0, None, then PUT j*(2**61-1) for j = 1, 2, ... (1.7 MB gzipped)."""
    return b"N" + b"".join(b"p%d\n" % (j * M61) for j in range(1, COLLIDING + 1)) + b"."


def _colliding_keys_setitems() -> bytes:
    """A dict (EMPTY_DICT, SETITEMS) whose keys are LONG1 integers j*(2**61-1)."""
    return b"\x80\x02}(" + b"".join(i(j * M61) + b"N" for j in range(1, COLLIDING + 1)) + b"u."


def _colliding_keys_dict() -> bytes:
    """Protocol 0: MARK, LONG text keys j*(2**61-1) with None values, DICT."""
    return b"(" + b"".join(b"L%dL\nN" % (j * M61) for j in range(1, COLLIDING + 1)) + b"d."


def _colliding_tuple_keys() -> bytes:
    """Keys (j*(2**61-1),): a tuple's hash is computed from its items', so these collide too."""
    return b"\x80\x02}(" + b"".join(i(j * M61) + b"\x85N" for j in range(1, COLLIDING + 1)) + b"u."


COLLISIONS = {
    "memo numbers j*(2**61-1) (the reported PUTs)": (_colliding_puts, "memo number"),
    "dict keys j*(2**61-1) by SETITEMS": (_colliding_keys_setitems, "used as a dict key"),
    "dict keys j*(2**61-1) by DICT, protocol 0": (_colliding_keys_dict, "used as a dict key"),
    "tuple keys (j*(2**61-1),)": (_colliding_tuple_keys, "used as a dict key"),
}


def test_colliding_keys_are_what_they_say():
    assert {hash(j * M61) for j in range(1, 1000)} == {0}
    assert len({hash((j * M61,)) for j in range(1, 1000)}) == 1
    assert _colliding_puts().count(b"\np") == COLLIDING - 1 and len(gzip.compress(_colliding_puts(), 6)) < 2_000_000


@pytest.mark.parametrize("label", list(COLLISIONS))
def test_colliding_keys_are_refused_in_seconds(world, label):
    build, expected = COLLISIONS[label]
    path = world.put("collide.pyrnn.gz", gzip.compress(build(), 6, mtime=0))
    for args in (("inspect", str(path)), ("convert", str(path), "-o", str(world.inputs / "out.hdf5"))):
        # minutes before (quadratic inserts); the timeout only turns a regression into a failure
        code, err, _ = run_limited(world.sandbox, *args, timeout=60)
        assert code == 10, (label, args[0], code, err)
        assert expected in err and "unsafe or invalid model" in err, (label, err)
        assert "Traceback" not in err and "This is a bug" not in err, err
    assert world.unchanged()


def test_colliding_memo_numbers_through_sync_with_conversion(world, server):
    url = server.add("/models/collide.pyrnn.gz", gzip.compress(_colliding_puts(), 6, mtime=0))
    world.sandbox.declare(Model("collide.pyrnn.gz", url, convert=True), processor=PROC)
    before = _snapshot(world.root)
    code, err, _ = run_limited(world.sandbox, "sync", timeout=60)  # minutes before
    assert code == 10, (code, err)
    assert "memo number" in err and "Traceback" not in err and "This is a bug" not in err, err
    after = _snapshot(world.root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    # the download is installed, cached and recorded (sync's targets); nothing is converted, nothing
    # written anywhere else (HOME, config, the inputs, the outside canary)
    assert all(k.split("/")[0] in ("cache", "data", "state", "project") for k in changed), sorted(changed)
    assert not [k for k in after if "converted" in k or k.endswith(".hdf5")], sorted(after)
    assert not [k for k in after if ".tmp" in k or ".part" in k], sorted(after)


# -- memory: what the loader holds stays within its budget --------------------------------------------------

BUDGET_KIB = safepickle.DEFAULT_MAX_ALLOC // 1024
BASE_KIB = 160 * 1024  # the interpreter, the CLI's modules and the reader's buffers (about 40 MiB measured)


def _string_bomb() -> bytes:
    """One protocol-0 STRING of 510 MiB: 508 KB gzipped (the report's file)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    chunk = b"a" * (1 << 20)
    out = [z.compress(b"S'")] + [z.compress(chunk) for _ in range(510)] + [z.compress(b"'\n."), z.flush()]
    return b"".join(out)


def _memo_puts(first: int) -> bytes:
    """None, then 16.7 million LONG_BINPUTs numbered first, first+1, ... (25 MB gzipped)."""
    n = 16_700_000
    ops = np.empty((n, 5), np.uint8)
    ops[:, 0] = ord("r")
    ops[:, 1:] = np.arange(first, first + n, dtype="<u4").view(np.uint8).reshape(n, 4)
    return gzip.compress(b"\x80\x02N" + ops.tobytes() + b".", 1, mtime=0)


OVERSHOOTS = {
    "a STRING of 510 MiB (peaked at 1.6 GB)": _string_bomb,
    "16.7 million memo entries 0, 1, 2, ... (a memo dict: 1.4 GB)": lambda: _memo_puts(0),
    "16.7 million memo entries from 2**31 (the report's: 1.37 GB)": lambda: _memo_puts(2**31),
}


@pytest.mark.parametrize("label", list(OVERSHOOTS))
def test_reported_overshoots_stay_within_the_budget(world, label):
    path = world.put("big.pyrnn.gz", OVERSHOOTS[label]())
    for args in (("inspect", str(path)), ("convert", str(path), "-o", str(world.inputs / "out.hdf5"))):
        code, err, peak_kib = run_limited(world.sandbox, *args, limit=2 << 30, timeout=300)
        assert code == 10, (label, args[0], code, err)
        assert "unsafe or invalid model" in err and "MemoryError" not in err and "Traceback" not in err, err
        assert peak_kib < BUDGET_KIB + BASE_KIB, (label, args[0], peak_kib)
    assert world.unchanged()


def _distinct(k: int, width: int) -> bytes:
    return k.to_bytes(8, "little") + b"x" * (width - 8)


def _widening_binunicode(n: int) -> bytes:
    """BINUNICODE of ``n`` ASCII bytes, then a 2-byte and a 4-byte character: the decoder widens twice."""
    data = b"a" * n + "\u0100\U0001f600".encode()
    return b"X" + struct.pack("<I", len(data)) + data


# Each payload repeated until a 16 MiB budget runs out (or one big item): one entry per opcode or
# shape whose allocations the loader must count, the ones it did not count before included.
ATOMS: dict[str, tuple[bytes, Callable[[int], bytes]]] = {
    "MARK": (b"", lambda k: b"("),
    "EMPTY_LIST": (b"", lambda k: b"]"),
    "EMPTY_DICT": (b"", lambda k: b"}"),
    "None": (b"", lambda k: b"N"),
    "BININT": (b"", lambda k: b"J" + struct.pack("<i", k + 1000)),
    "INT of 18 digits": (b"", lambda k: b"I%d\n" % (k + 10**17)),
    "LONG of 61 digits": (b"", lambda k: b"L%dL\n" % (k + 10**60)),
    "LONG1 of 255 bytes": (b"", lambda k: b"\x8a\xff" + _distinct(k, 255)),
    "LONG4 of 64 bytes": (b"", lambda k: b"\x8b" + struct.pack("<i", 64) + _distinct(k, 64)),
    "BINFLOAT": (b"", lambda k: b"G" + struct.pack(">d", k + 0.5)),
    "SHORT_BINSTRING of 2 bytes": (b"", lambda k: b"U\x02" + struct.pack("<H", k & 0xFFFF)),
    "SHORT_BINSTRING of 255 bytes": (b"", lambda k: b"U\xff" + _distinct(k, 255)),
    "BINSTRING of 1024 bytes": (b"", lambda k: b"T" + struct.pack("<i", 1024) + _distinct(k, 1024)),
    "STRING of 4 bytes": (b"", lambda k: b"S'%04x'\n" % (k & 0xFFFF)),
    "BINUNICODE of 2 bytes": (b"", lambda k: b"X\x02\0\0\0" + struct.pack("<H", 0x4040 + (k & 0x3F3F))),
    "BINUNICODE of an emoji": (b"", lambda k: b"X\x04\0\0\0" + chr(0x1F600 + k % 64).encode()),
    "UNICODE of 4 bytes": (b"", lambda k: b"V%04x\n" % (k & 0xFFFF)),
    "UNICODE with \\U escapes": (b"", lambda k: b"V\\U0001f600%d\n" % k),
    "TUPLE1": (b"", lambda k: b"N\x85"),
    "MARK TUPLE": (b"", lambda k: b"(Nt"),
    "MARK LIST": (b"", lambda k: b"(l"),
    "MARK DICT": (b"", lambda k: b"(d"),
    "EMPTY_LIST APPEND": (b"", lambda k: b"]Na"),
    "SETITEM": (b"}", lambda k: b"J" + struct.pack("<i", k) + b"Ns"),
    "LONG_BINPUT 0, 1, 2, ...": (b"N", lambda k: b"r" + struct.pack("<I", k)),
    "OBJ": (b"", lambda k: b"(cocrolib.lstm\nLSTM\no"),
    "OBJ BUILD": (b"", lambda k: b"(cocrolib.lstm\nLSTM\no}(U\x01xNub"),
    "INST": (b"", lambda k: b"(iocrolib.lstm\nLSTM\n"),
    "dtype": (b"", lambda k: b"cnumpy\ndtype\n(U\x02f8K\x00K\x01tR"),
    "defaultdict": (b"", lambda k: b"ccollections\ndefaultdict\nc__builtin__\nlist\n\x85R"),
    "one STRING of 7 MiB": (b"", lambda k: b"S'" + b"a" * (7 << 20) + b"'\n"),
    "one BINUNICODE of 2.6 MiB widened twice": (b"", lambda k: _widening_binunicode(2_700_000)),
}


@pytest.mark.parametrize("label", list(ATOMS))
def test_each_opcode_is_charged_what_it_allocates(world, monkeypatch, label):
    budget = 16 << 20
    monkeypatch.setattr(safepickle, "DEFAULT_MAX_ALLOC", budget)
    prefix, atom = ATOMS[label]
    one = atom(0)
    count = 1 if len(one) > budget // 8 else 300_000 if len(one) < 64 else (40 << 20) // len(one)
    path = world.put("atoms.pyrnn", b"\x80\x02" + prefix + b"".join(atom(k) for k in range(count)) + b".")
    refusal = ""
    tracemalloc.start()
    try:
        safepickle.load(path)  # a lone string loads (it is not a model), if it fits
    except UnsafeModel as err:
        refusal = str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if count > 1:  # repeated until the budget ran out: the peak is measured at its highest
        assert "more than 16 MiB of memory" in refusal, (label, refusal)
    # the budget, plus the reader's 1 MiB buffer and one piece of a long line
    assert peak < budget + (3 << 20), (label, peak / budget)
    assert world.unchanged()


# -- states the stand-ins accept ------------------------------------------------------------------------

def test_build_on_the_function_reference_is_refused(world):
    ref = safepickle.WHITELIST[("ocrolib.lstm", "normalize_nfkc")]
    cases = {
        "a dict state in a valid model": model(normalize=NFKC + pairs([(s("evil"), s("x"))]) + b"b"),
        "a slot state renaming it": NFKC + tup(b"N", pairs([(s("name"), s("os.system"))])) + b"b.",
        "an object array as its state": model(normalize=NFKC + pairs([(s("x"), array(
            (1,), raw=b"\0" * 8, dt=dtype(args=tup(s("O8"), i(0), i(1)))))]) + b"b"),
        "a state on numpy.ndarray": b"\x80\x02cnumpy\nndarray\n" + tup(b"N", pairs([(s("x"), i(1))])) + b"b.",
    }
    for label, payload in cases.items():
        path = world.put("m.pyrnn", payload)
        for cmd, r in _cli(world, path).items():
            _refused(r)
            assert "unsafe or invalid model" in r.err, (label, cmd, r.err)
        assert world.unchanged(), label
    assert ref.name == "normalize_nfkc" and not hasattr(ref, "__dict__")  # the shared marker is untouched
    assert not hasattr(safepickle.NDArrayType, "x")


BAD_DTYPE_STATES = {
    "seven fields": tup(i(3), s("<"), b"N", b"N", b"N", i(-1), i(-1)),
    "ten fields": tup(i(3), s("<"), b"N", b"N", b"N", i(-1), i(-1), i(0), b"N", b"N"),
    "a list": b"](" + i(3) + s("<") + b"NNN" + i(-1) + i(-1) + i(0) + b"e",
    "version 3 with nine fields": tup(i(3), s("<"), b"N", b"N", b"N", i(-1), i(-1), i(0), b"N"),
    "version as a string": tup(s("3"), s("<"), b"N", b"N", b"N", i(-1), i(-1), i(0)),
    "byte order x": tup(i(3), s("x"), b"N", b"N", b"N", i(-1), i(-1), i(0)),
    "field names": tup(i(3), s("<"), b"N", tup(s("f0")), b"N", i(-1), i(-1), i(0)),
    "fields": tup(i(3), s("<"), b"N", b"N", pairs([(s("f0"), i(0))]), i(-1), i(-1), i(0)),
    "a subarray": tup(i(3), s("<"), tup(b"N", tup(i(2))), b"N", b"N", i(-1), i(-1), i(0)),
    "element size 99": tup(i(3), s("<"), b"N", b"N", b"N", i(99), i(-1), i(0)),
    "object flags": tup(i(3), s("<"), b"N", b"N", b"N", i(-1), i(-1), i(63)),
    "metadata": tup(i(4), s("<"), b"N", b"N", b"N", i(-1), i(-1), i(0), pairs([(s("k"), s("v"))])),
    "a 64 KiB byte order": tup(i(3), BIG, b"N", b"N", b"N", i(-1), i(-1), i(0)),
}

BAD_ARRAY_STATES = {
    "version 2": tup(i(2), tup(i(1)), dtype(), b"\x89", s(b"\0" * 8)),
    "six fields": tup(i(1), tup(i(1)), dtype(), b"\x89", s(b"\0" * 8), b"N"),
    "shape as a list": tup(i(1), b"](" + i(1) + b"e", dtype(), b"\x89", s(b"\0" * 8)),
    "fortran as a string": tup(i(1), tup(i(1)), dtype(), s("yes"), s(b"\0" * 8)),
    "an empty array claiming 2**40 columns": tup(i(1), tup(i(0), i(2**40)), dtype(), b"\x89", s(b"")),
}


def _valid_dtype_model_with(state: bytes) -> bytes:
    return model(fwd=lstm(2, 1, WGI=array((1, 4), dt=dtype(state=state))))


def test_dtype_and_array_states_of_other_shapes_are_refused(world):
    cases = {f"dtype: {k}": _valid_dtype_model_with(v) for k, v in BAD_DTYPE_STATES.items()}
    cases.update({f"array: {k}": model(fwd=lstm(2, 1, WGI=array((1, 4), state=v)))
                  for k, v in BAD_ARRAY_STATES.items()})
    cases["_reconstruct with another shape"] = model(fwd=lstm(2, 1, WGI=array(
        (1, 4), reconstruct_args=b"cnumpy\nndarray\n" + tup(i(7)) + s("b") + b"\x87")))
    cases["a scalar of the wrong size"] = model(normalize=b"cnumpy.core.multiarray\nscalar\n" + tup(dtype(), s("abc"))
                                                + b"R")
    cases["a dtype given a state twice"] = _valid_dtype_model_with(DTYPE_STATE + b"b" + DTYPE_STATE)
    assert pyrnn.from_object(safepickle.load(world.put("ok.pyrnn", _valid_dtype_model_with(DTYPE_STATE))))
    for label, payload in cases.items():
        path = world.put("m.pyrnn", payload)
        for cmd, r in _cli(world, path).items():
            _refused(r)
            assert "unsafe or invalid model" in r.err, (label, cmd, r.err)
        assert world.unchanged(), label


def test_dtype_states_real_models_use_still_load(world):
    # version 3 (both fixtures), version 4 without metadata, a big-endian array, an int32 array and a
    # numpy scalar in a line normalizer (fraktur's lnorm.center and lnorm.mad)
    v4 = tup(i(4), s("<"), b"N", b"N", b"N", i(-1), i(-1), i(0), b"N")
    big = tup(i(3), s(">"), b"N", b"N", b"N", i(-1), i(-1), i(0))
    lnorm = obj("CenterNormalizer", {
        "center": array((3,), code="i4"),
        "mad": b"cnumpy.core.multiarray\nscalar\n" + tup(dtype(), s(struct.pack("<d", 2.5))) + b"R"},
        module="ocrolib.lineest")
    path = world.put("ok.pyrnn", model(fwd=lstm(2, 1, WGI=array((1, 4), dt=dtype(state=v4)),
                                                WGF=array((1, 4), raw=struct.pack(">4d", 1, 2, 3, 4),
                                                          dt=dtype(state=big))),
                                       extra={"lnorm": lnorm}))
    m = pyrnn.load_model(path)
    assert m.lstm[pyrnn.FORWARD + "WGF"].values() == [1.0, 2.0, 3.0, 4.0] and m.has_normalizer
    r = world.sandbox.run("inspect", str(path), "--json")
    assert r.code == 0, r.err


# -- shapes and codecs ------------------------------------------------------------------------------

def test_codec_that_is_empty_or_odd_is_refused(world):
    cases = {
        "code2char {}": model(codec_bytes=obj("Codec", {"code2char": b"}"})),
        "string and int keys": model(codec_bytes=obj("Codec", {"code2char": pairs([(s("x"), s("")), (i(0), s(""))])})),
        "a lone surrogate": model(chars=("", "a", "\ud800")),
        "no output classes": model(chars=()),
    }
    for label, payload in cases.items():
        path = world.put("m.pyrnn", payload)
        for cmd, r in _cli(world, path).items():
            _refused(r)
            assert "codec" in r.err or "output classes" in r.err, (label, cmd, r.err)
        assert world.unchanged(), label


def test_a_supplied_codec_that_does_not_fit_is_user_input(world):
    path = world.put("toy.pyrnn.gz", TOY_GZ.read_bytes())
    for codec_args in ((), ("", "b", "c"), ("x", "b"), ("", "\udcff")):
        args = [a for c in codec_args for a in ("--codec", c)]
        r = world.sandbox.run("convert", str(path), "-o", str(world.inputs / "o.hdf5"), *args)
        _refused(r, 2)
        assert world.unchanged(), codec_args


def test_huge_or_empty_sizes_are_refused(world):
    huge = 10**18
    cases = {
        "Ni 10**18 beside empty gates": model(ni=huge, ns=0, chars=("", "a")),
        "Ni 10**18 with a lying array": model(ni_bytes=i(huge), fwd=lstm(2, 1, WGI=array(
            (1, huge + 2), raw=b"\0" * 16))),
        "Ni as a 64-byte integer": model(ni_bytes=i(2**500)),
        "Ni as a 65-byte LONG4": model(ni_bytes=b"\x8b" + struct.pack("<i", 65) + b"\1" * 65),
        "Ni a float": model(ni_bytes=b"G" + struct.pack(">d", 2.0)),
        "Ni True": model(ni_bytes=b"\x88"),
        "no hidden states": model(ns=0),
    }
    for label, payload in cases.items():
        path = world.put("m.pyrnn", payload)
        for cmd, r in _cli(world, path).items():
            _refused(r)
        assert not (world.inputs / "out.hdf5").exists(), label
        assert world.unchanged(), label


# -- damaged HDF5 ----------------------------------------------------------------------------------------

def _converted_fraktur(tmp_path: Path) -> bytes:
    from ocrd_models.modelsync.legacy import hdf5model

    out = tmp_path / "fraktur.hdf5"
    hdf5model.write(pyrnn.load_model(FRAKTUR), out)
    data = out.read_bytes()
    out.unlink()
    return data


def test_corrupt_hdf5_through_inspect_and_convert(world):
    good = _converted_fraktur(world.root)
    toy = bytearray(TOY_HDF5.read_bytes())
    assert toy[12993] == 2
    toy[12993] = 213  # one byte of the root group's local heap: h5py raises RuntimeError listing it
    rng = random.Random(13)
    cases = {"truncated to 1000 bytes": good[:1000], "truncated to half": good[:len(good) // 2],
             "missing its last 100 bytes": good[:-100], "a damaged local heap": bytes(toy),
             "random bytes after the signature": b"\x89HDF\r\n\x1a\n" + rng.randbytes(5000),
             "only the signature": b"\x89HDF\r\n\x1a\n"}
    for label, data in cases.items():
        path = world.put("m.hdf5", data)
        r = _cli(world, path)
        _refused(r["inspect"])
        assert "HDF5" in r["inspect"].err, (label, r["inspect"].err)
        _refused(r["convert"], 2)  # an HDF5 file is already converted: said so, not "malformed pickle"
        assert "is an HDF5 file, not a pyrnn pickle" in r["convert"].err
        assert world.unchanged(), label


def test_hdf5_that_hangs_the_hdf5_library_is_refused(world):
    # One byte of kraken's own toy model: the global heap object holding the `kind` string claims
    # 1802 bytes instead of 10, and libhdf5 loops forever reading the attribute. The file is
    # parsed in a limited child process, so inspect answers (exit 10) instead of hanging.
    toy = bytearray(TOY_HDF5.read_bytes())
    assert toy[2144:2148] == b"GCOL" and toy[2168] == 10 and toy[2169] == 0
    toy[2169] = 7
    path = world.put("hang.hdf5", bytes(toy))
    code, err, peak_kib = run_limited(world.sandbox, "inspect", str(path), limit=4 << 30, timeout=180)
    assert code == 10, (code, err)
    assert "damaged or built to" in err and "Traceback" not in err, err
    assert world.unchanged()


def _hdf5_model(path: Path, hidden: int = 1, ni: int = 1, n_out: int = 2, codec=None, kind="pyrnn-bidi",
                drop: str | None = None, chunked_codec_rows: int | None = None) -> None:
    cols = 1 + ni + hidden
    shapes = {p + g: (hidden, cols) for p in (pyrnn.FORWARD, pyrnn.REVERSED) for g in pyrnn.GATES}
    shapes.update({p + g: (hidden, 1) for p in (pyrnn.FORWARD, pyrnn.REVERSED) for g in pyrnn.PEEPHOLES})
    shapes.update({pyrnn.SOFTMAX_BIAS: (n_out, 1), pyrnn.SOFTMAX_WEIGHTS: (n_out, 2 * hidden)})
    with h5py.File(path, "w") as f:
        if kind is not None:
            f.attrs["kind"] = kind
        for name, shape in shapes.items():
            if name != drop:
                f.create_dataset(name, shape=shape, dtype="<f4", chunks=True if shape[0] * shape[1] > 10**6 else None)
        if chunked_codec_rows:
            f.create_dataset(pyrnn.CODEC, shape=(chunked_codec_rows, 1), dtype="<f4", chunks=(1024, 1))
        elif drop != pyrnn.CODEC:
            f.create_dataset(pyrnn.CODEC, data=np.array(codec or [0, 98], dtype="<f4").reshape(-1, 1))


def test_hostile_hdf5_models_are_refused_without_allocating(world):
    cases = {
        "a codec of 2**34 rows (nothing stored, 64 GiB when read)": dict(n_out=2**34, chunked_codec_rows=2**34),
        "an infinite code": dict(codec=[0, float("inf")]),
        "a code above Unicode": dict(codec=[0, 2.0**30]),
        "a negative code": dict(codec=[0, -5]),
        "a surrogate code": dict(codec=[0, 0xD800]),
        "a missing weight": dict(drop=pyrnn.REVERSED + "WGO"),
        "no codec": dict(drop=pyrnn.CODEC),
        "another kind": dict(kind="x" * 100_000),
    }
    for label, kwargs in cases.items():
        path = world.inputs / "m.hdf5"
        _hdf5_model(path, **kwargs)
        world.before = _snapshot(world.root)
        code, err, peak_kib = run_limited(world.sandbox, "inspect", str(path))
        assert code in (0, 10) and "Traceback" not in err and "This is a bug" not in err, (label, code, err)
        assert (code == 10) == (label != "another kind"), (label, code, err)  # a foreign HDF5 file is named
        assert peak_kib < 300 * 1024, (label, peak_kib)
        assert world.unchanged(), label


def test_sync_converts_over_a_damaged_file_at_the_conversion_path(sandbox, server):
    data = FRAKTUR.read_bytes()
    url = server.add("/models/fraktur-jze.pyrnn.gz", data)
    sandbox.declare(Model("fraktur-jze.pyrnn.gz", url, convert=True), processor=PROC)
    converted = sandbox.data / "ocrd-modelsync" / "converted" / sha256(data) / "fraktur-jze.pyrnn.hdf5"
    converted.parent.mkdir(parents=True)
    good = _converted_fraktur(sandbox.root)
    converted.write_bytes(good[:len(good) // 2])  # left by a crash of another tool, or a bad disk
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert converted.read_bytes() == good
    assert f'converted_sha256 = "{sha256(good)}"' in sandbox.lock.read_text()


# -- fuzzing ---------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _check_everywhere(world: World, data: bytes, name: str = "m.pyrnn") -> None:
    """The loader raises only our errors; inspect exits 0, 2 or 10 without a traceback; nothing is written."""
    path = world.put(name, data)
    try:
        pyrnn.load_model(path)
    except (UnsafeModel, UserInputError):
        pass
    r = world.sandbox.run("inspect", str(path))
    assert r.code in (0, 2, 10), (r.code, r.err, data[:200])
    assert "Traceback" not in r.err and "This is a bug" not in r.err, r.err
    assert world.unchanged()
    path.unlink()


@FUZZ
@given(data=st.binary(max_size=4000), name=st.sampled_from(["m.pyrnn", "m.pyrnn.gz", "m.pkl", "m.bin"]))
def test_fuzz_random_bytes(world, data, name):
    _check_everywhere(world, data, name)


_REAL = {"fraktur": gzip.decompress(FRAKTUR.read_bytes()), "toy": gzip.decompress(TOY_GZ.read_bytes())}


@st.composite
def mutated_fixture(draw):
    """A real model's pickle stream with bytes flipped, inserted, deleted, or length fields made huge."""
    data = bytearray(_REAL[draw(st.sampled_from(sorted(_REAL)))])
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            data = bytearray(b"\x80")
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "huge length", "truncate"]))
        if kind == "flip":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif kind == "huge length":
            data[pos:pos + 4] = struct.pack("<I", draw(st.sampled_from([2**31 - 1, 2**32 - 1, 10**9, 2**24])))
        else:
            del data[pos:]
    return bytes(data)


@FUZZ
@given(data=mutated_fixture(), compress=st.booleans())
def test_fuzz_mutated_real_models(world, data, compress):
    _check_everywhere(world, gzip.compress(data, 1) if compress else data)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                                 HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 13655), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(8, 13656)))
def test_fuzz_mutated_hdf5_fixture(world, flips, cut):
    data = bytearray(TOY_HDF5.read_bytes())
    for pos, value in flips:
        data[pos] = value
    _check_everywhere(world, bytes(data[:cut] if cut else data), "m.hdf5")


_GLOBALS = [b"cocrolib.lstm\n" + n + b"\n" for n in (b"SeqRecognizer", b"Stacked", b"Parallel", b"Reversed",
                                                        b"LSTM", b"Softmax", b"Codec", b"normalize_nfkc")]
_GLOBALS += [b"cocrolib.lineest\nCenterNormalizer\n", b"cnumpy.core.multiarray\n_reconstruct\n",
             b"cnumpy.core.multiarray\nscalar\n", b"cnumpy\nndarray\n", b"cnumpy\ndtype\n",
             b"ccollections\ndefaultdict\n", b"c__builtin__\nlist\n"]


@st.composite
def opcode_stream(draw):
    """Protocol-2 opcodes (with valid arguments) and whitelisted globals and fragments, in any arrangement."""
    atoms = st.one_of(
        st.sampled_from(_GLOBALS),
        st.sampled_from([b"(", b"N", b"\x88", b"\x89", b")", b"]", b"}", b"t", b"l", b"d", b"\x85", b"\x86",
                         b"\x87", b"a", b"e", b"s", b"u", b"R", b"b", b"o", b"\x81", b"0", b"1", b"2"]),
        st.integers(-2**40, 2**40).map(i),
        st.binary(max_size=40).map(s),
        st.text(max_size=10).map(u),
        st.integers(0, 8).map(lambda k: b"q" + bytes([k])),
        st.integers(0, 8).map(lambda k: b"h" + bytes([k])),
        st.integers(0, 3).map(lambda k: (b"h" + bytes([k])) * 50),
        st.integers(1, 300).map(lambda n: b"\x85" * n),
        st.sampled_from([DTYPE_STATE, dtype(), array((2,)), array((1, 3)), codec(("", "a")), lstm(1, 1),
                         NFKC, model(), BIG]),
    )
    body = b"".join(draw(st.lists(atoms, max_size=60)))
    return b"\x80\x02" + body + b"."


@FUZZ
@given(data=opcode_stream())
def test_fuzz_random_structure(world, data):
    _check_everywhere(world, data)


WORST = {
    "memo references at every level": b"\x80\x02" + BIG + b"q\x00" + (b"](" + b"h\x00" * 200 + b"eq\x00") * 50 + b".",
    "nested marks": b"\x80\x02" + b"(" * 2_000_000 + b".",
    "huge BINUNICODE claim": b"\x80\x02X\xff\xff\xff\xff" + b"a" * 100 + b".",
    "huge LONG_BINGET index": b"\x80\x02N" + b"r\xff\xff\xff\xff" + b"j\xff\xff\xff\xff" * 100_000 + b".",
    "toy with a 2 GB string claim": _REAL["toy"][:200] + b"T\xff\xff\xff\x7f" + _REAL["toy"][200:],
}


@pytest.mark.parametrize("label", list(WORST))
def test_fuzz_worst_cases_in_a_limited_process(world, label):
    path = world.put("w.pyrnn.gz", gzip.compress(WORST[label], 6))
    for args in (("inspect", str(path)), ("convert", str(path), "-o", str(world.inputs / "o.hdf5"))):
        code, err, peak_kib = run_limited(world.sandbox, *args)
        assert code in (2, 10), (label, code, err)
        assert "Traceback" not in err and "MemoryError" not in err, (label, err)
        assert peak_kib < 400 * 1024, (label, peak_kib)
    assert world.unchanged()


def test_assembled_model_is_a_real_model_shape(world):
    # the assembler above builds what ocropy wrote: a valid model loads, inspects and converts
    path = world.put("ok.pyrnn", model())
    m = pyrnn.load_model(path)
    assert (m.input_height, m.hidden, m.output_classes, m.codec) == (2, 1, 3, ("", "a", "b"))
    out = world.root / "outside" / "ok.hdf5"
    r = world.sandbox.run("convert", str(path), "-o", str(out))
    assert r.code == 0, r.err
    with h5py.File(out) as f:
        assert f.attrs["kind"] == "pyrnn-bidi" and len(f) == 17
    assert io.BytesIO(out.read_bytes()).read(8) == b"\x89HDF\r\n\x1a\n"
