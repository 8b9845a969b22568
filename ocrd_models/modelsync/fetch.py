"""Streaming download with in-stream SHA-256 into a temp file, for http(s), file:// and local paths.

Robust against the network as it is: retries with exponential backoff and jitter for
transient faults (connection errors, stalls, 408/429/5xx, short bodies), bounded in count
and total time; ``Retry-After`` honoured; resume with ``Range`` (guarded by ``If-Range``)
after a broken connection, clean restart when the server ignores it; redirects followed
by us, so that an https -> http downgrade is refused and credentials never reach another
host. On any failure the temp file is removed; a checksum mismatch installs nothing.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urljoin, urlsplit

from . import failpoints
from .atomic import temp_name
from .credentials import Credentials, redact
from .digest import stream_hasher
from .errors import ChecksumMismatch, InstallError, NetworkError, UserInputError

CHUNK = 1 << 20
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 10

Progress = Callable[[int], None]


@dataclass(frozen=True)
class NetConfig:
    """How hard to try. README: "Network settings" (settings, env, flags)."""

    retries: int = 4  # extra attempts after the first
    backoff: float = 0.5  # seconds before the first retry; doubled each time, with jitter
    max_retry_time: float = 300.0  # give up retrying once this many seconds have passed
    connect_timeout: float = 15.0
    read_timeout: float = 60.0  # per read: a stalled server fails instead of hanging CI
    allow_http: frozenset[str] = frozenset()  # hosts an https URL may redirect to over plain http
    credentials: Credentials = field(default_factory=Credentials)


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
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    path = Path(url).expanduser()
    return path if path.is_absolute() else base_dir / path


class _Transient(Exception):
    """A fault worth another attempt."""

    def __init__(self, reason: str, after: float | None = None, restart: bool = False):
        super().__init__(reason)
        self.after = after  # Retry-After seconds
        self.restart = restart  # the partial bytes are worthless


def _retry_after(resp) -> float | None:
    value = (resp.headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    if value:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
    return None


class _Download:
    """One HTTP download into ``dest``: state kept across attempts for resuming."""

    def __init__(self, url: str, dest: Path, net: NetConfig, progress: Progress | None,
                 on_total: Callable[[int | None], None] | None, expected: str | None):
        self.url, self.dest, self.net = url, dest, net
        self.progress, self.on_total, self.expected = progress, on_total, expected
        self.hash = None  # chosen by size once the first response tells it (digest.stream_hasher)
        self.size = 0
        self.total: int | None = None
        self.validator: str | None = None  # ETag or Last-Modified of the bytes we have
        self.final_url = url

    def _restart(self) -> None:
        if self.progress and self.size:
            self.progress(-self.size)
        if self.hash is not None:
            self.hash.reset()
        self.size = 0
        self.validator = None
        with open(self.dest, "wb"):
            pass

    def _request(self):
        """GET with our own redirect handling; returns the final response (body unread)."""
        from . import transport  # urllib3 costs 0.1 s to import: only commands that download pay it

        url, seen = self.url, []
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            # Credentials of this URL's host only: a redirect to another host never carries them.
            headers = dict(self.net.credentials.for_url(url))
            if self.size:
                headers["Range"] = f"bytes={self.size}-"
                if self.validator:
                    headers["If-Range"] = self.validator
            resp = transport.get(url, parts.scheme, parts.hostname or "", headers,
                                 self.net.connect_timeout, self.net.read_timeout)
            if resp.status not in (301, 302, 303, 307, 308):
                self.final_url = url
                return resp
            location = resp.headers.get("Location", "")
            _discard(resp)
            target = urljoin(url, location)
            if target in seen or target == url:
                raise NetworkError(f"download of {redact(self.url)} failed: redirect loop at {redact(target)}")
            new = urlsplit(target)
            if parts.scheme == "https" and new.scheme == "http" and (new.hostname or "") not in self.net.allow_http:
                raise NetworkError(
                    f"download of {redact(self.url)} refused: it redirects from https to plain http "
                    f"({redact(target)}). If you trust that host, allow it: [settings] allow_http = "
                    f"[\"{new.hostname}\"] in models.toml.")
            if new.scheme not in ("http", "https"):
                raise NetworkError(f"download of {redact(self.url)} refused: redirect to {new.scheme}: URL")
            seen.append(url)
            url = target
        raise NetworkError(f"download of {redact(self.url)} failed: more than {MAX_REDIRECTS} redirects")

    def attempt(self) -> None:
        """One attempt; raises _Transient for faults worth retrying."""
        import urllib3

        from . import transport

        try:
            resp = self._request()
        except urllib3.exceptions.LocationValueError as err:  # also a bad proxy URL: retrying cannot help
            raise NetworkError(f"download of {redact(self.url)} failed: {_reason(err)}") from None
        except transport.UnsupportedProxy as err:
            raise NetworkError(f"download of {redact(self.url)} failed: {err}") from None
        except urllib3.exceptions.SSLError as err:
            if "CERTIFICATE_VERIFY_FAILED" in str(err):
                raise NetworkError(
                    f"download of {redact(self.url)} failed: the server's TLS certificate is not trusted "
                    f"({_reason(err)}). For a private CA, point REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) at its "
                    "bundle.") from None
            raise _Transient(_reason(err)) from None
        except urllib3.exceptions.HTTPError as err:
            raise _Transient(_reason(err)) from None
        try:
            self._receive(resp)
        except urllib3.exceptions.HTTPError as err:
            # urllib3 errors surface from read1(): a connection reset or stall mid-stream.
            _discard(resp)
            raise _Transient(_reason(err)) from None
        except BaseException:
            _discard(resp)
            raise
        resp.release_conn()  # read to the end: the connection is kept for the next download

    def _receive(self, resp) -> None:
        """Check the status and headers, then stream the body into ``dest``."""
        status = resp.status
        if status in RETRY_STATUS:
            raise _Transient(f"HTTP {status} {resp.reason}", _retry_after(resp))
        if status == 416:  # our range is past the end: the file changed
            raise _Transient("server rejected the resume range", restart=True)
        if status >= 400:
            hint = ("check the URL in models.toml or the registry entry; a mirror setting may point to a "
                    "wrong prefix" if status in (404, 410) else
                    "the server refused access: credentials may be needed (README: \"Credentials\")"
                    if status in (401, 403) else "the server refused the request")
            raise NetworkError(f"download of {redact(self.url)} failed: HTTP {status} {resp.reason}; {hint}")
        if self.size and status != 206:
            self._restart()  # the server ignored Range (or If-Range saw new content): from scratch
        elif status == 206:
            start = int((resp.headers.get("Content-Range") or "bytes 0-").split()[1].split("-")[0] or 0)
            if start != self.size:
                self._restart()
                raise _Transient(f"server resumed at byte {start}, not {self.size}", restart=True)
        length = resp.headers.get("Content-Length")
        expected_len = self.size + int(length) if length and length.isdigit() else None
        if self.total is None:
            self.total = expected_len if status != 206 else self._full_size(resp)
            if self.on_total:
                self.on_total(self.total)
        if self.hash is None:
            self.hash = stream_hasher(self.total)
        self.validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
        # read1 hands over bytes as they arrive: after a reset we keep (and resume after) all we got.
        read = resp.read1
        with open(self.dest, "ab", buffering=0) as fout:
            while True:
                chunk = read(CHUNK)
                if not chunk:
                    break
                self.hash.update(chunk)
                fout.write(chunk)
                self.size += len(chunk)
                if self.progress:
                    self.progress(len(chunk))
                failpoints.hit("download")
        if expected_len is not None and self.size < expected_len:
            raise _Transient(f"connection closed after {self.size} of {expected_len} bytes")
        if expected_len is None and self.expected:
            self.digest = self.hash.hexdigest()
            if self.digest != self.expected:
                # Without Content-Length a cut connection looks like the end: try again from scratch.
                self.hash = None
                raise _Transient("body ended early (no Content-Length) or changed", restart=True)

    @staticmethod
    def _full_size(resp) -> int | None:
        rng = resp.headers.get("Content-Range") or ""
        total = rng.rpartition("/")[2]
        return int(total) if total.isdigit() else None

    def _close_hash(self) -> None:
        if self.hash is not None:
            self.hash.close()

    def run(self) -> tuple[str, int, str]:
        started = time.monotonic()
        last: _Transient | None = None
        for attempt in range(self.net.retries + 1):
            if attempt:
                delay = self.net.backoff * (2 ** (attempt - 1)) * (0.75 + random.random() * 0.5)
                if last is not None and last.after is not None:
                    delay = max(delay, last.after)
                if time.monotonic() - started + delay > self.net.max_retry_time:
                    break
                time.sleep(delay)
                if last is not None and last.restart:
                    self._restart()
            try:
                self.digest = None
                self.attempt()
                return self.digest or self.hash.hexdigest(), self.size, self.final_url
            except _Transient as err:
                last = err
            except BaseException:
                self._close_hash()
                raise
        self._close_hash()
        raise NetworkError(f"download of {redact(self.url)} failed after {attempt + 1} attempt(s): {last}. "
                           "Check the network (or the mirror setting) and run the command again; retries and "
                           "timeouts are set in [settings.network].")


def _discard(resp) -> None:
    """Let go of a response whose body we do not want or could not finish (a redirect, an error page,
    a broken stream): its connection is closed, not reused."""
    resp.close()
    resp.release_conn()


def _reason(err: Exception) -> str:
    text = str(err)
    for marker in ("Failed to establish a new connection: ", "Read timed out", "Connection refused",
                   "Connection broken", "Connection reset"):
        if marker in text:
            i = text.index(marker)
            return text[i:].split("'))")[0].rstrip("')")[:200]
    return redact(text[:300])


def _check(expected: str | None, actual: str, what: str, path: Path) -> None:
    if expected is not None and expected != actual:
        path.unlink(missing_ok=True)
        raise ChecksumMismatch(what, expected, actual,
                               "Nothing was installed. If the origin changed on purpose, run `modelsync lock --upgrade` "
                               "(or update sha256 in models.toml); otherwise the download was corrupted or tampered with.")


def _copy_local(src: Path, dest: Path, progress: Progress | None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(src, "rb", buffering=0) as fin, open(dest, "wb", buffering=0) as fout:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := fin.readinto(buf):
            h.update(view[:n])
            fout.write(view[:n])
            size += n
            if progress:
                progress(n)
    return h.hexdigest(), size


def fetch(url: str, directory: Path, *, mirrors: dict[str, str] | None = None, base_dir: Path = Path("."),
          expected_sha256: str | None = None, progress: Progress | None = None,
          on_total: Callable[[int | None], None] | None = None, what: str = "",
          net: NetConfig | None = None) -> Fetched:
    """Download ``url`` into a temp file in ``directory`` while hashing; verify; return it.

    Raises NetworkError, ChecksumMismatch, InstallError or UserInputError (a missing local file).
    """
    net = net or NetConfig()
    directory.mkdir(parents=True, exist_ok=True)
    dest = temp_name(directory, what or Path(urlsplit(url).path).name)
    src = local_source(url, base_dir)
    try:
        if src is not None:
            if not src.is_file():
                raise UserInputError(f"local model file {src} does not exist (url {url!r} in models.toml)")
            if on_total:
                on_total(src.stat().st_size)
            try:
                sha, size = _copy_local(src, dest, progress)
            except OSError as err:
                raise InstallError(f"cannot copy {src} to {directory}: {err.strerror or err}") from None
            final = url
        else:
            dest.touch()
            try:
                sha, size, final = _Download(apply_mirrors(url, mirrors or {}), dest, net, progress, on_total,
                                             expected_sha256).run()
            except NetworkError:
                raise  # a ConnectionError, hence an OSError, but not a disk problem
            except OSError as err:
                raise InstallError(f"cannot write {dest}: {err.strerror or err}") from None
            final = redact(unmirror(final, url, mirrors or {}))
        failpoints.hit("hashed")
        _check(expected_sha256, sha, what or redact(url), dest)
        return Fetched(dest, sha, size, final)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
