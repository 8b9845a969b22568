"""Fetch one artifact into a temp file while hashing it, and verify it: http(s) (:mod:`.download`),
``file://`` URLs and local paths (copied). Mirrors apply before, and are mapped back after, the download.

On any failure the temp file is removed (a download that could be resumed is kept in the cache's
partials instead, see :mod:`.partial`); a checksum mismatch installs nothing; an OS error writing the
temp file names the filesystem (:func:`errors.filesystem_error`).
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from .. import failpoints
from ..atomic import temp_name
from ..errors import ChecksumMismatch, InstallError, NetworkError, UserInputError, filesystem_error
from ..progress import Meter
from ..urls import redact, strip_userinfo
from .download import HttpDownload, checked_url
from .growing import GrowingFile, StreamBroken
from .partial import PartialStore
from .retry import NetConfig, log, short

__all__ = ["Fetched", "NetConfig", "apply_mirrors", "fetch", "local_source", "unmirror"]

COPY_CHUNK = 1 << 20  # bytes per read of a local copy

@dataclass(frozen=True)
class Fetched:
    """A downloaded artifact sitting at ``path`` (a temp name)."""

    path: Path
    sha256: str
    size: int
    fetched_url: str  # after mirrors and redirects, credentials removed


def apply_mirrors(url: str, mirrors: dict[str, str]) -> str:
    """Replace the longest matching URL prefix by its mirror."""
    best = max((p for p in mirrors if url.startswith(p)), key=len, default=None)
    return url if best is None else mirrors[best] + url[len(best):]


def unmirror(final: str, declared: str, mirrors: dict[str, str]) -> str:
    """Map a URL fetched through a mirror back to the origin's form.

    The lock must not depend on one machine's mirror setting; a redirect target inside
    a mirror that cannot be mapped back is recorded as the declared URL.
    """
    for prefix, replacement in sorted(mirrors.items(), key=lambda kv: -len(kv[1])):
        if final.startswith(replacement):
            return prefix + final[len(replacement):]
    return declared if apply_mirrors(declared, mirrors) != declared else final


def local_source(url: str, base_dir: Path) -> Path | None:
    """The local path for a ``file://`` URL or a plain path (relative to ``base_dir``); None for http(s)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # a broken IPv6 literal
        if url.partition(":")[0].lower() in ("http", "https"):
            return None  # fetch() refuses it with a message
        raise UserInputError(f"the URL {short(strip_userinfo(url))} is malformed (a broken [IPv6] host); fix it "
                             "in models.toml") from None
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    path = Path(url).expanduser()
    return path if path.is_absolute() else base_dir / path


def _check(expected: str | None, actual: str, what: str, path: Path, url: str) -> None:
    if expected is not None and expected != actual:
        path.unlink(missing_ok=True)
        # Facts only: the caller knows where the expected digest came from, and adds the advice.
        raise ChecksumMismatch(what, expected, actual, url=redact(url))


