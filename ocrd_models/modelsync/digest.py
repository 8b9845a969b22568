"""SHA-256 of files and a deterministic digest of directory trees.

Tree digest (recorded as ``installed_sha256`` for archives and directories): the
SHA-256 of UTF-8 lines, one per entry below the root, sorted by relative POSIX path:

    D <relpath>                 a directory
    F <relpath> <size> <sha256> a regular file
    L <relpath> <target>        a symbolic link (its target as stored)

Permissions and times are left out so the digest is the same on every machine.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CHUNK = 1 << 20  # 1 MiB reads: fewer syscalls, hashing stays in C


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            h.update(view[:n])
            if on_bytes:
                on_bytes(n)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class StatSig:
    """What we trust a file by between hashes: size, mtime_ns and inode."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> "StatSig":
        """From an ``os.stat`` result."""
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)

    def to_list(self) -> list[int]:
        """Compact JSON form."""
        return [self.size, self.mtime_ns, self.ino]


def walk_tree(root: Path) -> list[tuple[str, os.stat_result, Path]]:
    """Every entry below ``root`` as (relpath, lstat, path), sorted by relpath; symlinks not followed."""
    out: list[tuple[str, os.stat_result, Path]] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for entry in it:
                rel = f"{prefix}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                out.append((rel, st, Path(entry.path)))
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), rel + "/"))
    out.sort(key=lambda t: t[0].encode("utf-8", "surrogateescape"))
    return out


Known = dict[str, tuple[int, str]]  # absolute path -> (size, sha256) of files we just wrote ourselves


def tree_digest(root: Path, on_bytes: Callable[[int], None] | None = None,
                known: Known | None = None) -> tuple[str, dict[str, StatSig]]:
    """Digest of a directory tree, plus the stat signature of each regular file in it.

    ``known`` holds hashes computed while the files were written (archive extraction into our
    private temp dir): those files are not read a second time.
    """
    import stat as statmod

    known = known or {}
    lines: list[str] = []
    sigs: dict[str, StatSig] = {}
    for rel, st, path in walk_tree(root):
        if statmod.S_ISDIR(st.st_mode):
            lines.append(f"D {rel}")
        elif statmod.S_ISLNK(st.st_mode):
            lines.append(f"L {rel} {os.readlink(path)}")
        elif statmod.S_ISREG(st.st_mode):
            size_sha = known.get(str(path))
            sha = size_sha[1] if size_sha and size_sha[0] == st.st_size else sha256_file(path, on_bytes)
            lines.append(f"F {rel} {st.st_size} {sha}")
            sigs[rel] = StatSig.of(st)
        else:
            lines.append(f"O {rel}")  # sockets, fifos: never produced by us, but must change the digest
    blob = "\n".join(lines).encode("utf-8", "surrogateescape")
    return hashlib.sha256(blob).hexdigest(), sigs


def digest_path(path: Path, on_bytes: Callable[[int], None] | None = None,
                known: Known | None = None) -> tuple[str, dict[str, StatSig]]:
    """Digest of a file (its SHA-256) or a tree; stat signatures keyed by relpath ('' for a file)."""
    st = path.stat()
    if path.is_dir():
        return tree_digest(path, on_bytes, known)
    return sha256_file(path, on_bytes), {"": StatSig.of(st)}


def current_sigs(path: Path) -> dict[str, StatSig] | None:
    """Stat signatures now, in the same shape as :func:`digest_path`; None if missing."""
    import stat as statmod

    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_dir():
        return {"": StatSig.of(st)}
    try:
        return {rel: StatSig.of(s) for rel, s, _ in walk_tree(path) if statmod.S_ISREG(s.st_mode)}
    except OSError:
        return None


