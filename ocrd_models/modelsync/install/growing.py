"""A file being downloaded, read in order while it grows: what lets an archive unpack during its download.

The download says how far its bytes are on disk without a gap (:meth:`GrowingFile.grow`); a reader on
another thread gets them as they come (read back from the page cache, so memory stays bounded) and
blocks for more. When the download starts over from byte 0 (the file changed on the server), or
fails, the reader gets :class:`StreamBroken`: what it made of the old bytes is thrown away by its
caller, never used.
"""

from __future__ import annotations

import io
import os
import threading

MIN_READ = 64 << 10  # a read waits for this many bytes (or the end): fewer wake-ups, whole tar headers


class StreamBroken(Exception):
    """The download restarted or failed: the bytes read so far are not the file's."""


class GrowingFile(io.RawIOBase):
    """Read-only, forward-only view of the first bytes of the file open at ``fd`` that are known good."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._cond = threading.Condition()
        self._upto = 0  # bytes known good from the start
        self._pos = 0
        self._ended = False  # the download finished: _upto is the file's size
        self._broken: str | None = None

    # -- the download's side -----------------------------------------------------------------------
    def grow(self, upto: int) -> None:
        """The first ``upto`` bytes are on disk."""
        with self._cond:
            if upto > self._upto:
                self._upto = upto
                self._cond.notify_all()

    def end(self) -> None:
        """The download finished: nothing more will come."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def break_off(self, why: str) -> None:
        """The bytes given so far are not to be used (restart, failure, interruption)."""
        with self._cond:
            if self._broken is None:
                self._broken = why
            self._cond.notify_all()

    @property
    def complete(self) -> bool:
        """The download ended and verified, and never broke off: what was read is the file."""
        with self._cond:
            return self._ended and self._broken is None

    # -- the reader's side -------------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        want = len(b)
        with self._cond:
            while True:
                if self._broken is not None:
                    raise StreamBroken(self._broken)
                ready = self._upto - self._pos
                if ready >= min(want, MIN_READ) or (self._ended and ready >= 0):
                    break
                self._cond.wait()
        n = min(want, ready)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(b)[:n]], self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:  # once: a second os.close could hit a descriptor reused meanwhile
            try:
                os.close(self._fd)
            except OSError:
                pass
        super().close()
