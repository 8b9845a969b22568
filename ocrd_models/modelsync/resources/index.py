"""Known resources by processor, from four sources with one precedence rule.

Highest first (README, "ResourceIndex precedence"):

1. ``manifest``: an entry written inline in models.toml (a table with ``url``);
2. ``user-database``: OCR-D's ``$XDG_CONFIG_HOME/ocrd/resources.yml`` (read only, as OCR-D reads it:
   entries OCR-D's schema rejects are skipped with a warning);
3. ``processor``: an installed processor's own ``--dump-json`` list;
4. ``bundled``: the index generated from real ocrd-tool.json files, shipped with us.

For one (processor, name) the highest source that knows the name wins, whole: fields
are never mixed between sources.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import stat
from functools import cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any, Iterable

from .entry import ResourceEntry
from ..config import TESSEROCR_PREFIX, TESSEROCR_RECOGNIZE, Environment, report_once

log = logging.getLogger(__name__)

# `ocrd resmgr list-installed` writes stubs with this url for files of unknown origin
# (ocrd/resource_manager.py add_to_user_database); OCR-D skips them when downloading, and so do we.
OCRD_UNKNOWN_URL = "???"

_PRECEDENCE = {"manifest": 0, "user-database": 1, "processor": 2, "bundled": 3}

# OCR-D's user database is read as `ocrd resmgr` reads it (ocrd/resource_manager.py load_resource_list:
# yaml.safe_load with timestamps kept as strings, `or {}`, then OcrdResourceListValidator). Bounds
# OCR-D lacks: a real file holds at most a few hundred entries (~100 kB, ~5000 YAML nodes); 1 MiB and
# 100 000 nodes (aliases counted at each use) keep a hostile file from taking the memory or the time
# of every command (parsing the worst file within these bounds takes about a second).
USER_DB_MAX_BYTES = 1024 * 1024
USER_DB_MAX_NODES = 100_000
# At most this many skipped entries are told one by one per file; the rest in one count.
USER_DB_MAX_TOLD = 10

# OCR-D's resource schema (ocrd_validators/ocrd_tool.schema.yml, tools.ocrd-*.resources.items; the
# user database is {^ocrd-.*: [item]} with no other keys): no other keys, these four required.
_FIELDS = ("url", "description", "name", "size", "type", "path_in_archive", "parameter_usage", "version_range")
_REQUIRED = ("url", "description", "name", "size")
_ENUMS = {"type": ("file", "directory", "archive"), "parameter_usage": ("as-is", "without-extension")}


def canonical_processor(exe: str) -> str:
    """The processor whose resources ``exe`` uses: all ocrd-tesserocr-* share recognize's."""
    return TESSEROCR_RECOGNIZE if exe.startswith(TESSEROCR_PREFIX) else exe


@cache
def bundled_index() -> dict:
    """The committed index (``data/registry.json``), parsed once per process."""
    text = importlib_resources.files("ocrd_models.modelsync").joinpath("data/registry.json").read_text("utf-8")
    return json.loads(text)


