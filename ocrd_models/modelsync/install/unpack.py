"""Safe archive extraction: sniff the format from bytes, refuse members escaping the target.

Supported: zip, tar, tar.gz, tar.bz2, tar.xz (suffix-less URLs included: the format is
read from magic bytes, never from the name). Extraction happens into a fresh temp
directory on the target filesystem; the caller renames the selected member into place.

Safety does not rest on the interpreter's tarfile filter nor on ``realpath`` (whose
non-strict mode stops resolving at PATH_MAX: CVE-2025-4517). We keep our own model of
what has been extracted, relative path by relative path (directory, file or symbolic
link with its target), and decide from it alone:

- no member is written below a symbolic link of the archive (real models never need it);
- a symbolic link's target is resolved against the model, component by component,
  following the archive's own links (at most 40 of them, like the kernel), and must stay
  inside the tree and within PATH_MAX; a ``..`` after a component that does not exist
  yet is refused, so a later link cannot turn an inside target into an outside one;
- a hard link must name a regular file extracted before it (never a link, never
  something outside), and is made with ``os.link`` inside the tree;
- files are created with ``O_EXCL | O_NOFOLLOW``, directories with ``mkdir`` (checked
  with ``lstat`` when the name is taken); modes are ours (0644, or 0755 for executables:
  no setuid, no world-writable), devices and FIFOs are refused;
- a member path of more than ``MAX_DEPTH`` (128) components is refused: real models are a
  few levels deep, and a tree 1 500 levels deep (a 200-byte archive, its path still within
  PATH_MAX) broke every recursive walk and removal for whoever met it later;
- GNU sparse members (old GNU type ``S``, PAX 0.0, 0.1 and 1.0) are refused: their holes
  come back as real zeros (a 180-byte archive declared 60 GiB), and no model uses them.

Bounds (members, bytes) are enforced while reading, on the bytes really written, and
decompression is ours too, bounded per call: the cost stays linear in the archive.
"""

from __future__ import annotations

import bz2
import errno
import hashlib
import io
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from .. import failpoints
from .space import check_space
from ..digest import CHUNK, FileHasher, walk_tree
from ..errors import ModelsyncError, UnsafeArchive, filesystem_error

PATH_MAX = 4096  # bytes, with the terminating NUL (Linux)
NAME_MAX = 255  # bytes of one path component
MAX_HOPS = 40  # symbolic links followed in one resolution (the kernel's MAXSYMLINKS)
STEPS_PER_LINK = 4096  # path components one link's resolution may walk through
STEPS_PER_ARCHIVE = 1 << 22  # ... and all of an archive's links together (4M: a few seconds at worst)
MAX_HEADERS = 1 << 20  # bytes tarfile may read for one member's headers (PAX records, long names, sparse maps)
# Path components of one member (directories and the name). Real models nest a few levels; 128
# leaves room for any genuine layout while keeping trees far from Python's recursion limit (1 000),
# which recursive walks elsewhere (shutil, os.walk before 3.12) still hit.
MAX_DEPTH = 128
INLINE_HASH = 64 * 1024  # files declared smaller than this are hashed on our thread
# O_EXCL | O_NOFOLLOW: never write through a link or over anything already on disk.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

# What our model holds for a relative path; a symbolic link holds its target (a str).
_DIR = 0
_FILE = 1

# OS errors that mean the archive's names do not fit (a conflict our model did not see, e.g. on
# a case-insensitive filesystem, or a name the filesystem rejects): the archive's fault, exit 9.
_ARCHIVE_ERRNOS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.EILSEQ}


@dataclass(frozen=True)
class Limits:
    """Bounds against archive bombs; generous for multi-GB eynollah model zips.

    Configurable: ``[settings] max_unpacked_bytes`` / ``max_archive_members``.
    """

    max_bytes: int = 64 * 1024**3
    max_members: int = 200_000

    def exceeded(self, label: str, member: str, members: int, total: int) -> None:
        """Raise UnsafeArchive if either bound is crossed."""
        if members > self.max_members or total > self.max_bytes:
            raise UnsafeArchive(
                f"{label}: refused as a possible archive bomb at member {member!r}: more than "
                f"{self.max_members} members or {self.max_bytes} bytes unpacked (raise max_archive_members / "
                "max_unpacked_bytes in [settings] if the archive is genuine)")