class PipelinedSha256:
    """SHA-256 computed on a second thread while the caller keeps reading and writing.

    hashlib releases the GIL for large buffers, so hashing overlaps with network and disk
    I/O: a download costs max(I/O, hashing) instead of their sum. SHA-256 itself is serial
    (and, without CPU SHA extensions, the slowest stage at a few hundred MB/s).
    """

    _DONE = object()

    def __init__(self, depth: int = 2) -> None:
        import queue
        import threading

        self._q: "queue.Queue" = queue.Queue(maxsize=depth)  # bounds memory to depth chunks
        self._h = hashlib.sha256()
        self._thread = threading.Thread(target=self._run, name="modelsync-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is self._DONE:
                return
            if item is None:
                self._h = hashlib.sha256()  # reset
            else:
                self._h.update(item)

    def update(self, data: bytes) -> None:
        """Queue bytes for hashing (blocks when the hasher is ``depth`` chunks behind)."""
        self._q.put(data)

    def reset(self) -> None:
        """Start over (a download restarted from byte 0)."""
        self._q.put(None)

    def hexdigest(self) -> str:
        """Wait for every queued byte, stop the thread, return the digest."""
        self._q.put(self._DONE)
        self._thread.join()
        return self._h.hexdigest()

    def close(self) -> None:
        """Stop the thread without a result (on failure)."""
        if self._thread.is_alive():
            self._q.put(self._DONE)
            self._thread.join()

    def inline(self) -> "InlineSha256":
        """The same hash going on on the caller's thread (every queued byte hashed first): for a caller that
        reads its bytes back from a file and may hand over reused buffers."""
        self.close()
        return InlineSha256(self._h)


class InlineSha256:
    """The same interface as :class:`PipelinedSha256`, hashing on the caller's thread.

    For small downloads a helper thread costs more (start, hand-over, join) than it saves;
    several of them run in parallel anyway.
    """

    def __init__(self, state=None) -> None:
        self._h = state if state is not None else hashlib.sha256()  # state: a hashlib object to go on with

    def update(self, data: bytes) -> None:
        """Hash ``data`` now."""
        self._h.update(data)

    def reset(self) -> None:
        """Start over."""
        self._h = hashlib.sha256()

    def hexdigest(self) -> str:
        """The digest of everything given since the last reset."""
        return self._h.hexdigest()

    def close(self) -> None:
        """Nothing to stop."""


PIPELINE_FROM = 8 << 20  # bytes: below this, hashing inline beats handing chunks to a thread


def stream_hasher(size: int | None) -> "PipelinedSha256 | InlineSha256":
    """A hasher for a stream of ``size`` bytes (None: unknown, so possibly large)."""
    return InlineSha256() if size is not None and size < PIPELINE_FROM else PipelinedSha256()


class FileHasher:
    """SHA-256 of files being written one after another, computed on one helper thread.

    Extraction (decompression and writes, which release the GIL) runs on the caller's thread
    while this thread hashes what was written, so an archive's tree digest costs no second
    pass over the unpacked files. Results land in ``known`` (see :func:`tree_digest`).
    """

    def __init__(self, depth: int = 4) -> None:
        import queue
        import threading

        self.known: Known = {}
        self._q: "queue.Queue" = queue.Queue(maxsize=depth)  # bounds memory to ``depth`` chunks
        self._thread = threading.Thread(target=self._run, name="modelsync-filehash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        h, size = hashlib.sha256(), 0
        while True:
            item = self._q.get()
            if item is None:
                return
            path, data = item
            if isinstance(data, bytes):
                h.update(data)
                size += len(data)
            else:  # end of this file
                self.known[path] = (size, h.hexdigest())
                h, size = hashlib.sha256(), 0

    def feed(self, data: bytes) -> None:
        """Queue the next bytes of the file being written."""
        self._q.put(("", data))

    def end(self, path: Path) -> None:
        """The file being written is complete at ``path``."""
        self._q.put((str(path), False))

    def close(self) -> Known:
        """Wait for the queued bytes; return every finished file's (size, sha256)."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()
        return self.known
