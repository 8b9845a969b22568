"""Known resources by processor, from four sources with one precedence rule.

Highest first (README, "Registry precedence"):

1. ``manifest``: an entry written inline in models.toml (a table with ``url``);
2. ``user-database``: OCR-D's ``$XDG_CONFIG_HOME/ocrd/resources.yml`` (read only);
3. ``processor``: an installed processor's own ``--dump-json`` list;
4. ``bundled``: the index generated from real ocrd-tool.json files, shipped with us.

For one (processor, name) the highest source that knows the name wins, whole: fields
are never mixed between sources.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Iterable

from .resource import ResourceEntry
from .settings import TESSEROCR_PREFIX, TESSEROCR_RECOGNIZE, Environment

# `ocrd resmgr list-installed` writes stubs with this url for files of unknown origin
# (ocrd/resource_manager.py add_to_user_database); OCR-D skips them when downloading, and so do we.
OCRD_UNKNOWN_URL = "???"

_PRECEDENCE = {"manifest": 0, "user-database": 1, "processor": 2, "bundled": 3}


def canonical_processor(exe: str) -> str:
    """The processor whose resources ``exe`` uses: all ocrd-tesserocr-* share recognize's."""
    return TESSEROCR_RECOGNIZE if exe.startswith(TESSEROCR_PREFIX) else exe


@cache
def bundled_index() -> dict:
    """The committed index (``data/registry.json``), parsed once per process."""
    text = importlib_resources.files(__package__).joinpath("data/registry.json").read_text("utf-8")
    return json.loads(text)


class Registry:
    """Resource entries of every source, merged by precedence."""

    def __init__(self) -> None:
        # processor -> name -> entry, per source
        self._layers: dict[str, dict[str, dict[str, ResourceEntry]]] = {s: {} for s in _PRECEDENCE}
        self._locations: dict[str, list[str]] = {}
        self._known_processors: set[str] = set()
        self.warnings: list[str] = []

    # -- building -----------------------------------------------------------------
    def add(self, entry: ResourceEntry) -> None:
        """Add one entry to the layer of its ``source``."""
        proc = canonical_processor(entry.processor)
        self._layers[entry.source].setdefault(proc, {})[entry.name] = entry
        self._known_processors.add(entry.processor)

    def add_tool(self, exe: str, tool: dict, source: str) -> None:
        """Add an ocrd-tool ``tools.<exe>`` object (bundled index or ``--dump-json``)."""
        self._known_processors.add(exe)
        if tool.get("resource_locations"):
            self._locations[exe] = list(tool["resource_locations"])
        for raw in tool.get("resources") or []:
            if isinstance(raw, dict) and raw.get("url") == OCRD_UNKNOWN_URL:
                continue  # OCR-D's stub for a file it found but cannot attribute: nothing to download
            try:
                self.add(ResourceEntry.from_ocrd(exe, raw, source))
            except (KeyError, TypeError, ValueError):
                self.warnings.append(f"{source}: skipped a malformed resource entry of {exe}: {raw!r:.120}")

    @classmethod
    def load(cls, env: Environment, *, user_database: bool = True) -> "Registry":
        """The bundled index plus, if present, OCR-D's user database."""
        reg = cls()
        for exe, tool in bundled_index()["processors"].items():
            reg.add_tool(exe, tool, "bundled")
        if user_database:
            reg.load_user_database(env.ocrd_user_database)
        return reg

    def load_user_database(self, path: Path) -> None:
        """Read OCR-D's ``resources.yml`` ({exe: [entry, ...]}); never written by us."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as err:
            self.warnings.append(f"cannot read OCR-D user database {path}: {err.strerror}")
            return
        import yaml  # only paid for when the file exists

        # libyaml's loader where PyYAML has it: the pure-Python one is ~8x slower (60 ms for 200 entries)
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        try:
            data = yaml.load(text, Loader=loader) or {}  # noqa: S506 - a safe loader
        except yaml.YAMLError as err:
            self.warnings.append(f"ignored OCR-D user database {path}: not valid YAML ({err})")
            return
        if not isinstance(data, dict):
            self.warnings.append(f"ignored OCR-D user database {path}: not a mapping of processors")
            return
        for exe, entries in data.items():
            self.add_tool(str(exe), {"resources": entries if isinstance(entries, list) else []}, "user-database")

    def add_processor_answers(self, answers: dict[str, dict]) -> None:
        """Add the ``--dump-json`` answers of installed processors."""
        for exe, tool in answers.items():
            self.add_tool(exe, tool, "processor")

    # -- queries ------------------------------------------------------------------
    def lookup(self, processor: str, name: str) -> ResourceEntry | None:
        """The winning entry for (processor, name), or None."""
        proc = canonical_processor(processor)
        for source in _PRECEDENCE:
            entry = self._layers[source].get(proc, {}).get(name)
            if entry is not None:
                return entry
        return None

    def resources(self, processor: str) -> list[ResourceEntry]:
        """All winning entries of a processor, in source order (highest layer's order first)."""
        proc = canonical_processor(processor)
        seen: dict[str, ResourceEntry] = {}
        for source in _PRECEDENCE:
            for name, entry in self._layers[source].get(proc, {}).items():
                seen.setdefault(name, entry)
        return list(seen.values())

    def shadowed(self, processor: str, name: str) -> list[ResourceEntry]:
        """Entries of lower sources that the winner hides (for ``available`` to explain)."""
        proc = canonical_processor(processor)
        found = [self._layers[s].get(proc, {}).get(name) for s in _PRECEDENCE]
        found = [e for e in found if e is not None]
        return found[1:]

    def processors(self) -> list[str]:
        """Every processor any source knows, sorted."""
        return sorted(self._known_processors)

    def processors_with_resources(self) -> list[str]:
        """Processors that have at least one known resource, sorted."""
        procs = {p for layer in self._layers.values() for p, entries in layer.items() if entries}
        return sorted(procs)

    def knows_processor(self, exe: str) -> bool:
        """True if any source names this processor (or it shares tesserocr's resources)."""
        return exe in self._known_processors or canonical_processor(exe) in self._known_processors

    def resource_locations(self, processor: str) -> list[str]:
        """The tool's ``resource_locations`` (empty when it sets none)."""
        return self._locations.get(processor) or self._locations.get(canonical_processor(processor), [])

    def suggest_processors(self, exe: str) -> list[str]:
        """Close matches among known processor names."""
        return difflib.get_close_matches(exe, self.processors(), n=3, cutoff=0.6)

    def suggest_names(self, processor: str, name: str) -> list[str]:
        """Close matches among the processor's resource names."""
        names = [e.name for e in self.resources(processor)]
        matches = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        lowered = [n for n in names if n.lower() == name.lower() and n not in matches]
        return lowered + matches


def did_you_mean(options: Iterable[str]) -> str:
    """Render suggestions as a sentence, or an empty string."""
    opts = list(options)
    if not opts:
        return ""
    return " Did you mean " + " or ".join(repr(o) for o in opts) + "?"
