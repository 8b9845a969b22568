#!/usr/bin/env python3
"""Side by side with OCR-D core: `ocrd resmgr` vs `modelsync`, timed in one run, ratios printed.

    python benchmarks/interop_speed.py [--runs 5] [--venv PATH]

Needs the interop venv with OCR-D core (created like the tests do: <repo>/.venv-ocrd, or
$MODELSYNC_OCRD_VENV / --venv) and `modelsync` installed in the running interpreter's env.
Everything happens below a temp dir, with 20 resources served from 127.0.0.1.

| pair | ocrd resmgr | modelsync |
|---|---|---|
| list known resources | list-available | available |
| list installed       | list-installed | status |
| install 20 resources | download -a EXE '*' | sync (cold: empty data dir and cache) |
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import make_tar  # noqa: E402
from httpserver import FileServer  # noqa: E402

EXE = "ocrd-bench-recognize"
N_RESOURCES = 20


def ensure_venv(venv: Path) -> Path:
    if not (venv / "bin" / "ocrd").exists():
        print(f"creating {venv} with OCR-D core (once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "ocrd>=3,<4"], check=True)
    return venv


def timed(cmd: list[str], env: dict, cwd: Path, setup=None) -> float:
    if setup:
        setup()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("MODELSYNC_OCRD_VENV") or REPO / ".venv-ocrd"))
    args = ap.parse_args()
    venv = ensure_venv(args.venv)
    modelsync = Path(sys.executable).parent / "modelsync"
    server = FileServer().start()
    root = Path(tempfile.mkdtemp(prefix="modelsync-bench-"))
    try:
        bindir = root / "bin"
        bindir.mkdir()
        for name in ("ocrd", "ocrd-dummy"):
            (bindir / name).symlink_to(venv / "bin" / name)
        (bindir / "modelsync").symlink_to(modelsync)
        env = {"HOME": str(root / "home"), "XDG_CONFIG_HOME": str(root / "config"), "XDG_DATA_HOME": str(root / "data"),
               "XDG_CACHE_HOME": str(root / "cache"), "XDG_STATE_HOME": str(root / "state"),
               "PATH": f"{bindir}:/usr/bin:/bin", "CI": "1"}
        project = root / "project"
        for d in ("home", "config/ocrd", "data", "project"):
            (root / d).mkdir(parents=True, exist_ok=True)
        # 20 resources: 16 files of 1 MiB, 4 archives (tar.gz) with a model directory inside.
        entries, names = [], []
        for i in range(N_RESOURCES):
            if i % 5 == 4:
                data = make_tar({f"m{i}/weights.bin": os.urandom(1 << 20), f"m{i}/cfg.json": b"{}"})
                entries.append({"url": server.add(f"/a{i}.tar.gz", data), "name": f"archive{i}", "type": "archive",
                                "path_in_archive": f"m{i}", "description": "bench archive", "size": len(data)})
            else:
                data = os.urandom(1 << 20)
                entries.append({"url": server.add(f"/f{i}.bin", data), "name": f"file{i}.bin",
                                "description": "bench file", "size": len(data)})
            names.append(entries[-1]["name"])
        import yaml

        (root / "config" / "ocrd" / "resources.yml").write_text(yaml.safe_dump({EXE: entries}, sort_keys=False))
        (project / "models.toml").write_text(f"[processors]\n{EXE} = {names!r}\n".replace("'", '"'))
        data_dir = root / "data" / "ocrd-resources" / EXE

        def fresh() -> None:
            shutil.rmtree(root / "data", ignore_errors=True)
            shutil.rmtree(root / "cache" / "ocrd-modelsync" / "blobs", ignore_errors=True)
            shutil.rmtree(root / "cache" / "ocrd-modelsync" / "trees", ignore_errors=True)
            shutil.rmtree(root / "state", ignore_errors=True)
            (project / "models.lock").unlink(missing_ok=True)

        rows = []
        pairs = [
            ("list known resources", [str(bindir / "ocrd"), "resmgr", "list-available"], None,
             [str(modelsync), "available"], None),
            ("install 20 resources (cold)", [str(bindir / "ocrd"), "resmgr", "download", "-a", EXE, "*"], fresh,
             [str(modelsync), "sync"], fresh),
            ("list installed / status", [str(bindir / "ocrd"), "resmgr", "list-installed"], None,
             [str(modelsync), "status"], None),
        ]
        for label, theirs, their_setup, ours, our_setup in pairs:
            t_theirs, t_ours = [], []
            for _ in range(args.runs):  # alternate, so drift hits both equally
                t_theirs.append(timed(theirs, env, project, their_setup))
                t_ours.append(timed(ours, env, project, our_setup))
            if label.startswith("install"):
                assert len(list(data_dir.iterdir())) == N_RESOURCES, "sync did not install all 20"
            mt, mo = statistics.median(t_theirs), statistics.median(t_ours)
            rows.append((label, mt, mo, mt / mo))
        print(f"{'task':30} {'ocrd resmgr':>12} {'modelsync':>10} {'speed-up':>9}   (medians of {args.runs} runs)")
        for label, mt, mo, ratio in rows:
            print(f"{label:30} {mt:>11.2f}s {mo:>9.2f}s {ratio:>8.1f}x")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
