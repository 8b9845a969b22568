"""Installed state: what a processor would find for each wanted resource, and whether it is right.

For each resource the scan looks in every directory of the processor's lookup order
(so a model put there by us, by ``ocrd resmgr`` or by hand counts), and, when a
digest is expected, decides whether each hit matches: trusting an install record
whose stat signatures are unchanged, hashing otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .digest import digest_path
from .locations import Candidate, Locations
from .records import RecordStore


@dataclass(frozen=True)
class Hit:
    """An existing ``<directory>/<name>`` along the lookup order."""

    candidate: Candidate
    path: Path
    is_dir: bool
    digest: str | None  # None when nothing was expected (not hashed) or unreadable
    trusted: bool  # digest came from a fresh install record


@dataclass(frozen=True)
class Observation:
    """Where a resource would be installed and what exists along its lookup order."""

    target: Candidate
    target_path: Path
    hits: tuple[Hit, ...] = ()
    on_lookup_path: bool = True  # False for an explicit directory OCR-D does not search
    notes: tuple[str, ...] = field(default_factory=tuple)

    def hit_at(self, path: Path) -> Hit | None:
        """The hit at ``path``, if any."""
        return next((h for h in self.hits if h.path == path), None)


class DirListing:
    """Names in each directory, listed once per run: one scandir instead of a stat per candidate."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def __contains__(self, path: Path) -> bool:
        folder = path.parent
        names = self._names.get(folder)
        if names is None:
            try:
                with os.scandir(folder) as it:
                    names = frozenset(e.name for e in it)
            except OSError:
                names = frozenset()
            self._names[folder] = names
        return path.name in names


def observe(processor: str, name: str, location: str, expected: str | None,
            locations: Locations, records: RecordStore, listing: DirListing | None = None) -> Observation:
    """Scan the lookup order of one resource; hash only when a digest is expected and no fresh record vouches.

    ``listing`` (shared across resources of one run) avoids a stat per candidate path.
    """
    target = locations.target(location, processor)
    target_path = target.directory / name
    lookup = locations.lookup(processor)
    on_path = any(c.directory == target.directory for c in lookup)
    # An explicit directory OCR-D does not search still holds our install: look there last.
    search = lookup if on_path else [*lookup, target]
    hits: list[Hit] = []
    seen: set[Path] = set()
    for cand in search:
        path = target_path if cand.directory == target.directory else cand.directory / name
        if path in seen or (listing is not None and path not in listing):
            continue
        seen.add(path)
        if not os.path.exists(path):  # a dangling symlink is not a model either
            continue
        is_dir = os.path.isdir(path)
        digest, trusted = None, False
        rec = records.get(path)
        if rec is not None and rec.is_dir == is_dir and rec.is_fresh():
            digest, trusted = rec.digest, True
        elif expected is not None:
            try:
                digest = digest_path(path)[0]
            except OSError:
                digest = None
        hits.append(Hit(cand, path, is_dir, digest, trusted))
    return Observation(target, target_path, tuple(hits), on_path)
