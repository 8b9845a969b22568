"""Obtain a verified resource through the cache, then move it into place atomically.

Order of an install (the invariant: nothing unverified ever sits at a final path,
and a working model is only replaced once its replacement is verified):

1. obtain: the cache already holds the expected bytes, or they are downloaded into
   the cache's temp dir while hashing, verified (lock or manifest pin), and stored;
   archives are unpacked beside them, ``path_in_archive`` selected, the tree digest
   verified, and the tree stored too;
2. place: hardlink (or copy) the cached file or tree to a temp name beside the target;
3. commit: rename into place (a file: one ``os.replace``; a directory: the old one is
   moved aside, the new one renamed in, then the old one deleted);
4. the caller writes the install record (the completion marker) last.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from ..atomic import fsync_dir, remove_path, temp_name
from .cache import Cache, copy_tree
from ..digest import FileHasher, StatSig, current_sigs, digest_path
from ..errors import ChecksumMismatch, InstallError, OfflineMissing, UserInputError, filesystem_error
from .. import failpoints
from .fetch import Fetched, NetConfig, apply_mirrors, fetch, local_source
from .partial import PartialStore
from .growing import GrowingFile
from .unpack import Limits, extract, extract_stream, select
from ..progress import Meter

if TYPE_CHECKING:
    from ..plan.planner import Plan
    from ..spec.lockfile import LockEntry


# The advice for bytes from an origin that differ from the lock's (or models.toml's) digest.
ORIGIN_CHANGED = ("Nothing was installed. If the origin changed on purpose, run `modelsync lock --upgrade` (or update "
                  "sha256 in models.toml); otherwise the download was corrupted or tampered with.")


class ArtifactSource(Protocol):
    """A place asked for locked artifacts by digest before their origin (an OCI registry, see
    ``oci.pull.RegistrySource``); defined here so that this layer needs nothing from the one above."""

    only: bool  # never fall back to the origin

    def fetch(self, sha256: str, directory: Path, net: NetConfig, what: str,
              meter: Meter | None = None) -> Fetched | None:
        """The verified blob in a temp file under ``directory``, or None when the source lacks it."""

    def refuse(self, what: str, url: str, sha256: str | None) -> Exception:
        """The error for an artifact this source cannot serve when the origin is forbidden."""


@dataclass(frozen=True)
class Request:
    """What to obtain: the resource's declaration and the digests it must match."""

    what: str  # "processor name", for messages
    name: str
    url: str
    type: str
    path_in_archive: str
    expected_sha256: str | None
    expected_installed: str | None
    size: int | None = None  # as the resource entry declares it: a hint


@dataclass(frozen=True)
class Obtained:
    """A verified resource in the cache, ready to be placed."""

    source: Path  # the cached file or tree
    sha256: str | None  # of the downloaded artifact (None: served from a cached tree alone)
    size: int | None
    fetched_url: str | None  # None when nothing was fetched
    installed_digest: str
    downloaded: bool


class Flights:
    """One fetch per artifact in a run: the first worker asking for a key fetches it, the others wait for
    it and take the blob it put into the cache (two processors declaring one 5.6 GB URL download it once).
    Keys: the expected SHA-256 when one is known, else the URL. If the first fetch fails, each waiting
    worker tries for itself (and reports its own error)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[tuple[str, str], list] = {}  # key -> [done event, result or None]

    def fetch_once(self, key: tuple[str, str], fetch: Callable[[], tuple]) -> tuple:
        """``fetch()``'s result for ``key``: fetched here, or by the worker that asked first."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = [threading.Event(), None]
        if not leader:
            flight[0].wait()
            if flight[1] is not None:
                path, sha, size, fetched_url, _ = flight[1]
                return path, sha, size, fetched_url, False  # placed from the first one's download
            return fetch()
        try:
            flight[1] = fetch()
            return flight[1]
        finally:
            flight[0].set()


@dataclass
class Fetcher:
    """How to fetch: mirrors, base dir of relative paths, offline switch, progress callbacks."""

    mirrors: dict[str, str]
    base_dir: Path
    offline: bool = False
    meter: Meter | None = None  # the progress of the resource being obtained
    net: NetConfig = field(default_factory=NetConfig)
    limits: Limits = field(default_factory=Limits)
    registry: ArtifactSource | None = None  # fetch locked artifacts by digest from an OCI registry first
    flights: Flights | None = None  # shared by the workers of one run: one download per artifact
    reserve: Callable[[int, int], None] | None = None  # a disk-space check: (bytes to come, whole size)


def obtain_blob(req: Request, cache: Cache, f: Fetcher,
                consumer: Callable[[GrowingFile], object] | None = None) -> tuple[Path, str, int, str | None, bool]:
    """(path, sha256, size, fetched_url, downloaded) of the verified artifact: cache, registry or origin
    (once per run and artifact, however many resources declare it: see :class:`Flights`). ``consumer``
    reads the bytes while they download from the origin (see :func:`.fetch.fetch`), if they do."""
    if f.flights is None or local_source(req.url, f.base_dir) is not None:
        return _obtain_blob(req, cache, f, consumer)
    key = ("sha256", req.expected_sha256) if req.expected_sha256 else ("url", apply_mirrors(req.url, f.mirrors))
    return f.flights.fetch_once(key, lambda: _obtain_blob(req, cache, f, consumer))


