"""Carry out a plan: parallel downloads, verified installs, records, and the resulting lock entries.

One failing resource never stops the others; every failure is returned with its cause.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..urls import redact
from ..digest import digest_path
from ..errors import Cancelled, Closing, InstallError, ModelsyncError, ShadowedModel, filesystem_error
from .. import atomic, failpoints
from .cache import Cache, place
from .fetch import NetConfig
from .unpack import Limits
from ..atomic import clean_temp, remove_path
from .obtain import ArtifactSource, Fetcher, Flights, Request, commit, obtain
from ..spec.lockfile import LockEntry
from ..plan.planner import INSTALL, KEEP, REMOVE, SHADOWED, UPDATE, Action, Plan
from ..progress import NullProgress, Progress, TaskMeter
from .space import ARCHIVE_ESTIMATE, check_space, same_filesystem
from ..plan.records import InstallRecord, RecordStore
from ..resources.resolve import Wanted


@dataclass
class Outcome:
    """The result of one action: a lock entry on success, an error on failure."""

    action: Action
    entry: LockEntry | None = None
    error: ModelsyncError | None = None
    path: Path | None = None
    from_cache: bool = False
    converted: Path | None = None  # a pyrnn model converted to kraken's HDF5 by this run: the file
    unchanged: bool = False  # fetched again (--upgrade, a pin to verify): the installed bytes were right


@dataclass
class ExecContext:
    """What the executor needs besides the plan (dependencies passed in, no globals)."""

    records: RecordStore
    mirrors: dict[str, str]
    base_dir: Path  # relative local URLs are relative to this (the manifest's directory)
    cache: Cache
    parallel: int = 4
    progress: Progress = NullProgress()
    link_mode: str = "auto"  # auto | hardlink | copy
    offline: bool = False
    # Lock-only mode: obtain resources into the cache and record their digests; place nothing.
    obtain_only: bool = False
    net: NetConfig = field(default_factory=NetConfig)
    limits: Limits = field(default_factory=Limits)
    notices: set[str] = field(default_factory=set)
    registry: ArtifactSource | None = None  # locked artifacts by digest, before the origin (an OCI registry)
    deferred_fsync: set[Path] = field(default_factory=set)  # directories to flush once, after all installs
    # Outcomes by plan index as they finish: after a Ctrl-C the caller still locks what was installed.
    finished: dict[int, "Outcome"] = field(default_factory=dict)
    flights: Flights = field(default_factory=Flights)  # one download per artifact in this run

    def finished_outcomes(self) -> list["Outcome"]:
        """The outcomes of the actions that finished, in plan order."""
        return [self.finished[i] for i in sorted(self.finished)]


def entry_for(w: Wanted, *, sha256: str | None, size: int | None, installed: str | None,
              fetched_url: str | None) -> LockEntry:
    """The lock entry of a wanted resource with the digests observed."""
    url = redact(w.url)  # user info and token parameters never reach the lock
    return LockEntry(
        processor=w.processor, name=w.name, url=url, type=w.type, path_in_archive=w.path_in_archive,
        location=w.location, sha256=sha256, size=size,
        installed_sha256=installed if (installed and installed != sha256) else None,
        fetched_url=fetched_url if fetched_url and fetched_url != url else None,
    )


def _keep(action: Action, ctx: ExecContext) -> Outcome:
    if action.undeclared:  # stays in the lock, marked, until --prune removes it
        assert action.expect is not None and action.expect.locked is not None
        return Outcome(action, replace(action.expect.locked, undeclared=True), path=action.target)
    w, exp = action.wanted, action.expect
    assert w is not None and exp is not None
    path = action.target
    if exp.locked is not None and not action.adopt:
        # Matches the lock. If the scan had to hash it, record it, so the next run only stats.
        if not action.trusted:
            _record(ctx, w, path, exp.locked.expected_installed or "", exp.locked.sha256, exp.locked.url)
        return Outcome(action, exp.locked, path=path)
    digest, sigs = digest_path(path)
    sha = digest if (w.type == "file" and not path.is_dir()) else (exp.sha256 if not action.adopt else None)
    size = sigs[""].size if "" in sigs and w.type == "file" else None
    entry = entry_for(w, sha256=sha, size=size, installed=digest, fetched_url=None)
    ctx.records.put(InstallRecord(str(path.absolute()), w.processor, w.name, digest, path.is_dir(), sigs, None, sha))
    return Outcome(action, entry, path=path)


def _record(ctx: ExecContext, w: Wanted, path: Path, digest: str, sha256: str | None, url: str | None) -> None:
    # Only stat here: the digest is already known to match.
    from ..digest import current_sigs

    sigs = current_sigs(path)
    if sigs is not None:
        ctx.records.put(InstallRecord(str(path.absolute()), w.processor, w.name, digest, path.is_dir(), sigs,
                                      url, sha256))


@dataclass(frozen=True)
class _CancellableMeter:
    """A worker's meter: once the run is cancelled (Ctrl-C, or a failure that stops the rest), the next
    progress report ends the worker's download or unpacking."""

    inner: TaskMeter
    cancel: threading.Event

    def total(self, nbytes: int | None) -> None:
        self.inner.total(nbytes)

    def advance(self, nbytes: int) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        self.inner.advance(nbytes)