def _sniff_head(head: bytes) -> str | None:
    """The format the first bytes of an archive say, or None."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def sniff(path: Path, label: str | None = None) -> str:
    """Return ``zip``, ``tar``, ``tar.gz``, ``tar.bz2``, ``tar.xz`` or raise UnsafeArchive."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    fmt = _sniff_head(head)
    if fmt is not None:
        return fmt
    if zipfile.is_zipfile(path):  # zip with a prefix (self-extracting) or comment-first
        return "zip"
    raise UnsafeArchive(
        f"{label or path.name} is not an archive of a supported kind (zip, tar, tar.gz, tar.bz2, tar.xz): "
        f"its first bytes are {head[:8].hex(' ')}. If the resource is a single file, declare type = \"file\"."
    )


def _safe_rel(name: str, archive: str) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith("/") or ".." in p.parts or "\x00" in name or (p.parts and ":" in p.parts[0]):
        raise UnsafeArchive(f"{archive}: member {name!r} would be written outside the target directory; refused")
    return p


def _blen(text: str) -> int:
    return len(os.fsencode(text))


def _resolve(kinds: dict[str, object], base: list[str], target: str, budget: list[int]) -> str | None:
    """Why the link target ``target``, in directory ``base``, is unsafe; None if it stays inside.

    Walks the target like the kernel would, against ``kinds`` (our model, never the disk):
    ``..`` pops a component (above the root: outside), a directory is entered, a link's
    target replaces it (relative to the link's directory). Past a component that does not
    exist (yet), only plain names may follow: a ``..`` there could mean anything once a
    later member fills the gap. A file ends the walk (the kernel says ENOTDIR there).
    ``budget`` (a one-element list) is the steps the archive's links may still take.
    """
    pending = [c for c in reversed(target.split("/")) if c not in ("", ".")]
    pos = list(base)
    length = sum(_blen(c) + 1 for c in pos)
    missing = False
    hops = steps = 0
    while pending:
        steps += 1
        budget[0] -= 1
        if steps > STEPS_PER_LINK or budget[0] < 0:
            return "takes too many steps to resolve"
        comp = pending.pop()
        if comp == "..":
            if missing:
                return "goes up ('..') after a path that does not exist (yet)"
            if not pos:
                return "points outside the archive"
            length -= _blen(pos.pop()) + 1
            continue
        if _blen(comp) > NAME_MAX:
            return f"has a path component longer than {NAME_MAX} bytes"
        kind = None if missing else kinds.get("/".join(pos + [comp]))
        if isinstance(kind, str):  # a link of the archive: continue from its target, in its directory
            hops += 1
            if hops > MAX_HOPS:
                return f"goes through more than {MAX_HOPS} symbolic links"
            if kind.startswith("/"):
                return "points outside the archive"
            pending.extend(c for c in reversed(kind.split("/")) if c not in ("", "."))
            continue
        pos.append(comp)
        length += _blen(comp) + 1
        if length >= PATH_MAX:
            return f"resolves to a path longer than {PATH_MAX} bytes (PATH_MAX)"
        if kind is None:
            missing = True
        elif kind == _FILE:
            return None  # file/anything: ENOTDIR for the kernel, nothing is reached
    return None


def _read(src, name: str) -> bytes:
    try:
        return src.read(CHUNK)
    except _Corrupt:
        raise
    except _READ_ERRORS as err:
        raise _Corrupt(f"member {name!r}: {err}") from None