def _obtain_blob(req: Request, cache: Cache, f: Fetcher,
                 consumer: Callable[[GrowingFile], object] | None = None) -> tuple[Path, str, int, str | None, bool]:
    if req.expected_sha256:
        hit = cache.get_blob(req.expected_sha256)
        if hit is not None:
            return hit, req.expected_sha256, hit.stat().st_size, None, False
    is_local = local_source(req.url, f.base_dir) is not None
    if f.offline and not is_local:
        raise OfflineMissing(f"{req.what}: not in the cache and --offline forbids downloading {req.url}")
    try:
        cache.tmp.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise filesystem_error(err, cache.tmp, "create the cache directory") from None
    if f.registry is not None and not is_local:
        from_registry = (f.registry.fetch(req.expected_sha256, cache.tmp, f.net, req.what, f.meter)
                         if req.expected_sha256 else None)
        if from_registry is not None:
            # Like a cache hit for the lock: the origin URL (and where it redirected) stays as locked.
            path = cache.add_blob(from_registry.path, from_registry.sha256)
            return path, from_registry.sha256, from_registry.size, None, False
        if f.registry.only:
            raise f.registry.refuse(req.what, req.url, req.expected_sha256)
    try:
        got = fetch(req.url, cache.tmp, mirrors=f.mirrors, base_dir=f.base_dir, expected_sha256=req.expected_sha256,
                    meter=f.meter, what=req.what, net=f.net, declared_size=req.size, reserve=f.reserve,
                    partials=PartialStore(cache.partial_dir, f.net.keep_partial_days * 86400), consumer=consumer)
    except ChecksumMismatch as err:
        raise err.with_hint(ORIGIN_CHANGED) from None
    path = cache.add_blob(got.path, got.sha256)
    return path, got.sha256, got.size, got.fetched_url, True


def obtain(req: Request, cache: Cache, f: Fetcher) -> Obtained:
    """The verified resource in the cache: reused if present, fetched (and unpacked) otherwise."""
    if req.type == "directory":
        return _directory(req, cache, f)
    if req.type == "archive" and req.expected_installed:
        tree = cache.get_tree(req.expected_installed)
        if tree is not None:
            return Obtained(tree, req.expected_sha256, None, None, req.expected_installed, False)
    if req.type == "file":
        blob, sha, size, fetched_url, downloaded = obtain_blob(req, cache, f)
        _check_installed(req, sha)
        return Obtained(blob, sha, size, fetched_url, sha, downloaded)
    unpack_dir = temp_name(cache.tmp, req.name, suffix=".d")
    try:
        try:
            unpack_dir.mkdir(parents=True)
        except OSError as err:
            raise filesystem_error(err, cache.tmp, "create the cache directory") from None
        label = req.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or req.name
        blob, sha, size, fetched_url, downloaded, known = _unpacked(req, cache, f, unpack_dir, label)
        chosen = select(unpack_dir, req.path_in_archive, label)
        digest = digest_path(chosen, known=known)[0]
        _check_installed(req, digest)
        tree = cache.add_tree(chosen, digest)
    finally:
        remove_path(unpack_dir)
    return Obtained(tree, sha, size, fetched_url, digest, downloaded)


def _unpacked(req: Request, cache: Cache, f: Fetcher, unpack_dir: Path, label: str) -> tuple:
    """The archive's blob (as :func:`obtain_blob`) and its tree in ``unpack_dir``, with the hashes of the
    files written. A tar archive downloading from its origin is unpacked while it arrives (a second
    thread reads the bytes in order); what that made counts only if the download verified over exactly
    those bytes (the stream is then ``complete``), else the archive is unpacked from the verified file."""
    streamed: dict[str, object] = {}

    def unpack_while_downloading(stream: GrowingFile) -> None:
        streamed["stream"] = stream
        hasher = streamed["hasher"] = FileHasher()
        try:
            streamed["format"] = extract_stream(stream, unpack_dir, label, f.limits, hasher)
        finally:
            streamed["known"] = hasher.close()

    blob, sha, size, fetched_url, downloaded = obtain_blob(req, cache, f, unpack_while_downloading)
    stream = streamed.get("stream")
    # The stream ends only once the download verified, and breaks off when it restarts or fails.
    if streamed.get("format") and stream is not None and stream.complete:
        return blob, sha, size, fetched_url, downloaded, streamed["known"]
    if "hasher" in streamed:  # begun while downloading and not usable: start from an empty directory
        remove_path(unpack_dir)
        try:
            unpack_dir.mkdir(parents=True)
        except OSError as err:
            raise filesystem_error(err, unpack_dir.parent, "create the unpacking directory") from None
    hasher = FileHasher()
    try:
        extract(blob, unpack_dir, label, f.limits, hasher)
    finally:
        known = hasher.close()
    return blob, sha, size, fetched_url, downloaded, known