def _space_check(ctx: ExecContext, type_: str, final: Path) -> Callable[[int, int], None]:
    """The disk-space check of one resource's download (see :mod:`.space`): the ``remaining`` bytes go to
    the cache; an archive's unpacked tree (estimated from its ``size``) too; a copy of the whole to the
    location unless it is hardlinked there (same filesystem, and links allowed)."""

    def reserve(remaining: int, size: int) -> None:
        installed = size * ARCHIVE_ESTIMATE if type_ == "archive" else size
        needs = [(ctx.cache.tmp, remaining + (installed if type_ == "archive" else 0))]
        if not ctx.obtain_only and (ctx.link_mode == "copy" or not same_filesystem(ctx.cache.root, final.parent)):
            needs.append((final.parent, installed))
        check_space(needs, "this download" if type_ != "archive" else "this archive and its unpacked files")

    return reserve


def _install(action: Action, ctx: ExecContext, cancel: threading.Event) -> Outcome:
    w, exp = action.wanted, action.expect
    assert w is not None and exp is not None
    task = f"{w.processor} {w.name}"
    final = action.target
    progress = ctx.progress
    progress.start(task, w.size)
    req = Request(what=task, name=w.name, url=w.url, type=w.type, path_in_archive=w.path_in_archive,
                  expected_sha256=exp.sha256, expected_installed=exp.installed, size=w.size)
    fetcher = Fetcher(ctx.mirrors, ctx.base_dir, ctx.offline, _CancellableMeter(TaskMeter(progress, task), cancel),
                      ctx.net, ctx.limits, ctx.registry, ctx.flights, _space_check(ctx, w.type, final))
    got = obtain(req, ctx.cache, fetcher)
    # Served from the cache, nothing was fetched: keep what the lock knew about the origin.
    locked = exp.locked
    entry = entry_for(w, sha256=got.sha256 or (locked.sha256 if locked else None),
                      size=got.size if got.size is not None else (locked.size if locked else None),
                      installed=got.installed_digest,
                      fetched_url=got.fetched_url if got.downloaded else (locked.fetched_url if locked else None))
    if ctx.obtain_only:
        return Outcome(action, entry, from_cache=not got.downloaded)
    if cancel.is_set():
        raise Cancelled()
    if action.refetch and os.path.lexists(final):
        current = digest_path(final)
        if current[0] == got.installed_digest:  # the origin serves what is installed: nothing to replace
            ctx.records.put(InstallRecord(str(final.absolute()), w.processor, w.name, current[0], final.is_dir(),
                                          current[1], entry.url, entry.sha256))
            return Outcome(action, entry, path=final, from_cache=not got.downloaded, unchanged=True)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise filesystem_error(err, final.parent, "create") from None
    temp, _ = place(got.source, final, ctx.link_mode, on_fallback=_fallback_notice(ctx))
    failpoints.hit("place")
    sigs = commit(temp, final, ctx.deferred_fsync)
    failpoints.hit("record")
    ctx.records.put(InstallRecord(str(final.absolute()), w.processor, w.name, got.installed_digest,
                                  final.is_dir(), sigs, entry.url, entry.sha256))  # redacted, as in the lock
    return Outcome(action, entry, path=final, from_cache=not got.downloaded)


