"""The planner: a pure function (wanted, lock, observations) -> plan of actions with reasons.

No I/O happens here: the observations (what exists, with digests) are gathered by
:mod:`.observe` beforehand, so plans are cheap to test and to render.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..spec.lockfile import LockEntry, Lockfile
from ..resources.resolve import Wanted
from .observe import Hit, Observation

INSTALL, UPDATE, KEEP, REMOVE = "install", "update", "keep", "remove"
# Ours is installed and right, but the processor finds a differing copy first and would load that:
# nothing sync may fix by itself (the copy is somebody's), and not "ok" anywhere (plan --check,
# status, resolve, sync and verify all say so).
SHADOWED = "shadowed"


@dataclass(frozen=True)
class Expectation:
    """The digests a resource must have, and whether its lock entry still applies."""

    sha256: str | None  # of the artifact to download
    installed: str | None  # of the installed file or tree
    locked: LockEntry | None  # the lock entry, if it still matches the declaration
    stale: LockEntry | None = None  # the lock entry, if the declaration changed since


def expectation(w: Wanted, locked: LockEntry | None) -> Expectation:
    """What the lock (if it still applies) or the manifest's pin says the bytes must be."""
    if locked is not None and locked.undeclared:
        locked = replace(locked, undeclared=None)  # declared again
    if locked is not None and locked.declaration() == w.declaration():
        pin_ok = w.sha256 is None or locked.sha256 in (None, w.sha256)
        if pin_ok:
            return Expectation(locked.sha256 or w.sha256, locked.expected_installed, locked)
    # A file's pin is its installed digest; a directory's pin is its tree digest; an archive's pin names
    # the download, which the installed tree can only be checked against by fetching it (see refetch).
    pinned_installed = w.sha256 if w.type in ("file", "directory") else None
    return Expectation(w.sha256, pinned_installed, None, locked)


@dataclass(frozen=True)
class Action:
    """One step of a plan."""

    kind: str  # install | update | keep | remove | shadowed
    processor: str
    name: str
    reason: str
    target: Path  # where the resource is (keep) or goes (install/update) or is removed from
    wanted: Wanted | None = None
    expect: Expectation | None = None
    found: Path | None = None  # what the processor would use now
    adopt: bool = False  # keep a resource nobody locked yet: digest it and lock it
    trusted: bool = False  # keep: a fresh install record vouched for it (no record to refresh)
    warnings: tuple[str, ...] = ()
    location_label: str = ""
    # install/update: fetch from the origin even though a copy is installed (--upgrade, or a pinned
    # archive whose installed tree nobody verified); the copy is replaced only if the bytes differ.
    refetch: bool = False
    undeclared: bool = False  # keep: locked and installed by us, no longer declared (--prune removes it)

    @property
    def key(self) -> tuple[str, str]:
        """(processor, name)."""
        return (self.processor, self.name)

    @property
    def changes(self) -> bool:
        """True for install, update and remove (and shadowed: not as locked, though sync cannot fix it)."""
        return self.kind != KEEP


@dataclass(frozen=True)
class Plan:
    """Actions in (processor, name) order."""

    actions: tuple[Action, ...] = field(default_factory=tuple)

    @property
    def changes(self) -> list[Action]:
        """Actions that would change something on disk."""
        return [a for a in self.actions if a.changes]

    def count(self, kind: str) -> int:
        """Number of actions of one kind."""
        return sum(1 for a in self.actions if a.kind == kind)


def _describe(hit: Hit) -> str:
    return f"{hit.path} ({hit.candidate.label})"


