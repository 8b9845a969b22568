"""``import``: adopt what ``ocrd resmgr download`` (or a user) put into OCR-D's locations.

Files whose (processor, name) a registry source knows are declared in models.toml
(with their location when it is not the processor's default) and locked by hashing
each once; everything else is listed, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..spec import edit
from .installed import InstalledRow, list_installed
from .locations import Locations
from .plausible import implausible
from ..resources.index import ResourceIndex
from ..config import Environment

_ORDER = {"data": 0, "system": 1, "module": 2}  # OCR-D's lookup order among the scanned locations


@dataclass
class ImportResult:
    """What was declared and what was left alone."""

    declared: list[InstalledRow] = field(default_factory=list)
    unknown: list[InstalledRow] = field(default_factory=list)
    shadowed: list[InstalledRow] = field(default_factory=list)  # same name found again later in the lookup
    refused: list[tuple[InstalledRow, str]] = field(default_factory=list)  # cannot be the model: (row, why)


def scan(env: Environment, project_dir: Path) -> ImportResult:
    """Split installed resources into known ones (first hit per name, as OCR-D would use) and unknown ones."""
    result = ImportResult()
    index = ResourceIndex.load(env)
    seen: set[tuple[str, str]] = set()
    rows = sorted(list_installed(env, project_dir), key=lambda r: (r.processor, r.name, _ORDER.get(r.location, 9)))
    for row in rows:
        if not row.known:
            result.unknown.append(row)
        elif (row.processor, row.name) in seen:
            result.shadowed.append(row)
        else:
            seen.add((row.processor, row.name))
            entry = index.lookup(row.processor, row.name)  # the same check a sync would make
            why = implausible(Path(row.path), declared_size=entry.size if entry else None)
            if why:  # an empty or cut-short file is no model: not declared, not locked
                result.refused.append((row, why))
            else:
                result.declared.append(row)
    return result


def declare(manifest: Path, env: Environment, found: ImportResult) -> None:
    """Write the known resources into models.toml (created from the template if missing)."""
    if not manifest.exists():
        edit.init(manifest)
    locations = Locations(env, manifest.absolute().parent, ResourceIndex.load(env))
    by_proc: dict[str, list[dict]] = {}
    for row in found.declared:
        default = locations.default_location(row.processor)
        spec = {"name": row.name, "location": row.location if row.location != default else None}
        by_proc.setdefault(row.processor, []).append(spec)
    for proc, specs in sorted(by_proc.items()):
        edit.add(manifest, proc, specs, replace=False)  # a project's own declaration always wins
