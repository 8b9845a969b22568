"""Crash trials: kill `modelsync sync` with SIGKILL at random points, then check the invariants.

Used by tests/test_crashes.py (a small sample) and benchmarks/crash_trials.py (>= 100 trials).

Invariants after every kill:
  1. no file at a final path whose bytes differ from the model it should be (old or new version);
  2. models.lock, if present, parses (the old or the new one, never torn);
  3. the next sync (no faults) exits 0, `verify` passes, and no temp file of ours is left anywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from httpserver import FileServer

PROC = "ocrd-calamari-recognize"
PHASES = ("download", "hashed", "unpack", "place", "commit", "record", "lock")
MODELSYNC = str(Path(sys.executable).parent / "modelsync")


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _digest(path: Path) -> str:
    """File sha256 or a simple tree fingerprint (relpath + sha256 of every file)."""
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(p.relative_to(path).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
        return "tree:" + h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


SEGMENTED = "segments = 4\nsegment_from_mib = 0.25"


@dataclass
class Scenario:
    """A project with files and archives, two versions of each, served at a throttled rate."""

    root: Path
    server: FileServer
    versions: int = 2
    n_files: int = 3
    n_archives: int = 2
    expected: dict[str, set[str]] = field(default_factory=dict)  # final path -> acceptable digests
    network: str = ""  # raw TOML below [settings.network] (segmented downloads in some trials)

    def __post_init__(self) -> None:
        self.project = self.root / "project"
        self.env = {**os.environ, "HOME": str(self.root / "home"), "XDG_DATA_HOME": str(self.root / "data"),
                    "XDG_CACHE_HOME": str(self.root / "cache"), "XDG_STATE_HOME": str(self.root / "state"),
                    "XDG_CONFIG_HOME": str(self.root / "config"), "MODELSYNC_SYSTEM_DIR": str(self.root / "system"),
                    "MODELSYNC_BACKOFF": "0.01", "CI": "1"}
        self.env.pop("MODELSYNC_FAILPOINTS", None)
        self.rng = random.Random(1234)
        self.content: dict[tuple[str, int], tuple[bytes, bool]] = {}
        for v in range(self.versions):
            for i in range(self.n_files):
                self.content[(f"file{i}.bin", v)] = (self.rng.randbytes(400_000 + i * 1000), False)
            for i in range(self.n_archives):
                members = {f"m/part{j}.bin": self.rng.randbytes(150_000) for j in range(4)}
                self.content[(f"arch{i}", v)] = (_tar(members), True)
        for (name, v), (data, _) in self.content.items():
            self.server.add(f"/v{v}/{name}", data)
        self.dest = self.root / "data" / "ocrd-resources" / PROC
        self.version = 0

    def manifest(self, version: int) -> None:
        """Declare every resource at ``version``."""
        self.project.mkdir(parents=True, exist_ok=True)
        items = []
        for (name, v), (_, is_archive) in sorted(self.content.items()):
            if v == version:
                kind = ', type = "archive", path_in_archive = "m"' if is_archive else ""
                items.append(f'  {{ name = "{name}", url = "{self.server.url(f"/v{v}/{name}")}"{kind} }}')
        network = f"[settings.network]\n{self.network}\n" if self.network else ""
        (self.project / "models.toml").write_text(network + f"[processors]\n{PROC} = [\n" + ",\n".join(items)
                                                  + "\n]\n")
        self.version = version

    def acceptable(self, versions: set[int]) -> dict[Path, set[str]]:
        """Final path -> digests it may hold (any version in ``versions``)."""
        out: dict[Path, set[str]] = {}
        for (name, v), (data, is_archive) in self.content.items():
            if v not in versions:
                continue
            if is_archive:
                tf = tarfile.open(fileobj=io.BytesIO(data))
                h = hashlib.sha256()
                for m in sorted(tf.getmembers(), key=lambda m: m.name):
                    if m.isfile():
                        rel = m.name.removeprefix("m/")
                        h.update(rel.encode() + b"\0" + hashlib.sha256(tf.extractfile(m).read()).digest())
                digest = "tree:" + h.hexdigest()
            else:
                digest = hashlib.sha256(data).hexdigest()
            out.setdefault(self.dest / name, set()).add(digest)
        return out

    def run(self, *args: str, failpoint: str | None = None, kill_after: float | None = None,
            timeout: float = 120) -> int:
        """Run modelsync; optionally with a failpoint or a SIGKILL after ``kill_after`` seconds."""
        env = dict(self.env)
        if failpoint:
            env["MODELSYNC_FAILPOINTS"] = failpoint
        proc = subprocess.Popen([MODELSYNC, *args], cwd=self.project, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        try:
            _, self.last_err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        return proc.returncode


@dataclass
class Report:
    """Counts for the closing table."""

    trials: int = 0
    kinds: Counter = field(default_factory=Counter)
    killed: int = 0  # trials where the process really died by SIGKILL (else it finished first)
    files_checked: int = 0
    violations: list[str] = field(default_factory=list)


def check(sc: Scenario, versions: set[int], report: Report, label: str) -> None:
    """Invariants 1 and 2 after a kill."""
    from ocrd_models.modelsync.errors import LockfileError
    from ocrd_models.modelsync.spec.lockfile import load_lock

    for path, ok in sc.acceptable(versions).items():
        if os.path.lexists(path):
            report.files_checked += 1
            got = _digest(path)
            if got not in ok:
                report.violations.append(f"{label}: {path.name} holds bytes of no version ({got[:16]})")
    lock = sc.project / "models.lock"
    try:
        load_lock(lock)
    except LockfileError as err:
        report.violations.append(f"{label}: models.lock is torn: {err}")


def recover(sc: Scenario, report: Report, label: str) -> None:
    """Invariant 3: the next sync converges and verifies; nothing of ours is left behind."""
    code = sc.run("sync")
    if code != 0:
        report.violations.append(f"{label}: recovery sync exited {code}: {sc.last_err[-500:]}")
        return
    if sc.run("verify") != 0:
        report.violations.append(f"{label}: verify failed after recovery: {sc.last_err[-500:]}")
    for path, ok in sc.acceptable({sc.version}).items():
        report.files_checked += 1
        if not path.exists() or _digest(path) not in ok:
            report.violations.append(f"{label}: {path.name} wrong after recovery")
    leftovers = [str(p) for p in sc.root.rglob(".modelsync-tmp-*")]
    if leftovers:
        report.violations.append(f"{label}: temp files left after recovery: {leftovers[:3]}")


def trial(sc: Scenario, report: Report, rng: random.Random, i: int) -> None:
    """One trial: pick a start state and a kill point, run, check, recover."""
    update = rng.random() < 0.5
    # Half the trials fetch every file over 4 connections at once (segmented downloads; the archives
    # unpack while they download either way).
    sc.network = SEGMENTED if rng.random() < 0.5 else ""
    if not update:
        # A cold start: nothing installed, nothing locked; sometimes with a warm cache.
        shutil.rmtree(sc.root / "data", ignore_errors=True)
        (sc.project / "models.lock").unlink(missing_ok=True)
        if rng.random() < 0.7:
            shutil.rmtree(sc.root / "cache", ignore_errors=True)
        sc.manifest(0)
        versions = {0}
    else:
        # An update: everything at one version installed, then the manifest moves to the other.
        start = rng.randrange(2)
        sc.manifest(start)
        if sc.run("sync") != 0:
            report.violations.append(f"trial {i}: setup sync failed: {sc.last_err[-300:]}")
            return
        sc.manifest(1 - start)
        versions = {0, 1}
    if rng.random() < 0.6:
        phase = rng.choice(PHASES)
        n = rng.randint(1, 3)
        kind = f"failpoint:{phase}"
        code = sc.run("sync", failpoint=f"{phase}={n}")
    else:
        kind = "timed"
        code = sc.run("sync", kill_after=rng.uniform(0.0, 1.2))
    report.trials += 1
    report.kinds[kind] += 1
    if sc.network:
        report.kinds["(of all) segmented"] += 1
    if code == -signal.SIGKILL:
        report.killed += 1
    kind += ", segmented" if sc.network else ""
    label = f"trial {i} ({kind}, {'update' if update else 'cold'})"
    check(sc, versions, report, label)
    recover(sc, report, label)


def run_trials(root: Path, n: int, seed: int = 7) -> Report:
    """Run ``n`` trials in a fresh scenario below ``root``."""
    server = FileServer().start()
    server.rate = 4_000_000  # bytes/s per response: spreads each sync over about a second
    try:
        sc = Scenario(root, server)
        rng = random.Random(seed)
        report = Report()
        for i in range(n):
            trial(sc, report, rng, i)
        return report
    finally:
        server.stop()


def render(report: Report, seconds: float) -> str:
    """The report table."""
    lines = [f"trials: {report.trials} (SIGKILL landed in {report.killed}, the rest finished first)"]
    for kind, count in sorted(report.kinds.items()):
        lines.append(f"  {kind:22} {count}")
    lines.append(f"final paths checked: {report.files_checked}")
    lines.append(f"violations: {len(report.violations)}")
    lines.extend(f"  {v}" for v in report.violations[:20])
    lines.append(f"time: {seconds:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - convenience
    import tempfile

    t0 = time.time()
    rep = run_trials(Path(tempfile.mkdtemp()), int(sys.argv[1]) if len(sys.argv) > 1 else 10)
    print(render(rep, time.time() - t0))
