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


def tree_digest(root: Path, on_bytes: Callable[[int], None] | None = None) -> tuple[str, dict[str, StatSig]]:
    """Digest of a directory tree, plus the stat signature of each regular file in it."""
    import stat as statmod

    lines: list[str] = []
    sigs: dict[str, StatSig] = {}
    for rel, st, path in walk_tree(root):
        if statmod.S_ISDIR(st.st_mode):
            lines.append(f"D {rel}")
        elif statmod.S_ISLNK(st.st_mode):
            lines.append(f"L {rel} {os.readlink(path)}")
        elif statmod.S_ISREG(st.st_mode):
            lines.append(f"F {rel} {st.st_size} {sha256_file(path, on_bytes)}")
            sigs[rel] = StatSig.of(st)
        else:
            lines.append(f"O {rel}")  # sockets, fifos: never produced by us, but must change the digest
    blob = "\n".join(lines).encode("utf-8", "surrogateescape")
    return hashlib.sha256(blob).hexdigest(), sigs


def digest_path(path: Path, on_bytes: Callable[[int], None] | None = None) -> tuple[str, dict[str, StatSig]]:
    """Digest of a file (its SHA-256) or a tree; stat signatures keyed by relpath ('' for a file)."""
    st = path.stat()
    if path.is_dir():
        return tree_digest(path, on_bytes)
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
