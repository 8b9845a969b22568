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
from typing import Callable

from ..digest import digest_path
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
    implausible: str | None = None  # nothing vouches for it and it cannot be the model: why (plausible.py)


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
        return next((h for h in self.hits if h.path is path or h.path == path), None)


class DirListing:
    """Names in each directory, listed once per run: one scandir instead of a stat per candidate.

    Keyed by directory string; each name maps to whether it is a directory (following links).
    Names that do not resolve (dangling links) are left out: they are no model either.
    """

    def __init__(self) -> None:
        self._names: dict[str, dict[str, bool]] = {}

    def entries(self, folder: str) -> dict[str, bool]:
        """``{name: is_dir}`` of ``folder`` (empty when it cannot be listed)."""
        names = self._names.get(folder)
        if names is None:
            names = {}
            try:
                with os.scandir(folder) as it:
                    for e in it:
                        try:
                            if e.is_dir():
                                names[e.name] = True
                            elif not e.is_symlink() or os.path.exists(e.path):
                                names[e.name] = False
                        except OSError:
                            continue
            except OSError:
                pass
            self._names[folder] = names
        return names


@dataclass(frozen=True)
class _Route:
    """The precomputed search of one (processor, location): candidates and their directory strings."""

    target: Candidate
    target_dir: str
    search: tuple[tuple[Candidate, str], ...]
    on_path: bool
    target_dir_path: Path


class Scanner:
    """Observes many resources in one run: lookup orders, listings and routes computed once.

    With ``is_verified_link`` (the cache's answer to "is this file the very blob you verified for
    this SHA-256?"), such a file is trusted from two stats, without reading its install record.
    """

    def __init__(self, locations: Locations, records: RecordStore,
                 is_verified_link: Callable[[str, str], bool] | None = None) -> None:
        self.locations, self.records = locations, records
        self.listing = DirListing()
        self._routes: dict[tuple[str, str], _Route] = {}
        self._is_verified_link = is_verified_link

    def _route(self, processor: str, location: str) -> _Route:
        key = (processor, location)
        route = self._routes.get(key)
        if route is None:
            target = self.locations.target(location, processor)
            lookup = self.locations.lookup(processor)
            on_path = any(c.directory == target.directory for c in lookup)
            # An explicit directory OCR-D does not search still holds our install: look there last.
            cands = lookup if on_path else [*lookup, target]
            search, seen = [], set()
            for c in cands:
                d = os.path.abspath(c.directory)
                if d not in seen:
                    seen.add(d)
                    search.append((c, d))
            target_dir = os.path.abspath(target.directory)
            route = _Route(target, target_dir, tuple(search), on_path, Path(target_dir))
            self._routes[key] = route
        return route

    def observe(self, processor: str, name: str, location: str, expected: str | None,
                declared_size: int | None = None) -> Observation:
        """Scan the lookup order of one resource; hash only when a digest is expected and no fresh record vouches.

        With nothing expected (no lock, no pin), the first hit (the one the processor loads, which would be
        adopted) is checked for plausibility instead (:func:`plausible.implausible`)."""
        route = self._route(processor, location)
        hits: list[Hit] = []
        target_path = route.target_dir_path / name  # one Path object, shared with a hit at the target
        for cand, folder in route.search:
            is_dir = self.listing.entries(folder).get(name)
            if is_dir is None:
                continue
            path = f"{folder}{os.sep}{name}"
            as_path = target_path if folder == route.target_dir else Path(path)
            if expected is not None and not is_dir and self._is_verified_link is not None \
                    and self._is_verified_link(path, expected):
                hits.append(Hit(cand, as_path, False, expected, True))
                continue
            digest, trusted = None, False
            rec = self.records.get(path)
            if rec is not None and rec.is_dir == is_dir and rec.is_fresh():
                digest, trusted = rec.digest, True
            elif expected is not None:
                try:
                    digest = digest_path(Path(path))[0]
                except OSError:
                    digest = None
            why = None
            if expected is None and not hits and not trusted:  # a fresh install record of ours vouches for it
                from .plausible import implausible

                why = implausible(Path(path), declared_size=declared_size)
            hits.append(Hit(cand, as_path, is_dir, digest, trusted, why))
        return Observation(route.target, target_path, tuple(hits), route.on_path)


def observe(processor: str, name: str, location: str, expected: str | None,
            locations: Locations, records: RecordStore) -> Observation:
    """Scan the lookup order of one resource (see :meth:`Scanner.observe`; use a Scanner for many)."""
    return Scanner(locations, records).observe(processor, name, location, expected)