_notice_lock = threading.Lock()


def _fallback_notice(ctx: ExecContext):
    """A callback printing the hardlink-to-copy fallback notice once per run."""

    def note(reason: str) -> None:
        with _notice_lock:
            if "link-fallback" not in ctx.notices:  # one line per run, however many locations
                ctx.notices.add("link-fallback")
                ctx.progress.note(f"notice: {reason}")

    return note


def _shadowed(action: Action, ctx: ExecContext) -> Outcome:
    """Ours stays as it is (and locked); the copy the processor loads instead is reported, not touched."""
    exp = action.expect
    assert exp is not None and exp.locked is not None and action.found is not None
    found = digest_path(action.found)[0]
    raise ShadowedModel(
        f"the processor would load {action.found} (sha256 {found}), not the locked model at {action.target} "
        f"(sha256 {exp.installed})\nA copy the processor finds before ours was not put there by modelsync: remove or "
        "rename it (or declare that location), then run the command again.")


def _remove(action: Action, ctx: ExecContext) -> Outcome:
    path = action.target
    rec = ctx.records.get(path)
    if rec is None or not rec.is_fresh():
        raise InstallError(f"not removing {path}: it was not installed by modelsync, or it changed since; "
                           "delete it by hand if it is no longer needed")
    remove_path(path)
    ctx.records.delete(path)
    return Outcome(action, None, path=path)


def _run(action: Action, ctx: ExecContext, cancel: threading.Event) -> Outcome:
    task = f"{action.processor} {action.name}"
    try:
        if action.kind == KEEP:
            out = _keep(action, ctx)
        elif action.kind in (INSTALL, UPDATE):
            out = _install(action, ctx, cancel)
        elif action.kind == REMOVE:
            out = _remove(action, ctx)
        elif action.kind == SHADOWED:
            out = _shadowed(action, ctx)
        else:  # pragma: no cover
            raise AssertionError(action.kind)
    except ModelsyncError as err:
        ctx.progress.finish(task, False, str(err).splitlines()[0])
        return Outcome(action, error=err)
    except OSError as err:
        # filename2 is the destination of a copy, link or rename (filename its source, e.g. the cache
        # blob); a temp name of ours beside the target is reported as the target it stands for.
        where = err.filename2 or err.filename or action.target
        if os.path.basename(os.fsdecode(where)).startswith(atomic.TEMP_PREFIX) and \
                os.path.dirname(os.fsdecode(where)) == str(action.target.parent):
            where = action.target
        wrapped = filesystem_error(err, where, "write")
        ctx.progress.finish(task, False, str(wrapped))
        return Outcome(action, error=wrapped)
    except (Cancelled, Closing):
        raise Cancelled()
    except Exception as err:  # a bug must not cost the other resources their install
        wrapped = ModelsyncError(f"unexpected {type(err).__name__}: {err} (a bug in modelsync; please report it)")
        ctx.progress.finish(task, False, str(wrapped))
        return Outcome(action, error=wrapped)
    if action.kind != KEEP:
        verb = "locked" if ctx.obtain_only else "unchanged" if out.unchanged else action.kind
        ctx.progress.finish(task, True, f"{verb} from cache" if out.from_cache else verb)
    return out


