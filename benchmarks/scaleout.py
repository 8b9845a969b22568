#!/usr/bin/env python3
"""Scale-out through an OCI registry: one push, N hosts syncing from the registry at once.

    python benchmarks/scaleout.py [--hosts 8] [--files 6] [--mib 4]

One machine stands in for N hosts: each host is a `modelsync sync --locked --registry ...`
subprocess with its own HOME, XDG data (its model location), cache and state, all started
together. Before that, a "CI" host syncs from the origin (a counting HTTP server on 127.0.0.1)
and pushes the lock to a real registry (Debian's docker-registry, started here). Printed: how
often the origin and the registry served each artifact, wall times, and every host's verify.
The point: the origin sees each artifact once (the CI's download; push reads the cache), the
registry serves the other N copies, and all N installs verify.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from oci_registry import BINARY, SKIP_REASON, ResourceIndex  # noqa: E402

MODELSYNC = str(Path(sys.executable).parent / "modelsync")
PROC = "ocrd-kraken-recognize"


class Origin:
    """Serves a dict of files; counts GETs per path."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.gets = files, collections.Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                data = outer.files.get(self.path)
                outer.gets[self.path] += 1
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


def host_env(root: Path) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "CI": "1"}
    for var, sub in (("HOME", "home"), ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_STATE_HOME", "state"), ("XDG_CONFIG_HOME", "config")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(root / sub)
    return env


def run(cmd: list[str], env: dict, cwd: Path) -> None:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--files", type=int, default=6, help="single-file artifacts (plus one .tar.gz archive)")
    ap.add_argument("--mib", type=int, default=4, help="size of each artifact")
    args = ap.parse_args()
    if BINARY is None:
        raise SystemExit(SKIP_REASON)
    rng = random.Random(7)
    files = {f"/models/m{i}.mlmodel": rng.randbytes(args.mib << 20) for i in range(args.files)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        data = rng.randbytes(args.mib << 20)
        info = tarfile.TarInfo("model/weights.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    files["/models/calamari.tar.gz"] = buf.getvalue()
    origin = Origin(files)
    work = Path(tempfile.mkdtemp(prefix="modelsync-scaleout-"))
    registry = ResourceIndex(work / "registry")
    try:
        items = [f'  {{ name = "{Path(p).name}", url = "{origin.url(p)}" }},' for p in files if p.endswith(".mlmodel")]
        items.append(f'  {{ name = "calamari", url = "{origin.url("/models/calamari.tar.gz")}", type = "archive", '
                     'path_in_archive = "model" },')
        manifest = f"[processors]\n{PROC} = [\n" + "\n".join(items) + "\n]\n"
        ci = work / "ci"
        (ci / "project").mkdir(parents=True)
        (ci / "project" / "models.toml").write_text(manifest)
        t0 = time.perf_counter()
        run([MODELSYNC, "sync"], host_env(ci), ci / "project")
        t_ci = time.perf_counter() - t0
        ref = f"{registry.host}/ocr/models"
        origin_before_push = sum(origin.gets.values())
        t0 = time.perf_counter()
        run([MODELSYNC, "push", f"{ref}:bench"], host_env(ci), ci / "project")
        t_push = time.perf_counter() - t0
        origin_after_push = sum(origin.gets.values())

        hosts = [work / f"host{i:02}" for i in range(args.hosts)]
        procs = []
        t0 = time.perf_counter()
        for h in hosts:
            (h / "project").mkdir(parents=True)
            for name in ("models.toml", "models.lock"):
                shutil.copy(ci / "project" / name, h / "project" / name)
            procs.append(subprocess.Popen([MODELSYNC, "sync", "--locked", "--registry", ref], env=host_env(h),
                                          cwd=h / "project", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          text=True))
        codes = [(p.wait(), p.stderr.read()) for p in procs]
        t_hosts = time.perf_counter() - t0
        failed = [(h.name, err[-500:]) for h, (code, err) in zip(hosts, codes) if code]
        verified = sum(subprocess.run([MODELSYNC, "verify"], env=host_env(h), cwd=h / "project",
                                      capture_output=True).returncode == 0 for h in hosts)
        gets = collections.Counter(registry.blob_gets())
    finally:
        registry.stop()
        origin.httpd.shutdown()
    import hashlib

    print(f"\n{args.hosts} hosts, {len(files)} artifacts of {args.mib} MiB, registry {registry.host}")
    print(f"CI sync from origin {t_ci:.2f} s, push {t_push:.2f} s, {args.hosts} concurrent host syncs {t_hosts:.2f} s")
    print(f"\n{'artifact':28} {'origin GETs':>12} {'registry GETs':>14}")
    for path, data in files.items():
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        print(f"{Path(path).name:28} {origin.gets[path]:>12} {gets[digest]:>14}")
    print(f"\norigin requests: CI sync {origin_before_push}, push {origin_after_push - origin_before_push}, "
          f"{args.hosts} hosts {sum(origin.gets.values()) - origin_after_push}")
    print(f"host syncs failed: {len(failed)}; hosts verified: {verified}/{args.hosts}")
    for name, err in failed:
        print(f"  {name}: {err}")
    ok = (not failed and verified == args.hosts and all(origin.gets[p] == 1 for p in files)
          and all(gets["sha256:" + hashlib.sha256(d).hexdigest()] == args.hosts for d in files.values()))
    print("result:", "origin once per artifact, registry served the rest, all verified" if ok else "UNEXPECTED")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
