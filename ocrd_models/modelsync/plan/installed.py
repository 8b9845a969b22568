"""The machine-wide view of what is installed (``list-installed``): every resource in OCR-D's data and
system locations and in the module directories of processors installed here, whoever put it there."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from ..config import Environment
from ..digest import walk_tree
from ..errors import ModelsyncError
from ..resources import processors
from ..resources.index import ResourceIndex, canonical_processor
from ..resources.resolve import Wanted
from ..spec.lockfile import Lockfile
from .locations import Locations
from .records import RecordStore


@dataclass(frozen=True)
class InstalledRow:
    """One resource found in an OCR-D location."""

    processor: str
    name: str
    location: str
    path: str
    size: int
    is_dir: bool
    known: bool  # the registry knows this name for the processor
    recorded: str  # "verified" (our record, unchanged) | "changed" (our record, stat differs) | "" (not ours)


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size
    # walk_tree is a loop (os.walk recurses: a tree nested deeper than the recursion limit would raise)
    return sum(st.st_size for _, st, _ in walk_tree(path) if stat.S_ISREG(st.st_mode))


def list_installed(env: Environment, project_dir: Path) -> list[InstalledRow]:
    """Every resource in the data and system locations, and in module dirs we can resolve cheaply."""
    reg = ResourceIndex.load(env)
    locs = Locations(env, project_dir, reg)
    records = RecordStore(env.state_dir)
    dirs: list[tuple[str, str, Path]] = []
    for kind, root in (("data", env.ocrd_data_dir), ("system", env.ocrd_system_dir)):
        if root.is_dir():
            for sub in sorted(root.iterdir()):
                if sub.is_dir():
                    dirs.append((sub.name, kind, sub))
    # Module dirs: tessdata via TESSDATA_PREFIX, others only for processors installed here.
    mods = {canonical_processor(p) for p in reg.processors_with_resources()}
    for proc in sorted(mods):
        if processors.find_executable(proc, env) or (proc == "ocrd-tesserocr-recognize" and env.tessdata_prefix):
            mod = locs.module_dir(proc, required=False)
            if mod is not None and mod.is_dir():
                dirs.append((proc, "module", mod))
    rows = []
    seen: set[Path] = set()
    for proc, kind, folder in dirs:
        known = {e.name for e in reg.resources(proc)}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or entry in seen:
                continue
            seen.add(entry)
            rec = records.get(entry)
            state = "" if rec is None else ("verified" if rec.is_fresh() else "changed")
            try:
                size = _size(entry)
            except OSError:
                continue
            rows.append(InstalledRow(proc, entry.name, kind, str(entry), size, entry.is_dir(), entry.name in known,
                                     state))
    return rows


def undeclared_installs(lock: Lockfile | None, wanted: list[Wanted], locations: Locations,
                        records: RecordStore) -> dict[tuple[str, str], Path]:
    """Locked resources models.toml no longer declares that modelsync installed (its record): their
    paths, for ``--prune`` to remove (if nobody changed them) and the lock to keep until then."""
    keys = {w.key for w in wanted}
    out = {}
    for e in (lock.entries if lock else ()):
        if e.key not in keys:
            try:
                path = locations.directory(e.location, e.processor) / e.name
            except ModelsyncError:
                continue  # its location cannot be found on this machine: nothing of ours there
            if records.get(path) is not None:  # a changed one is reported by --prune, not removed
                out[e.key] = path
    return out
