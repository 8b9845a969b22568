"""One HTTP(S) download into a temp file, hashed as it arrives: :class:`HttpDownload`.

Robust against the network as it is, and against servers that are broken or hostile:

- Transient faults (connection errors, stalls, transfers below the low-speed floor, 408/425/429/5xx,
  short bodies) are retried with exponential backoff and jitter, bounded in count and in time
  (see :func:`.fetch.fetch` for the exact time rule); ``Retry-After`` is honoured.
- After a broken connection the download resumes with ``Range``, guarded by ``If-Range`` with a
  strong validator: the first response's strong ``ETag``, or, when it had no ETag at all, its
  ``Last-Modified`` if its ``Date`` is at least a second later (RFC 9110 13.1.5: never a weak
  ETag, never a date beside an ETag). Without such a validator there is no resume: the download
  starts over. Every 206 is checked before a byte of it is kept: ``Content-Range`` must read
  ``bytes START-END/TOTAL`` with START where we asked, END = TOTAL - 1, TOTAL the first
  response's length and ``Content-Length`` (if sent) END - START + 1; the validator we sent must
  come back unchanged (and no ETag may appear when we sent a date). Any other 206 is never
  spliced onto the bytes we have: the download starts over from byte 0 (counted as a retry).
- Redirects are followed by us: an https -> http downgrade is refused, credentials never reach
  another host, a malformed ``Location`` fails at once, and so does one other URL parsers would
  read differently (a backslash, control characters, user info: :func:`transport.parse`). Bodies
  of redirects and of error responses are never read.
- Malformed header values (``Content-Length``, ``Content-Range``, ``Location``, ``Retry-After``)
  never crash: they fail (exit 3), restart or are ignored as documented above; reason phrases
  and header values from the server stay out of messages or are shortened with ``!r``.
- A large file from a server that vouches for ranges comes over several connections at once
  (:mod:`.segmented`), each range guarded and checked the same way.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urljoin

from .. import failpoints
from ..digest import stream_hasher
from ..errors import NetworkError, UnsupportedProxy, filesystem_error
from ..progress import Meter
from ..urls import redact
from .credentials import user_allows_http
from .growing import GrowingFile
from .partial import Partial, PartialStore, ResumeState
from .retry import (DNS_ATTEMPTS, RETRY_STATUS, Attempts, NetConfig, SpeedFloor, Transient, http_date, log,
                    reason_text, retry_after, short, status_text)
from .segmented import SegmentedDownload

CHUNK = 1 << 20
REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 10
CHECKPOINT_SECONDS = 2.0  # a resumable download records its progress (flushed to disk) this often

_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit() accepts '²'), below 2**63
_CONTENT_RANGE = re.compile(r"(?i:bytes) ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})")
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')  # RFC 9110 entity-tag without W/
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")  # never valid in a Location (a space is percent-encoded)
_URL_SAFE = "".join(chr(c) for c in range(0x21, 0x7f))  # printable ASCII stays as it is



def checked_url(url: str, from_server: bool = False):
    """``url`` as the request to it is made (a :class:`transport.Target`); raises ValueError (with a reason)
    if it is not an http(s) URL every parser reads the same way (see :func:`transport.parse`)."""
    from . import transport  # urllib3 is slow to import: only commands that download pay for it

    return transport.parse(url, from_server=from_server)


def _redirect_target(url: str, location: str | None) -> str:
    """The absolute URL a ``Location`` points to; raises ValueError if it is missing or malformed."""
    if not location:
        raise ValueError("the redirect has no Location")
    if _CONTROL.search(location):
        raise ValueError("its Location contains a control character or a backslash")
    # http.client decodes header bytes as latin-1: recover them and percent-encode non-ASCII bytes
    # (a UTF-8 path sent raw, as some servers do) and spaces, as browsers do.
    location = quote(location.encode("latin-1"), safe=_URL_SAFE)  # UnicodeEncodeError is a ValueError
    target = urljoin(url, location)
    checked_url(target, from_server=True)
    return target


class HttpDownload(SegmentedDownload):
    """One HTTP download into ``dest``: state kept across attempts for resuming."""

    def __init__(self, url: str, dest: Path, net: NetConfig, meter: Meter | None, expected: str | None,
                 partial: Partial | None = None, reserve: Callable[[int, int], None] | None = None,
                 partials: PartialStore | None = None, tap: GrowingFile | None = None):
        self.url, self.dest, self.net = url, dest, net
        self.tap = tap  # told how far the bytes are on disk in order (an archive unpacking meanwhile)
        self.ranges: list[tuple[int, int]] = []  # the byte ranges on disk when segmented (else [(0, size)])
        self.segmentable = net.segments > 1  # off after a server broke the rules of ranges once
        target = checked_url(url)
        self.host = f"{target.host}:{target.port}"  # connections_per_host counts per host and port
        self.meter, self.expected = meter, expected
        self.partial = partial  # kept across processes (see :mod:`.partial`): resumed from, and recorded in
        self.partials = partials  # where a download that runs long enough (or stops) is kept for a resume
        self.reserve = reserve  # called with (bytes still to come, whole size) once known (a disk-space check)
        self.hash = None  # chosen by size once the first response tells it (digest.stream_hasher)
        self.size = 0
        self.total: int | None = None  # the whole file's length, from the response our bytes came from
        self.etag: str | None = None  # validators of the bytes we have
        self.last_modified: str | None = None
        self.date_validator = False  # Last-Modified is a strong validator (Date >= it + 1 s)
        self.sent: tuple[str, str] | None = None  # ("ETag" | "Last-Modified", value) sent as If-Range
        self.final_url = url
        self.digest: str | None = None
        self.deadline = float("inf")
        self.resumed = 0  # bytes taken over from an earlier process
        # When the partial's record was last written: a download is kept for a resume only once it has run
        # this long (or when it stops), so that many small downloads pay nothing for it.
        self.checkpoint = time.monotonic()
        if partial is not None and partial.state is not None:
            self._resume(partial.state)

    # -- across processes --------------------------------------------------------------------------
    def _resume(self, state: ResumeState) -> None:
        """Take over the bytes an earlier process recorded: hash them (they are still read back from the
        page cache, usually) and ask the server only for the rest, guarded by the same validator."""
        self.size = state.size
        self.ranges = list(state.on_disk())
        self.resumed = sum(e - s for s, e in self.ranges)
        self.total, self.etag, self.last_modified = state.total, state.etag, state.last_modified
        self.date_validator = state.date_validator
        self.hash = stream_hasher(self.total)
        try:
            with open(self.dest, "rb", buffering=0) as fin:
                hashed = 0  # the gap-free start only (0 bytes when the record's first range is further on)
                while hashed < self.size:
                    chunk = fin.read(min(CHUNK, self.size - hashed))
                    if not chunk:
                        raise OSError(f"the kept download is shorter than its record ({hashed} of {self.size} bytes)")
                    self.hash.update(chunk)
                    hashed += len(chunk)
        except OSError as err:
            raise filesystem_error(err, self.dest, "read") from None
        if self.tap is not None:
            self.tap.grow(self.size)
        log.info("resuming %s with %d bytes an earlier run fetched", redact(self.url), self.resumed)
        if self.meter:
            self.meter.total(self.total)
            self.meter.advance(self.resumed)

    def _record(self, fd: int | None) -> None:
        """Write the partial's state (the data flushed first): what an ended process leaves to resume from."""
        self.checkpoint = time.monotonic()
        if not self._have() or self._if_range() is None:
            return
        try:
            if self.partial is None:
                self.partial = self.partials.adopt(self.dest, self.url, self.expected) if self.partials else None
                if self.partial is None:
                    return
                self.dest = self.partial.data
            ranges = tuple(self.ranges) if self.ranges and self.ranges != [(0, self.size)] else ()
            self.partial.save(ResumeState(self.url, self.size, self.total, self.etag, self.last_modified,
                                          self.date_validator, ranges=ranges), fd)
        except OSError as err:
            log.info("could not record the progress of %s (%s): an interrupted download restarts from zero",
                     redact(self.url), err.strerror or err)

    def keep_for_resume(self) -> bool:
        """After a failure or an interruption: record what a later run resumes from; False when nothing
        could be resumed (no bytes, or no strong validator to guard them)."""
        if (self.partial is None and self.partials is None) or not self._have() or self._if_range() is None:
            return False
        try:
            fd = os.open(self.dest, os.O_WRONLY)
        except OSError:
            return False
        try:
            self._record(fd)
        finally:
            os.close(fd)
        return self.partial is not None and self.partial.state is not None and self.partial.state.size == self.size

    # -- state ---------------------------------------------------------------------------------
    def _have(self) -> int:
        """Bytes on disk that a resume could keep."""
        return sum(e - s for s, e in self.ranges) if self.ranges else self.size

    def _restart(self) -> None:
        """Forget the bytes we have: the next response is taken from byte 0."""
        if self.meter and self._have():
            self.meter.advance(-self._have())
        if self.hash is not None:
            self.hash.reset()
        if self.tap is not None:
            self.tap.break_off("the download started over")
        self.size = 0
        self.ranges = []
        self.total = None
        self.etag = self.last_modified = None
        self.date_validator = False
        self.resumed = 0
        if self.partial is not None:
            try:
                self.partial.reset()
            except OSError as err:
                raise filesystem_error(err, self.partial.directory, "write") from None
        try:
            with open(self.dest, "wb"):
                pass
        except OSError as err:
            raise filesystem_error(err, self.dest.parent, "write") from None

    def _if_range(self) -> tuple[str, str] | None:
        """The validator that may guard a resume (RFC 9110 13.1.5), or None: then no resume."""
        if self.etag is not None:
            return ("ETag", self.etag) if _STRONG_ETAG.fullmatch(self.etag) else None
        if self.last_modified is not None and self.date_validator:
            return "Last-Modified", self.last_modified
        return None

    def _remember(self, resp) -> None:
        """Keep the validators of a response whose body becomes the start of our bytes."""
        headers = resp.headers
        self.etag = headers.get("ETag")
        self.last_modified = headers.get("Last-Modified")
        modified, date = http_date(self.last_modified), http_date(headers.get("Date"))
        self.date_validator = modified is not None and date is not None and date - modified >= 1

    # -- one request -----------------------------------------------------------------------------
    def _request(self, segment: tuple[int, int] | None = None):
        """GET with our own redirect handling; returns the final response (body unread). ``segment``:
        ``[start, end)`` of a segmented download, asked for with the validator in ``If-Range``."""
        from . import transport  # urllib3 is slow to import: only commands that download pay for it

        url, seen = self.url, []
        for hop in range(MAX_REDIRECTS + 1):
            if hop and time.monotonic() >= self.deadline:
                raise Transient("the retry time ran out while following redirects")
            here = checked_url(url)  # checked before: the request goes where this says
            # Credentials of this URL's origin only: a redirect to another origin never carries them.
            headers = dict(self.net.credentials.for_url(here))
            if segment is not None:
                headers["Range"] = f"bytes={segment[0]}-{segment[1] - 1}"
                headers["If-Range"] = self._if_range()[1]
            else:
                self.sent = self._if_range() if self.size else None
                if self.size and self.sent is None:
                    self._restart()  # nothing could guard a resume (no strong validator): from scratch
                if self.sent is not None:
                    headers["Range"] = f"bytes={self.size}-"
                    headers["If-Range"] = self.sent[1]
            resp = transport.get(here, headers, self.net.connect_timeout, self.net.read_timeout)
            if resp.status not in REDIRECT_STATUS:
                if segment is None:
                    self.final_url = url
                return resp
            location = resp.headers.get("Location")
            _discard(resp)  # a redirect's body is never read
            try:
                new = checked_url(_redirect_target(url, location), from_server=True)
            except ValueError as err:
                raise NetworkError(f"download of {redact(self.url)} failed: the server answered "
                                   f"{status_text(resp.status)} with a redirect that cannot be followed ({err}: "
                                   f"{short(location or '')}).") from None
            if new.url in seen or new.url == here.url:
                raise NetworkError(f"download of {redact(self.url)} failed: redirect loop at "
                                   f"{short(redact(new.url), 200)}")
            if here.scheme == "https" and new.scheme == "http" and \
                    not user_allows_http(new.host, new.port, self.net.allow_http):
                shown = f"[{new.host}]" if ":" in new.host else new.host
                raise NetworkError(
                    f"download of {redact(self.url)} refused: it redirects from https to plain http "
                    f"({short(redact(new.url), 200)}). If you trust that host, allow it: [settings] allow_http = "
                    f"[\"{shown}\"] in models.toml.")
            seen.append(here.url)
            url = new.url
        raise NetworkError(f"download of {redact(self.url)} failed: more than {MAX_REDIRECTS} redirects")

    def attempt(self) -> None:
        """One attempt; raises Transient for faults worth retrying."""
        import urllib3

        if self._have():
            if self._may_resume_segmented():
                self._segmented(None)
                return
            self.ranges = []  # one connection continues after the gap-free prefix only
        try:
            resp = self._request()
        except urllib3.exceptions.LocationValueError as err:  # also a bad proxy URL: retrying cannot help
            raise NetworkError(f"download of {redact(self.url)} failed: {reason_text(err)}") from None
        except UnsupportedProxy as err:
            raise NetworkError(f"download of {redact(self.url)} failed: {err}") from None
        except urllib3.exceptions.SSLError as err:
            if "CERTIFICATE_VERIFY_FAILED" in str(err):
                raise NetworkError(
                    f"download of {redact(self.url)} failed: the server's TLS certificate is not trusted "
                    f"({reason_text(err)}). For a private CA, point REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) at its "
                    "bundle.") from None
            raise Transient(reason_text(err)) from None
        except urllib3.exceptions.NameResolutionError as err:
            # Retried once (a resolver hiccup), not five times: a wrong host name stays wrong.
            raise Transient(reason_text(err), attempts=DNS_ATTEMPTS) from None
        except urllib3.exceptions.HTTPError as err:
            raise Transient(reason_text(err)) from None
        try:
            handed_over = self._receive(resp)
        except urllib3.exceptions.HTTPError as err:
            # urllib3 errors surface from read1(): a connection reset or stall mid-stream.
            _discard(resp)
            raise Transient(reason_text(err)) from None
        except BaseException:
            _discard(resp)  # an error page's body is never read
            raise
        if not handed_over:
            resp.release_conn()  # read to the end: the connection is kept for the next download

    def _refuse_status(self, resp) -> None:
        """Raise for a status that carries no file (Transient for those worth another attempt)."""
        status = resp.status
        if status in RETRY_STATUS:
            raise Transient(status_text(status, resp.reason), retry_after(resp))
        if status == 416:  # our range is past the end: the file changed
            raise Transient("server rejected the resume range", restart=True)
        if status >= 400:
            hint = ("check the URL in models.toml or the registry entry; a mirror setting may point to a "
                    "wrong prefix" if status in (404, 410) else
                    "the server refused access: credentials may be needed (README: \"Credentials\")"
                    if status in (401, 403) else "the server refused the request")
            withheld = self.net.credentials.withheld(self.final_url) if status in (401, 403) else None
            if withheld:
                hint = f"the server refused access, and {withheld}"
            raise NetworkError(f"download of {redact(self.url)} failed: {status_text(status, resp.reason)}; {hint}",
                               url=redact(self.url), status=status)
        if status not in (200, 206):
            raise NetworkError(f"download of {redact(self.url)} failed: the server answered "
                               f"{status_text(status, resp.reason)}, which carries no file; check the URL (or the "
                               "server).", url=redact(self.url), status=status)

    def _receive(self, resp) -> bool:
        """Check the status and headers, then stream the body into ``dest``; True when the response was
        handed over to a segmented download (which closes it)."""
        self._refuse_status(resp)
        status = resp.status
        length = self._content_length(resp)
        if status == 206:
            self._check_partial(resp, length)
        elif self.size:
            self._restart()  # the server ignored Range (or If-Range saw new content): from scratch
        if self.size == 0:
            self._remember(resp)
            if status == 200:
                self.total = length
            if self.meter:
                self.meter.total(self.total)
        if self.hash is None:
            self.hash = stream_hasher(self.total)
        if self.reserve is not None and self.total is not None:
            # Before the body: a disk too small fails now, not when it is full.
            self.reserve(self.total - self.size, self.total)
        if status == 200 and self._may_segment(resp):
            self._segmented(resp)
            return True
        self._stream(resp)
        if self.total is not None and self.size != self.total:
            if self.size < self.total:
                raise Transient(f"connection closed after {self.size} of {self.total} bytes")
            raise Transient(f"the server sent more than the {self.total} bytes it announced", restart=True)
        if self.total is None and self.expected:
            self.digest = self.hash.hexdigest()
            if self.digest != self.expected:
                # Without Content-Length a cut connection looks like the end: try again from scratch.
                self.hash = None
                raise Transient("body ended early (no Content-Length) or changed", restart=True)
        return False

    # -- segments (see SegmentedDownload for when and how) -----------------------------------------
    def open_segment(self, start: int, end: int):
        """A checked 206 with the bytes ``[start, end)`` of the file we have begun (the SegmentSource of
        :mod:`.segmented`); raises Transient (``restart`` when the file changed) or NetworkError."""
        resp = self._request((start, end))
        try:
            self._check_segment(resp, start, end)
        except BaseException:
            _discard(resp)
            raise
        return resp

    def _check_segment(self, resp, start: int, end: int) -> None:
        if resp.status == 200:
            raise Transient("the server answered a range request with the whole file (it ignores ranges, or the "
                            "file changed); starting over on one connection", restart=True)
        if resp.status != 206:
            self._refuse_status(resp)
        problem, _ = self._partial_problem(resp, self._content_length(resp), start, end - 1, self.total,
                                           self._if_range())
        if problem is not None:
            raise Transient(f"the server's partial response has {problem}; starting over on one connection",
                            restart=True)

    def _content_length(self, resp) -> int | None:
        """The body's length, None if not given (or chunked); a malformed value fails the download."""
        if resp.headers.get("Transfer-Encoding") is not None:
            return None  # RFC 9112 6.3: Transfer-Encoding overrides Content-Length (urllib3 does the same)
        value = resp.headers.get("Content-Length")
        if value is None:
            return None
        values = {v.strip() for v in value.split(",")}  # a repeated header arrives joined by ", "
        if len(values) != 1 or not _COUNT.fullmatch(next(iter(values))):
            raise NetworkError(f"download of {redact(self.url)} failed: the server sent a malformed Content-Length "
                               f"header ({short(value, 24)}); the server (or a proxy) is broken.")
        return int(values.pop())

    def _check_partial(self, resp, length: int | None) -> None:
        """A 206 continues our bytes only if it is exactly the rest of the same file; else start over."""
        problem, total = self._partial_problem(resp, length, self.size, None, self.total if self.size else None,
                                               self.sent)
        if problem is not None:
            raise Transient(f"the server's partial response has {problem}; starting over", restart=True)
        if self.total is None:
            self.total = total  # a 206 from byte 0 (as good as a 200), or the first length we learn

    def _partial_problem(self, resp, length: int | None, start: int, last: int | None, total: int | None,
                         sent: tuple[str, str] | None) -> tuple[str | None, int]:
        """What keeps a 206 from being exactly the bytes ``start``..``last`` (inclusive; None: to the end)
        of a file of ``total`` bytes (None: not known yet), guarded by the validator ``sent``; and the
        total it names. One rule for resumes and segments."""
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range") or "")
        if m is None:
            return "a malformed Content-Range", 0
        got_start, got_last, got_total = (int(g) for g in m.groups())
        if got_start != start:
            return f"a range starting at byte {got_start}, not {start}", got_total
        if not got_start <= got_last < got_total:
            return "an impossible range", got_total
        if got_last != (got_total - 1 if last is None else last):
            return f"a range that ends at byte {got_last}, not where it was asked to", got_total
        if total is not None and got_total != total:
            return f"a total of {got_total} bytes where the first response had {total}", got_total
        if length is not None and length != got_last - got_start + 1:
            return "a Content-Length that disagrees with its Content-Range", got_total
        return self._validator_problem(resp, sent), got_total

    @staticmethod
    def _validator_problem(resp, sent: tuple[str, str] | None) -> str | None:
        if sent is None:
            return None  # we asked for no range (a 206 from byte 0); nothing to compare
        etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
        kind, value = sent
        if kind == "ETag" and etag != value:
            return "another ETag than the one sent in If-Range" if etag else "no ETag (one was sent in If-Range)"
        if kind == "Last-Modified" and (modified != value or etag is not None):
            return "another validator than the Last-Modified sent in If-Range"
        return None

    def _stream(self, resp) -> None:
        """Append the body to ``dest`` as it arrives, hashing it; the low-speed rule applies."""
        floor = SpeedFloor(self.net.read_timeout, self.deadline)
        try:
            fout = open(self.dest, "r+b", buffering=0)
            # Bytes after our gap-free prefix (of a segmented attempt) are not kept. Only when there are
            # any: ext4 flushes a file truncated and rewritten when it is closed (auto_da_alloc).
            if os.fstat(fout.fileno()).st_size != self.size:
                fout.truncate(self.size)
            fout.seek(self.size)
        except OSError as err:
            raise filesystem_error(err, self.dest.parent, "write") from None
        # read1 hands over bytes as they arrive: after a reset we keep (and resume after) all we got.
        read = resp.read1
        with fout:
            while True:
                chunk = read(CHUNK)
                if not chunk:
                    break
                self.hash.update(chunk)
                try:
                    fout.write(chunk)
                except OSError as err:
                    raise filesystem_error(err, self.dest.parent, "write") from None
                self.size += len(chunk)
                if self.meter:
                    self.meter.advance(len(chunk))
                if self.tap is not None:
                    self.tap.grow(self.size)
                failpoints.hit("download")
                floor.check(len(chunk))
                if self.partials is not None and time.monotonic() - self.checkpoint >= CHECKPOINT_SECONDS:
                    self._record(None)  # renewed cheaply: trusted within this boot (see partial.py)

    def _close_hash(self) -> None:
        if self.hash is not None:
            self.hash.close()

    # -- attempts ----------------------------------------------------------------------------------
    def run(self) -> tuple[str, int, str]:
        """Attempts until one succeeds or the retry count or time runs out (see :func:`.fetch.fetch`)."""
        from .segmented import SLOTS

        attempts = Attempts(self.net, redact(self.url))
        self.deadline = attempts.deadline
        SLOTS.acquire(self.host, self.net.connections_per_host)
        try:
            return self._attempts(attempts)
        finally:
            SLOTS.release(self.host)

    def _attempts(self, attempts: Attempts) -> tuple[str, int, str]:
        last: Transient | None = None
        while attempts.next(last):
            if last is not None and last.restart:
                self._restart()
            try:
                self.digest = None
                self.attempt()
                return self.digest or self.hash.hexdigest(), self.size, self.final_url
            except Transient as err:
                last = err
            except BaseException:
                self._close_hash()
                raise
        self._close_hash()
        raise NetworkError(f"download of {redact(self.url)} failed after {attempts.made} attempt(s): {last}"
                           f"{attempts.why}. Check the network (or the mirror setting) and run the command again; "
                           "retries and timeouts are set in [settings.network].", url=redact(self.url))


def _discard(resp) -> None:
    """Let go of a response whose body we do not want or could not finish (a redirect, an error page,
    a broken stream): its connection is closed, not reused, and nothing more of it is read."""
    resp.close()

