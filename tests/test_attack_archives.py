"""Hostile archives from outside (issue 13): link chains past PATH_MAX, links through links,
hardlinks to what is not an earlier regular file, bombs, in-archive conflicts, a full disk.

Every archive is built byte by byte here (tar headers written by hand). Every attack runs the
real CLI against a FileServer on 127.0.0.1 and asserts the exit code, that nothing changed in
the sandbox outside our own cache/state (an ``outside`` canary dir with a root-only secret sits
next to the location dirs), and that the cache's temp dir holds no leftovers.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from conftest import Model

PROC = "ocrd-calamari-recognize"
SECRET = b"root-only secret\n"

# -- a tar writer, by hand ---------------------------------------------------------------------


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1
    while len(str(n)) + len(body) != n:  # the length counts its own digits
        n += 1
    return str(n).encode() + body


def _ustar(name: str, kind: bytes, size: int, link: str, mode: int) -> bytes:
    h = bytearray(512)
    h[0:100] = name.encode()[:100].ljust(100, b"\0")
    h[100:108] = b"%07o\0" % mode
    h[108:116] = h[116:124] = b"0000000\0"  # uid, gid
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"  # mtime
    h[148:156] = b" " * 8  # the checksum counts itself as spaces
    h[156:157] = kind
    h[157:257] = link.encode()[:100].ljust(100, b"\0")
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def header(name: str, kind: bytes = b"0", size: int = 0, link: str = "", mode: int = 0o644) -> bytes:
    """One member's header; a PAX record first when the name or link does not fit ustar's 100 bytes."""
    records = b"".join(_pax_record(k, v) for k, v in (("path", name), ("linkpath", link)) if len(v.encode()) > 100)
    pax = _ustar("././@PaxHeader", b"x", len(records), "", 0o644) + _pad(records) if records else b""
    return pax + _ustar(name, kind, size, link, mode)


def F(name: str, data: bytes = b"x", mode: int = 0o644) -> bytes:  # noqa: N802 - reads like a listing
    """A regular file member."""
    return header(name, b"0", len(data), mode=mode) + _pad(data)


def D(name: str) -> bytes:  # noqa: N802
    """A directory member."""
    return header(name, b"5", mode=0o755)


def S(name: str, target: str) -> bytes:  # noqa: N802
    """A symbolic link member."""
    return header(name, b"2", link=target, mode=0o777)


def H(name: str, target: str) -> bytes:  # noqa: N802
    """A hard link member (``target`` is a member name, as tar stores it)."""
    return header(name, b"1", link=target)


def tgz(*members: bytes) -> bytes:
    """Members, the end-of-archive blocks, gzip."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    return z.compress(b"".join(members) + b"\0" * 1024) + z.flush()


# -- the sandbox around each attack ------------------------------------------------------------


@pytest.fixture
def env(sandbox):
    """The sandbox plus the ``outside`` canary dir (a canary file and a root-only 0600 secret)."""
    outside = sandbox.root / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_bytes(b"canary\n")
    secret = outside / "secret"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    return sandbox


# The unpack dir is <root>/cache/ocrd-modelsync/tmp/<temp>.d: four levels below the sandbox root.
UP = "../../../.."


def walk(root: Path, skip: tuple[str, ...] = ()) -> list[tuple[str, os.stat_result]]:
    """Every entry below ``root`` (path, lstat), links not followed, without recursion (os.walk recurses
    in Python 3.11: the deep trees below would stop the test itself); ``skip``: top-level names."""
    out, stack = [], [str(root)]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                if folder == str(root) and entry.name in skip:
                    continue
                out.append((entry.path, entry.stat(follow_symlinks=False)))
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return out


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below the sandbox root but our cache/state dirs: kind, mode (with setuid, setgid and
    sticky bits), links, content or target."""
    out: dict[str, tuple] = {}
    for path, st in walk(root, ("cache", "state", "mnt")):
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as fh:
                what = hashlib.sha256(fh.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            what = os.readlink(path)
        else:
            what = ""
        links = st.st_nlink if stat.S_ISREG(st.st_mode) else 0  # a directory's count follows its subdirs
        out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), links, what)
    return out


def cache_tmp_leftovers(cache_root: Path) -> list[str]:
    """What the cache's temp dir still holds after a run (must be nothing)."""
    tmp = cache_root / "tmp"
    return sorted(os.listdir(tmp)) if tmp.is_dir() else []


def secret_untouched(sandbox) -> None:
    """The root-only secret outside: same bytes, same mode, one link; its bytes nowhere in our dirs."""
    secret = sandbox.root / "outside" / "secret"
    st = os.lstat(secret)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
    assert secret.read_bytes() == SECRET
    for part in ("cache", "data", "project"):
        for p, st in walk(sandbox.root / part):
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    assert SECRET not in fh.read(), p


