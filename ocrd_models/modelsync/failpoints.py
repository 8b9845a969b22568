"""Failpoints for crash testing: ``MODELSYNC_FAILPOINTS="unpack=3"`` kills the process with
SIGKILL at the 3rd time it passes the ``unpack`` point; ``unpack=3:int`` sends it SIGINT instead
(a Ctrl-C at exactly that point).

Test-only (tests/test_crashes.py, benchmarks/crash_trials.py); with the variable unset a
hit costs one dict lookup. Points: download (after each chunk written), hashed (a download
complete, before verification), unpack (after each archive member), place (a temp copy
beside the target made), commit (right before the rename into place), record (right
before the install record), index (before a directory's record index is written), lock (the new
lock written to its temp name, before the rename).
"""

from __future__ import annotations

import os
import signal
import threading

from .config import failpoint_spec

_lock = threading.Lock()
_counts: dict[str, int] = {}
_plan: dict[str, tuple[int, int]] | None = None  # name -> (count, signal)


def _load() -> dict[str, tuple[int, int]]:
    plan = {}
    for item in failpoint_spec().split(","):
        name, _, spec = item.partition("=")
        n, _, how = spec.partition(":")
        if name.strip() and n.strip().isdigit():
            plan[name.strip()] = (int(n), signal.SIGINT if how.strip() == "int" else signal.SIGKILL)
    return plan


def hit(name: str) -> None:
    """Count a pass through ``name``; at the configured count send the configured signal to ourselves."""
    global _plan
    if _plan is None:
        _plan = _load()
    if not _plan or name not in _plan:
        return
    count, signum = _plan[name]
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == count:
            os.kill(os.getpid(), signum)
