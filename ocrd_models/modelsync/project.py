"""A project (a models.toml and its models.lock) on this machine: plan, sync, lock and prune.

The orchestration layer: it wires the stages together for one run and returns data (rendering is
the CLI's job). Everything it is configured with arrives resolved in a :class:`RunConfig`; the
reports, conversion and registry code it calls live with their stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import sigint_deferred
from .config import LOCK_NAME, MANIFEST_NAME, Environment
from .errors import Failure, InstallError, LockStale, ManifestError, SyncFailed, filesystem_error
from .install.cache import Cache, blob_link_check
from .install.executor import ExecContext, Outcome, execute, lock_after, preflight
from .install.obtain import Fetcher, check_offline, locked_artifact
from .legacy.autoconvert import ConversionPolicy, Converter
from .plan import reports
from .plan.locations import Locations
from .plan.observe import Scanner
from .plan.planner import REMOVE, Plan, expectations, make_plan
from .plan.installed import undeclared_installs
from .plan.records import RecordStore
from .progress import NullProgress, Progress
from .resources import processors
from .resources.index import ResourceIndex, canonical_processor
from .resources.resolve import Wanted, resolve
from .runconfig import Flags, RunConfig
from .spec.lockfile import Lockfile, load_lock, write_lock
from .spec.manifest import Manifest, Settings, load_manifest

if TYPE_CHECKING:
    from .oci.pull import RegistrySource
    from .oci.push import PushResult


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


@dataclass
class Project:
    """A models.toml, its lock, and this machine's locations, for one run configured by ``config``."""

    manifest_path: Path
    config: RunConfig
    progress: Progress = field(default_factory=NullProgress)

    # -- inputs ---------------------------------------------------------------------
    @property
    def env(self) -> Environment:
        """The environment snapshot the configuration was resolved from."""
        return self.config.env

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
        """The current lock, or None. A lock is input like models.toml: checked the same way, and a
        machine path in it must be a location models.toml declares (none without a models.toml). Unless
        --frozen makes the lock the authority, entries at a location models.toml no longer declares are
        stale: left out, so that changing a location in models.toml never locks the project out."""
        declared = self.manifest.declared_locations() if self.manifest_path.exists() else None
        return load_lock(self.lock_path, declared, drop_undeclared=not self.config.frozen and declared is not None,
                         project_dir=self.project_dir)

    @cached_property
    def index(self) -> ResourceIndex:
        """Bundled index + user database + the manifest's installed processors' own lists."""
        if self.config.frozen:  # tool metadata (resource_locations) only: names come from the lock
            return ResourceIndex.load(self.env, user_database=False)
        index = ResourceIndex.load(self.env)
        exes = sorted({canonical_processor(p) for p in self.manifest.processors})
        installed = [e for e in exes if processors.find_executable(e, self.env)]
        index.add_processor_answers(processors.dump_many(installed, self.env))
        return index

    @cached_property
    def locations(self) -> Locations:
        """Location directories for this project."""
        return Locations(self.env, self.project_dir, self.index, ask_processors_for_lookup=not self.config.frozen)

    @cached_property
    def records(self) -> RecordStore:
        """Install records on this machine."""
        return RecordStore(self.env.state_dir)

    @cached_property
    def cache(self) -> Cache:
        """The shared content-addressed cache."""
        return Cache(self.config.cache_dir)

    @cached_property
    def conversion(self) -> ConversionPolicy:
        """Which models this run converts to kraken's HDF5, and where converted files are."""
        return ConversionPolicy(Converter(self.env.converted_dir, self.records), self.config.settings.convert_pyrnn,
                                self.config.convert, self.config.frozen)

    def wanted(self) -> list[Wanted]:
        """Every declared resource, resolved (with --frozen: every locked resource, as locked)."""
        if not self.config.frozen:
            return resolve(self.manifest, self.index, self.locations.default_location)
        if self.lockfile is None:
            raise LockStale(f"--frozen installs what {self.lock_path} says, but it does not exist; "
                            "run `modelsync lock` and commit models.lock")
        return [Wanted(e.processor, e.name, e.url, e.type, e.path_in_archive, e.location, None, "lock", e.size)
                for e in self.lockfile.entries]

    # -- plan -------------------------------------------------------------------------
    def plan(self, *, prune: bool = False, upgrade: set[tuple[str, str]] | bool = False) -> Plan:
        """Diff the manifest (and lock) against what is installed. ``upgrade``: True, or the keys whose
        locked digests are ignored (fetched again)."""
        wanted = self.wanted()
        lock = self.lockfile
        if lock is not None and upgrade:
            lock = None if upgrade is True else lock.with_entries([e for e in lock.entries if e.key not in upgrade],
                                                                  lock.manifest_hash)
        exps = expectations(wanted, lock)
        scan = Scanner(self.locations, self.records, blob_link_check(self.cache.root)).observe
        obs = {w.key: scan(w.processor, w.name, w.location, exps[w.key].installed, w.size) for w in wanted}
        upgraded = frozenset(w.key for w in wanted) if upgrade is True else frozenset(upgrade or ())
        undeclared = undeclared_installs(self.lockfile, wanted, self.locations, self.records)
        return make_plan(wanted, lock, obs, undeclared, exps, upgraded, prune, self.lockfile)

    def check_locked(self) -> None:
        """Raise LockStale listing the differences unless models.lock is up to date (``--locked``)."""
        if self.config.frozen:
            return  # --frozen trusts the lock as it is
        reasons = self.stale_reasons()
        if reasons:
            raise LockStale(f"{self.lock_path} is missing or out of date (--locked):\n"
                            + "\n".join(f"  {r}" for r in reasons)
                            + "\nRun `modelsync lock` (or `modelsync sync` without --locked) and commit models.lock.")

    def stale_reasons(self) -> list[str]:
        """Why models.lock is not up to date with models.toml (empty when it is). Downloads nothing."""
        return reports.stale_reasons(self.wanted(), self.lockfile, self.manifest.normalized_hash(),
                                     self.manifest_path.name, self.lock_path.name, self.conversion.wants)

    # -- sync / lock / prune ---------------------------------------------------------------
    def sync(self, *, prune: bool = False, upgrade: set[tuple[str, str]] | bool = False,
             plan: Plan | None = None, locked: bool = False) -> SyncResult:
        """Install what the plan says, write the lock, raise SyncFailed if anything failed.

        ``locked``: refuse (LockStale, nothing installed) unless models.lock is up to date, and never
        rewrite it; a caller passing its own ``plan`` has checked that already (before planning, so a
        stale lock costs no hashing). Offline, fail before installing anything if a resource is not
        available locally.
        """
        if plan is None:
            if locked:
                self.check_locked()
            plan = self.plan(prune=prune, upgrade=upgrade)
        if self.config.offline:
            check_offline(plan, self.cache, self.project_dir, self.manifest_path)
        return self._run(plan, plan, write=not (locked or self.config.frozen))

    def lock(self, *, upgrade: set[tuple[str, str]] | bool = False) -> SyncResult:
        """Write models.lock without installing: digests come from the lock, installed copies, or a download
        that is verified and discarded."""
        plan = self.plan(upgrade=upgrade)
        return self._run(plan, plan, obtain_only=True)

    def prune(self) -> SyncResult:
        """Remove what models.toml no longer declares and modelsync installed, unchanged since (`remove
        --prune`); nothing is fetched or installed. Raises SyncFailed for what could not be removed."""
        plan = self.plan(prune=True)
        return self._run(Plan(tuple(a for a in plan.actions if a.kind == REMOVE)), plan, partial=True)

    def _run(self, actions: Plan, plan: Plan, *, write: bool = True, obtain_only: bool = False,
             partial: bool = False) -> SyncResult:
        """Execute ``actions`` (all of ``plan``, or its removals when ``partial``), convert what asks for it,
        and lock the outcome; after a Ctrl-C, lock what finished and re-raise."""
        preflight(actions, [self.cache.root, self.records.root], self.project_dir if write else None,
                  install=not obtain_only)
        ctx = ExecContext(records=self.records, mirrors=self.config.mirrors, base_dir=self.project_dir,
                          cache=self.cache, parallel=self.config.parallel, progress=self.progress,
                          link_mode=self.config.link_mode, offline=self.config.offline, obtain_only=obtain_only,
                          net=self.config.net, limits=self.config.limits, registry=self.registry_source)
        try:
            outcomes = execute(actions, ctx)
            if not partial:
                self.conversion.apply(outcomes, place=not obtain_only)
        except KeyboardInterrupt:
            self._finish(plan, ctx.finished_outcomes(), write, ended_early=True)
            raise
        result = self._finish(plan, outcomes, write, ended_early=partial)
        failures = result.failures + [Failure("install records", str(self.records.root), e)
                                      for e in self.records.write_errors]
        if failures:
            raise SyncFailed(failures)
        return result

    def _finish(self, plan: Plan, outcomes: list[Outcome], write: bool, ended_early: bool) -> SyncResult:
        """Write the lock from the outcomes, so that finished work is kept (see :func:`lock_after`)."""
        previous = self.lockfile.by_key() if self.lockfile else {}
        entries, changed = lock_after(plan, outcomes, previous, ended_early)
        lock, written = self.lockfile or Lockfile(""), False
        # Written when asked, and when it names what is on disk: not after an early end that changed nothing,
        # and not empty where there was none (an empty lock would claim nothing is wanted).
        if write and (changed or not ended_early) and (previous or entries):
            digest = self.manifest.normalized_hash()
            lock = Lockfile(digest).with_entries(entries, digest)
            try:
                with sigint_deferred():  # a Ctrl-C now waits for the lock of what was installed
                    written = write_lock(self.lock_path, lock)
            except OSError as err:
                raise InstallError(f"{filesystem_error(err, self.lock_path, 'write')} Every model that was "
                                   "installed is in place and verified; once the lock can be written, "
                                   "`modelsync sync` writes it without fetching them again.") from None
        try:
            self.cache.remember_lock(self.lock_path)
        except OSError:
            pass  # only `cache prune` needs it
        return SyncResult(plan, outcomes, lock, written, self.lock_path)

    # -- OCI registry ---------------------------------------------------------------------------
    @cached_property
    def registry_source(self) -> "RegistrySource | None":
        """The registry locked artifacts are fetched from first, or None."""
        if not self.config.registry:
            return None
        from .oci.pull import open_source  # only projects that use a registry pay for its import

        return open_source(self.config.registry, self.config.registry_only, self.env, self.config.net)

    def push(self, reference: str, chunk: int | None = None) -> "PushResult":
        """Upload every locked artifact and a manifest listing them to ``reference`` (see :mod:`.oci.push`)."""
        from .oci import push
        from .oci.client import DEFAULT_CHUNK, connect

        if self.lockfile is None:
            raise LockStale(f"push uploads what {self.lock_path} records, but it does not exist; run "
                            "`modelsync lock` (or `sync`) first")
        fetcher = Fetcher(self.config.mirrors, self.project_dir, self.config.offline, net=self.config.net)
        return push.push(self.lockfile, connect(reference, self.env, self.config.net),
                         lambda e: locked_artifact(e, self.cache, fetcher), chunk or DEFAULT_CHUNK, self.progress)

    # -- reports ----------------------------------------------------------------------------
    def status(self) -> list[reports.StatusRow]:
        """Declared vs locked vs installed, one row per declared resource (plus locked-only ones)."""
        return reports.status(self.plan(), self.lockfile, self.conversion.converted_path)

    def verify(self) -> list[reports.VerifyRow]:
        """Re-hash every locked resource where the processor finds it; refresh records of good ones."""
        return reports.verify(self.lockfile, self.locations, self.records,
                              lambda e: self.conversion.converter.path_for(e.sha256 or "", e.name))

    def resolve_model(self, processor: str, name: str) -> dict:
        """Where ``processor`` finds ``name`` now, or its converted HDF5 (which it should use instead)."""
        return reports.resolve_model(self.plan(), self.lockfile, processor, name, self.manifest_path,
                                     self.conversion.converted_path)