class ResourceIndex:
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
            except (KeyError, TypeError, ValueError, OverflowError):
                # Never the entry's repr: outside structures can be huge (or aliased many times over).
                self._warn(f"{source}: skipped a malformed resource entry of {exe}: {_entry_label(raw)}")

    @classmethod
    def load(cls, env: Environment, *, user_database: bool = True) -> "ResourceIndex":
        """The bundled index plus, if present, OCR-D's user database."""
        reg = cls()
        for exe, tool in bundled_index()["processors"].items():
            reg.add_tool(exe, tool, "bundled")
        if user_database:
            reg.load_user_database(env.ocrd_user_database)
        return reg

    def load_user_database(self, path: Path) -> None:
        """Read OCR-D's ``resources.yml`` ({exe: [entry, ...]}) as OCR-D reads it; never written by us.

        Entries OCR-D's schema rejects are skipped; every problem is a warning naming the file and
        the entry (logged once per process, collected in :attr:`warnings`). Nothing in the file can
        end the command: unreadable, oversized, non-UTF-8, invalid or exploding YAML is ignored with
        a warning."""
        text = _read_user_database(path, self._warn)
        if text is None:
            return
        data = _parse_user_database(path, text, self._warn)
        if not data:  # OCR-D: `safe_load(f) or {}`, so an empty document, [] or 0 are an empty database
            return
        if not isinstance(data, dict):
            self._warn(f"ignored OCR-D user database {path}: its top level is {_kind(data)}, not a mapping "
                       "of ocrd-* processors to lists of resources (`ocrd resmgr` refuses the file, too)")
            return
        skipped = 0
        for exe, entries in data.items():
            skipped += self._add_user_entries(path, exe, entries, told=skipped)
        if skipped:
            more = skipped - USER_DB_MAX_TOLD
            self._warn(f"OCR-D user database {path}: {skipped} invalid entr{'y' if skipped == 1 else 'ies'} "
                       f"skipped{f' ({more} not listed)' if more > 0 else ''}; `ocrd resmgr` refuses the whole "
                       "file (\"Resource list ... is invalid!\") until they are fixed")

    def _add_user_entries(self, path: Path, exe: Any, entries: Any, told: int) -> int:
        """Add one processor's valid entries; return how many were skipped (the first ones told)."""
        where = f"OCR-D user database {path}"
        if not isinstance(exe, str) or not exe.startswith("ocrd-"):
            self._warn_skip(told, f"{where}: key {_short(exe)} is not an ocrd-* processor name; "
                                  f"its {_count(entries)} skipped")
            return 1
        if not isinstance(entries, list):
            self._warn_skip(told, f"{where}: {_short(exe)} is {_kind(entries)}, not a list of resources; skipped")
            return 1
        skipped = 0
        seen: set[str] = set()
        self._known_processors.add(exe)
        for i, raw in enumerate(entries, 1):
            problems = entry_problems(raw)
            if problems:
                self._warn_skip(told + skipped, f"{where}: {_short(exe)} entry {i} {_entry_label(raw)}: "
                                                f"{'; '.join(problems)}; skipped")
                skipped += 1
                continue
            if raw["url"] == OCRD_UNKNOWN_URL:
                continue  # OCR-D's stub for a file it found but cannot attribute: nothing to download
            if raw["name"] in seen:  # OCR-D downloads the first of two entries of one name
                self._warn(f"{where}: {_short(exe)} entry {i} {_entry_label(raw)}: a second entry of this name; "
                           "ignored, as OCR-D uses the first")
                continue
            seen.add(raw["name"])
            self.add(ResourceEntry.from_ocrd(exe, dict(raw, size=_byte_count(raw["size"])), "user-database"))
        return skipped

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        report_once(log, message)

    def _warn_skip(self, told: int, message: str) -> None:
        """A skipped entry: told one by one up to USER_DB_MAX_TOLD per file, then only counted."""
        if told < USER_DB_MAX_TOLD:
            self._warn(message)
        else:
            self.warnings.append(message)

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


def entry_problems(raw: Any) -> list[str]:
    """Why OCR-D's resource schema rejects ``raw`` (empty when it accepts it)."""
    if not isinstance(raw, dict):
        return [f"is {_kind(raw)}, not a mapping"]
    problems = [f"unknown key {_short(k)}" for k in raw if k not in _FIELDS]
    problems += [f"no {k!r}" for k in _REQUIRED if k not in raw]
    for key in _FIELDS:
        if key not in raw:
            continue
        value = raw[key]
        if key == "size":
            # JSON Schema's number: an int or a float, never a bool
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                problems.append(f"'size' is {_kind(value)}, not a number")
        elif not isinstance(value, str):
            problems.append(f"{key!r} is {_kind(value)}, not a string")
        elif key in _ENUMS and value not in _ENUMS[key]:
            problems.append(f"{key!r} is {_short(value)}, not one of {', '.join(_ENUMS[key])}")
    if any(p.startswith("unknown key") for p in problems):
        problems.append(f"OCR-D allows only {', '.join(_FIELDS)}")
    return problems


def _read_user_database(path: Path, warn) -> str | None:
    """The file's text, or None (absent: silently; unreadable, not a regular file, too big or not
    UTF-8: with a warning). Opened without blocking, so a FIFO at the path cannot hang us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as err:
        warn(f"cannot read OCR-D user database {path}: {err.strerror}; ignored")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            warn(f"ignored OCR-D user database {path}: it is {kind} (OCR-D skips it too, but `ocrd resmgr` "
                 "cannot save its list there)")
            return None
        chunks, size = [], 0
        while size <= USER_DB_MAX_BYTES:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        warn(f"cannot read OCR-D user database {path}: {err.strerror}; ignored")
        return None
    finally:
        os.close(fd)
    if size > USER_DB_MAX_BYTES:
        warn(f"ignored OCR-D user database {path}: larger than {USER_DB_MAX_BYTES >> 20} MiB "
             "(a real one has a few kB)")
        return None
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        warn(f"ignored OCR-D user database {path}: not UTF-8 (byte 0x{data[err.start]:02x} on line {line}); "
             "`ocrd resmgr` fails on it too (UnicodeDecodeError). Save the file as UTF-8")
        return None


class _TooLarge(Exception):
    """The YAML document expands beyond USER_DB_MAX_NODES, or refers to itself."""


@cache
def _user_db_loader() -> type:
    """A safe YAML loader (libyaml's where available: much faster) that keeps timestamps as strings,
    as OCR-D's resource manager patches PyYAML to do; a subclass, so the
    process-wide SafeLoader is left alone."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = type("OcrdUserDatabaseLoader", (base,), {})
    loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.constructor.SafeConstructor.construct_yaml_str)
    return loader