def _copy_local(src: Path, dest: Path, meter: Meter | None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    try:
        fin = open(src, "rb", buffering=0)
    except OSError as err:
        raise InstallError(f"cannot read {src}: {err.strerror or err}") from None
    with fin:
        try:
            fout = open(dest, "wb", buffering=0)
        except OSError as err:
            raise filesystem_error(err, dest.parent, "write") from None
        with fout:
            buf = bytearray(COPY_CHUNK)
            view = memoryview(buf)
            while True:
                try:
                    n = fin.readinto(buf)
                except OSError as err:
                    raise InstallError(f"cannot read {src}: {err.strerror or err}") from None
                if not n:
                    break
                h.update(view[:n])
                try:
                    fout.write(view[:n])
                except OSError as err:
                    raise filesystem_error(err, dest.parent, "write") from None
                size += n
                if meter:
                    meter.advance(n)
    return h.hexdigest(), size


def _check_plausible(path: Path, declared_size: int | None, what: str) -> None:
    """A body without Content-Length and without a pin: a connection cut short looks like its end, and
    nothing else vouches for the bytes. They must at least hold together (plausible.py)."""
    from ..plan.plausible import implausible

    why = implausible(path, declared_size=declared_size)
    if why:
        raise NetworkError(f"download of {what} ended without a Content-Length, and what arrived cannot be the "
                           f"model ({why}): most likely the connection was cut short. Nothing was installed; run "
                           "the command again, or pin its sha256 in models.toml.")


def fetch(url: str, directory: Path, *, mirrors: dict[str, str] | None = None, base_dir: Path = Path("."),
          expected_sha256: str | None = None, meter: Meter | None = None, what: str = "",
          net: NetConfig | None = None, declared_size: int | None = None, partials: PartialStore | None = None,
          reserve: Callable[[int, int], None] | None = None,
          consumer: Callable[[GrowingFile], object] | None = None) -> Fetched:
    """Download ``url`` into a temp file in ``directory`` while hashing; verify; return it.

    Without ``expected_sha256``, a body that came without ``Content-Length`` must be plausible as a
    model (``declared_size``: the resource entry's size, a hint) or the download fails (exit 3).

    With ``partials``, a download that stops before it is complete is kept there for a later process
    to resume, and one an ended process left is resumed (:mod:`.partial`); resumed bytes that do not
    verify are fetched once more from the server. ``reserve`` is called with the bytes still to come and
    the whole size as soon as the response says them (a disk-space check that may raise).

    ``consumer`` (http(s) only) is called on a thread of its own with a :class:`.growing.GrowingFile`
    that yields the file's bytes in order while they arrive (an archive unpacking during its download);
    fetch returns only after it returned. What it read is the verified file only if the stream is
    :attr:`.growing.GrowingFile.complete` afterwards (it ends only after the file verified, and breaks off
    when the download starts over or fails); what it raised is not raised here (the caller redoes its
    work from the file and meets it there).

    Raises NetworkError, ChecksumMismatch, InstallError (an OS error writing ``directory``, via
    :func:`errors.filesystem_error`) or UserInputError (a missing local file, a malformed URL).

    Time bounds of an http(s) download (``W`` = ``read_timeout``, ``D`` = the moment
    ``max_retry_time`` seconds after the download began):

    1. No single read waits more than ``W``. Each request must have its response head (status
       line and headers) complete within ``connect_timeout + W`` seconds of being started
       (connecting, a proxy's CONNECT and the TLS handshake included; name resolution excepted),
       and every read of the body must return within ``connect_timeout + W`` of the previous one
       whatever arrives meanwhile (chunked framing: chunk-size lines, extensions, trailers), else
       it is cut as a stall (:mod:`transport`).
    2. Low-speed cut, like curl's ``--speed-limit 1024 --speed-time W``: after each read of a
       body, the average rate since a mark at least ``W`` seconds old (at most ``9/8 W`` plus one
       read) is compared with 1 KiB/s; below it, the attempt is cut as a stall, a transient fault
       that is retried (resuming after the bytes received). A body that keeps arriving at 1 KiB/s
       or more is never cut, however large; a trickle is cut after about ``W`` seconds.
    3. No attempt starts after ``D``: a retry whose backoff (or ``Retry-After``) would end after
       ``D`` is not made, and no redirect is followed after ``D``. An attempt still running at
       ``D`` goes on only while it stays at or above 1 KiB/s, from then on measured over the last
       ``W`` seconds or, for a body younger than that, since it began (once that is ``min(W, 1 s)``
       ago). A cut after ``D`` is final.

    So a download that keeps failing ends within about ``max_retry_time + connect_timeout + 2 W``
    seconds (plus name resolution), and after at most ``retries + 1`` attempts.
    """
    net = net or NetConfig()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise filesystem_error(err, directory, "create") from None
    src = local_source(url, base_dir)
    if src is None:
        try:
            checked_url(apply_mirrors(url, mirrors or {}))
        except ValueError as err:
            raise UserInputError(f"{what or 'a download'}: the URL is malformed ({err}); fix it in models.toml "
                                 "(or the mirror setting).") from None
    args = (url, directory, src, mirrors or {}, expected_sha256, meter, what, net, declared_size,
            partials if src is None else None, reserve)
    try:
        return _fetch_once(*args, resume=True, consumer=consumer if src is None else None)
    except _ResumedWrong:  # bytes resumed from an earlier run did not verify: once more, all from the server
        return _fetch_once(*args, resume=False, consumer=None)


class _Feed:
    """The consumer of a download's bytes in order (see :func:`fetch`), on its own thread."""

    def __init__(self, dest: Path, consumer: Callable[[GrowingFile], object]) -> None:
        import threading

        self.tap = GrowingFile(os.open(dest, os.O_RDONLY))  # the inode: a move into partial/ keeps it
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(consumer,), name="modelsync-unpack", daemon=True)
        self._thread.start()

    def _run(self, consumer: Callable[[GrowingFile], object]) -> None:
        try:
            consumer(self.tap)
        except BaseException as err:  # noqa: BLE001 - handed to the caller as "not streamed"
            self.error = err
        finally:
            self.tap.close()

    def finish(self) -> None:
        """The download verified: let the consumer read to the end, and wait for it."""
        self.tap.end()
        self._thread.join()
        if self.error is not None and not isinstance(self.error, StreamBroken):
            log.debug("unpacking during the download failed (%s); unpacking from the file", self.error)

    def abandon(self) -> None:
        """The download failed or was interrupted: the consumer stops at its next read."""
        self.tap.break_off("the download did not complete")
        self._thread.join()


