"""Install records: the completion marker written last, after a resource is in place.

One small JSON file per installed path under ``<state dir>/records/`` (never inside
OCR-D's resource directories, which ``ocrd resmgr list-installed`` lists). A record
holds the digest and the stat signatures (size, mtime_ns, inode) seen when the
resource was installed or last verified: while they are unchanged, the resource is
trusted without hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text_atomic
from .digest import StatSig, current_sigs


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

    def to_json(self) -> str:
        """Serialize."""
        d = {
            "path": self.path, "processor": self.processor, "name": self.name, "digest": self.digest,
            "is_dir": self.is_dir, "url": self.url, "sha256": self.sha256,
            "sigs": {k: v.to_list() for k, v in sorted(self.sigs.items())},
        }
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "InstallRecord":
        """Deserialize (raises ValueError/KeyError/TypeError on garbage)."""
        d = json.loads(text)
        return cls(
            path=d["path"], processor=d["processor"], name=d["name"], digest=d["digest"],
            is_dir=bool(d["is_dir"]), url=d.get("url"), sha256=d.get("sha256"),
            sigs={k: StatSig(*v) for k, v in d["sigs"].items()},
        )

    def is_fresh(self) -> bool:
        """True when every file's size, mtime and inode are as recorded (no hashing)."""
        if not self.is_dir:  # the common case, without pathlib: one stat
            try:
                return {"": StatSig.of(os.stat(self.path))} == self.sigs
            except OSError:
                return False
        now = current_sigs(Path(self.path))
        return now is not None and now == self.sigs


class RecordStore:
    """Records keyed by the absolute installed path."""

    def __init__(self, state_dir: Path):
        self.root = state_dir / "records"
        self._root = str(self.root)

    def _file(self, abspath: str) -> str:
        key = hashlib.sha256(os.fsencode(abspath)).hexdigest()
        return f"{self._root}/{key[:2]}/{key}.json"  # strings: this runs once per resource

    def get(self, path: Path | str) -> InstallRecord | None:
        """The record of ``path``, or None (missing or unreadable counts as none)."""
        abspath = os.path.abspath(path)
        try:
            fd = os.open(self._file(abspath), os.O_RDONLY)
            try:
                # Most records are tiny; one of a large tree lists every file, so read to the end.
                data = chunk = os.read(fd, 65536)
                while len(chunk) == 65536:
                    chunk = os.read(fd, 65536)
                    data += chunk
            finally:
                os.close(fd)
            rec = InstallRecord.from_json(data.decode("utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return rec if rec.path == abspath else None

    def put(self, record: InstallRecord) -> None:
        """Write a record atomically (the last step of an install)."""
        write_text_atomic(Path(self._file(os.path.abspath(record.path))), record.to_json())

    def delete(self, path: Path) -> None:
        """Forget ``path``."""
        Path(self._file(os.path.abspath(path))).unlink(missing_ok=True)

    def all(self) -> list[InstallRecord]:
        """Every readable record."""
        out = []
        if not self.root.is_dir():
            return out
        for f in sorted(self.root.glob("*/*.json")):
            try:
                out.append(InstallRecord.from_json(f.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out