def _directory(req: Request, cache: Cache, f: Fetcher) -> Obtained:
    src = local_source(req.url, f.base_dir)
    if src is None or not src.is_dir():
        raise UserInputError(f"{req.what}: type = \"directory\" needs a local directory as url; {req.url!r} is not one")
    cache.tmp.mkdir(parents=True, exist_ok=True)
    temp = temp_name(cache.tmp, req.name, suffix=".d")
    try:
        copy_tree(src, temp, req.what)  # no recursion, links kept as links, modes ours
        digest, sigs = digest_path(temp, f.meter.advance if f.meter else None)
        _check_installed(req, digest, req.expected_sha256)
        tree = cache.add_tree(temp, digest)
    finally:
        remove_path(temp)
    return Obtained(tree, digest, sum(s.size for s in sigs.values()), None, digest, True)


def _check_installed(req: Request, actual: str, fallback: str | None = None) -> None:
    expected = req.expected_installed or fallback
    if expected is not None and expected != actual:
        raise ChecksumMismatch(f"{req.what} (installed content)", expected, actual,
                               "Nothing was installed; the existing copy, if any, is untouched.")


def commit(temp: Path, final: Path, deferred_fsync: set[Path] | None = None) -> dict[str, StatSig]:
    """Rename a placed temp file/tree to ``final``; the old one goes only after the new one is in.

    Returns the stat signatures at the final path, for the install record. With
    ``deferred_fsync``, the directory is added to it instead of being flushed now: the caller
    flushes each directory once, before it writes the lock (200 installs into one directory:
    one fsync instead of 200; a power loss before that flush can only lose whole renames).
    """
    failpoints.hit("commit")
    try:
        if not temp.is_dir() and not (final.is_dir() and not final.is_symlink()):
            os.replace(temp, final)  # atomic: readers see the old or the new file
            # rename(2) does nothing when both names are hardlinks of one file (another sync placed the
            # same cache blob there first): the temp name is still there, and ours to remove.
            if os.path.lexists(temp):
                os.unlink(temp)
        else:
            _swap_in(temp, final)
        if deferred_fsync is None:
            fsync_dir(final.parent)
        else:
            deferred_fsync.add(final.parent)
    except OSError as err:
        remove_path(temp)
        raise filesystem_error(err, final, "move the new model into place at") from None
    sigs = current_sigs(final)
    if sigs is None:
        raise InstallError(f"{final} vanished right after it was installed (another process removed it?)")
    return sigs


def _swap_in(new: Path, final: Path, attempts: int = 5) -> None:
    # A directory cannot be replaced in one rename: move the old one aside first (and back if the
    # second rename fails), so a working model is never lost. Another process may be doing the
    # same: the loop tolerates its renames in between.
    for _ in range(attempts):
        old = None
        if os.path.lexists(final):
            old = temp_name(final.parent, final.name, suffix=".old")
            try:
                os.rename(final, old)
            except FileNotFoundError:
                old = None
        try:
            os.rename(new, final)
        except OSError as err:
            if old is not None and not os.path.lexists(final):
                os.rename(old, final)
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                continue  # someone put a copy there meanwhile: move that aside too
            raise
        if old is not None:
            remove_path(old)
        return
    raise InstallError(f"{final}: kept being replaced by another process; run the command again")


def check_offline(plan: "Plan", cache: Cache, base_dir: Path, manifest_path: Path) -> None:
    """Raise OfflineMissing, listing them, when the plan needs resources that only a download gives."""
    missing = offline_missing(plan, cache, base_dir)
    if missing:
        raise OfflineMissing(f"--offline: {len(missing)} resource(s) are neither installed nor in the cache "
                             f"({cache.root}):\n" + "\n".join(f"  {m}" for m in missing)
                             + f"\nFetch them with network access: modelsync sync --manifest {manifest_path}")


def offline_missing(plan: "Plan", cache: Cache, base_dir: Path) -> list[str]:
    """Resources the plan would have to download: neither in the cache nor local files (``--offline``)."""
    missing = []
    for a in plan.changes:
        w, exp = a.wanted, a.expect
        if w is None or exp is None:
            continue
        if local_source(w.url, base_dir) is not None:
            continue
        if exp.sha256 and cache.get_blob(exp.sha256) is not None:
            continue
        if w.type == "archive" and exp.installed and cache.get_tree(exp.installed) is not None:
            continue
        missing.append(f"{w.processor} {w.name} ({w.url})")
    return missing


def locked_artifact(e: "LockEntry", cache: Cache, f: Fetcher) -> Path:
    """The locked artifact's bytes in the cache: already there, or fetched from its origin and verified."""
    assert e.sha256
    hit = cache.get_blob(e.sha256)
    if hit is not None:
        return hit
    req = Request(what=f"{e.processor} {e.name}", name=e.name, url=e.url, type="file", path_in_archive=".",
                  expected_sha256=e.sha256, expected_installed=None)
    return obtain_blob(req, cache, f)[0]