class _Tree:
    """The directory being extracted into, and our model of what each member made in it.

    Every decision is taken on the model (relative path -> directory, file or link target);
    the disk is only written, through ``O_EXCL | O_NOFOLLOW`` and ``mkdir``.
    """

    def __init__(self, dest: Path, label: str, limits: Limits, hasher: FileHasher | None) -> None:
        self.root = str(dest)
        self.label, self.limits, self.hasher = label, limits, hasher
        self.kinds: dict[str, object] = {"": _DIR}
        self.members = 0
        self.total = 0  # bytes written (hard links count their file's size: the tree holds them again)
        self.budget = [STEPS_PER_ARCHIVE]

    # -- names ---------------------------------------------------------------------------
    def rel(self, name: str) -> str:
        """The normalised relative path of a member name (``""``: the root), or UnsafeArchive.

        The same rules as :func:`_safe_rel`, on strings: this runs once per member.
        """
        parts = [p for p in name.replace("\\", "/").split("/") if p and p != "."]
        if name.startswith(("/", "\\")) or ".." in parts or "\x00" in name or (parts and ":" in parts[0]):
            raise self._refuse(name, "would be written outside the target directory")
        # Both checks only concern names of more than 63 characters (MAX_DEPTH components need 255).
        if len(name) > NAME_MAX // 4 and (any(_blen(p) > NAME_MAX for p in parts) or _blen(name) >= PATH_MAX):
            raise self._refuse(name, f"has a name longer than filesystems allow ({NAME_MAX} bytes a component, "
                                     f"{PATH_MAX} in all)")
        if len(name) > NAME_MAX // 4 and len(parts) > MAX_DEPTH:
            # The name itself may be kilobytes long: its start says enough.
            shown = f"{name[:100]!r}... ({len(name)} characters)" if len(name) > 200 else repr(name)
            raise UnsafeArchive(f"{self.label}: member {shown} is nested {len(parts)} levels deep, more than the "
                                f"{MAX_DEPTH} allowed; refused (model archives are a few levels deep)")
        return "/".join(parts)

    def count(self, name: str, declared: int = 0) -> None:
        """One more member (of ``declared`` bytes, refused up front if that alone crosses the bound)."""
        self.members += 1
        self.limits.exceeded(self.label, name, self.members, self.total + declared)

    def _refuse(self, name: str, why: str) -> UnsafeArchive:
        return UnsafeArchive(f"{self.label}: member {name!r} {why}; refused")

    # -- parents and conflicts -------------------------------------------------------------
    def _parents(self, rel: str, name: str) -> None:
        """Make the parent directories of ``rel``, refusing a path through a link or a file."""
        parts = rel.split("/")[:-1]
        prefix = ""
        for part in parts:
            prefix = f"{prefix}/{part}" if prefix else part
            kind = self.kinds.get(prefix)
            if kind == _DIR:
                continue
            if kind is None:
                self._mkdir(prefix, name)
            elif kind == _FILE:
                raise self._refuse(name, f"is inside {prefix!r}, which an earlier member made a file")
            else:
                raise self._refuse(name, f"is inside {prefix!r}, a symbolic link of the archive (an archive "
                                         "is never unpacked through its own links)")

    def _mkdir(self, rel: str, name: str) -> None:
        path = os.path.join(self.root, rel)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            # Not in our model but on disk (a case-insensitive filesystem folds two names): only a
            # real directory may be used, never a link.
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise self._refuse(name, f"collides with {rel!r}, which an earlier member made") from None
        self.kinds[rel] = _DIR

    def _free(self, rel: str, name: str) -> None:
        kind = self.kinds.get(rel)
        if kind is None:
            return
        what = "directory" if kind == _DIR else "file" if kind == _FILE else "symbolic link"
        raise self._refuse(name, f"would replace the {what} an earlier member made at that path "
                                 "(which one is the model?)")

    # -- members ---------------------------------------------------------------------------
    def add_dir(self, name: str) -> None:
        """A directory member (one that exists already as a directory is fine)."""
        rel = self.rel(name)
        if self.kinds.get(rel) == _DIR:
            return
        self._parents(rel, name)
        self._free(rel, name)
        self._mkdir(rel, name)

    def add_file(self, name: str, src, executable: bool, declared: int) -> None:
        """A regular file member, read from ``src`` (``read(n)``), counted byte by byte against the limit."""
        rel = self.rel(name)
        self._parents(rel, name)
        self._free(rel, name)
        path = os.path.join(self.root, rel)
        fd = os.open(path, _CREATE, 0o755 if executable else 0o644)
        self.kinds[rel] = _FILE
        hasher, limit = self.hasher, self.limits.max_bytes
        # A small file is hashed here: handing it to the hasher thread costs more than hashing it
        # (with many small members, the queue's locks would take a large share of the time).
        inline = hashlib.sha256() if hasher is not None and declared < INLINE_HASH else None
        size = 0
        with open(fd, "wb") as dst:  # buffered: a raw write may write less than asked
            while chunk := _read(src, name):
                size += len(chunk)
                self.total += len(chunk)
                if self.total > limit:  # what is really written counts, whatever a header says
                    self.limits.exceeded(self.label, name, self.members, self.total)
                dst.write(chunk)
                if inline is not None:
                    inline.update(chunk)
                elif hasher is not None:
                    hasher.feed(chunk)
        if inline is not None:
            hasher.known[path] = (size, inline.hexdigest())
        elif hasher is not None:
            hasher.end(Path(path))

    def add_symlink(self, name: str, target: str) -> None:
        """A symbolic link member whose target, resolved on our model, stays inside the tree."""
        rel = self.rel(name)
        self._parents(rel, name)
        self._free(rel, name)
        if not target or "\x00" in target:
            raise self._refuse(name, "is a symbolic link without a valid target")
        if target.startswith("/"):
            why = "points outside the archive"
        elif _blen(target) >= PATH_MAX:
            why = f"has a target longer than {PATH_MAX} bytes"
        else:
            why = _resolve(self.kinds, rel.split("/")[:-1], target, self.budget)
        if why is not None:
            raise UnsafeArchive(f"{self.label}: link {name!r} -> {target!r} {why}; refused")
        os.symlink(target, os.path.join(self.root, rel))
        self.kinds[rel] = target

    def add_hardlink(self, name: str, target: str) -> None:
        """A hard link member: only to a regular file extracted before it, made inside the tree."""
        rel = self.rel(name)
        self._parents(rel, name)
        self._free(rel, name)
        try:
            trel = self.rel(target)
        except UnsafeArchive:
            trel = None
        kind = self.kinds.get(trel) if trel is not None else None
        if kind != _FILE:
            # A FILE entry only exists where every parent is a real directory of ours: nothing
            # reached through a link, nothing outside.
            what = ("a symbolic link" if isinstance(kind, str) else "a directory" if kind == _DIR
                    else "not a regular file extracted before it")
            raise UnsafeArchive(f"{self.label}: hard link {name!r} -> {target!r} refused: the target is {what} "
                                "(a hard link may only name an earlier regular file of the archive)")
        src = os.path.join(self.root, trel)
        self.total += os.lstat(src).st_size
        self.limits.exceeded(self.label, name, self.members, self.total)
        os.link(src, os.path.join(self.root, rel), follow_symlinks=False)
        self.kinds[rel] = _FILE

    def os_error(self, err: OSError, name: str) -> Exception:
        """The error to raise for an OS error while unpacking member ``name``."""
        if err.errno in _ARCHIVE_ERRNOS:
            return self._refuse(name, f"cannot be written where it points ({err.strerror or err})")
        # A full disk, a permission problem, a read-only filesystem: not the archive's fault.
        return filesystem_error(err, os.path.dirname(self.root), f"unpack {self.label} into")


