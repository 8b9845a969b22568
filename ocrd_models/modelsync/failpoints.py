"""Failpoints for crash testing: ``MODELSYNC_FAILPOINTS="unpack=3"`` kills the process with
SIGKILL at the 3rd time it passes the ``unpack`` point.

Test-only (tests/test_crashes.py, benchmarks/crash_trials.py); with the variable unset a
hit costs one dict lookup. Points: download (after each chunk written), hashed (a download
complete, before verification), unpack (after each archive member), place (a temp copy
beside the target made), commit (right before the rename into place), record (right
before the install record), lock (the new lock written to its temp name, before the rename).
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_counts: dict[str, int] = {}
_plan: dict[str, int] | None = None


def _load() -> dict[str, int]:
    plan = {}
    for item in (os.environ.get("MODELSYNC_FAILPOINTS") or "").split(","):
        name, _, n = item.partition("=")
        if name.strip() and n.strip().isdigit():
            plan[name.strip()] = int(n)
    return plan


def hit(name: str) -> None:
    """Count a pass through ``name``; die by SIGKILL when the configured count is reached."""
    global _plan
    if _plan is None:
        _plan = _load()
    if not _plan or name not in _plan:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == _plan[name]:
            os.kill(os.getpid(), signal.SIGKILL)