def find_manifest(start: Path | None = None) -> Path | None:
    """The nearest models.toml in ``start`` (default: the current directory) or one of its parents,
    as uv and cargo find theirs; None when there is none."""
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        candidate = directory / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    return None


def open_project(manifest: str | Path | None = None, *, flags: Flags | None = None, offline: bool = False,
                 frozen: bool = False, progress: Progress | None = None, env: Environment | None = None) -> Project:
    """The project of ``manifest`` (default: the nearest models.toml, see :func:`find_manifest`),
    configured as the ``modelsync`` command configures it: ``flags`` (or ``offline``/``frozen``) over
    the environment over ``[settings]``. The entry point of the Python API: ``plan()``, ``sync()``,
    ``lock()``, ``status()``, ``verify()`` and ``resolve_model()`` on it.

    Raises :class:`ManifestError` when no models.toml is given or found, or it is not valid.
    """
    path = Path(manifest) if manifest is not None else find_manifest()
    if path is None:
        raise ManifestError(f"no {MANIFEST_NAME} in {Path.cwd()} or a parent directory; create one with "
                            "`modelsync init`, or pass its path")
    flags = flags or Flags(offline=offline or None, frozen=frozen)
    env = env or Environment.from_os()
    settings = Settings() if flags.frozen and not path.exists() else load_manifest(path).settings
    return Project(path, RunConfig.resolve(flags, env, settings, path.absolute().parent), progress or NullProgress())