def run_attack(sandbox, server, data: bytes, *, settings: str = "", path_in_archive: str | None = None,
               subprocess_timeout: float | None = None):
    """Serve ``data`` as an archive, sync, and check nothing escaped; return the result."""
    url = server.add("/model.tar.gz", data)
    sandbox.declare(Model("m", url, type="archive", path_in_archive=path_in_archive), processor=PROC, settings=settings)
    before = snapshot(sandbox.root)
    if subprocess_timeout is None:
        r = sandbox.run("sync")
    else:
        r = run_cli(sandbox, subprocess_timeout, "sync")
    after = snapshot(sandbox.root)
    assert set(after) - set(before) <= {"project/models.lock"}, sorted(set(after) - set(before))[:5]
    assert {k: v for k, v in after.items() if k in before} == before
    cache_root = sandbox.cache / "ocrd-modelsync"
    assert (cache_root / "tmp").is_dir(), r  # the layout the escape paths (UP) aim from
    assert cache_tmp_leftovers(cache_root) == []
    assert "Traceback" not in r.err and "unexpected" not in r.err, r.err
    return r


MEMORY = 512 << 20  # address space of a CLI run under attack: a bomb fails instead of swapping the machine


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_cli(sandbox, timeout: float, *args: str):
    """The CLI in a subprocess with MEMORY of address space, killed (the test failed) after ``timeout`` s."""
    from conftest import Result

    try:
        p = subprocess.run([os.path.join(os.path.dirname(sys.executable), "modelsync"), *args], cwd=sandbox.project,
                           env=sandbox.env(), capture_output=True, text=True, timeout=timeout,
                           preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"modelsync {' '.join(args)} still running after {timeout} s")
    return Result(p.returncode, p.stdout, p.stderr)


# -- 1. links: past PATH_MAX, through links, hardlinks -----------------------------------------

STEPS = "abcdefghijklmnop"
LONG = "d" * 247
DEEP = "/".join(STEPS) + "/" + "l" * 254  # short as written, past PATH_MAX once resolved


def path_max_chain() -> list[bytes]:
    """16 nested dirs of 247-char names, a short link to each, and a link whose resolution passes PATH_MAX.

    Written through the short links, ``DEEP`` sits 16 long names down: a resolver that gives up
    at PATH_MAX (non-strict realpath) takes it for a plain directory, the kernel follows it
    back up to the unpack dir. ``escape`` goes through it and up into <sandbox>/outside.
    """
    members, path = [], ""
    for step in STEPS:
        members += [D(path + LONG), S(path + step, LONG)]
        path += LONG + "/"
    members.append(S(DEEP, "../" * len(STEPS)))
    members.append(S("escape", f"{DEEP}/{UP}/outside"))
    return members


def test_symlink_chain_past_path_max_writes_nothing_outside(env, server):
    r = run_attack(env, server, tgz(*path_max_chain(), F("escape/PWNED", b"pwned")))
    assert r.code == 9, r.err
    assert repr(DEEP) in r.err, r.err  # the first member written through a link is named
    assert not (env.root / "outside" / "PWNED").exists()
    secret_untouched(env)


def test_hardlink_through_path_max_chain_leaks_no_secret(env, server):
    r = run_attack(env, server, tgz(*path_max_chain(), H("leak", "escape/secret")), path_in_archive="leak")
    assert r.code == 9, r.err
    secret_untouched(env)
    assert not (env.data_dir(PROC) / "m").exists()


def test_link_resolving_past_path_max_is_refused(env, server):
    # No member is written through a link here: 15 nested long-named dirs, a short link to each,
    # and a link whose target, followed through them, is longer than PATH_MAX.
    members, path = [], ""
    for step in STEPS[:15]:
        members += [D(path + LONG), S(path + step, LONG)]
        path += LONG + "/"
    far = "/".join(STEPS[:15]) + "/" + "q" * 255 + "/" + "q" * 200
    r = run_attack(env, server, tgz(*members, S("far", far)))
    assert r.code == 9, r.err
    assert "'far'" in r.err and "PATH_MAX" in r.err, r.err


DIRS = ["d1", "d1/d2", "d1/d2/d3", "d1/d2/d3/d4", "d1/d2/d3/d4/d5"]
THROUGH = f"d1/d2/d3/d4/d5/s/{UP}/outside"  # lexically d1/d2/outside


def test_link_inside_lexically_but_outside_once_a_later_link_exists(env, server):
    # When ``t`` arrives, d1/.../d5/s does not exist: t looks like d1/d2/outside. Then s -> the
    # root (inside) makes t resolve to <unpack dir>/../../../../outside: the sandbox's outside dir.
    r = run_attack(env, server, tgz(*map(D, DIRS), S("t", THROUGH), S("d1/d2/d3/d4/d5/s", "../../../../..")))
    assert r.code == 9, r.err
    assert "'t'" in r.err, r.err
    assert not (env.data_dir(PROC) / "m").exists()
    secret_untouched(env)


def test_link_through_link_resolving_outside(env, server):
    # s is the root; t goes through s, then up: lexically d1/d2/outside, really outside.
    r = run_attack(env, server, tgz(*map(D, DIRS), S("d1/d2/d3/d4/d5/s", "../../../../.."), S("t", THROUGH),
                                    F("t/PWNED", b"pwned")))
    assert r.code == 9, r.err
    assert "'t'" in r.err, r.err
    secret_untouched(env)


