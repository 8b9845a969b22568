"""Reports built from a plan and the lock: ``status``, ``verify``, ``resolve`` and why a lock is stale.

Pure data: each function takes what it reads (the plan, the lock, the stores) and returns rows or
raises a typed error; the CLI renders them. Converted legacy models are asked about through the
callables passed in (conversion lives in the ``legacy`` layer above this one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..digest import digest_path, sha256_file
from ..errors import ModelsyncError, ShadowedModel, UserInputError
from ..resources.index import canonical_processor
from ..resources.resolve import Wanted
from ..spec.lockfile import LockEntry, Lockfile
from .locations import Locations
from .observe import observe
from .planner import KEEP, SHADOWED, Plan
from .records import InstallRecord, RecordStore

ConvertedPath = Callable[[LockEntry | None], Path | None]  # the converted HDF5 used instead of a model


@dataclass(frozen=True)
class StatusRow:
    """One line of ``status``: declared vs locked vs installed."""

    processor: str
    name: str
    location: str
    locked: str  # "yes" | "no" | "stale"
    state: str  # ok | missing | modified | unlocked | removed
    path: str | None
    detail: str
    warnings: tuple[str, ...] = ()
    converted: str | None = None  # the kraken HDF5 converted from this pyrnn model, used instead of it


@dataclass(frozen=True)
class VerifyRow:
    """One line of ``verify``."""

    processor: str
    name: str
    ok: bool
    path: str | None
    detail: str


def status(plan: Plan, lock: Lockfile | None, converted_path: ConvertedPath) -> list[StatusRow]:
    """Declared vs locked vs installed, one row per declared resource (plus locked-only ones)."""
    locked = lock.by_key() if lock else {}
    rows = []
    for a in plan.actions:
        exp = a.expect
        lock_state = "yes" if exp and exp.locked else ("stale" if exp and exp.stale else "no")
        if a.kind == KEEP:
            state = "unlocked" if a.adopt else "ok"
            path = str(a.target)
        elif a.kind == SHADOWED:
            state, path = "shadowed", str(a.found)  # the path the processor loads
        elif a.kind == "install":
            state, path = "missing", None
        else:
            state, path = "modified", str(a.target)
        conv = converted_path(locked.get(a.key)) if a.kind == KEEP else None
        rows.append(StatusRow(a.processor, a.name, a.location_label, lock_state, state, path, a.reason,
                              a.warnings, str(conv) if conv else None))
    declared = {a.key for a in plan.actions}
    for key, e in sorted(locked.items()):
        if key not in declared:
            rows.append(StatusRow(e.processor, e.name, e.location, "yes", "undeclared", None,
                                  "locked but no longer in models.toml (`sync --prune` removes it)"))
    return rows


def verify(lock: Lockfile | None, locations: Locations, records: RecordStore,
           converted_file: Callable[[LockEntry], Path]) -> list[VerifyRow]:
    """Re-hash every locked resource where the processor finds it, and the converted file of each converted
    one (``converted_file``: where it belongs); refresh the install records of those that match."""
    rows: list[VerifyRow] = []
    if lock is None:
        return rows
    with records.batch():  # one index write per directory
        for e in lock.entries:
            expected = e.expected_installed
            obs = observe(e.processor, e.name, e.location, None, locations, records)
            if not obs.hits:
                rows.append(VerifyRow(e.processor, e.name, False, None, "not installed"))
                continue
            hit = obs.hits[0]
            digest, sigs = digest_path(hit.path)
            if expected is None or digest == expected:
                records.put(InstallRecord(str(hit.path.absolute()), e.processor, e.name, digest, hit.is_dir,
                                          sigs, e.url, e.sha256))
                rows.append(VerifyRow(e.processor, e.name, True, str(hit.path), "sha256 ok"))
            else:
                rows.append(VerifyRow(e.processor, e.name, False, str(hit.path),
                                      f"differs: expected {expected}, found {digest}"))
            if e.converted_sha256:
                rows.append(_verify_converted(e, converted_file(e)))
    return rows


def _verify_converted(e: LockEntry, path: Path) -> VerifyRow:
    what = f"{e.name} (converted)"
    if not path.is_file():
        return VerifyRow(e.processor, what, False, None, "not converted yet: run `modelsync sync`")
    digest = sha256_file(path)
    if digest != e.converted_sha256:
        return VerifyRow(e.processor, what, False, str(path), f"differs: expected {e.converted_sha256}, found {digest}")
    return VerifyRow(e.processor, what, True, str(path), "sha256 ok")


def resolve_model(plan: Plan, lock: Lockfile | None, processor: str, name: str, manifest_path: Path,
                  converted_path: ConvertedPath) -> dict:
    """Where ``processor`` finds ``name`` now, or its converted HDF5 (which it should use instead)."""
    key = (canonical_processor(processor), name)
    a = next((x for x in plan.actions if x.key == key), None)
    if a is None or a.wanted is None:
        raise UserInputError(f"{processor} {name} is not declared in {manifest_path}; "
                             f"add it with `modelsync add {processor} {name}`")
    if a.kind == SHADOWED:
        raise ShadowedModel(
            f"{processor} {name}: the processor would load {a.found}, which is not the locked model (ours is "
            f"at {a.target}); remove or rename that copy. `modelsync resolve` prints a path only when it is "
            "what the processor loads.")
    if a.kind != KEEP:
        raise ModelsyncError(f"{processor} {name} is not installed as declared ({a.reason}); run `modelsync sync`")
    converted = converted_path(lock.by_key().get(key) if lock else None)
    return {"processor": key[0], "name": name, "path": str(converted or a.target),
            "installed": str(a.target), "converted": str(converted) if converted else None}


def stale_reasons(wanted: list[Wanted], lock: Lockfile | None, manifest_hash: str, manifest_name: str,
                  lock_name: str, converts: Callable[[Wanted], bool]) -> list[str]:
    """Why the lock is not up to date with models.toml (empty when it is): one line per difference.
    ``converts``: whether models.toml has a resource converted."""
    if lock is None:
        return [f"{lock_name} does not exist"]
    reasons = []
    locked = lock.by_key()
    for w in wanted:
        e = locked.get(w.key)
        if e is None:
            reasons.append(f"+ {w.processor} {w.name}: declared, not locked")
            continue
        for field_name, old, new in zip(("url", "type", "path_in_archive", "location"),
                                        e.declaration(), w.declaration()):
            if old != new:
                reasons.append(f"~ {w.processor} {w.name}: {field_name} {old!r} -> {new!r}")
        if w.sha256 and e.sha256 not in (None, w.sha256):
            reasons.append(f"~ {w.processor} {w.name}: pinned sha256 {w.sha256} differs from the lock's {e.sha256}")
        if e.sha256 and converts(w) != bool(e.converted_sha256):
            reasons.append(f"~ {w.processor} {w.name}: convert = {str(converts(w)).lower()}, "
                           "the lock says the opposite")
    for key in sorted(set(locked) - {w.key for w in wanted}):
        if not locked[key].undeclared:
            reasons.append(f"- {key[0]} {key[1]}: locked, no longer declared")
    # The manifest hash is the fast answer; when it differs, the reasons above say how. When none does,
    # models.toml changed in a way that installs nothing else (a comment, parallel, a failed run's
    # declaration taken back): the lock is up to date, and --locked must not fail without a reason.
    if reasons and lock.manifest_hash != manifest_hash:
        reasons.insert(0, f"{manifest_name} changed since {lock_name} was written:")
    return reasons
