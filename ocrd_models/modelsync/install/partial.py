"""Downloads kept across processes, so that a large model is never fetched twice from byte 0.

A download that stops before it is complete (its retries used up, Ctrl-C, SIGKILL, a reboot)
leaves its bytes and a small state record in the cache, under ``partial/<key>.<pid>/`` (``data``
and ``state.json``): the URL as fetched, the server's validator (a strong ``ETag``, or a
``Last-Modified`` the server's clock vouches for), the file's total size and the byte ranges on
disk (a segmented download leaves several). The next download of the same URL (and expected
digest) in any process claims it and asks only for the missing ranges, with ``If-Range``: a server
whose file changed answers with the whole new file, so old and new bytes are never mixed, and the
final SHA-256 check still decides.

Ownership needs no lock (flock does nothing on NFS): the owner's pid is part of the directory's
name; a process claims a partial whose owner is gone by renaming it to its own pid, which only one
claimant can do. A partial of a live process is left alone (that download goes on there, and this
one starts afresh in a private file). A download moves into a partial once it has run for a few
seconds (quick ones never do: many small models pay nothing), or when it stops. While it runs its
record is renewed every few seconds without flushing the data (which would slow every large
download down): those records are
trusted only within the same boot, since a killed process's bytes are safe in the page cache but a
power loss may take them back. The record written when a download stops (a failure, Ctrl-C) comes
after the data was flushed to disk, and survives a reboot.
Partials older than ``max_age`` seconds, without a state record, or of another validator are
discarded; ``cache prune`` removes abandoned ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from ..atomic import pid_alive, remove_path, write_text_atomic

DEFAULT_MAX_AGE = 7 * 86400.0  # seconds a partial download is kept for a resume
MAX_RECORD_BYTES = 64 * 1024  # a state record is a few hundred bytes: anything larger is not ours
_active: set[Path] = set()  # partials a download of this process is writing now
_lock = threading.Lock()


@dataclass(frozen=True)
class ResumeState:
    """What a resume needs: the bytes on disk and what guards them."""

    url: str  # as requested (after mirrors, before redirects)
    size: int  # bytes of ``data`` flushed to disk and known good
    total: int | None  # the whole file's length
    etag: str | None
    last_modified: str | None
    date_validator: bool  # Last-Modified is strong: the response's Date was at least 1 s later
    boot: str = ""  # the boot the record was written in
    durable: bool = False  # the data was flushed to disk before the record: it survives a reboot
    ranges: tuple[tuple[int, int], ...] = ()  # [start, end) on disk, sorted; () means ((0, size),)

    def on_disk(self) -> tuple[tuple[int, int], ...]:
        """The byte ranges on disk."""
        return self.ranges or (((0, self.size),) if self.size else ())

    def end(self) -> int:
        """Where the last byte on disk ends."""
        return max((e for _, e in self.on_disk()), default=0)


class Partial:
    """A partial download owned by this process: its ``data`` file and the ``state`` it resumes from."""

    def __init__(self, directory: Path, state: ResumeState | None):
        self.directory = directory
        self.state = state  # None: nothing to resume, ``data`` is empty

    @property
    def data(self) -> Path:
        """The file the download writes to (at byte offsets; its first ``state.size`` bytes are kept)."""
        return self.directory / "data"

    def save(self, state: ResumeState, fd: int | None = None) -> None:
        """Record ``state``. With ``fd`` (the open data file) the data is flushed to disk first and the record
        holds across a reboot; without, only within this boot (see the module docstring)."""
        if fd is not None:
            os.fdatasync(fd)
        state = replace(state, boot=boot_id(), durable=fd is not None)
        write_text_atomic(self.directory / "state.json", json.dumps(asdict(state)), durable=fd is not None)
        self.state = state

    def reset(self) -> None:
        """The bytes are being replaced from byte 0: the record no longer describes them."""
        (self.directory / "state.json").unlink(missing_ok=True)
        self.state = None

    def release(self) -> None:
        """This process is done with it (kept for a later resume, or gone)."""
        with _lock:
            _active.discard(self.directory)

    def discard(self) -> None:
        """Forget it: nothing of it is resumed."""
        try:
            remove_path(self.directory)
        finally:
            self.release()


class PartialStore:
    """The partial downloads under ``root`` (``<cache>/partial``)."""

    def __init__(self, root: Path, max_age: float = DEFAULT_MAX_AGE):
        self.root, self.max_age = root, max_age

    @staticmethod
    def key(url: str, expected_sha256: str | None) -> str:
        """Partials are kept per URL and expected digest (a pin that changed never resumes old bytes)."""
        return hashlib.sha256(f"{url}\0{expected_sha256 or ''}".encode()).hexdigest()[:32]

    def resume(self, url: str, expected_sha256: str | None) -> Partial | None:
        """A partial download of ``url`` an ended download left, claimed by this process to resume it; None
        when there is none (or only one another live process, or thread, is writing)."""
        key = self.key(url, expected_sha256)
        mine = self.root / f"{key}.{os.getpid()}"
        with _lock:
            if mine in _active or not self.root.is_dir():
                return None
            for found in [mine] + sorted(p for p in self.root.glob(f"{key}.*") if p != mine):
                state = self._take(found, mine, url)
                if state is not None:
                    _active.add(mine)
                    return Partial(mine, state)
        return None

    def adopt(self, data: Path, url: str, expected_sha256: str | None) -> Partial | None:
        """Keep the download being written to ``data`` for a resume: the file moves into a new partial of
        this process (an open descriptor keeps writing to it). None when another live process (or thread)
        keeps one for this URL already: the download stays private."""
        key = self.key(url, expected_sha256)
        mine = self.root / f"{key}.{os.getpid()}"
        with _lock:
            if mine in _active or any(_owner(p.name) not in (None, os.getpid()) and pid_alive(_owner(p.name))
                                      for p in self.root.glob(f"{key}.*")):
                return None
            remove_path(mine)  # a leftover that could not be resumed
            mine.mkdir(parents=True)
            os.rename(data, mine / "data")
            _active.add(mine)
        return Partial(mine, None)

    def _take(self, found: Path, mine: Path, url: str) -> ResumeState | None:
        """The state of ``found`` once it is ``mine`` (renamed, if an ended process left it), or None (it is
        another live process's, gone, or not resumable: then it is removed)."""
        owner = _owner(found.name)
        if owner is None or found.is_symlink() or not found.exists():
            return None  # not ours: a link is never followed (what it points to is not the cache's)
        if found != mine:
            if pid_alive(owner):
                return None
            try:
                os.rename(found, mine)  # atomic: of two claimants, one wins and the other finds nothing
            except OSError:
                return None
        state = self._usable(mine, url)
        if state is None:
            remove_path(mine)
        return state

    def _usable(self, directory: Path, url: str) -> ResumeState | None:
        """The claimed partial's state, its data cut to the recorded size; None if it cannot be resumed."""
        record, data = directory / "state.json", directory / "data"
        try:
            if not (stat.S_ISDIR(os.lstat(directory).st_mode) and _own_file(record) and _own_file(data)):
                return None  # only files of ours are read or cut: never through a link, never a hardlink
            st = os.lstat(record)
            if time.time() - st.st_mtime > self.max_age or st.st_size > MAX_RECORD_BYTES:
                return None
            state = _state(json.loads(record.read_text(encoding="utf-8")))
            if state is None or state.url != url or not (state.etag or state.date_validator):
                return None
            if not state.durable and (not state.boot or state.boot != boot_id()):
                return None  # written without a flush, before a reboot: the bytes may not be there
            fd = os.open(data, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                st = os.fstat(fd)  # the file opened, not the name checked above
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size < state.end():
                    return None
                if _holes(fd, state.on_disk()):
                    return None  # a range the record claims was never written (a sparse file's hole)
                os.ftruncate(fd, state.end())  # bytes after the record may not have reached the disk
            finally:
                os.close(fd)
        except (OSError, ValueError, TypeError):
            return None
        return state

    def abandoned(self) -> list[Path]:
        """Partials whose owner process is gone (what ``cache prune`` removes)."""
        if not self.root.is_dir():
            return []
        return [p for p in sorted(self.root.iterdir())
                if not p.is_symlink() and (_owner(p.name) is None or not pid_alive(_owner(p.name)))]


def _holes(fd: int, ranges) -> bool:
    """Whether a hole lies inside one of ``ranges`` of the open file (SEEK_HOLE; a filesystem without it
    reports none). Segments are written at their offsets, so a record that claims bytes never written
    would otherwise resume zeros."""
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_hole is None:
        return False
    for start, end in ranges:
        try:
            if os.lseek(fd, start, seek_hole) < end:
                return True
        except OSError:  # ENXIO: start at or past the end of the file
            return True
    return False


def _own_file(path: Path) -> bool:
    """A regular file with no other name: a link or a hardlink planted in the cache never leads us outside."""
    st = os.lstat(path)
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


def _state(doc: object) -> ResumeState | None:
    """A record read back, if every field has its type and the sizes hold together; None otherwise."""
    fields = set(ResumeState.__dataclass_fields__)
    if not isinstance(doc, dict) or set(doc) not in (fields, fields - {"ranges"}):
        return None
    count = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    text = lambda v: v is None or isinstance(v, str)  # noqa: E731
    ranges = _ranges(doc.get("ranges", []), doc["total"])
    ok = (isinstance(doc["url"], str) and count(doc["size"]) and doc["size"] >= 0 and ranges is not None
          and (doc["size"] > 0 or ranges)
          and (doc["total"] is None or (count(doc["total"]) and doc["total"] >= doc["size"]))
          and (not ranges or doc["size"] == (ranges[0][1] if ranges[0][0] == 0 else 0))
          and text(doc["etag"]) and text(doc["last_modified"]) and isinstance(doc["date_validator"], bool)
          and isinstance(doc["boot"], str) and isinstance(doc["durable"], bool))
    return ResumeState(**{**doc, "ranges": tuple(ranges or ())}) if ok else None


def _ranges(value: object, total: object) -> list[tuple[int, int]] | None:
    """Recorded ranges, if they are sorted, apart and within the file; None otherwise."""
    if not isinstance(value, list) or len(value) > 4096:
        return None
    out: list[tuple[int, int]] = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item)):
            return None
        start, end = item
        if not (0 <= start < end) or (out and start <= out[-1][1]) or not isinstance(total, int) or end > total:
            return None
        out.append((start, end))
    return out


def _owner(name: str) -> int | None:
    """The pid in a partial's name (``<key>.<pid>``); None when it names no possible process."""
    head, _, pid = name.rpartition(".")
    return int(pid) if head and pid.isascii() and pid.isdigit() and 0 < int(pid) < 1 << 31 else None



@lru_cache(maxsize=1)
def boot_id() -> str:
    """This boot's id (Linux); empty elsewhere, where a record counts only if it was flushed."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