# -- decompression, bounded --------------------------------------------------------------------

_DECOMPRESSORS: dict[str, Callable[[], object]] = {
    "tar.gz": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS),
    "tar.bz2": bz2.BZ2Decompressor,
    "tar.xz": lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
}
_DECOMPRESS_ERRORS = (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError)
# What reading a member's data may raise when the archive is damaged (bz2 in zip: OSError).
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, ValueError,
                NotImplementedError, RuntimeError, OSError)


class _Corrupt(Exception):
    """The archive's bytes cannot be read as what they claim to be (not an OSError: no filesystem fault)."""


class _Decompressed(io.RawIOBase):
    """The decompressed bytes of a gzip/bzip2/xz file, at most ``len(b)`` per call.

    tarfile's stream mode decompresses each whole input buffer at once (1 MiB of gzipped
    zeros is 1 GiB) and copies what is left on every read: quadratic in time, unbounded in
    memory. Here output is bounded per call (``max_length``), so memory stays at a few MiB
    and the cost is linear. Concatenated streams (``cat a.gz b.gz``, pbzip2) are read on;
    bytes after the first stream that do not start another one end the data (like ``gzip -d``).
    """

    def __init__(self, fh, fmt: str) -> None:
        super().__init__()
        self._fh, self._new = fh, _DECOMPRESSORS[fmt]
        self._zlib = fmt == "tar.gz"  # zlib hands back unused input; bz2/lzma keep it (needs_input)
        self._d = self._new()
        self._in = b""  # input for the next decompressor call
        self._streams = 1
        self._done = False

    def readable(self) -> bool:
        """Yes."""
        return True

    def readinto(self, b) -> int:
        """Decompress at most ``len(b)`` bytes into ``b``; 0 at the end of the data."""
        n = len(b)  # never 0 below: max_length 0 means "no bound" to zlib
        while n and not self._done:
            d = self._d
            if d.eof:
                self._next_stream(d.unused_data)
                continue
            if self._zlib:
                data = d.unconsumed_tail or self._take()
            else:
                data = self._take() if d.needs_input else b""
            ended = data is None  # the file ended inside a stream (zlib may still hold output: b"" flushes it)
            try:
                out = d.decompress(data or b"", n)
            except _DECOMPRESS_ERRORS as err:
                self._fail(str(err) or type(err).__name__)
                continue
            if out:
                b[:len(out)] = out
                return len(out)
            if ended:
                self._fail("the compressed data ends before its end-of-stream marker")
        return 0

    def _fail(self, why: str) -> None:
        if self._streams > 1:  # bytes after a complete stream that start no other one: the data ended
            self._done = True
            return
        raise _Corrupt(why)

    def _take(self) -> bytes | None:
        if self._in:
            data, self._in = self._in, b""
            return data
        return self._fh.read(CHUNK) or None

    def _next_stream(self, rest: bytes) -> None:
        rest = rest or self._fh.read(CHUNK)
        if not rest:
            self._done = True
            return
        self._in = rest
        self._d = self._new()
        self._streams += 1


