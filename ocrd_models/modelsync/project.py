"""The operations behind the CLI commands, for one project (a models.toml and its models.lock).

Everything here returns data; rendering is the CLI's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import processors
from .autoconvert import Converter, wants_conversion
from .cache import Cache
from .credentials import Credentials
from .fetch import NetConfig
from .unpack import Limits
from .digest import digest_path, sha256_file
from .atomic import check_writable, sigint_deferred
from .errors import (ChangesPending, Failure, InstallError, LockStale, ModelsyncError, OfflineMissing,
                     ShadowedModel, SyncFailed, UserInputError, filesystem_error)
from .executor import ExecContext, Outcome, execute
from .lockfile import LockEntry, Lockfile, load_lock, write_lock
from .locations import Locations
from .manifest import Manifest, Settings, load_manifest
from .planner import KEEP, REMOVE, SHADOWED, Plan, expectations, make_plan
from .progress import NullProgress, Progress
from .records import InstallRecord, RecordStore
from .registry import Registry, canonical_processor
from .resolve import Wanted, resolve
from .settings import LOCK_NAME, MANIFEST_NAME, Environment
from .state import Observation, Scanner, observe

if TYPE_CHECKING:
    from .oci_pull import RegistrySource
    from .oci_push import PushResult


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
    converted: str | None = None  # the kraken HDF5 converted from this pyrnn model, used instead of it


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
    cache_dir: Path | None = None  # --cache-dir; else $MODELSYNC_CACHE_DIR, settings.cache_dir, XDG default
    link_mode: str | None = None  # --link-mode; else settings.link_mode, else auto
    offline: bool = False
    frozen: bool = False  # install exactly the lock: no registry names, no processors, no manifest names
    convert: bool = True  # False: --disable-autoconversion (no pyrnn -> HDF5 conversion this run)
    oci_registry: str | None = None  # --registry; else $MODELSYNC_REGISTRY, else [settings] registry
    registry_only: bool | None = None  # --registry-only; else $MODELSYNC_REGISTRY_ONLY, else settings

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
    def settings(self) -> Settings:
        """``[settings]`` of models.toml (defaults when --frozen runs without one)."""
        if self.frozen and not self.manifest_path.exists():
            return Settings()
        return self.manifest.settings

    @cached_property
    def lockfile(self) -> Lockfile | None:
        """The current lock, or None. A lock is input like models.toml: checked the same way, and a
        machine path in it must be a location models.toml declares (none without a models.toml). Unless
        --frozen makes the lock the authority, entries at a location models.toml no longer declares are
        stale: left out, so that changing a location in models.toml never locks the project out."""
        declared = self.manifest.declared_locations() if self.manifest_path.exists() else None
        return load_lock(self.lock_path, declared, drop_undeclared=not self.frozen and declared is not None,
                         project_dir=self.project_dir)

    @cached_property
    def registry(self) -> Registry:
        """Bundled index + user database + the manifest's installed processors' own lists."""
        if self.frozen:
            # Tool metadata (resource_locations) only: names come from the lock.
            return Registry.load(self.env, user_database=False)
        reg = Registry.load(self.env)
        if self.use_processors:
            exes = sorted({canonical_processor(p) for p in self.manifest.processors})
            installed = [e for e in exes if processors.find_executable(e, self.env)]
            reg.add_processor_answers(processors.dump_many(installed, self.env))
        return reg

    @cached_property
    def locations(self) -> Locations:
        """Location directories for this project."""
        return Locations(self.env, self.project_dir, self.registry, ask_processors_for_lookup=not self.frozen)

    @cached_property
    def records(self) -> RecordStore:
        """Install records on this machine."""
        return RecordStore(self.env.state_dir)

    @cached_property
    def cache(self) -> Cache:
        """The shared content-addressed cache (flag > env > settings > default)."""
        if self.cache_dir is not None:
            return Cache(self.cache_dir)
        if self.env.get("MODELSYNC_CACHE_DIR"):
            return Cache(self.env.cache_dir)
        setting = self.settings.cache_dir
        if setting:
            path = Path(setting).expanduser()
            return Cache(path if path.is_absolute() else self.project_dir / path)
        return Cache(self.env.cache_dir)

    @property
    def mirrors(self) -> dict[str, str]:
        """models.toml mirrors, overridden by $MODELSYNC_MIRRORS, overridden by --mirror."""
        return {**self.settings.mirrors, **self.env.mirrors, **self.extra_mirrors}

    def wanted(self) -> list[Wanted]:
        """Every declared resource, resolved (with --frozen: every locked resource, as locked)."""
        if self.frozen:
            lock = self.lockfile
            if lock is None:
                raise LockStale(f"--frozen installs what {self.lock_path} says, but it does not exist; "
                                "run `modelsync lock` and commit models.lock")
            return [Wanted(e.processor, e.name, e.url, e.type, e.path_in_archive, e.location, None, "lock", e.size)
                    for e in lock.entries]
        return resolve(self.manifest, self.registry, self.locations.default_location)

    def stale_reasons(self) -> list[str]:
        """Why models.lock is not up to date with models.toml (empty when it is). Downloads nothing."""
        lock = self.lockfile
        if lock is None:
            return [f"{self.lock_path.name} does not exist"]
        reasons = []
        locked = lock.by_key()
        wanted = self.wanted()
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
            if e.sha256 and self.wants_conversion(w) != bool(e.converted_sha256):
                reasons.append(f"~ {w.processor} {w.name}: convert = {str(self.wants_conversion(w)).lower()}, "
                               "the lock says the opposite")
        for key in sorted(set(locked) - {w.key for w in wanted}):
            if not locked[key].undeclared:
                reasons.append(f"- {key[0]} {key[1]}: locked, no longer declared")
        # The manifest hash is the fast answer; when it differs, the reasons above say how. When none does,
        # models.toml changed in a way that installs nothing else (a comment, parallel, a failed run's
        # declaration taken back): the lock is up to date, and --locked must not fail without a reason.
        if reasons and lock.manifest_hash != self.manifest.normalized_hash():
            reasons.insert(0, f"{self.manifest_path.name} changed since {self.lock_path.name} was written:")
        return reasons

    def check_locked(self) -> None:
        """Raise LockStale listing the differences unless models.lock is up to date (``--locked``)."""
        if self.frozen:
            return  # --frozen trusts the lock as it is
        reasons = self.stale_reasons()
        if reasons:
            raise LockStale(f"{self.lock_path} is missing or out of date (--locked):\n"
                            + "\n".join(f"  {r}" for r in reasons)
                            + "\nRun `modelsync lock` (or `modelsync sync` without --locked) and commit models.lock.")

    def offline_missing(self, plan: Plan) -> list[str]:
        """Resources the plan would have to download: neither in the cache nor local files."""
        from .fetch import local_source

        missing = []
        for a in plan.changes:
            w, exp = a.wanted, a.expect
            if w is None or exp is None:
                continue
            if local_source(w.url, self.project_dir) is not None:
                continue
            if exp.sha256 and self.cache.get_blob(exp.sha256) is not None:
                continue
            if w.type == "archive" and exp.installed and self.cache.get_tree(exp.installed) is not None:
                continue
            missing.append(f"{w.processor} {w.name} ({w.url})")
        return missing

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
        scan = Scanner(self.locations, self.records, self.cache).observe
        obs: dict[tuple[str, str], Observation] = {
            w.key: scan(w.processor, w.name, w.location, exps[w.key].installed, w.size) for w in wanted
        }
        upgraded = frozenset(w.key for w in wanted) if upgrade is True else frozenset(upgrade or ())
        return make_plan(wanted, lock, obs, self._undeclared(wanted), exps, upgraded, prune, self.lockfile)

    def _undeclared(self, wanted: list[Wanted]) -> dict[tuple[str, str], Path]:
        """Locked resources models.toml no longer declares that modelsync installed (its record): their
        paths, for --prune to remove (if nobody changed them) and the lock to keep until then."""
        keys = {w.key for w in wanted}
        out = {}
        for e in (self.lockfile.entries if self.lockfile else ()):
            if e.key not in keys:
                try:
                    path = self.locations.directory(e.location, e.processor) / e.name
                except ModelsyncError:
                    continue  # its location cannot be found on this machine: nothing of ours there
                if self.records.get(path) is not None:  # a changed one is reported by --prune, not removed
                    out[e.key] = path
        return out

    # -- sync / lock ----------------------------------------------------------------------
    def net_config(self) -> NetConfig:
        """Retries, timeouts, allowed http hosts and credentials: settings, overridden by environment."""
        n, e = self.settings.network, self.env

        def pick(var: str, value: float) -> float:
            override = e.number(var)
            return value if override is None else override

        return NetConfig(
            retries=int(pick("MODELSYNC_RETRIES", n.retries)), backoff=pick("MODELSYNC_BACKOFF", n.backoff),
            max_retry_time=pick("MODELSYNC_RETRY_MAX_TIME", n.max_retry_time),
            connect_timeout=pick("MODELSYNC_CONNECT_TIMEOUT", n.connect_timeout),
            read_timeout=pick("MODELSYNC_READ_TIMEOUT", n.read_timeout),
            allow_http=frozenset(self.settings.allow_http),
            credentials=Credentials.load(self.env, frozenset(self.settings.allow_http)),
        )

    def _context(self, *, obtain_only: bool = False) -> ExecContext:
        s = self.settings
        return ExecContext(records=self.records, mirrors=self.mirrors, base_dir=self.project_dir, cache=self.cache,
                           parallel=self.parallel or s.parallel, progress=self.progress,
                           link_mode=self.link_mode or s.link_mode, offline=self.offline, obtain_only=obtain_only,
                           net=self.net_config(), limits=Limits(s.max_unpacked_bytes, s.max_archive_members),
                           registry=self.registry_source)

    def _finish(self, plan: Plan, outcomes: list[Outcome], write: bool = True,
                interrupted: bool = False, partial: bool = False) -> SyncResult:
        """Write the lock from the outcomes (so finished work is kept); raise if anything failed.

        ``partial``: only some actions ran (``prune``); those without an outcome keep what the lock knew
        (their files were not touched), and the lock is written only if something was installed or
        removed, so that it names what is on disk. ``interrupted``: the same after a Ctrl-C, and nothing
        is raised (the caller re-raises the KeyboardInterrupt).
        """
        previous = self.lockfile.by_key() if self.lockfile else {}
        entries: dict[tuple[str, str], LockEntry] = {}
        for o in outcomes:
            if o.entry is not None:
                entries[o.action.key] = o.entry
            elif o.error is not None and o.action.key in previous:
                # A failed update keeps what the lock knew, so nothing locked is forgotten.
                entries[o.action.key] = previous[o.action.key]
        if interrupted or partial:
            done = {o.action.key for o in outcomes}
            entries.update({a.key: previous[a.key] for a in plan.actions if a.key not in done and a.key in previous})
            write = write and any(o.action.kind != KEEP and o.error is None for o in outcomes)
        if not previous and not entries:
            write = False  # nothing installed, and there was no lock: an empty one would claim otherwise
        if write:
            digest = self.manifest.normalized_hash()
            lock = Lockfile(digest).with_entries(list(entries.values()), digest)
            try:
                with sigint_deferred():  # a Ctrl-C now waits for the lock of what was installed
                    written = write_lock(self.lock_path, lock)
            except OSError as err:
                raise InstallError(f"{filesystem_error(err, self.lock_path, 'write')} Every model that was "
                                   "installed is in place and verified; once the lock can be written, "
                                   "`modelsync sync` writes it without fetching them again.") from None
        else:
            lock, written = self.lockfile or Lockfile(""), False
        try:
            self.cache.remember_lock(self.lock_path)
        except OSError:
            pass  # only `cache prune` needs it
        result = SyncResult(plan, outcomes, lock, written, self.lock_path)
        if interrupted:
            return result  # the caller re-raises the KeyboardInterrupt
        failures = result.failures + [Failure("install records", str(self.records.root), e)
                                      for e in self.records.write_errors]
        if failures:
            raise SyncFailed(failures)
        return result

    def sync(self, *, prune: bool = False, upgrade: set[tuple[str, str]] | bool = False,
             plan: Plan | None = None, locked: bool = False, check: bool = False) -> SyncResult:
        """Install what the plan says, write the lock, raise SyncFailed if anything failed.

        ``locked``: refuse (LockStale, nothing installed) unless models.lock is up to date, and
        never rewrite it; a caller passing its own ``plan`` has checked that already (before
        planning, so a stale lock costs no hashing). ``check``: raise ChangesPending if anything
        would change; change nothing.
        With ``offline``, fail before installing anything if a resource is not available locally.
        """
        if plan is None:
            if locked:
                self.check_locked()
            plan = self.plan(prune=prune, upgrade=upgrade)
        if check:
            if plan.changes:
                raise ChangesPending(f"{len(plan.changes)} change(s) pending (--check):\n" + "\n".join(
                    f"  {a.kind} {a.processor} {a.name}: {a.reason}" for a in plan.changes))
            return SyncResult(plan, [], self.lockfile or Lockfile(""), False, self.lock_path)
        if self.offline:
            missing = self.offline_missing(plan)
            if missing:
                raise OfflineMissing(f"--offline: {len(missing)} resource(s) are neither installed nor in the cache "
                                     f"({self.cache.root}):\n" + "\n".join(f"  {m}" for m in missing)
                                     + f"\nFetch them with network access: modelsync sync --manifest {self.manifest_path}")
        write = not (locked or self.frozen)
        self._preflight(plan, write_lock=write)
        ctx = self._context()
        try:
            outcomes = execute(plan, ctx)
            self._convert(outcomes)
        except KeyboardInterrupt:
            self._finish(plan, ctx.finished_outcomes(), write=write, interrupted=True)
            raise
        return self._finish(plan, outcomes, write=write)

    def lock(self, *, upgrade: set[tuple[str, str]] | bool = False) -> SyncResult:
        """Write models.lock without installing: digests come from the lock, installed copies, or a download
        that is verified and discarded."""
        plan = self.plan(upgrade=upgrade)
        self._preflight(plan, write_lock=True, install=False)
        ctx = self._context(obtain_only=True)
        try:
            outcomes = execute(plan, ctx)
        except KeyboardInterrupt:
            self._finish(plan, ctx.finished_outcomes(), interrupted=True)
            raise
        self._convert(outcomes, place=False)
        return self._finish(plan, outcomes)

    def prune(self) -> SyncResult:
        """Remove what models.toml no longer declares and modelsync installed, unchanged since (`remove
        --prune`); nothing is fetched or installed. Raises SyncFailed for what could not be removed."""
        plan = self.plan(prune=True)
        removals = Plan(tuple(a for a in plan.actions if a.kind == REMOVE))
        self._preflight(removals, write_lock=True)
        ctx = self._context()
        try:
            outcomes = execute(removals, ctx)
        except KeyboardInterrupt:
            self._finish(plan, ctx.finished_outcomes(), interrupted=True)
            raise
        return self._finish(plan, outcomes, partial=True)

    def _preflight(self, plan: Plan, *, write_lock: bool, install: bool = True) -> None:
        """Refuse before anything is fetched or replaced when a directory this run writes to is on a
        read-only filesystem or not writable by us (the cache, the install records, the locations, the
        project directory for the lock): the run would otherwise fail half-way."""
        if not plan.changes:
            return  # nothing to fetch or replace; a lock that cannot be written still gets its message
        dirs = {self.cache.root, self.records.root}
        if install:
            dirs |= {a.target.parent for a in plan.changes}
        if write_lock:
            dirs.add(self.project_dir)
        for directory in sorted(dirs):
            check_writable(directory)

    # -- OCI registry ---------------------------------------------------------------------------
    @cached_property
    def registry_source(self) -> "RegistrySource | None":
        """The registry to fetch locked artifacts from first (flag > env > settings), or None."""
        ref = self.oci_registry or self.env.get("MODELSYNC_REGISTRY") or self.settings.registry
        only = self.registry_only
        if only is None:
            only = self.env.get("MODELSYNC_REGISTRY_ONLY", "").lower() in ("1", "true", "yes") \
                or self.settings.registry_only
        if not ref:
            if only:
                raise UserInputError("--registry-only needs a registry: --registry HOST/REPOSITORY, "
                                     "$MODELSYNC_REGISTRY or [settings] registry")
            return None
        from .oci_pull import open_source  # only projects that use a registry pay for its import

        return open_source(ref, only, self.env, frozenset(self.settings.allow_http), self.net_config())

    def push(self, reference: str, chunk: int | None = None,
             progress: "Callable[[str, int], None] | None" = None) -> "PushResult":
        """Upload every locked artifact and a manifest listing them to ``reference`` (see :mod:`oci_push`)."""
        from . import oci_push
        from .oci import DEFAULT_CHUNK, Reference, RegistryClient, load_login

        lock = self.lockfile
        if lock is None:
            raise LockStale(f"push uploads what {self.lock_path} records, but it does not exist; run "
                            "`modelsync lock` (or `sync`) first")
        ref = Reference.parse(reference)
        net = self.net_config()
        client = RegistryClient(ref, load_login(ref.host, self.env), frozenset(self.settings.allow_http),
                                net)  # timeouts and retries, as for downloads
        return oci_push.push(lock, client, self._artifact, chunk or DEFAULT_CHUNK, progress)

    def _artifact(self, e: LockEntry) -> Path:
        """The locked artifact's bytes in the cache: already there, or fetched from its origin and verified."""
        assert e.sha256
        hit = self.cache.get_blob(e.sha256)
        if hit is not None:
            return hit
        from .install import Fetcher, Request, obtain_blob

        req = Request(what=f"{e.processor} {e.name}", name=e.name, url=e.url, type="file", path_in_archive=".",
                      expected_sha256=e.sha256, expected_installed=None)
        fetcher = Fetcher(self.mirrors, self.project_dir, self.offline, net=self.net_config())
        return obtain_blob(req, self.cache, fetcher)[0]

    # -- legacy model conversion ------------------------------------------------------------
    @cached_property
    def converter(self) -> Converter:
        """Converts pyrnn models into our data directory."""
        return Converter(self.env.converted_dir, self.records)

    def wants_conversion(self, w: Wanted) -> bool:
        """Whether ``w`` is converted to kraken's HDF5 (models.toml; never with --disable-autoconversion)."""
        return wants_conversion(w.name, w.type, w.convert, self.settings.convert_pyrnn)

    def _convert(self, outcomes: list[Outcome], place: bool = True) -> None:
        """Convert the installed pyrnn models that ask for it; record the HDF5's hash in their lock entry.

        A failed conversion fails that resource (the model itself stays installed and locked).
        """
        for o in outcomes:
            w, entry = o.action.wanted, o.entry
            if w is None or entry is None or o.error is not None:
                continue
            prev = o.action.expect.locked if o.action.expect else None
            known = prev.converted_sha256 if prev and prev.sha256 == entry.sha256 else None
            if self.frozen:  # the lock decides: convert exactly what it says was converted
                wanted = known is not None and self.convert
            else:
                try:
                    wanted = self.convert and self.wants_conversion(w)
                except UserInputError as err:
                    o.error = err
                    continue
            if not wanted:
                # Switched off for this run only: the lock keeps what it knew. Off in models.toml: dropped.
                keep = known if not self.convert else None
                o.entry = replace(entry, converted_sha256=keep)
                continue
            if not place or o.path is None or not entry.sha256:
                o.entry = replace(entry, converted_sha256=known)
                continue
            try:
                target, digest = self.converter.ensure(w.processor, w.name, o.path, entry.sha256, known)
            except ModelsyncError as err:
                o.error = err
                continue
            o.entry = replace(entry, converted_sha256=digest)
            if digest != known:
                o.converted = target

    def converted_path(self, entry: LockEntry | None) -> Path | None:
        """The converted HDF5 a processor should use instead of the locked model, if conversion is on."""
        if not self.convert or entry is None or not entry.converted_sha256:
            return None
        return self.converter.existing(entry.sha256, entry.name)

    # -- status / verify ------------------------------------------------------------------
    def resolve_model(self, processor: str, name: str) -> dict:
        """Where ``processor`` finds ``name`` now, or its converted HDF5 (which it should use instead)."""
        key = (canonical_processor(processor), name)
        a = next((x for x in self.plan().actions if x.key == key), None)
        if a is None or a.wanted is None:
            raise UserInputError(f"{processor} {name} is not declared in {self.manifest_path}; "
                                 f"add it with `modelsync add {processor} {name}`")
        if a.kind == SHADOWED:
            raise ShadowedModel(
                f"{processor} {name}: the processor would load {a.found}, which is not the locked model (ours is "
                f"at {a.target}); remove or rename that copy. `modelsync resolve` prints a path only when it is "
                "what the processor loads.")
        if a.kind != KEEP:
            raise ModelsyncError(f"{processor} {name} is not installed as declared ({a.reason}); run `modelsync sync`")
        entry = self.lockfile.by_key().get(key) if self.lockfile else None
        converted = self.converted_path(entry)
        return {"processor": key[0], "name": name, "path": str(converted or a.target),
                "installed": str(a.target), "converted": str(converted) if converted else None}

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
            elif a.kind == SHADOWED:
                state, path = "shadowed", str(a.found)  # the path the processor loads
            elif a.kind == "install":
                state, path = "missing", None
            else:
                state, path = "modified", str(a.target)
            conv = self.converted_path(locked.get(a.key)) if a.kind == KEEP else None
            rows.append(StatusRow(a.processor, a.name, a.location_label, lock_state, state, path, a.reason,
                                  a.warnings, str(conv) if conv else None))
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
        with self.records.batch():  # one index write per directory
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
                if e.converted_sha256:
                    rows.append(self._verify_converted(e))
        return rows

    def _verify_converted(self, e: LockEntry) -> VerifyRow:
        what = f"{e.name} (converted)"
        path = self.converter.path_for(e.sha256 or "", e.name)
        if not path.is_file():
            return VerifyRow(e.processor, what, False, None, "not converted yet: run `modelsync sync`")
        digest = sha256_file(path)
        if digest != e.converted_sha256:
            return VerifyRow(e.processor, what, False, str(path),
                             f"differs: expected {e.converted_sha256}, found {digest}")
        return VerifyRow(e.processor, what, True, str(path), "sha256 ok")



def find_manifest(start: Path | None = None) -> Path | None:
    """The nearest models.toml in ``start`` (default: the current directory) or one of its parents,
    as uv and cargo find theirs; None when there is none."""
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        candidate = directory / MANIFEST_NAME
        if candidate.is_file():
            return candidate
    return None


def open_project(manifest: str | Path | None = None, *, offline: bool = False, frozen: bool = False,
                 progress: Progress | None = None, env: Environment | None = None) -> Project:
    """The project of ``manifest`` (default: the nearest models.toml, see :func:`find_manifest`),
    configured from the environment as the ``modelsync`` command is. The entry point of the Python API:
    ``plan()``, ``sync()``, ``lock()``, ``status()``, ``verify()`` and ``resolve_model()`` on it.

    Raises :class:`ManifestError` when no models.toml is given or found.
    """
    from .errors import ManifestError

    path = Path(manifest) if manifest is not None else find_manifest()
    if path is None:
        raise ManifestError(f"no {MANIFEST_NAME} in {Path.cwd()} or a parent directory; create one with "
                            "`modelsync init`, or pass its path")
    return Project(path, env or Environment.from_os(), offline=offline, frozen=frozen,
                   progress=progress or NullProgress())
