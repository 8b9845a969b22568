"""Install records: the completion marker written after a resource is in place.

Records live under ``<state dir>/records/`` (never inside OCR-D's resource directories, which
``ocrd resmgr list-installed`` lists), one index file per installed-to directory
(``records/dirs/<sha256 of the directory>.json``, ``{"dir": ..., "records": {name: record}}``).
A record holds the digest and the stat signatures (size, mtime_ns, inode) seen when the
resource was installed or last verified: while they are unchanged, the resource is trusted
without hashing.

One file per directory rather than per resource: creating a file on a journaling filesystem
costs more than the rest of a small model's install. A sync collects its
records in a :meth:`RecordStore.batch` and writes each directory's index once, after all
renames and before the lock (a crash before that leaves installed files without records: the
next run hashes them, as after a crash between a rename and its record). Writers of one index
take an ``flock`` on ``<index>.lock`` around read-merge-write, so concurrent syncs keep each
other's records. Records of older versions (``records/<aa>/<sha256 of the path>.json``) are
still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import failpoints
from ..atomic import sigint_deferred, write_text_atomic
from ..digest import StatSig, current_sigs
from ..errors import InstallError, filesystem_error


@dataclass
class InstallRecord:
    """What we know about one installed file or tree."""

    path: str
    processor: str
    name: str
    digest: str  # sha256 of the file, or the tree digest
    is_dir: bool
    sigs: dict[str, StatSig] = field(default_factory=dict)
    url: str | None = None
    sha256: str | None = None  # of the downloaded artifact, when known

    def to_dict(self) -> dict[str, Any]:
        """The record without its path (an index is keyed by name within one directory)."""
        return {"processor": self.processor, "name": self.name, "digest": self.digest, "is_dir": self.is_dir,
                "url": self.url, "sha256": self.sha256,
                "sigs": {k: v.to_list() for k, v in sorted(self.sigs.items())}}

    @classmethod
    def from_dict(cls, path: str, d: dict[str, Any]) -> "InstallRecord":
        """Deserialize (raises KeyError/TypeError/ValueError on garbage)."""
        return cls(path=path, processor=d["processor"], name=d["name"], digest=d["digest"],
                   is_dir=bool(d["is_dir"]), url=d.get("url"), sha256=d.get("sha256"),
                   sigs={k: StatSig(*v) for k, v in d["sigs"].items()})

    def to_json(self) -> str:
        """Serialize (the per-path form of older versions; tests and tools)."""
        return json.dumps({"path": self.path, **self.to_dict()}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "InstallRecord":
        """Deserialize the per-path form."""
        d = json.loads(text)
        return cls.from_dict(d["path"], d)

    def is_fresh(self) -> bool:
        """True when every file's size, mtime and inode are as recorded (no hashing)."""
        if not self.is_dir:  # the common case, without pathlib: one stat
            try:
                return {"": StatSig.of(os.stat(self.path))} == self.sigs
            except OSError:
                return False
        now = current_sigs(Path(self.path))
        return now is not None and now == self.sigs


_Changes = dict[str, "dict[str, Any] | None"]  # name -> record dict, or None to forget it