def test_symlink_chain_with_too_many_hops_is_refused(env, server):
    members = [F("m/file", b"data"), S("m/l0", "file")]
    members += [S(f"m/l{i}", f"l{i - 1}") for i in range(1, 60)]
    r = run_attack(env, server, tgz(D("m"), *members))
    assert r.code == 9, r.err
    assert "m/l" in r.err, r.err


def test_hardlink_to_a_symlink_is_refused(env, server):
    r = run_attack(env, server, tgz(D("m"), F("m/model.bin", b"weights"), S("m/alias", "model.bin"),
                                    H("m/hard", "m/alias")))
    assert r.code == 9, r.err
    assert "'m/hard'" in r.err, r.err


def test_hardlink_to_a_later_member_is_refused(env, server):
    r = run_attack(env, server, tgz(D("m"), H("m/hard", "m/model.bin"), F("m/model.bin", b"weights")))
    assert r.code == 9, r.err
    assert "'m/hard'" in r.err, r.err


def test_hardlink_through_a_symlinked_directory_is_refused(env, server):
    r = run_attack(env, server, tgz(D("real"), F("real/model.bin", b"weights"), S("alias", "real"),
                                    H("hard", "alias/model.bin")))
    assert r.code == 9, r.err
    assert "'hard'" in r.err, r.err


def test_path_in_archive_through_a_symlink_is_refused(env, server):
    r = run_attack(env, server, tgz(D("real"), F("real/model.bin", b"weights"), S("alias", "real")),
                   path_in_archive="alias/model.bin")
    assert r.code == 9, r.err
    assert "alias/model.bin" in r.err and "link" in r.err, r.err
    assert not (env.data_dir(PROC) / "m").exists()


def test_selected_subtree_with_a_link_leaving_it_is_refused(env, server):
    # Inside the archive, m/up -> .. is the archive's root; installed as <location>/m it would
    # point at <location>: the other models.
    r = run_attack(env, server, tgz(D("m"), F("m/model.bin", b"weights"), S("m/up", "..")),
                   path_in_archive="m")
    assert r.code == 9, r.err
    assert "'m/up'" in r.err or "'up'" in r.err, r.err


# -- 5. bombs: linear cost, bounds enforced on what is really written ----------------------------