class _ResumedWrong(Exception):
    """A download that resumed an earlier run's bytes ended with another digest than expected."""


def _fetch_once(url: str, directory: Path, src: Path | None, mirrors: dict[str, str], expected_sha256: str | None,
                meter: Meter | None, what: str, net: NetConfig, declared_size: int | None,
                partials: PartialStore | None, reserve: Callable[[int, int], None] | None, *, resume: bool,
                consumer: Callable[[GrowingFile], object] | None = None) -> Fetched:
    mirrored = apply_mirrors(url, mirrors)
    try:
        partial = partials.resume(mirrored, expected_sha256) if partials is not None and resume else None
    except OSError as err:
        raise filesystem_error(err, partials.root, "write") from None
    dest = partial.data if partial is not None else temp_name(directory, what or Path(urlsplit(url).path).name)
    download: HttpDownload | None = None
    feed: _Feed | None = None
    try:
        if src is not None:
            if not src.is_file():
                raise UserInputError(f"local model file {src} does not exist (url {url!r} in models.toml)")
            if meter:
                meter.total(src.stat().st_size)
            sha, size = _copy_local(src, dest, meter)
            final = url
        else:
            try:
                dest.touch()
                feed = _Feed(dest, consumer) if consumer is not None else None
            except OSError as err:
                raise filesystem_error(err, directory, "write") from None
            download = HttpDownload(mirrored, dest, net, meter, expected_sha256, partial, reserve, partials,
                                 feed.tap if feed else None)
            sha, size, final = download.run()
            dest = download.dest  # moved into the partials if it ran long enough to be kept for a resume
            final = redact(unmirror(final, url, mirrors))
            if expected_sha256 is None and download.total is None:
                _check_plausible(dest, declared_size, what or redact(url))
        failpoints.hit("hashed")
        if download is not None and download.resumed and expected_sha256 not in (None, sha):
            raise _ResumedWrong()
        _check(expected_sha256, sha, what or redact(url), dest, url)
        if feed is not None:
            feed.finish()
        partial = download.partial if download is not None else None
        if partial is not None:  # verified: out of the partials, to a temp name the caller moves on
            done = temp_name(directory, what or Path(urlsplit(url).path).name)
            os.replace(partial.data, done)
            partial.discard()
            dest = done
        return Fetched(dest, sha, size, final)
    except BaseException as err:
        if feed is not None:
            feed.abandon()
        # A full disk keeps nothing: the bytes kept would hold on to the space the user must free.
        kept = (download is not None and not isinstance(err, (ChecksumMismatch, _ResumedWrong))
                and getattr(err, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and download.keep_for_resume())
        partial = download.partial if download is not None else partial
        if partial is None:
            dest.unlink(missing_ok=True)
        elif kept:
            partial.release()
        else:
            partial.discard()
        raise