def plan_resource(w: Wanted, exp: Expectation, obs: Observation, upgrade: bool = False) -> Action:
    """Decide what to do for one wanted resource (``upgrade``: fetch it from its origin again)."""
    base = dict(processor=w.processor, name=w.name, wanted=w, expect=exp,
                location_label=obs.target.label)
    target = obs.target_path
    at_target = obs.hit_at(target)
    not_on_path = [] if obs.on_lookup_path else [
        f"{obs.target.directory} is not on the lookup path of {w.processor}; "
        f"add it to ${w.processor.upper().replace('-', '_')}_PATH so the processor finds it"]

    if exp.stale is not None:
        what = [n for n, a, b in zip(("url", "type", "path_in_archive", "location"),
                                     exp.stale.declaration(), w.declaration()) if a != b]
        what = what or ["sha256"]
        return Action(kind=UPDATE if at_target else INSTALL, target=target,
                      reason=f"declaration changed since the lock ({', '.join(what)})",
                      found=at_target.path if at_target else None, warnings=tuple(not_on_path), **base)
    if not obs.hits:
        return Action(kind=INSTALL, target=target, reason="not installed", warnings=tuple(not_on_path), **base)

    effective = obs.hits[0]
    refetch = None
    if upgrade:
        refetch = "--upgrade: fetched from the origin; replaced only if the bytes changed"
    elif exp.installed is None and exp.sha256 is not None:
        refetch = (f"the {w.type} is pinned, and {_describe(effective)} can only be checked against the pin by "
                   "fetching it; replaced only if it differs")
    if refetch is not None:
        return Action(kind=UPDATE if at_target else INSTALL, target=target, found=effective.path, refetch=True,
                      reason=refetch, warnings=tuple(not_on_path), **base)
    if exp.installed is None and effective.implausible:
        # Not adopted (an implausible copy, e.g. empty or cut short): fetched; a copy at the target is replaced only once the new verifies.
        return Action(kind=UPDATE if at_target else INSTALL, target=target, found=effective.path,
                      reason=f"found {_describe(effective)}, but it cannot be the model ({effective.implausible})",
                      warnings=tuple(not_on_path), **base)
    if exp.installed is None:
        where = _describe(effective)
        return Action(kind=KEEP, target=effective.path, found=effective.path, adopt=True,
                      reason=f"found at {where}; not locked yet, adopted as is", **base)
    if effective.digest == exp.installed:
        return Action(kind=KEEP, target=effective.path, found=effective.path, trusted=effective.trusted,
                      reason=f"installed at {effective.candidate.label}"
                             + (" (verified)" if effective.trusted else " (hashed)"), **base)
    if at_target is not None and at_target.digest == exp.installed:
        return Action(kind=SHADOWED, target=target, found=effective.path, trusted=at_target.trusted,
                      reason=f"installed at {at_target.candidate.label}, but the processor finds "
                             f"{_describe(effective)} first, which differs from the lock: remove that copy",
                      **base)
    warnings = list(not_on_path)
    if effective.path != target and obs.on_lookup_path:
        order = [h.path for h in obs.hits]
        if target not in order or order.index(effective.path) < order.index(target):
            warnings.append(f"shadowed: the processor finds {_describe(effective)} first, which differs "
                            "from the locked bytes; remove that copy")
    if at_target is not None:
        return Action(kind=UPDATE, target=target, found=effective.path, warnings=tuple(warnings),
                      reason=f"{target} differs from the lock (modified or replaced)", **base)
    return Action(kind=INSTALL, target=target, found=effective.path, warnings=tuple(warnings),
                  reason=f"only a differing copy exists ({_describe(effective)})", **base)


def make_plan(wanted: list[Wanted], lock: Lockfile | None, observations: dict[tuple[str, str], Observation],
              undeclared: dict[tuple[str, str], Path] | None = None,
              expected: dict[tuple[str, str], Expectation] | None = None,
              upgrade: frozenset[tuple[str, str]] = frozenset(), prune: bool = False,
              previous: Lockfile | None = None) -> Plan:
    """The whole plan for ``wanted`` (sorted by (processor, name), as :func:`resolve` returns it).

    ``undeclared`` maps locked keys models.toml no longer declares, still installed by us, to their
    path: removed with ``prune``, else kept (and kept in the lock, ``previous``) with a reason saying
    how to remove them; ``expected`` are the :func:`expectations` if the caller has them already;
    ``upgrade`` the keys to fetch from their origin again."""
    exps = expected if expected is not None else expectations(wanted, lock)
    actions = [plan_resource(w, exps[w.key], observations[w.key], w.key in upgrade) for w in wanted]
    if not undeclared:
        return Plan(tuple(actions))  # ``wanted`` comes sorted by (processor, name)
    locked = (previous or lock).by_key() if (previous or lock) else {}
    for key, path in sorted(undeclared.items()):
        entry = locked.get(key)
        exp = Expectation(entry.sha256, entry.expected_installed, entry) if entry else None
        if prune:
            actions.append(Action(kind=REMOVE, processor=key[0], name=key[1], target=path, expect=exp,
                                  reason="no longer declared in models.toml"))
        else:
            actions.append(Action(kind=KEEP, processor=key[0], name=key[1], target=path, expect=exp,
                                  undeclared=True, reason="no longer declared in models.toml; still installed "
                                  "(by modelsync): `modelsync sync --prune` removes it"))
    return Plan(tuple(sorted(actions, key=lambda a: a.key)))


def expectations(wanted: list[Wanted], lock: Lockfile | None) -> dict[tuple[str, str], Expectation]:
    """:func:`expectation` for every wanted resource."""
    locked = lock.by_key() if lock else {}
    return {w.key: expectation(w, locked.get(w.key)) for w in wanted}
