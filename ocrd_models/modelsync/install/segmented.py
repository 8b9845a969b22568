"""Segmented downloads: one large file over several connections at once, as ``aria2c -x N -s N`` does.

Model hosts cap what one TCP connection gets; several connections get several times that. A file is
fetched in segments when it is at least ``segment_from_mib`` large and the server vouches for ranges:
``Accept-Ranges: bytes``, a ``Content-Length`` and a strong validator (see :mod:`.fetch`). Every range
request carries ``If-Range`` with that validator, and every 206 must name exactly the range asked for
and the same validator: a file that changed on the server is never mixed with the bytes we have (the
download starts over, on one connection).

Each connection writes its bytes at their offsets into the one temp file (``pwrite``); the caller's
thread hashes the file in order as its gap-free prefix grows, reading it back from the page cache,
so verification costs no second pass and memory stays bounded (a buffer per connection and two for
the hasher). An idle connection takes half of the largest range still being fetched (work stealing,
:mod:`.ranges`); a connection that stalls or fails gives its range back, and another one, or the same
after a backoff, fetches it. ``connections_per_host`` bounds the connections to one host across all
downloads of the process.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Callable

from .. import failpoints
from ..digest import PipelinedSha256
from ..errors import NetworkError, filesystem_error
from ..urls import redact
from .growing import GrowingFile
from .ranges import Job, RangeBook, split_min
from .retry import Attempts, SpeedFloor, Transient, log, reason_text

if TYPE_CHECKING:
    from ..progress import Meter
    from .retry import NetConfig
    from .transport import Response

CHUNK = 256 << 10  # bytes per read of a connection: eight connections hold a few MiB between them
HASH_CHUNK = 1 << 20  # bytes per read-back for hashing
FOLLOW_WAKE = 0.25  # seconds: the hashing thread looks at progress (and Ctrl-C) at least this often
# Seconds between records of the ranges on disk (without a flush; see partial.py): a large file fetched
# fast loses at most this much of its progress to a SIGKILL.
CHECKPOINT_SECONDS = 0.25


class HostSlots:
    """Connections to each host, across all downloads of this process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._used: dict[str, int] = {}

    def acquire(self, host: str, cap: int, wait: bool = True) -> bool:
        """Take a connection to ``host``: wait for one to be free (``wait``), or return False at once."""
        with self._cond:
            while self._used.get(host, 0) >= cap:
                if not wait:
                    return False
                self._cond.wait(FOLLOW_WAKE)  # a timeout: Ctrl-C is seen while waiting
            self._used[host] = self._used.get(host, 0) + 1
            return True

    def release(self, host: str) -> None:
        """Give a connection back."""
        with self._cond:
            left = self._used.get(host, 0) - 1
            if left > 0:
                self._used[host] = left
            else:
                self._used.pop(host, None)
            self._cond.notify_all()


SLOTS = HostSlots()


class Stopped(Exception):
    """The download is being stopped (another connection failed, or Ctrl-C)."""


class SegmentSource:
    """What the segmented run needs from its download (:class:`.download.HttpDownload` implements it)."""

    url: str
    net: "NetConfig"

    def open_segment(self, start: int, end: int) -> "Response":  # pragma: no cover - a protocol
        """A checked 206 for ``[start, end)`` guarded by the validator; raises Transient or NetworkError."""
        raise NotImplementedError


