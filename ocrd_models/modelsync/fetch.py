"""Streaming download with in-stream SHA-256 into a temp file, for http(s), file:// and local paths.

The temp file lives in the directory the caller chooses (the destination's, so the
final rename is atomic); on any failure it is removed. A checksum mismatch raises
:class:`ChecksumMismatch` after removing the bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from .atomic import temp_name
from .errors import ChecksumMismatch, InstallError, NetworkError, UserInputError

CHUNK = 1 << 20
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0  # per read, not total: a stalled server fails instead of hanging CI
RETRIES = 4
BACKOFF = 0.5  # seconds, doubled each retry, with jitter
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
USER_AGENT = "ocrd-modelsync (+https://pypi.org/project/ocrd-modelsync/)"

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Fetched:
    """A downloaded artifact sitting at ``path`` (a temp name)."""

    path: Path
    sha256: str
    size: int
    fetched_url: str  # after mirrors and redirects


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


_sessions = threading.local()


def session():
    """One ``requests.Session`` per thread: keeps connections alive, never shared across threads."""
    s = getattr(_sessions, "session", None)
    if s is None:
        import requests

        s = requests.Session()
        s.headers["User-Agent"] = USER_AGENT
        _sessions.session = s
    return s


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


def _retry_after(resp) -> float | None:
    value = resp.headers.get("Retry-After")
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _http(url: str, dest: Path, progress: Progress | None, on_total: Callable[[int | None], None] | None
          ) -> tuple[str, int, str]:
    import requests
    import urllib3

    last: Exception | None = None
    for attempt in range(RETRIES + 1):
        if attempt:
            delay = BACKOFF * (2 ** (attempt - 1)) * (1 + random.random() * 0.25)
            if isinstance(last, _Retry) and last.after is not None:
                delay = min(max(delay, last.after), 60.0)
            time.sleep(delay)
        try:
            with session().get(url, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)) as resp:
                if resp.status_code in RETRY_STATUS:
                    last = _Retry(f"HTTP {resp.status_code} {resp.reason}", _retry_after(resp))
                    continue
                if resp.status_code >= 400:
                    raise NetworkError(
                        f"download of {url} failed: HTTP {resp.status_code} {resp.reason}. "
                        + ("Check the URL in models.toml or the registry entry; a mirror setting may point to a "
                           "wrong prefix." if resp.status_code in (404, 410) else
                           "The server refused access; credentials may be needed.")
                    )
                total = resp.headers.get("Content-Length")
                expected_len = int(total) if total and total.isdigit() else None
                if on_total:
                    on_total(expected_len)
                h = hashlib.sha256()
                size = 0
                with open(dest, "wb", buffering=0) as fout:
                    raw = resp.raw
                    raw.decode_content = False
                    while True:
                        chunk = raw.read(CHUNK)
                        if not chunk:
                            break
                        h.update(chunk)
                        fout.write(chunk)
                        size += len(chunk)
                        if progress:
                            progress(len(chunk))
                # Content-Encoding is not decoded (we want the stored bytes); a short body is an error.
                if expected_len is not None and size != expected_len:
                    last = _Retry(f"connection closed after {size} of {expected_len} bytes", None)
                    if progress:
                        progress(-size)
                    continue
                return h.hexdigest(), size, resp.url
        except NetworkError:
            raise
        except (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError) as err:
            # urllib3 errors surface from resp.raw.read(): a connection reset or short body mid-stream.
            last = _Retry(_reason(err), None)
        except requests.RequestException as err:
            raise NetworkError(f"download of {url} failed: {_reason(err)}") from None
        except OSError as err:
            raise InstallError(f"cannot write {dest}: {err.strerror or err}") from None
    raise NetworkError(f"download of {url} failed after {RETRIES + 1} attempts: {last}. "
                       "Check the network (or the mirror setting) and run the command again.")


class _Retry(Exception):
    def __init__(self, reason: str, after: float | None):
        super().__init__(reason)
        self.after = after


def _reason(err: Exception) -> str:
    text = str(err)
    for marker in ("Failed to establish a new connection: ", "Read timed out", "Connection refused"):
        if marker in text:
            i = text.index(marker)
            return text[i:].split("'))")[0].rstrip("')")
    return text[:300]


def fetch(url: str, directory: Path, *, mirrors: dict[str, str] | None = None, base_dir: Path = Path("."),
          expected_sha256: str | None = None, progress: Progress | None = None,
          on_total: Callable[[int | None], None] | None = None, what: str = "") -> Fetched:
    """Download ``url`` into a temp file in ``directory`` while hashing; verify; return it.

    Raises NetworkError, ChecksumMismatch, InstallError or UserInputError (a missing local file).
    """
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
            sha, size, final = _http(apply_mirrors(url, mirrors or {}), dest, progress, on_total)
            final = unmirror(final, url, mirrors or {})
        _check(expected_sha256, sha, what or url, dest)
        return Fetched(dest, sha, size, final)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