def execute(plan: Plan, ctx: ExecContext) -> list[Outcome]:
    """Run every action (keeps inline, the rest in a thread pool); outcomes in plan order.

    A KeyboardInterrupt cancels running downloads (their temp files are removed) and is re-raised;
    what finished before it is in ``ctx.finished``. Install records are written once per directory,
    after every rename, also after a Ctrl-C (for what finished).
    """
    try:
        with ctx.records.batch():
            _execute(plan, ctx)
    finally:
        for directory in sorted(ctx.deferred_fsync):  # before the caller writes the lock
            atomic.fsync_dir(directory)
        ctx.deferred_fsync.clear()
    return ctx.finished_outcomes()


def _execute(plan: Plan, ctx: ExecContext) -> None:
    cancel = threading.Event()
    outcomes = ctx.finished
    work = []
    for i, action in enumerate(plan.actions):
        if action.kind == KEEP:
            outcomes[i] = _run(action, ctx, cancel)
        else:
            work.append((i, action))
    # Leftovers of interrupted earlier runs go first, once per directory (never live ones).
    dirs = sorted({a.target.parent for _, a in work} | {ctx.cache.tmp})
    for directory in dirs:
        clean_temp(directory)
    if work:
        pool = ThreadPoolExecutor(max_workers=max(1, min(ctx.parallel, len(work))), thread_name_prefix="modelsync")
        futures: dict = {}
        try:
            # Submitting inside the try: a worker creates its temp file at once, and a Ctrl-C that lands
            # while the others are still being submitted must clean it up too.
            for i, a in work:
                futures[pool.submit(_run, a, ctx, cancel)] = i
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                for f in done:
                    try:
                        outcomes[futures[f]] = f.result()
                    except Cancelled:
                        pass
        except KeyboardInterrupt:
            # Ctrl-C: workers stop at their next chunk and remove their temp files; one stuck in a
            # socket read is not waited for beyond a moment: its temp file is removed here.
            cancel.set()
            atomic.closing.set()  # no worker may create a temp file after the cleanup below
            pool.shutdown(wait=False, cancel_futures=True)
            wait(list(futures), timeout=2.0)
            for f, i in futures.items():  # installs that completed meanwhile count as installed
                if f.done() and not f.cancelled() and f.exception() is None and i not in outcomes:
                    outcomes[i] = f.result()
            for directory in dirs:
                clean_temp(directory, include_own=True)
            raise
        pool.shutdown(wait=True)


def lock_after(plan: Plan, outcomes: list[Outcome], previous: dict[tuple[str, str], LockEntry],
               ended_early: bool) -> tuple[list[LockEntry], bool]:
    """The lock entries after a run, and whether the run installed or removed anything.

    Each outcome's entry; a failed update keeps what the lock knew (``previous``), so nothing locked is
    forgotten. ``ended_early`` (a Ctrl-C, or only the removals of ``plan`` ran): actions without an
    outcome keep their previous entries too, since their files were not touched.
    """
    entries: dict[tuple[str, str], LockEntry] = {}
    for o in outcomes:
        if o.entry is not None:
            entries[o.action.key] = o.entry
        elif o.error is not None and o.action.key in previous:
            entries[o.action.key] = previous[o.action.key]
    if ended_early:
        done = {o.action.key for o in outcomes}
        entries.update({a.key: previous[a.key] for a in plan.actions if a.key not in done and a.key in previous})
    changed = any(o.action.kind != KEEP and o.error is None for o in outcomes)
    return list(entries.values()), changed


def preflight(plan: Plan, stores: list[Path], lock_dir: Path | None, *, install: bool = True) -> None:
    """Refuse before anything is fetched or replaced when a directory the run writes to is on a read-only
    filesystem or not writable by us: the ``stores`` (cache, install records), the locations when it
    installs, ``lock_dir`` when it writes a lock. The run would otherwise fail half-way."""
    if not plan.changes:
        return  # nothing to fetch or replace; a lock that cannot be written still gets its message
    dirs = set(stores)
    if install:
        dirs |= {a.target.parent for a in plan.changes}
    if lock_dir is not None:
        dirs.add(lock_dir)
    for directory in sorted(dirs):
        atomic.check_writable(directory)
