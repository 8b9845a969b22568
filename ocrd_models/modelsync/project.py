"""The operations behind the CLI commands, for one project (a models.toml and its models.lock).

Everything here returns data; rendering is the CLI's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from . import processors
from .digest import digest_path
from .errors import SyncFailed, Failure
from .executor import ExecContext, Outcome, execute
from .lockfile import LockEntry, Lockfile, load_lock, write_lock
from .locations import Locations
from .manifest import Manifest, load_manifest
from .planner import KEEP, Plan, expectations, make_plan
from .progress import NullProgress, Progress
from .records import InstallRecord, RecordStore
from .registry import Registry, canonical_processor
from .resolve import Wanted, resolve
from .settings import LOCK_NAME, Environment
from .state import Observation, observe


@dataclass
class SyncResult:
    """What ``sync`` (or ``lock``) did."""

    plan: Plan
    outcomes: list[Outcome]
    lock: Lockfile
    lock_written: bool
    lock_path: Path

    @property
    def failures(self) -> list[Failure]:
        """Failed resources with their errors."""
        return [Failure(o.action.processor, o.action.name, o.error) for o in self.outcomes if o.error]


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


@dataclass(frozen=True)
class VerifyRow:
    """One line of ``verify``."""

    processor: str
    name: str
    ok: bool
    path: str | None
    detail: str


@dataclass
class Project:
    """A models.toml, its lock, and this machine's locations."""

    manifest_path: Path
    env: Environment = field(default_factory=Environment.from_os)
    extra_mirrors: dict[str, str] = field(default_factory=dict)
    parallel: int | None = None
    progress: Progress = field(default_factory=NullProgress)
    use_processors: bool = True

    # -- inputs ---------------------------------------------------------------------
    @property
    def project_dir(self) -> Path:
        """The directory of models.toml: the ``cwd`` location and base of relative paths."""
        return self.manifest_path.absolute().parent

    @property
    def lock_path(self) -> Path:
        """``models.lock`` beside the manifest."""
        return self.project_dir / LOCK_NAME

    @cached_property
    def manifest(self) -> Manifest:
        """The validated manifest."""
        return load_manifest(self.manifest_path)

    @cached_property
    def lockfile(self) -> Lockfile | None:
        """The current lock, or None."""
        return load_lock(self.lock_path)

    @cached_property
    def registry(self) -> Registry:
        """Bundled index + user database + the manifest's installed processors' own lists."""
        reg = Registry.load(self.env)
        if self.use_processors:
            exes = sorted({canonical_processor(p) for p in self.manifest.processors})
            installed = [e for e in exes if processors.find_executable(e, self.env)]
            reg.add_processor_answers(processors.dump_many(installed, self.env))
        return reg

    @cached_property
    def locations(self) -> Locations:
        """Location directories for this project."""
        return Locations(self.env, self.project_dir, self.registry)

    @cached_property
    def records(self) -> RecordStore:
        """Install records on this machine."""
        return RecordStore(self.env.state_dir)

    @property
    def mirrors(self) -> dict[str, str]:
        """models.toml mirrors, overridden by $MODELSYNC_MIRRORS, overridden by --mirror."""
        return {**self.manifest.settings.mirrors, **self.env.mirrors, **self.extra_mirrors}

    def wanted(self) -> list[Wanted]:
        """Every declared resource, resolved."""
        return resolve(self.manifest, self.registry, self.locations.default_location)

    def _lock_for(self, upgrade: set[tuple[str, str]] | bool) -> Lockfile | None:
        lock = self.lockfile
        if lock is None or not upgrade:
            return lock
        if upgrade is True:
            return None
        return lock.with_entries([e for e in lock.entries if e.key not in upgrade], lock.manifest_hash)

    # -- plan -------------------------------------------------------------------------
    def plan(self, *, prune: bool = False, upgrade: set[tuple[str, str]] | bool = False) -> Plan:
        """Diff the manifest (and lock) against what is installed."""
        wanted = self.wanted()
        lock = self._lock_for(upgrade)
        exps = expectations(wanted, lock)
        obs: dict[tuple[str, str], Observation] = {
            w.key: observe(w.processor, w.name, w.location, exps[w.key].installed, self.locations, self.records)
            for w in wanted
        }
        removals = self._removals(wanted) if prune else None
        return make_plan(wanted, lock, obs, removals)

    def _removals(self, wanted: list[Wanted]) -> dict[tuple[str, str], Path]:
        keys = {w.key for w in wanted}
        out = {}
        for e in (self.lockfile.entries if self.lockfile else ()):
            if e.key not in keys:
                path = self.locations.directory(e.location, e.processor) / e.name
                rec = self.records.get(path)
                if rec is not None:
                    out[e.key] = path
        return out

    # -- sync / lock ----------------------------------------------------------------------
    def _context(self, *, stage_only: bool = False) -> ExecContext:
        return ExecContext(records=self.records, mirrors=self.mirrors, base_dir=self.project_dir,
                           parallel=self.parallel or self.manifest.settings.parallel, progress=self.progress,
                           stage_only_in=self.env.cache_dir / "staging" if stage_only else None)

    def _finish(self, plan: Plan, outcomes: list[Outcome]) -> SyncResult:
        """Write the lock from the outcomes (always, so finished work is kept); raise if anything failed."""
        previous = self.lockfile.by_key() if self.lockfile else {}
        entries: dict[tuple[str, str], LockEntry] = {}
        for o in outcomes:
            if o.entry is not None:
                entries[o.action.key] = o.entry
            elif o.error is not None and o.action.key in previous:
                # A failed update keeps what the lock knew, so nothing locked is forgotten.
                entries[o.action.key] = previous[o.action.key]
        digest = self.manifest.normalized_hash()
        lock = Lockfile(digest).with_entries(list(entries.values()), digest)
        written = write_lock(self.lock_path, lock)
        result = SyncResult(plan, outcomes, lock, written, self.lock_path)
        if result.failures:
            raise SyncFailed(result.failures)
        return result

    def sync(self, *, prune: bool = False, upgrade: set[tuple[str, str]] | bool = False,
             plan: Plan | None = None) -> SyncResult:
        """Install what the plan says, write the lock, raise SyncFailed if anything failed."""
        plan = plan or self.plan(prune=prune, upgrade=upgrade)
        return self._finish(plan, execute(plan, self._context()))

    def lock(self, *, upgrade: set[tuple[str, str]] | bool = False) -> SyncResult:
        """Write models.lock without installing: digests come from the lock, installed copies, or a download
        that is verified and discarded."""
        plan = self.plan(upgrade=upgrade)
        return self._finish(plan, execute(plan, self._context(stage_only=True)))

    # -- status / verify ------------------------------------------------------------------
    def status(self) -> list[StatusRow]:
        """Declared vs locked vs installed, one row per declared resource (plus locked-only ones)."""
        plan = self.plan()
        locked = self.lockfile.by_key() if self.lockfile else {}
        rows = []
        for a in plan.actions:
            exp = a.expect
            lock_state = "yes" if exp and exp.locked else ("stale" if exp and exp.stale else "no")
            if a.kind == KEEP:
                state = "unlocked" if a.adopt else "ok"
                path = str(a.target)
            elif a.kind == "install":
                state, path = "missing", None
            else:
                state, path = "modified", str(a.target)
            rows.append(StatusRow(a.processor, a.name, a.location_label, lock_state, state, path, a.reason,
                                  a.warnings))
        declared = {a.key for a in plan.actions}
        for key, e in sorted(locked.items()):
            if key not in declared:
                rows.append(StatusRow(e.processor, e.name, e.location, "yes", "undeclared", None,
                                      "locked but no longer in models.toml (`sync --prune` removes it)"))
        return rows

    def verify(self) -> list[VerifyRow]:
        """Re-hash every locked resource where the processor finds it; refresh records of good ones."""
        lock = self.lockfile
        rows: list[VerifyRow] = []
        if lock is None:
            return rows
        for e in lock.entries:
            expected = e.expected_installed
            obs = observe(e.processor, e.name, e.location, None, self.locations, self.records)
            if not obs.hits:
                rows.append(VerifyRow(e.processor, e.name, False, None, "not installed"))
                continue
            hit = obs.hits[0]
            digest, sigs = digest_path(hit.path)
            if expected is None or digest == expected:
                self.records.put(InstallRecord(str(hit.path.absolute()), e.processor, e.name, digest, hit.is_dir,
                                               sigs, e.url, e.sha256))
                rows.append(VerifyRow(e.processor, e.name, True, str(hit.path), "sha256 ok"))
            else:
                rows.append(VerifyRow(e.processor, e.name, False, str(hit.path),
                                      f"differs: expected {expected}, found {digest}"))
        return rows