class SegmentedRun:
    """One file's segmented fetch into the open descriptor ``fd``; :meth:`run` returns when every byte
    is on disk and hashed (``hasher.update`` in order, from byte ``hashed`` on)."""

    def __init__(self, source: SegmentSource, fd: int, book: RangeBook, hasher, hashed: int, *,
                 host: str, meter: "Meter | None" = None, tap: GrowingFile | None = None,
                 checkpoint: Callable[[int, list[tuple[int, int]]], None] | None = None,
                 dest_dir: str = ".") -> None:
        self.source, self.fd, self.book, self.hasher = source, fd, book, hasher
        self.hashed = hashed
        self.host, self.meter, self.tap, self.checkpoint = host, meter, tap, checkpoint
        self.dest_dir = dest_dir
        self.net = source.net
        self.stopping = False
        self.error: BaseException | None = None  # the first fault that ends the whole run
        self.gave_up: Transient | None = None  # the last fault a connection gave up on
        self.live = 0
        self._responses: set = set()
        self._lock = threading.Condition()  # guards _responses, _writing and the switch to stopping
        self._writing = 0  # pwrites in progress: the run is over only when none is
        self._buffer = memoryview(bytearray(HASH_CHUNK))  # hasher: an InlineSha256 (it never keeps a buffer)

    # -- the caller's thread -------------------------------------------------------------------------
    def run(self, first: "Response | None" = None) -> None:
        """Fetch what is missing (``first``: a 200 from byte 0 that becomes the first connection)."""
        self._threads: list[threading.Thread] = []
        # The first range is taken here, before any other connection can take it: the 200 from byte 0
        # serves the range that starts there.
        self._start(first, extra=False, job=self.book.take())
        while self._more():
            pass
        log.info("fetching %s over %d connections", redact(self.source.url), self.live)
        try:
            self._follow()
        finally:
            self._stop(self._threads)

    def _start(self, first: "Response | None", extra: bool, job: Job | None = None) -> None:
        thread = threading.Thread(target=self._work, args=(first, extra, job), name="modelsync-segment",
                                  daemon=True)
        with self.book.cond:
            self.live += 1
        self._threads.append(thread)
        thread.start()

    def _more(self) -> bool:
        """Open one more connection if this file wants one, there is work for it and the host has a free
        slot (another download to the same host may have ended meanwhile); True if it did."""
        if self.stopping or self.gave_up is not None or self.live >= self.net.segments or not self.book.stealable():
            return False  # a connection that used up its retries is not replaced: the run ends when all have
        if not SLOTS.acquire(self.host, self.net.connections_per_host, wait=False):
            return False
        self._start(None, extra=True)
        return True

    def _follow(self) -> None:
        """Hash the prefix as it grows; show progress; record checkpoints; raise what ended the run."""
        book, written = self.book, 0  # book.written counts from 0: the connections may be ahead of us
        last_checkpoint = time.monotonic()
        while True:
            with book.cond:
                if book.prefix() <= self.hashed and self.error is None and self.live:
                    book.cond.wait(FOLLOW_WAKE)
                upto, error, live = book.prefix(), self.error, self.live
                now_written = book.written
            if self.meter:
                # Also when nothing came: a cancelled run's meter raises (Ctrl-C while every connection waits).
                self.meter.advance(now_written - written)
            written = now_written
            if upto > self.hashed:
                self._hash(upto)
            if self.hashed >= book.total:
                return
            if error is not None:
                raise error
            if not live:
                raise NetworkError(f"download of {redact(self.source.url)} failed: every connection gave up "
                                   f"({self.gave_up}). Check the network and run the command again: it resumes "
                                   "from the bytes fetched so far. A server that refuses several connections at "
                                   "once needs [settings.network] segments = 1 (or MODELSYNC_SEGMENTS=1).",
                                   url=redact(self.source.url))
            if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
                last_checkpoint = time.monotonic()
                self._more()
                if self.checkpoint is not None:
                    self.checkpoint(book.prefix(), book.done())

    def _hash(self, upto: int) -> None:
        """Hash the file from ``hashed`` to ``upto`` on this thread (hashlib lets the connections run
        meanwhile), read back through one reused buffer: no allocation per chunk."""
        view = self._buffer
        while self.hashed < upto:
            want = min(HASH_CHUNK, upto - self.hashed)
            try:
                n = os.preadv(self.fd, [view[:want]], self.hashed)
            except OSError as err:
                raise filesystem_error(err, self.dest_dir, "read") from None
            if not n:  # cannot happen for bytes on disk: never hash a hole as zeros
                raise NetworkError(f"download of {redact(self.source.url)} failed: the temp file is shorter than "
                                   "the bytes written to it; the disk (or another process) changed it.")
            self.hasher.update(view[:n])
            self.hashed += n
        if self.tap is not None:
            self.tap.grow(self.hashed)

    def _stop(self, threads: list[threading.Thread]) -> None:
        """Stop every connection (cut: a blocked read returns at once) and wait for the threads, so that
        nothing is written after this returns."""
        with self._lock:
            self.stopping = True
            responses = list(self._responses)
            while self._writing:
                self._lock.wait()
        for resp in responses:
            resp.abort()
        # No connection writes from here on (see _write); the threads end at their next read, or when the
        # answer they wait for comes (or times out). A short grace for the cut ones, not one per thread.
        deadline = time.monotonic() + 0.3
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- connections ---------------------------------------------------------------------------------
    def _work(self, first: "Response | None", extra: bool, job: Job | None) -> None:
        attempts: Attempts | None = None
        try:
            while not self.stopping:
                job = job or self.book.take()
                if job is None:
                    return
                before = job.pos
                try:
                    resp, first = (first, None) if first is not None and job.pos == 0 else (None, first)
                    self._fetch(job, resp)
                    self.book.finish(job)
                    if job.relieved:
                        return  # too slow: another connection took its rest, and this one is not reused
                    job = None
                except Transient as err:
                    self.book.give_back(job)
                    if err.restart:
                        self._end(err)
                        return
                    if self.stopping:
                        return
                    if attempts is None or job.pos > before:  # a connection that moved counts afresh
                        attempts = Attempts(self.net, redact(self.source.url))
                        attempts.next(None)
                    job = None  # given back: the next range is taken anew (maybe by another connection)
                    if not attempts.next(err):
                        self.gave_up = err
                        return
                except Stopped:
                    self.book.give_back(job)
                    return
                except BaseException as err:
                    self.book.give_back(job)
                    self._end(err)
                    return
        finally:
            if first is not None:
                first.close()
            if extra:
                SLOTS.release(self.host)
            with self.book.cond:
                self.live -= 1
                self.book.cond.notify_all()

    def _end(self, err: BaseException) -> None:
        """A fault that ends the whole run (the file changed, the disk is full, a 404)."""
        with self.book.cond:
            if self.error is None:
                self.error = err
            self.stopping = True
            self.book.cond.notify_all()

    def _fetch(self, job: Job, resp: "Response | None") -> None:
        """Fetch ``job`` over ``resp`` (the first 200) or a new range request; raise Transient on a fault."""
        import urllib3

        requested_end = job.end
        try:
            if resp is None:
                resp = self.source.open_segment(job.pos, job.end)
            else:
                requested_end = self.book.total
        except urllib3.exceptions.HTTPError as err:
            raise Transient(reason_text(err)) from None
        with self._lock:
            if self.stopping:
                resp.close()
                raise Stopped()
            self._responses.add(resp)
        complete = False
        try:
            complete = self._pump(resp, job, requested_end)
        finally:
            with self._lock:
                self._responses.discard(resp)
            if complete:
                resp.release_conn()  # read to its end: the connection serves the next range
            else:
                resp.close()

    def _pump(self, resp: "Response", job: Job, requested_end: int) -> bool:
        """Write the body at its offsets until the job's (possibly moved) end; True when the response was
        read to its end."""
        import urllib3

        floor = SpeedFloor(self.net.read_timeout, float("inf"), self.net.min_speed)
        book, read = self.book, resp.read1
        while job.pos < job.end:
            if self.stopping:
                raise Stopped()
            try:
                chunk = read(CHUNK)
            except (urllib3.exceptions.HTTPError, OSError) as err:  # a reset, a stall cut, or our own abort
                if self.stopping:
                    raise Stopped() from None
                raise Transient(reason_text(err)) from None
            if not chunk:
                raise Transient(f"connection closed {job.end - job.pos} bytes before the end of its range")
            n = book.claim(job, len(chunk))
            if n:
                at = job.pos - n
                self._write(memoryview(chunk)[:n], at)
                book.wrote(at, n)
            failpoints.hit("download")
            floor.check(len(chunk))
        return job.pos == requested_end

    def _write(self, data: memoryview, at: int) -> None:
        """Write at ``at``, unless the run is stopping: after :meth:`_stop` no byte reaches the file (a
        download that starts over on one connection must never find a late segment in it)."""
        with self._lock:
            if self.stopping:
                raise Stopped()
            self._writing += 1
        try:
            while data:
                n = os.pwrite(self.fd, data, at)
                data, at = data[n:], at + n
        except OSError as err:
            raise filesystem_error(err, self.dest_dir, "write") from None
        finally:
            with self._lock:
                self._writing -= 1
                if not self._writing:
                    self._lock.notify_all()


