#!/usr/bin/env python3
"""Kill `modelsync sync` with SIGKILL at random points, at least 100 times, and check the invariants.

    python benchmarks/crash_trials.py [--trials 120] [--seed 7]

Half the trials start cold (empty locations and lock, mostly an empty cache), half are updates of
an installed project to other model versions. A trial kills either at a failpoint (download, hashed,
unpack, place, commit, record, lock; the Nth pass) or after a random delay, then checks: no final
path holds bytes of no version, models.lock parses, the next sync exits 0, `verify` passes, and no
temp file is left. Prints the counts; exits 1 if any invariant was violated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from crashkit import render, run_trials  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="modelsync-crash-") as root:
        report = run_trials(Path(root), args.trials, args.seed)
    print(render(report, time.time() - t0))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