def _zeros_member_stream(count: int, size: int) -> bytes:
    """A .tar.gz of ``count`` members of ``size`` zero bytes each, compressed on the fly."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = io.BytesIO()
    zeros = b"\0" * min(size, 1 << 20)
    out.write(z.compress(D("m")))
    for i in range(count):
        out.write(z.compress(header(f"m/z{i:06d}", size=size)))
        left = size
        while left:
            out.write(z.compress(zeros[:left]))
            left -= min(left, len(zeros))
        out.write(z.compress(b"\0" * (-size % 512)))
    out.write(z.compress(b"\0" * 1024) + z.flush())
    return out.getvalue()


def test_zeros_bomb_is_refused_in_time(env, server):
    # 256 MiB of zeros in 16 KiB members (about 300 kB compressed); the byte limit is crossed
    # after 32 MiB. Extraction whose cost grows with the data decompressed ahead (the old 1 MiB
    # tarfile bufsize: every read copied what was left of 256 MiB) takes minutes here; bounded
    # decompression, a fraction of a second.
    data = _zeros_member_stream(16384, 16 * 1024)
    assert len(data) < 1_000_000
    r = run_attack(env, server, data, settings="max_unpacked_bytes = 33554432", subprocess_timeout=60)
    assert r.code == 9, r.err
    assert "archive bomb" in r.err and "33554432 bytes" in r.err, r.err


def test_single_member_zeros_bomb_stops_at_the_limit(env, server):
    data = _zeros_member_stream(1, 64 << 20)  # one member of 64 MiB of zeros
    r = run_attack(env, server, data, settings="max_unpacked_bytes = 8000000", subprocess_timeout=60)
    assert r.code == 9, r.err
    assert "'m/z000000'" in r.err, r.err


def test_hardlinks_count_as_the_bytes_they_install(env, server):
    # 1 MB of zeros, then 1000 hard links to it: a 1 GB tree to hash, place and copy, from a
    # 2 kB archive. Each link counts its file's size.
    links = [H(f"m/l{i:04d}", "m/zeros") for i in range(1000)]
    r = run_attack(env, server, tgz(D("m"), F("m/zeros", b"\0" * 1_000_000), *links),
                   settings="max_unpacked_bytes = 20000000", subprocess_timeout=60)
    assert r.code == 9, r.err
    assert "'m/l0019'" in r.err, r.err  # the 20th link crosses 20 MB


SPARSE_SIZE = 60 << 20  # what each sparse member below declares: 60 MiB of holes from one stored byte


def _pax(*records: tuple[str, str]) -> bytes:
    """A PAX extended header of ``records`` (for the member that follows)."""
    body = b"".join(_pax_record(k, v) for k, v in records)
    return _ustar("././@PaxHeader", b"x", len(body), "", 0o644) + _pad(body)


def _old_gnu_sparse(name: str, real: int) -> bytes:
    """An old-GNU sparse member (type 'S'): one stored byte at offset 0, ``real`` bytes when read back."""
    h = bytearray(_ustar(name, b"S", 1, "", 0o644))
    h[386:398] = b"%011o\0" % 0  # sparse map: one chunk at offset 0 ...
    h[398:410] = b"%011o\0" % 1  # ... of 1 byte; no extension block (482 stays 0)
    h[483:495] = b"%011o\0" % real  # the real size
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h) + _pad(b"z")


# Every GNU sparse flavour tarfile turns holes into zeros for, each one member m/zeros.bin.
SPARSE = {
    "old-gnu-S": _old_gnu_sparse("m/zeros.bin", SPARSE_SIZE),
    "pax-0.0": _pax(("GNU.sparse.size", str(SPARSE_SIZE)), ("GNU.sparse.numblocks", "1"),
                    ("GNU.sparse.offset", "0"), ("GNU.sparse.numbytes", "1")) + F("m/zeros.bin", b"z"),
    "pax-0.1": _pax(("GNU.sparse.size", str(SPARSE_SIZE)), ("GNU.sparse.numblocks", "1"),
                    ("GNU.sparse.map", "0,1")) + F("m/zeros.bin", b"z"),
    # 1.0: the map is the start of the member's data (one 512-byte block), the real name in the PAX header.
    "pax-1.0": _pax(("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", "m/zeros.bin"),
                    ("GNU.sparse.realsize", str(SPARSE_SIZE)))
    + F("m/GNUSparseFile.0/zeros.bin", _pad(b"1\n0\n1\n") + b"z"),
}


@pytest.mark.parametrize("flavour", sorted(SPARSE))
def test_gnu_sparse_members_are_refused(env, server, flavour):
    # The 180-byte archive that wrote 60 GiB of zeros, scaled down: a sparse member declaring 60 MiB
    # stays under a 64 MiB byte limit, and its holes were written out as real zeros. No model needs
    # holes: every sparse member is refused before anything of it is written.
    data = tgz(D("m"), SPARSE[flavour])
    assert len(data) < 400
    r = run_attack(env, server, data, settings="max_unpacked_bytes = 67108864", subprocess_timeout=60)
    assert r.code == 9, r.err
    assert "member 'm/zeros.bin' is a GNU sparse file; refused" in r.err, r.err
    assert not (env.data_dir(PROC) / "m").exists()


def test_member_count_bomb_is_refused_in_time(env, server):
    # 100 000 empty members: about 600 kB compressed; refused at the 10 001st.
    names = (f"m/f{i:06d}" for i in range(100_000))
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    data = z.compress(D("m") + b"".join(header(n) for n in names) + b"\0" * 1024) + z.flush()
    assert len(data) < 1_000_000
    r = run_attack(env, server, data, settings="max_archive_members = 10000", subprocess_timeout=60)
    assert r.code == 9, r.err
    assert "more than 10000 members" in r.err, r.err


def test_huge_pax_record_is_not_read_into_memory(env, server):
    # A PAX header claiming 512 MiB (of zeros, ~500 kB compressed): tarfile reads a PAX record
    # in one read of its declared size. In a process with 512 MiB of address space that read
    # must be refused, not attempted.
    size = 512 << 20
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(_ustar("././@PaxHeader", b"x", size, "", 0o644))]
    zeros = b"\0" * (1 << 20)
    out += [z.compress(zeros) for _ in range(size >> 20)]
    out.append(z.compress(F("m/model.bin", b"w") + b"\0" * 1024) + z.flush())
    r = run_attack(env, server, b"".join(out), subprocess_timeout=60)
    assert r.code == 9, r.err
    assert "not a valid tar.gz archive" in r.err and str(size) in r.err, r.err


def test_sparse_map_bomb_is_refused(env, server):
    # A PAX "GNU sparse 1.0" member whose map claims 32 Mi chunks: 128 MiB of "0\n" (~130 kB
    # compressed) that tarfile would parse into a list of 64 Mi numbers before the member
    # is even returned. The headers of one member may take 1 MiB; this is refused there.
    chunks = 32 << 20
    records = b"".join(_pax_record(k, v) for k, v in (("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
                                                      ("GNU.sparse.name", "m/sparse"), ("GNU.sparse.realsize", "1")))
    mapping_size = len(b"%d\n" % chunks) + 4 * chunks
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(D("m") + _ustar("././@PaxHeader", b"x", len(records), "", 0o644) + _pad(records)
                      + _ustar("m/GNUSparseFile.0/sparse", b"0", mapping_size, "", 0o644) + b"%d\n" % chunks)]
    zeros = b"0\n" * (1 << 19)  # 1 MiB
    out += [z.compress(zeros) for _ in range(4 * chunks >> 20)]
    out.append(z.compress(b"\0" * (-mapping_size % 512) + b"\0" * 1024) + z.flush())
    r = run_attack(env, server, b"".join(out), subprocess_timeout=60)
    assert r.code == 9, r.err
    assert "not a valid tar.gz archive" in r.err and "headers" in r.err, r.err


def test_zip_bomb_with_lying_sizes_stops_at_the_limit(env, server):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/zeros", b"\0" * 20_000_000)
    data = bytearray(buf.getvalue())
    # Claim 10 bytes in both the local header and the central directory.
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(sig) + off
        data[at:at + 4] = (10).to_bytes(4, "little")
    r = run_attack(env, server, bytes(data), settings="max_unpacked_bytes = 4000000", subprocess_timeout=60)
    assert r.code == 9, r.err
    assert "m/zeros" in r.err, r.err


# -- 7. in-archive conflicts: the archive's fault (9), not the filesystem's (8) -------------------

def _zip(*entries: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


LONG_COMPONENT = "m/" + "x" * 300
LONG_PATH = "m/" + "/".join(["y" * 200] * 25)
CONFLICTS = {
    "tar-file-then-dir": (tgz(D("m"), F("m/a"), D("m/a")), "m/a"),
    "tar-file-then-dir-implied": (tgz(D("m"), F("m/a"), F("m/a/b")), "m/a/b"),
    "tar-dir-then-file": (tgz(D("m"), D("m/a"), F("m/a")), "m/a"),
    "tar-file-then-symlink": (tgz(D("m"), F("m/a"), S("m/a", "b")), "m/a"),
    "tar-long-component": (tgz(D("m"), F(LONG_COMPONENT)), LONG_COMPONENT),
    "tar-long-path": (tgz(D("m"), F(LONG_PATH)), LONG_PATH),
    "tar-long-link-target": (tgz(D("m"), S("m/l", "z" * 300)), "m/l"),
    "zip-file-then-dir": (_zip(("m/a", b"1"), ("m/a/", b"")), "m/a/"),
    "zip-file-then-dir-implied": (_zip(("m/a", b"1"), ("m/a/b", b"2")), "m/a/b"),
    "zip-dir-then-file": (_zip(("m/a/", b""), ("m/a", b"1")), "m/a"),
    "zip-long-component": (_zip((LONG_COMPONENT, b"1")), LONG_COMPONENT),
    "zip-long-path": (_zip((LONG_PATH, b"1")), LONG_PATH),
}


@pytest.mark.parametrize("case", sorted(CONFLICTS))
def test_in_archive_conflict_is_unsafe_archive_naming_the_member(env, server, case):
    data, member = CONFLICTS[case]
    r = run_attack(env, server, data)
    assert r.code == 9, r.err
    assert repr(member) in r.err, r.err
    assert not (env.data_dir(PROC) / "m").exists()


# -- 7. a real full disk stays exit 8, names the filesystem, and leaves nothing behind ------------


def test_full_disk_while_unpacking_is_exit_8_and_the_next_sync_converges(env, server):
    mnt = env.root / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True,
                       capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a 2 MiB tmpfs here (needs root and mount permission): {err}")
    try:
        env.monkeypatch.setenv("MODELSYNC_CACHE_DIR", str(mnt))
        v1 = tgz(D("m"), F("m/model.bin", b"version 1\n"))
        env.declare(Model("m", server.add("/v1.tar.gz", v1), type="archive"), processor=PROC)
        assert env.run("sync").code == 0
        target = env.data_dir(PROC) / "m"
        assert (target / "m" / "model.bin").read_bytes() == b"version 1\n"

        (mnt / "ballast").write_bytes(b"b" * 1_200_000)  # someone else fills the disk
        big = b"\0" * 1_000_000 + b"version 2\n"
        v2 = tgz(D("m"), F("m/model.bin", big))
        env.declare(Model("m", server.add("/v2.tar.gz", v2), type="archive"), processor=PROC)
        before = snapshot(env.root)
        r = env.run("sync")
        assert r.code == 8, r.err
        assert f"mounted at {mnt}" in r.err and "full" in r.err, r.err
        assert "Traceback" not in r.err
        assert cache_tmp_leftovers(mnt) == []
        after = snapshot(env.root)
        lock = "project/models.lock"  # rewritten for the new manifest, still pinning v1 for the failed model
        assert {k: v for k, v in after.items() if k in before and k != lock} == \
            {k: v for k, v in before.items() if k != lock}  # v1 intact, nothing else touched
        assert "/v1.tar.gz" in env.lock.read_text() and "/v2.tar.gz" not in env.lock.read_text()
        assert (target / "m" / "model.bin").read_bytes() == b"version 1\n"

        (mnt / "ballast").unlink()
        r = env.run("sync")
        assert r.code == 0, r.err
        assert (target / "m" / "model.bin").read_bytes() == big
        assert cache_tmp_leftovers(mnt) == []
        assert env.run("sync", "--check").code == 0
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


# -- 8. deep trees and links to directories: what removal and housekeeping do -------------------


def deep_dir(top: Path, depth: int, links: tuple[Path, ...] = ()) -> None:
    """``top``/a/a/.../a, ``depth`` levels, holding a file and a link to each of ``links``, its last level
    read-only; made level by level through directory fds (os.makedirs recurses, and deep paths pass
    PATH_MAX long before the kernel minds the depth)."""
    os.mkdir(top)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("a", dir_fd=fd)
            sub = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        out = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        os.write(out, b"deep\n")
        os.close(out)
        for i, target in enumerate(links):
            os.symlink(target, f"link{i}", dir_fd=fd)
        os.chmod(fd, 0o555)
    finally:
        os.close(fd)


@pytest.fixture
def deep_cleanup(env, tmp_path):
    """For a test that makes trees 1 500 levels deep: everything below its tmp_path is removed
    (iteratively) when it ends. pytest removes old temp dirs with shutil.rmtree, recursive in Python
    3.11: a deep tree left there would make every later pytest session on the machine crash."""
    yield
    from ocrd_models.modelsync.atomic import remove_path

    for entry in tmp_path.iterdir():
        remove_path(entry)


def dead_pid() -> int:
    """A process id nobody has now: temp names of its own are leftovers of a killed run."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def outside_dirs(sandbox) -> tuple[Path, Path]:
    """A private 0700 directory (with a file) and a 1777 scratch directory, outside everything of ours."""
    private = sandbox.root / "outside" / "private"
    private.mkdir()
    (private / "key").write_bytes(b"private key\n")
    os.chmod(private, 0o700)
    scratch = sandbox.root / "outside" / "scratch"
    scratch.mkdir()
    os.chmod(scratch, 0o1777)
    return private, scratch