def _parse_user_database(path: Path, text: str, warn) -> Any:
    """The YAML document as OCR-D would load it, or None (with a warning) when it is not valid YAML
    or would expand beyond the bounds (a "billion laughs" of aliases, a self-referring alias)."""
    import yaml

    loader = _user_db_loader()(text)
    try:
        _count_events(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _TooLarge as err:
        warn(f"ignored OCR-D user database {path}: {err}")
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        what = getattr(err, "problem", None) or getattr(err, "reason", None) or type(err).__name__
        warn(f"ignored OCR-D user database {path}: not valid YAML ({what}{at}); `ocrd resmgr` fails on it too")
    except (RecursionError, ValueError, OverflowError, TypeError) as err:
        # Nesting deeper than Python's stack, an integer of more digits than Python converts, ...
        warn(f"ignored OCR-D user database {path}: YAML that cannot be loaded ({type(err).__name__})")
    finally:
        loader.dispose()
    return None


def _count_events(text: str) -> None:
    """Raise _TooLarge if the document has more than USER_DB_MAX_NODES parser events: a cheap first
    pass (libyaml builds no nodes for it) that keeps composing a dense file bounded in time."""
    scanner = _user_db_loader()(text)
    try:
        count = 0
        while scanner.check_event():
            scanner.get_event()
            count += 1
            if count > USER_DB_MAX_NODES:
                raise _TooLarge(f"it holds more than {USER_DB_MAX_NODES:,} YAML nodes (a real one, a few "
                                "thousand)")
    finally:
        scanner.dispose()


def _check_expansion(root: Any) -> None:
    """Raise _TooLarge if constructing and walking the document from ``root`` would visit more than
    USER_DB_MAX_NODES nodes, each alias counted at each use (merge keys included), or if it refers
    to itself. Linear in the composed graph: every node's expanded size is computed once."""
    from yaml.nodes import MappingNode, SequenceNode

    def children(node: Any) -> list:
        if isinstance(node, SequenceNode):
            return node.value
        if isinstance(node, MappingNode):
            return [n for pair in node.value for n in pair]
        return []

    sizes: dict[int, int] = {}
    active: set[int] = set()  # started, not finished: an alias to one of them is a cycle
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:  # iterative: nesting must not reach Python's recursion limit
        node, finished = stack.pop()
        key = id(node)
        if finished:
            active.discard(key)
            total = 1 + sum(sizes[id(c)] for c in children(node))
            if total > USER_DB_MAX_NODES:
                raise _TooLarge(f"its aliases expand to more than {USER_DB_MAX_NODES:,} YAML nodes (a "
                                "\"billion laughs\": OCR-D itself may hang on it)")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            raise _TooLarge("an alias refers to the node that contains it (`ocrd resmgr` refuses it too)")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node) if id(c) not in sizes)


def _byte_count(size: int | float) -> int | None:
    """A size the schema allows (any number) as a count of bytes, or None when it cannot be one."""
    if isinstance(size, float):
        size = int(size) if math.isfinite(size) else -1
    return size if 0 <= size < 1 << 63 else None


def _kind(value: Any) -> str:
    """A few words for a value's type, never its content."""
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "empty"}
    return names.get(type(value), f"a {type(value).__name__}")


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a scalar from outside, cut to ``limit`` characters; only the kind of anything else."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)[:limit]
    return _kind(value)


def _count(entries: Any) -> str:
    if not isinstance(entries, list):
        return "value"
    return "1 entry" if len(entries) == 1 else f"{len(entries)} entries"


def _entry_label(raw: Any) -> str:
    """``('name')`` for an entry with a string name, else ``(no name)``: never the entry itself."""
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"({_short(name)})" if isinstance(name, str) else "(no name)"


def did_you_mean(options: Iterable[str]) -> str:
    """Render suggestions as a sentence, or an empty string."""
    opts = list(options)
    if not opts:
        return ""
    return " Did you mean " + " or ".join(repr(o) for o in opts) + "?"
