"""How hard a network operation tries: the settings (:class:`NetConfig`), the attempts with backoff
(:class:`Attempts`), the faults worth another attempt (:class:`Transient`), the low-speed rule
(:class:`SpeedFloor`), and outside text made safe for messages. Shared by downloads (single and
segmented) and registry calls.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus

from ..urls import strip_userinfo
from .credentials import Credentials

log = logging.getLogger("ocrd_models.modelsync.install.fetch")  # retries and waits; shown with -v (a long wait always)
LONG_WAIT = 5.0  # seconds: a retry waiting longer than this is told without -v too
DNS_ATTEMPTS = 2  # a name that does not resolve is asked twice, not retries + 1 times
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit() accepts '²'), below 2**63


@dataclass(frozen=True)
class NetConfig:
    """How hard to try. README: "Network settings" (settings, env, flags)."""

    retries: int = 4  # extra attempts after the first
    backoff: float = 0.5  # seconds before the first retry; doubled each time, with jitter
    max_retry_time: float = 300.0  # no attempt starts after this many seconds (see fetch())
    connect_timeout: float = 15.0
    read_timeout: float = 60.0  # per read, and the low-speed window (see fetch())
    keep_partial_days: float = 7.0  # an interrupted download is resumed for this long (see partial.py)
    segments: int = 8  # connections one large file is fetched over at once (1: one connection)
    segment_from_mib: float = 64.0  # files at least this large are fetched in segments
    connections_per_host: int = 8  # connections to one host across all downloads of a run
    min_speed: int = 1024  # bytes/s: a connection slower than this for read_timeout seconds is replaced
    allow_http: frozenset[str] = frozenset()  # hosts an https URL may redirect to over plain http
    credentials: Credentials = field(default_factory=Credentials)


class Transient(Exception):
    """A fault worth another attempt."""

    def __init__(self, reason: str, after: float | None = None, restart: bool = False,
                 attempts: int | None = None):
        super().__init__(reason)
        self.after = after  # Retry-After seconds
        self.restart = restart  # the partial bytes are worthless
        self.attempts = attempts  # at most this many attempts for a fault of this kind (None: retries + 1)


def short(text: str, limit: int = 60) -> str:
    """Outside text for a message: quoted with ``!r`` (control characters escaped) and shortened."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def status_text(status: int, reason: str | None = None) -> str:
    """``HTTP 404 Not Found``: the standard phrase; the server's own (outside text) only if it differs,
    quoted with ``!r`` and shortened."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    said = (reason or "").strip()
    text = f"HTTP {status} {phrase}".rstrip()
    return text + f" (the server says {short(said)})" if said and said != phrase else text


def retry_after(resp) -> float | None:
    """Seconds the server asks us to wait (``Retry-After``), or None: absent or garbage is ignored."""
    value = (resp.headers.get("Retry-After") or "").strip()
    if _COUNT.fullmatch(value) and len(value) <= 10:
        return float(value)
    if not value or len(value) > 64:
        return None
    from datetime import timezone
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def http_date(value: str | None) -> float | None:
    """The timestamp of an HTTP-date header value, or None if absent or malformed."""
    if not value or len(value) > 64 or not value.isascii() or not value.isprintable():
        return None
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class SpeedFloor:
    """The low-speed rule for one response body (see :func:`fetch`): ``check`` after each read."""

    def __init__(self, window: float, deadline: float, floor: int = 1024) -> None:
        now = time.monotonic()
        self.window, self.deadline, self.floor = window, deadline, floor
        self.got = 0
        # (time, bytes received by then), at most one mark per window/8: memory stays bounded.
        self.marks: deque[tuple[float, int]] = deque([(now, 0)])

    def check(self, n: int) -> None:
        """Count ``n`` more bytes; raise Transient when the transfer is below the floor."""
        now = time.monotonic()
        self.got += n
        marks = self.marks
        if now - marks[-1][0] >= self.window / 8:
            marks.append((now, self.got))
        while len(marks) > 1 and marks[1][0] <= now - self.window:
            marks.popleft()  # keep the newest mark at least one window old
        since, base = marks[0]
        span = now - since
        late = now >= self.deadline
        if span < (min(self.window, 1.0) if late else self.window) or self.got - base >= self.floor * span:
            return
        rate = (self.got - base) / span
        reason = f"the transfer averaged {rate:.0f} B/s over {span:.1f} s, below the floor of {_rate(self.floor)}"
        raise Transient(reason + (", past max_retry_time" if late else ""))


def _rate(floor: int) -> str:
    return f"{floor >> 10} KiB/s" if floor and floor % 1024 == 0 else f"{floor} B/s"


class Attempts:
    """The attempts of one network operation (a download, a registry call): at most ``retries + 1``, with
    exponential backoff and jitter between them (or the server's ``Retry-After`` when longer), none
    starting after ``max_retry_time`` from the first, and at most ``Transient.attempts`` for a fault of
    a kind that says so (a name that does not resolve)."""

    def __init__(self, net: NetConfig, what: str) -> None:
        self.net, self.what = net, what
        self.deadline = time.monotonic() + net.max_retry_time
        self.made = 0
        self.why = ""  # why no further attempt was made, for the final message

    def next(self, last: "Transient | None") -> bool:
        """Wait the backoff and return True when another attempt may start (always the first); else False."""
        if self.made == 0:
            self.made = 1
            return True
        if self.made > self.net.retries:
            return False
        delay = self.net.backoff * (2 ** (self.made - 1)) * (0.75 + random.random() * 0.5)
        if last is not None and last.after is not None and last.after > delay:
            delay = last.after
            self.why = f" (the server asked to retry after {last.after:.0f} s)"
        if time.monotonic() + delay > self.deadline:
            self.why += f"; no retry fits into max_retry_time = {self.net.max_retry_time:g} s"
            return False
        if last is not None and last.attempts is not None and self.made >= last.attempts:
            return False
        self.why = ""
        log.log(logging.WARNING if delay >= LONG_WAIT else logging.INFO,
                "%s: %s; retrying in %.1f s (attempt %d of at most %d)", self.what, last, delay,
                self.made + 1, self.net.retries + 1)
        time.sleep(delay)
        self.made += 1
        return True


def reason_text(err: Exception) -> str:
    text = str(err)
    for marker in ("Failed to establish a new connection: ", "Read timed out", "Connection refused",
                   "Connection broken", "Connection reset"):
        if marker in text:
            i = text.index(marker)
            text = text[i:].split("'))")[0].rstrip("')")[:200]
            break
    else:
        text = strip_userinfo(text[:300])
    # urllib3's messages may quote what the server sent: no control character reaches a message.
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", lambda m: f"\\x{ord(m.group()):02x}", text)
