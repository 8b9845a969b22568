"""A known resource entry, as OCR-D's ocrd-tool.json schema defines it, plus its source."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Old OCR-D resource lists (core <= 2.x) call archives "tarball".
_TYPE_ALIASES = {"tarball": "archive"}

PYRNN_SUFFIXES = (".pyrnn", ".pyrnn.gz", ".pyrnn.bz2")


def is_pyrnn_name(name: str) -> bool:
    """True for the file names ocropy models go by (the legacy models ``sync`` may convert)."""
    return name.endswith(PYRNN_SUFFIXES)


@dataclass(frozen=True, slots=True)
class ResourceEntry:
    """One downloadable resource of one processor.

    ``size`` is the size the entry declares: a hint for display, never checked, since
    real entries carry wrong sizes.
    """

    processor: str
    name: str
    url: str
    description: str = ""
    size: int | None = None
    type: str = "file"
    path_in_archive: str = "."
    parameter_usage: str | None = None
    version_range: str | None = None
    source: str = "bundled"

    @classmethod
    def from_ocrd(cls, processor: str, raw: dict[str, Any], source: str) -> "ResourceEntry":
        """Build from an ocrd-tool.json / resources.yml entry, tolerating its known oddities."""
        rtype = str(raw.get("type") or "file")
        size = raw.get("size")
        return cls(
            processor=processor,
            name=str(raw["name"]),
            url=str(raw["url"]),
            description=str(raw.get("description") or ""),
            size=int(size) if isinstance(size, (int, float)) else None,
            type=_TYPE_ALIASES.get(rtype, rtype),
            path_in_archive=str(raw.get("path_in_archive") or "."),
            parameter_usage=raw.get("parameter_usage"),
            version_range=raw.get("version_range"),
            source=source,
        )

    def to_json(self) -> dict[str, Any]:
        """A compact dict without defaults (the bundled index format)."""
        d = asdict(self)
        defaults = {"description": "", "size": None, "type": "file", "path_in_archive": ".",
                    "parameter_usage": None, "version_range": None}
        return {k: v for k, v in d.items() if k not in defaults or v != defaults[k]}