def modes_kept(private: Path, scratch: Path) -> None:
    """The directories links point to keep their modes: 0700, and 1777 with the sticky bit."""
    assert stat.S_IMODE(os.lstat(private).st_mode) == 0o700, oct(os.lstat(private).st_mode)
    assert stat.S_IMODE(os.lstat(scratch).st_mode) == 0o1777, oct(os.lstat(scratch).st_mode)


def temp_names(directory: Path) -> list[str]:
    """Temp names of ours left in a location."""
    return sorted(n for n in os.listdir(directory) if n.startswith(".modelsync-tmp-")) if directory.is_dir() else []


def test_deeply_nested_archive_is_refused_and_the_next_sync_converges(env, server, deep_cleanup):
    # 200 bytes of tar.gz, one file 1 500 directories deep (3 kB of path, within PATH_MAX). It was
    # unpacked, installed, and then every recursive walk over it (removing the old tree on update,
    # pruning, the cache) raised RecursionError: exit 1, a '.old' left in the location, every later
    # sync exit 1 until someone removed it by hand.
    deep = "m/" + "a/" * 1500 + "f"
    r = run_attack(env, server, tgz(F(deep, b"hi")))
    assert r.code == 9, r.err
    assert "is nested 1502 levels deep, more than the 128 allowed; refused" in r.err, r.err
    assert len(r.err) < 2000, r.err  # the 3 kB name is shown by its start
    location = env.data_dir(PROC)
    assert not (location / "m").exists() and temp_names(location) == []
    r = env.run("sync")  # again: the same refusal, never a bug
    assert r.code == 9 and "levels deep" in r.err and "unexpected" not in r.err, r.err
    # The origin publishes a sane archive: the next sync installs it and the project is in sync.
    env.declare(Model("m", server.add("/v2.tar.gz", tgz(D("m"), F("m/model.bin", b"v2"))), type="archive"),
                processor=PROC)
    r = env.run("sync")
    assert r.code == 0, r.err
    assert (location / "m" / "m" / "model.bin").read_bytes() == b"v2"
    assert temp_names(location) == [] and cache_tmp_leftovers(env.cache / "ocrd-modelsync") == []
    assert env.run("sync", "--check").code == 0