class _Forward:
    """A decompressed tar stream as tarfile's random-access mode reads it: forward only, bounded.

    tarfile reads a header (512 bytes), then any PAX record, long name or sparse map in reads
    as large as the archive declares (8 GiB in one ``read`` if a header says so), then up to
    1 MiB of member data at a time (what ``_Tree.add_file`` asks for). ``headers(n)`` bounds
    everything read while tarfile parses the next member's headers to ``n`` bytes; member
    data is bounded by our byte limit instead. ``seek`` skips forward by reading; going back
    is refused (a sequential pass never needs it).
    """

    def __init__(self, src) -> None:
        self._src, self._pos, self._start = src, 0, 0
        self._budget: int | None = None

    def headers(self, budget: int | None) -> None:
        """Bound what the next reads may take (None: member data, bounded elsewhere)."""
        self._budget, self._start = budget, self._pos

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (refused beyond the headers' budget, or 2 MiB of member data)."""
        limit = 2 * CHUNK if self._budget is None else self._budget
        if n is None or n < 0 or n > limit:
            raise _Corrupt(f"the member headers from offset {self._start} take more than {MAX_HEADERS} bytes "
                           f"({n} more asked for at offset {self._pos}), a possible archive bomb")
        data = self._src.read(n)
        self._pos += len(data)
        if self._budget is not None:
            self._budget -= len(data)
        return data

    def tell(self) -> int:
        """Bytes read so far."""
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        """Skip forward to ``pos``."""
        if whence != 0 or pos < self._pos:
            raise _Corrupt(f"the tar stream would have to be read backwards (to offset {pos})")
        while self._pos < pos and self.read(min(pos - self._pos, CHUNK)):
            pass
        return self._pos


# -- tar and zip -------------------------------------------------------------------------------


def _is_sparse(m: tarfile.TarInfo) -> bool:
    """A GNU sparse member of any version: old GNU type ``S``, PAX 0.0, 0.1 or 1.0 (tarfile sets
    ``sparse`` for those), or GNU.sparse.* keys of a version tarfile does not know."""
    return (m.type == tarfile.GNUTYPE_SPARSE or m.sparse is not None
            or any(k.startswith("GNU.sparse.") for k in m.pax_headers))


def _tar_member(tf: tarfile.TarFile, m: tarfile.TarInfo, tree: _Tree) -> None:
    if _is_sparse(m):
        # Its holes would be written out as zeros: 180 bytes declared 60 GiB, within the byte limit.
        raise UnsafeArchive(f"{tree.label}: member {m.name!r} is a GNU sparse file; refused (model archives "
                            "never need sparse members: ask the publisher for an archive made without --sparse)")
    tree.count(m.name, m.size if m.isreg() else 0)
    if m.isdir():
        tree.add_dir(m.name)
    elif m.isreg():
        with tf.extractfile(m) as src:
            tree.add_file(m.name, src, bool((m.mode or 0) & 0o100), m.size)
    elif m.issym():
        tree.add_symlink(m.name, m.linkname)
    elif m.islnk():
        tree.add_hardlink(m.name, m.linkname)
    elif m.isdev() or m.isfifo():
        raise UnsafeArchive(f"{tree.label}: member {m.name!r} is a device or FIFO; refused")
    else:
        raise UnsafeArchive(f"{tree.label}: member {m.name!r} is of an unsupported kind ({m.type!r}); refused")


def _extract_tar(path: Path, dest: Path, fmt: str, label: str, limits: Limits, hasher: FileHasher | None) -> None:
    with open(path, "rb", buffering=CHUNK) as fh:
        _untar(fh, dest, fmt, label, limits, hasher)


def extract_stream(raw: io.RawIOBase, dest: Path, label: str, limits: Limits | None = None,
                   hasher: FileHasher | None = None) -> str | None:
    """Unpack a tar archive (plain, gz, bz2 or xz) into the empty directory ``dest`` as it is read from
    ``raw`` (a download in progress: :class:`.growing.GrowingFile`); return the format, or None (and
    write nothing) when the stream is no tar archive: a zip needs its end first, so it is extracted from
    the finished file. Raises as :func:`extract` does, and whatever ``raw`` raises."""
    fh = io.BufferedReader(raw, CHUNK)
    fmt = _sniff_head(fh.peek(512)[:512])
    if fmt is None or fmt == "zip":
        return None
    _untar(fh, dest, fmt, label, limits or Limits(), hasher)
    return fmt


def _untar(fh, dest: Path, fmt: str, label: str, limits: Limits, hasher: FileHasher | None) -> None:
    tree = _Tree(dest, label, limits, hasher)
    try:
        stream = _Forward(fh if fmt == "tar" else io.BufferedReader(_Decompressed(fh, fmt), CHUNK))
        # tarfile's random-access mode over our forward-only stream (see _Forward): its stream
        # mode ("r|") copies what is left of its buffer on every read, so a large bufsize is
        # quadratic in the member count and a small one costs a third more on large files.
        stream.headers(MAX_HEADERS)
        with tarfile.open(fileobj=stream, mode="r:") as tf:
            while (m := tf.next()) is not None:
                stream.headers(None)
                tf.members.clear()  # tarfile keeps every TarInfo otherwise; we need none
                try:
                    _tar_member(tf, m, tree)
                except OSError as err:
                    if isinstance(err, ModelsyncError):
                        raise
                    raise tree.os_error(err, m.name) from None
                failpoints.hit("unpack")
                stream.headers(MAX_HEADERS)
    except _Corrupt as err:
        raise UnsafeArchive(f"{label}: not a valid {fmt} archive ({err})") from None
    except (tarfile.TarError, EOFError, ValueError, zlib.error, lzma.LZMAError) as err:
        raise UnsafeArchive(f"{label}: not a valid {fmt} archive ({err})") from None


def _extract_zip(path: Path, dest: Path, label: str, limits: Limits, hasher: FileHasher | None) -> None:
    tree = _Tree(dest, label, limits, hasher)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            # The central directory is read whole anyway: refuse what it declares before writing.
            limits.exceeded(label, infos[-1].filename if infos else "", len(infos),
                            sum(i.file_size for i in infos))
            # ... and what does not fit on the disk (declared sizes can lie: a full disk still fails the write).
            check_space([(dest, sum(i.file_size for i in infos))], f"unpacking {label}")
            for info in infos:
                try:
                    _zip_member(zf, info, tree)
                except OSError as err:
                    if isinstance(err, ModelsyncError):
                        raise
                    raise tree.os_error(err, info.filename) from None
                failpoints.hit("unpack")
    except _Corrupt as err:
        raise UnsafeArchive(f"{label}: not a valid zip archive ({err})") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError, RuntimeError,
            zlib.error, lzma.LZMAError) as err:
        raise UnsafeArchive(f"{label}: not a valid zip archive ({err})") from None


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tree: _Tree) -> None:
    tree.count(info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchive(f"{tree.label}: member {info.filename!r} is a symbolic link; refused")
    if info.is_dir():
        tree.add_dir(info.filename)
        return
    with zf.open(info) as src:  # sizes are counted as written: a zip's declared sizes can lie
        tree.add_file(info.filename, src, info.create_system == 3 and bool(mode & 0o100), info.file_size)


def extract(path: Path, dest: Path, label: str | None = None, limits: Limits | None = None,
            hasher: FileHasher | None = None) -> str:
    """Extract the archive at ``path`` into the empty directory ``dest``; return the format.

    ``label`` names the archive in messages (the URL's file name, not our temp name). With a
    ``hasher``, every regular file written is hashed on the way (its results feed the tree digest).
    Raises UnsafeArchive for anything the archive is to blame for (exit 9), InstallError for
    the filesystem's trouble (exit 8: full, read-only, permission).
    """
    label = label or path.name
    limits = limits or Limits()
    fmt = sniff(path, label)
    if fmt == "zip":
        _extract_zip(path, dest, label, limits, hasher)
    else:
        _extract_tar(path, dest, fmt, label, limits, hasher)
    return fmt


def select(extracted: Path, path_in_archive: str, archive_name: str) -> Path:
    """The member OCR-D copies to ``<location>/<name>``: ``.`` is the whole archive.

    The path is walked component by component without following links: a symbolic link on
    the way (or at the end) is refused. A selected directory must hold no link leading out of
    it (inside the archive ``m/up -> ..`` is fine; installed as the model, it is not).
    """
    rel = _safe_rel(path_in_archive, archive_name) if path_in_archive not in ("", ".") else PurePosixPath()
    chosen = extracted
    for i, part in enumerate(rel.parts):
        chosen = chosen / part
        try:
            st = os.lstat(chosen)
        except OSError:
            st = None
        last = i == len(rel.parts) - 1
        if st is None or (not last and not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode)):
            top = sorted(p.name for p in extracted.iterdir())[:10]
            raise UnsafeArchive(f"{archive_name}: path_in_archive {path_in_archive!r} is not in the archive "
                                f"(top-level entries: {', '.join(top) or 'none'})")
        if stat.S_ISLNK(st.st_mode):
            where = "/".join(rel.parts[:i + 1])
            what = "is a symbolic link" if last else f"passes through the symbolic link {where!r}"
            raise UnsafeArchive(f"{archive_name}: path_in_archive {path_in_archive!r} {what}; refused (name "
                                "the real path inside the archive)")
    if rel.parts and chosen.is_dir():
        _links_stay_inside(chosen, "/".join(rel.parts), path_in_archive, archive_name)
    return chosen


def _links_stay_inside(root: Path, prefix: str, path_in_archive: str, archive_name: str) -> None:
    entries = walk_tree(root)
    kinds: dict[str, object] = {"": _DIR}
    links = []
    for rel, st, path in entries:
        if stat.S_ISLNK(st.st_mode):
            kinds[rel] = os.readlink(path)
            links.append(rel)
        else:
            kinds[rel] = _DIR if stat.S_ISDIR(st.st_mode) else _FILE
    budget = [STEPS_PER_ARCHIVE]
    for rel in links:
        target = kinds[rel]
        assert isinstance(target, str)
        why = _resolve(kinds, rel.split("/")[:-1], target, budget)
        if why is not None:
            raise UnsafeArchive(f"{archive_name}: link {prefix + '/' + rel!r} -> {target!r} leads out of "
                                f"path_in_archive {path_in_archive!r} ({why.replace('the archive', 'it')}); "
                                "refused")
