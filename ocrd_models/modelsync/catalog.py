"""Machine-wide views: known resources (``available``) and what is installed (``list-installed``)."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from . import processors
from .digest import walk_tree
from .locations import Locations
from .records import RecordStore
from .registry import Registry, canonical_processor
from .resource import ResourceEntry
from .settings import Environment


def available(env: Environment, processor: str | None = None, *, ask_processors: bool = True
              ) -> tuple[Registry, list[ResourceEntry]]:
    """Known resources of one processor (or all), with installed processors' own lists merged in."""
    reg = Registry.load(env)
    if ask_processors:
        if processor:
            exes = [canonical_processor(processor)]
        else:
            exes = processors.executables_on_path(env)
        reg.add_processor_answers(processors.dump_many(exes, env))
    if processor is not None:
        return reg, reg.resources(processor)
    return reg, [e for p in reg.processors_with_resources() for e in reg.resources(p)]


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
    reg = Registry.load(env)
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
