"""The byte ranges of one file being fetched over several connections: which are on disk, which are
being fetched (and by whom) and which wait. Thread-safe; knows nothing of HTTP.

Work stealing: a connection that finds nothing waiting takes the second half of the largest range
another connection is still fetching (that one stops where its range now ends). At the end, when no
range is large enough to halve, a connection far slower than the others (a trickle just above the
speed floor) hands all it has left to a new one: the last segment never dominates. The bytes before a
job's ``pos`` are claimed by it: a steal never takes them, so no byte is written by two connections.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

SPLIT_MIN = 2 << 20  # bytes: a range is split for an idle connection only if both halves get this many
SPLIT_FLOOR = 64 << 10  # ... or, for a file too small to give every connection that, this many
# The end game: a connection is relieved of its range when it has run this long, is this many times
# slower than the fastest one seen, and would still need more than TAKEOVER_AFTER seconds.
TAKEOVER_AFTER = 1.0  # seconds since the job's first byte (a slow answer is not a slow connection)
TAKEOVER_SLOWER = 4.0
NO_ANSWER_AFTER = 10.0  # seconds: a job whose request got no byte at all by then is taken over too
MAX_TAKEOVERS = 16  # per file: a server that makes every connection slow is not fought forever


def split_min(total: int, connections: int) -> int:
    """The smallest half worth a connection for a file of ``total`` bytes over ``connections``."""
    return max(SPLIT_FLOOR, min(SPLIT_MIN, total // (2 * max(1, connections))))


@dataclass
class Job:
    """One connection's range: ``[pos, end)`` is still to come (``end`` may be lowered by a steal)."""

    pos: int  # the next byte this job writes; the bytes before it are claimed
    end: int  # exclusive
    taken: float = field(default_factory=time.monotonic)
    began: float | None = None  # when its first byte came (the rate is measured from there)
    first: int = -1  # pos then
    relieved: bool = False  # its rest went to another connection: this one was too slow

    def rate(self, now: float) -> float:
        """Bytes per second since the job's first byte (0 before it)."""
        if self.began is None:
            return 0.0
        return (self.pos - self.first) / max(now - self.began, 1e-3)

    def measured(self, now: float) -> bool:
        """Its rate means something: it has run TAKEOVER_AFTER seconds since its first byte."""
        return self.began is not None and now - self.began >= TAKEOVER_AFTER


class RangeBook:
    """The done, active and waiting ranges of a file of ``total`` bytes."""

    def __init__(self, total: int, done: Iterable[tuple[int, int]] = (), split_min: int = SPLIT_MIN) -> None:
        self.total = total
        self.split_min = split_min
        self.cond = threading.Condition()
        self._starts: list[int] = []  # the done ranges, sorted and merged: starts and ends side by side
        self._ends: list[int] = []
        for start, end in done:
            if 0 <= start < end <= total:
                self._add(start, end)
        self.active: list[Job] = []
        self.waiting: deque[tuple[int, int]] = deque(self.gaps())
        self.written = 0  # bytes written through this book (progress)
        self.best_rate = 0.0  # bytes/s of the fastest job so far
        self.takeovers = 0

    # -- done ranges ---------------------------------------------------------------------------------
    def _add(self, start: int, end: int) -> None:
        i = bisect.bisect_left(self._ends, start)  # the first range that ends at or after start
        j = bisect.bisect_right(self._starts, end)  # ranges from i to j-1 touch [start, end)
        if i < j:
            start, end = min(start, self._starts[i]), max(end, self._ends[j - 1])
        self._starts[i:j], self._ends[i:j] = [start], [end]

    def done(self) -> list[tuple[int, int]]:
        """The ranges on disk, sorted and merged."""
        with self.cond:
            return list(zip(self._starts, self._ends))

    def gaps(self) -> list[tuple[int, int]]:
        """The ranges not on disk."""
        out, pos = [], 0
        for start, end in zip(self._starts, self._ends):
            if start > pos:
                out.append((pos, start))
            pos = end
        if pos < self.total:
            out.append((pos, self.total))
        return out

    def prefix(self) -> int:
        """How many bytes from the start are on disk without a gap."""
        return self._ends[0] if self._starts and self._starts[0] == 0 else 0

    def have(self) -> int:
        """Bytes on disk in all."""
        return sum(e - s for s, e in zip(self._starts, self._ends))

    # -- jobs --------------------------------------------------------------------------------------
    def take(self) -> Job | None:
        """A range for an idle connection: one that waits, else half of the largest active one; None when
        nothing is left worth a connection."""
        with self.cond:
            if self.waiting:
                start, end = self.waiting.popleft()
                job = Job(start, end)
                self.active.append(job)
                return job
            victim = max(self.active, key=lambda j: j.end - j.pos, default=None)
            if victim is not None and victim.end - victim.pos >= 2 * self.split_min:
                mid = victim.pos + (victim.end - victim.pos) // 2
                job = Job(mid, victim.end)
                victim.end = mid
                self.active.append(job)
                return job
            victim = self._laggard(time.monotonic())
            if victim is None:
                return None
            job = Job(victim.pos, victim.end)
            victim.end, victim.relieved = victim.pos, True
            self.takeovers += 1
            self.active.append(job)
            return job

    def _laggard(self, now: float) -> Job | None:
        """The end game's victim: a job far slower than the fastest seen, with seconds of work left."""
        if self.takeovers >= MAX_TAKEOVERS:
            return None
        best = max([self.best_rate] + [j.rate(now) for j in self.active if j.measured(now)])
        for job in self.active:
            left = job.end - job.pos
            if left <= 0:
                continue
            if job.began is None:
                if now - job.taken >= NO_ANSWER_AFTER and best > 0:
                    return job  # its request got no answer while others delivered
                continue
            rate = job.rate(now)
            if job.measured(now) and rate * TAKEOVER_SLOWER < best and left > rate * TAKEOVER_AFTER:
                return job
        return None

    def stealable(self) -> bool:
        """A range waits, or an active one is large enough to split for another connection."""
        with self.cond:
            return (bool(self.waiting) or any(j.end - j.pos >= 2 * self.split_min for j in self.active)
                    or self._laggard(time.monotonic()) is not None)

    def claim(self, job: Job, n: int) -> int:
        """How many of ``n`` bytes arriving at ``job.pos`` belong to the job (its end may have moved);
        those are claimed (``pos`` moves past them) before they are written."""
        with self.cond:
            if job.began is None:
                job.began, job.first = time.monotonic(), job.pos
            n = max(0, min(n, job.end - job.pos))
            job.pos += n
            return n

    def wrote(self, start: int, n: int) -> None:
        """``n`` bytes from ``start`` are on disk."""
        with self.cond:
            self._add(start, start + n)
            self.written += n
            self.cond.notify_all()

    def give_back(self, job: Job) -> None:
        """The job's connection failed or stopped: what it did not fetch waits for another one."""
        with self.cond:
            if job in self.active:
                self.active.remove(job)
            if job.pos < job.end:
                self.waiting.append((job.pos, job.end))
            self.cond.notify_all()

    def finish(self, job: Job) -> None:
        """The job's range is all on disk."""
        with self.cond:
            if not job.relieved:
                self.best_rate = max(self.best_rate, job.rate(time.monotonic()))
        self.give_back(job)