class SegmentedDownload:
    """What makes an HTTP download (:class:`.download.HttpDownload`, which this is mixed into) go over
    several connections: when it is worth it, and the hand-over of its state to a :class:`SegmentedRun`
    and back. The download is this run's :class:`SegmentSource`."""

    def _can_segment(self) -> bool:
        """Segments are allowed (on, and never broken by this server) and could be guarded: a known length
        and a strong validator."""
        return self.segmentable and self.total is not None and self._if_range() is not None

    def _worth_segments(self, remaining: int) -> bool:
        return remaining >= self.net.segment_from_mib * (1 << 20)

    def _may_segment(self, resp) -> bool:
        """A fresh 200 that may become the first of several connections (see :mod:`.segmented`)."""
        accepts = (resp.headers.get("Accept-Ranges") or "").lower()
        return (self.size == 0 and "bytes" in accepts.split(",") and self._can_segment()
                and self._worth_segments(self.total))

    def _may_resume_segmented(self) -> bool:
        """Kept bytes with gaps (only segments fill them), or enough left to be worth several connections."""
        gaps = len(self.ranges) > 1 or bool(self.ranges and self.ranges[0][0] != 0)
        return self._can_segment() and (gaps or self._worth_segments(self.total - self._have()))

    def _segmented(self, first) -> bool:
        """Fetch what is missing over several connections (``first``: the fresh 200 that becomes one)."""
        book = RangeBook(self.total, self.ranges or ([(0, self.size)] if self.size else []),
                         split_min(self.total, self.net.segments))
        if first is None and self.reserve is not None:
            self.reserve(self.total - book.have(), self.total)
        try:
            fd = os.open(self.dest, os.O_RDWR)
        except OSError as err:
            if first is not None:
                first.close()
            raise filesystem_error(err, self.dest.parent, "write") from None
        if isinstance(self.hash, PipelinedSha256):
            self.hash = self.hash.inline()  # the run's own thread hashes, from a reused buffer
        run = SegmentedRun(self, fd, book, self.hash, self.size, host=self.host, meter=self.meter, tap=self.tap,
                           checkpoint=self._segment_checkpoint, dest_dir=str(self.dest.parent))
        try:
            run.run(first)
        except Transient as err:
            if err.restart:
                self.segmentable = False  # the server broke the rules of ranges: one connection from now on
            raise
        finally:
            os.close(fd)
            self.size, self.ranges = book.prefix(), book.done()
        self.ranges = []
        return True

    def _segment_checkpoint(self, prefix: int, done: list[tuple[int, int]]) -> None:
        if self.partials is not None:
            self.size, self.ranges = prefix, done
            self._record(None)