class RecordStore:
    """Records keyed by the absolute installed path, stored per directory (thread-safe)."""

    def __init__(self, state_dir: Path):
        self.root = state_dir / "records"
        self._root = str(self.root)
        self._dirs = f"{self._root}/dirs"
        self._mutex = threading.Lock()
        self._loaded: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}  # index file -> (stat, records)
        self._pending: dict[str, _Changes] | None = None  # directory -> changes, inside batch()
        self.write_errors: list[InstallError] = []  # index writes a batch could not make (disk full, ...)

    # -- where -----------------------------------------------------------------------------
    def _index_file(self, directory: str) -> str:
        return f"{self._dirs}/{hashlib.sha256(os.fsencode(directory)).hexdigest()}.json"

    def _legacy_file(self, abspath: str) -> str:
        key = hashlib.sha256(os.fsencode(abspath)).hexdigest()
        return f"{self._root}/{key[:2]}/{key}.json"

    # -- reading -----------------------------------------------------------------------------
    def _index(self, directory: str) -> dict[str, Any]:
        """The records of one directory, parsed once per change of its index file."""
        path = self._index_file(directory)
        try:
            st = os.stat(path)
        except OSError:
            return {}
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._mutex:
            hit = self._loaded.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
        records = _read_index(path, directory)[1]
        with self._mutex:
            self._loaded[path] = (sig, records)
        return records

    def get(self, path: Path | str) -> InstallRecord | None:
        """The record of ``path``, or None (missing or unreadable counts as none)."""
        abspath = os.path.abspath(path)
        directory, name = os.path.split(abspath)
        with self._mutex:
            changes = self._pending.get(directory) if self._pending is not None else None
            if changes is not None and name in changes:
                d = changes[name]
                return None if d is None else InstallRecord.from_dict(abspath, d)
        d = self._index(directory).get(name)
        if d is None:
            return self._legacy_get(abspath)
        try:
            return InstallRecord.from_dict(abspath, d)
        except (KeyError, TypeError, ValueError, AttributeError):  # a damaged entry counts as none
            return None

    def _legacy_get(self, abspath: str) -> InstallRecord | None:
        try:
            with open(self._legacy_file(abspath), encoding="utf-8") as fh:
                rec = InstallRecord.from_json(fh.read())
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return rec if rec.path == abspath else None

    # -- writing -----------------------------------------------------------------------------
    def put(self, record: InstallRecord) -> None:
        """Record an installed path (inside :meth:`batch`: when the batch ends)."""
        directory, name = os.path.split(os.path.abspath(record.path))
        self._change(directory, name, record.to_dict())

    def delete(self, path: Path | str) -> None:
        """Forget ``path``."""
        abspath = os.path.abspath(path)
        directory, name = os.path.split(abspath)
        self._change(directory, name, None)
        try:
            os.unlink(self._legacy_file(abspath))
        except FileNotFoundError:
            pass

    def _change(self, directory: str, name: str, d: dict[str, Any] | None) -> None:
        with self._mutex:
            if self._pending is not None:
                self._pending.setdefault(directory, {})[name] = d
                return
        self._write(directory, {name: d})

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Collect puts and deletes; write each directory's index once when the block ends (even by an
        exception: what was recorded is installed and verified)."""
        with self._mutex:
            outer = self._pending is None
            if outer:
                self._pending = {}
        try:
            yield
        finally:
            if outer:
                with self._mutex:
                    pending, self._pending = self._pending or {}, None
                with sigint_deferred():  # a Ctrl-C now must not leave installed models unrecorded
                    self._flush(pending)

    def _flush(self, pending: dict[str, _Changes]) -> None:
        for directory, changes in sorted(pending.items()):
            try:
                self._write(directory, changes)
            except InstallError as err:
                # Not raised from here: a Ctrl-C or another error may be on its way out, and
                # the caller still writes the lock for what was installed (write_errors).
                self.write_errors.append(err)

    def _write(self, directory: str, changes: _Changes) -> None:
        path = self._index_file(directory)
        failpoints.hit("index")
        try:
            os.makedirs(self._dirs, exist_ok=True)
            with _locked(path + ".lock"):
                records = _read_index(path, directory)[1]  # fresh: another process may have written meanwhile
                for name, d in changes.items():
                    if d is None:
                        records.pop(name, None)
                    else:
                        records[name] = d
                data = json.dumps({"dir": directory, "records": records}, separators=(",", ":"), sort_keys=True)
                write_text_atomic(Path(path), data)
        except OSError as err:
            raise filesystem_error(err, path, "write the install record") from None
        with self._mutex:
            self._loaded.pop(path, None)

    def all(self) -> list[InstallRecord]:
        """Every readable record."""
        out: dict[str, InstallRecord] = {}
        if not self.root.is_dir():
            return []
        for f in sorted(self.root.glob("??/*.json")):  # older versions' per-path records
            try:
                rec = InstallRecord.from_json(f.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            out[rec.path] = rec
        for f in sorted(Path(self._dirs).glob("*.json")):
            directory, records = _read_index(str(f))
            for name, d in records.items():
                path = os.path.join(directory, name)
                try:
                    out[path] = InstallRecord.from_dict(path, d)
                except (KeyError, TypeError, ValueError, AttributeError):  # one damaged entry, not the index
                    continue
        return [out[p] for p in sorted(out)]


def _read_index(path: str, directory: str | None = None) -> tuple[str, dict[str, Any]]:
    """(directory, records) of an index file; no records if it is missing, unreadable, or (given
    ``directory``) of another directory."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return "", {}
    if not isinstance(doc, dict) or not isinstance(doc.get("dir"), str) or not isinstance(doc.get("records"), dict):
        return "", {}
    if directory is not None and doc["dir"] != directory:
        return "", {}
    return doc["dir"], doc["records"]


@contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (a no-op where flock is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