@pytest.mark.parametrize("kind,components,code", [("tar", 128, 0), ("tar", 129, 9), ("zip", 128, 0),
                                                   ("zip", 129, 9)])
def test_nesting_bound_is_128_components(env, server, kind, components, code):
    name = "m/" + "d/" * (components - 2) + "f"
    assert len(name.split("/")) == components
    url = server.add(f"/model.{kind}", tgz(F(name, b"w")) if kind == "tar" else _zip((name, b"w")))
    env.declare(Model("m", url, type="archive"), processor=PROC)
    r = env.run("sync")
    assert r.code == code, r.err
    assert code == 0 or f"is nested {components} levels deep, more than the 128 allowed" in r.err, r.err
    assert (env.data_dir(PROC) / "m" / name).is_file() == (code == 0)
    assert cache_tmp_leftovers(env.cache / "ocrd-modelsync") == []


def test_deep_leftover_of_a_killed_run_is_removed_without_following_its_links(env, server, deep_cleanup):
    # What the deep archive left behind before (or any hand-made deep tree): a '.old' of a dead
    # process, 1 500 levels deep, with links to a private and a sticky directory at the bottom,
    # in a read-only directory. The next sync removes it (it stopped every sync with exit 1) and
    # neither follows a link nor changes a mode outside.
    private, scratch = outside_dirs(env)
    location = env.data_dir(PROC)
    location.mkdir(parents=True)
    leftover = location / f".modelsync-tmp-{dead_pid()}.0123456789ab.m.old"
    deep_dir(leftover, 1500, (private, scratch))
    env.declare(Model("m", server.add("/model.tar.gz", tgz(D("m"), F("m/model.bin", b"w"))), type="archive"),
                processor=PROC)
    before = {k: v for k, v in snapshot(env.root).items() if ".modelsync-tmp-" not in k}
    r = env.run("sync")
    assert r.code == 0, r.err
    assert not os.path.lexists(leftover) and temp_names(location) == []
    modes_kept(private, scratch)
    after = snapshot(env.root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(k.startswith(f"data/ocrd-resources/{PROC}/m") or k == "project/models.lock"
               for k in set(after) - set(before)), sorted(set(after) - set(before))
    assert (private / "key").read_bytes() == b"private key\n"
    assert cache_tmp_leftovers(env.cache / "ocrd-modelsync") == []


def test_cache_prune_removes_deep_trees_without_following_their_links(env, deep_cleanup):
    # A cache entry and a temp leftover 1 500 levels deep (a directory model, a hand-made tree):
    # `cache prune` exited 1 on them (RecursionError) and kept them forever.
    private, scratch = outside_dirs(env)
    cache_root = env.cache / "ocrd-modelsync"
    tree = cache_root / "trees" / "ab" / ("ab" + "0" * 62)
    tree.parent.mkdir(parents=True)
    deep_dir(tree, 1500, (private, scratch))
    (cache_root / "tmp").mkdir()
    deep_dir(cache_root / "tmp" / f".modelsync-tmp-{dead_pid()}.0123456789ab.m.d", 1500, (private, scratch))
    before = snapshot(env.root)
    r = env.run("cache", "prune", "--older-than", "0")
    assert r.code == 0, r.err
    assert "Traceback" not in r.err and "unexpected" not in r.err, r.err
    assert not os.path.lexists(tree)
    assert cache_tmp_leftovers(cache_root) == []
    modes_kept(private, scratch)
    assert snapshot(env.root) == before


@pytest.mark.parametrize("via", ["manifest", "frozen-lock"])
def test_links_in_a_directory_model_never_change_their_targets_modes(env, via):
    # A type = "directory" model holding links to directories, declared twice: the second copy finds
    # its tree in the cache already and discards its own. That walked the copy with os.walk and
    # chmod 0755 every entry listed as a directory, links included: the private directory became
    # 0755 and the scratch directory lost its sticky bit (as root, a link to /tmp: /tmp). The same
    # from a hostile checkout's lock alone, with `sync --frozen`.
    private, scratch = outside_dirs(env)
    model = env.project / "vendor" / "model"
    model.mkdir(parents=True)
    (model / "w.bin").write_bytes(b"weights\n")
    (model / "ro").mkdir()
    (model / "ro" / "x.bin").write_bytes(b"x\n")
    os.chmod(model / "ro", 0o555)  # a read-only directory of the model's own: copied, then discarded
    os.symlink(private, model / "secrets")
    os.symlink(scratch, model / "scratch")
    env.declare(Model("a", "./vendor/model", type="directory"), Model("b", "./vendor/model", type="directory"),
                processor=PROC)
    args = ["sync"]
    if via == "frozen-lock":
        import shutil

        # The attacker's lock, made beforehand; here the machine starts with no cache, state or installs.
        assert env.run("sync").code == 0
        for d in (env.cache, env.state, env.data):
            shutil.rmtree(d)
            d.mkdir()
        env.manifest.unlink()
        os.chmod(private, 0o700)
        os.chmod(scratch, 0o1777)
        args.append("--frozen")
    before = snapshot(env.root)
    r = env.run(*args)
    assert r.code == 0, r.err
    modes_kept(private, scratch)
    after = snapshot(env.root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(k.startswith("data/ocrd-resources") or k == "project/models.lock"
               for k in set(after) - set(before)), sorted(set(after) - set(before))
    for name in ("a", "b"):  # installed as links, as declared
        assert os.readlink(env.data_dir(PROC) / name / "secrets") == str(private)
    assert temp_names(env.data_dir(PROC)) == []
    assert cache_tmp_leftovers(env.cache / "ocrd-modelsync") == []


def test_deep_directory_model_installs_and_is_removed(env, deep_cleanup):
    model = env.project / "vendor" / "deep"
    model.parent.mkdir()
    deep_dir(model, 1500)
    env.declare(Model("d", "./vendor/deep", type="directory"), processor=PROC)
    r = env.run("sync")
    assert r.code == 0, r.err
    target = env.data_dir(PROC) / "d"
    assert sum(1 for p, st in walk(target) if stat.S_ISREG(st.st_mode)) == 1
    env.declare()
    r = env.run("sync", "--prune")
    assert r.code == 0, r.err
    assert not os.path.lexists(target) and temp_names(env.data_dir(PROC)) == []
    r = env.run("cache", "prune", "--older-than", "0")
    assert r.code == 0, r.err
    assert cache_tmp_leftovers(env.cache / "ocrd-modelsync") == []


def test_copy_tree_keeps_links_as_links_and_modes_ours(tmp_path, env, deep_cleanup):
    # The copy a directory model needs (install.py is to use it): any depth, links copied as links and
    # never followed, our modes (no world-writable or sticky directory, no setuid file), no FIFO.
    from ocrd_models.modelsync.install.cache import copy_tree
    from ocrd_models.modelsync.errors import UserInputError

    private, scratch = outside_dirs(env)
    src = tmp_path / "src"
    deep_dir(src, 1500, (private, scratch))
    (src / "open").mkdir()
    os.chmod(src / "open", 0o1777)
    (src / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o4755)
    dest = tmp_path / "dest"
    copy_tree(src, dest, "ocrd-x d")
    copied = {os.path.relpath(p, dest): st for p, st in walk(dest)}
    assert copied.keys() == {os.path.relpath(p, src) for p, _ in walk(src)}
    bottom = "/".join(["a"] * 1500)
    assert os.readlink(dest / bottom / "link0") == str(private)
    assert (dest / bottom / "f").read_bytes() == b"deep\n"
    assert stat.S_IMODE(copied["open"].st_mode) == 0o755 and stat.S_IMODE(copied[bottom].st_mode) == 0o755
    assert stat.S_IMODE(copied["run.sh"].st_mode) == 0o755
    modes_kept(private, scratch)
    os.mkfifo(src / "pipe")
    with pytest.raises(UserInputError, match="'pipe'"):
        copy_tree(src, tmp_path / "dest2", "ocrd-x d")
    assert not (tmp_path / "dest2").exists()


# -- genuine archives keep working ------------------------------------------------------------

@pytest.mark.parametrize("compress", ["gz", "bz2", "xz", ""])
def test_genuine_archive_with_links_and_executables_installs(env, server, compress):
    import bz2
    import lzma

    members = [D("./"), D("./m"), D("./m/v2"), F("./m/v2/model.bin", b"weights"),
               F("./m/v2/run.sh", b"#!/bin/sh\n", mode=0o755), S("./m/latest", "v2"),
               S("./m/model.bin", "latest/model.bin"), S("./m/v2/self", "../v2/model.bin"),
               H("./m/v2/copy.bin", "./m/v2/model.bin"), D("./m/empty")]
    raw = b"".join(members) + b"\0" * 1024
    data = {"gz": lambda b: zlib.compress(b, wbits=31), "bz2": bz2.compress, "xz": lzma.compress,
            "": lambda b: b}[compress](raw)
    url = server.add("/model", data)
    env.declare(Model("m", url, type="archive", path_in_archive="m"), processor=PROC)
    before = snapshot(env.root)
    r = env.run("sync")
    assert r.code == 0, r.err
    target = env.data_dir(PROC) / "m"
    assert (target / "model.bin").read_bytes() == b"weights"
    assert os.readlink(target / "latest") == "v2" and os.readlink(target / "model.bin") == "latest/model.bin"
    assert (target / "v2" / "self").read_bytes() == b"weights"
    assert (target / "v2" / "copy.bin").read_bytes() == b"weights"
    assert (target / "v2" / "run.sh").read_bytes() == b"#!/bin/sh\n"
    assert os.stat(target / "v2" / "run.sh").st_mode & 0o111 == 0o111  # executable where installed
    assert os.stat(target / "v2" / "model.bin").st_mode & 0o333 == 0  # read-only data, never writable
    assert (target / "empty").is_dir()
    after = snapshot(env.root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert cache_tmp_leftovers(env.cache / "ocrd-modelsync") == []
    assert env.run("sync", "--check").code == 0


def test_unpacked_modes_are_ours_executable_bits_kept(tmp_path):
    # Modes come from us, not the archive: 0644, or 0755 when the owner could execute; never
    # setuid/setgid/sticky, never group- or world-writable. (The cache then seals files read-only.)
    from ocrd_models.modelsync.install.unpack import extract

    archive = tmp_path / "a"
    archive.write_bytes(tgz(D("m"), F("m/run.sh", b"#!/bin/sh\n", mode=0o755), F("m/model.bin", b"w", mode=0o666),
                            F("m/suid", b"s", mode=0o4777), F("m/sgid", b"s", mode=0o2750)))
    dest = tmp_path / "out"
    dest.mkdir()
    old = os.umask(0o022)
    try:
        extract(archive, dest)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (dest / "m").iterdir()}
    assert modes == {"run.sh": 0o755, "model.bin": 0o644, "suid": 0o755, "sgid": 0o755}

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("z/run.sh")
        info.create_system = 3
        info.external_attr = (stat.S_IFREG | 0o4777) << 16
        zf.writestr(info, b"#!/bin/sh\n")
        zf.writestr("z/model.bin", b"weights")
    archive.write_bytes(buf.getvalue())
    extract(archive, dest)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (dest / "z").iterdir()}
    assert modes == {"run.sh": 0o755 & ~old, "model.bin": 0o644 & ~old}


def test_genuine_zip_installs(env, server):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("m/run.sh")
        info.create_system = 3
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        zf.writestr(info, b"#!/bin/sh\n")
        zf.writestr("m/sub/model.bin", b"weights")
    env.declare(Model("m", server.add("/model.zip", buf.getvalue()), type="archive", path_in_archive="m"),
                processor=PROC)
    r = env.run("sync")
    assert r.code == 0, r.err
    target = env.data_dir(PROC) / "m"
    assert (target / "run.sh").read_bytes() == b"#!/bin/sh\n"
    assert (target / "sub" / "model.bin").read_bytes() == b"weights"
