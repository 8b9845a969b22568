#!/usr/bin/env python3
"""Speed at the machine's limit: modelsync side by side with curl, tar/unzip and `ocrd resmgr`.

    python benchmarks/perf.py [--runs 3] [--corpus DIR] [--small] [--ocrd-venv PATH] [--only KEYS]
                              [--throttled-mib 1024]

In one run: generate a deterministic corpus (cached in --corpus), serve it from nginx on 127.0.0.1
(Debian's nginx, configured and started here; a Python server if nginx is missing), time our tool
and each baseline alternately (--runs times, sub-second rows at least 7 times; medians) and print
a table of ratios against each row's target. Every run of ours starts from empty locations, cache and state (cold) unless
the task says no-op. Never part of the test suite.

The `throttled` and `resume` tasks need nginx: a second nginx on 127.0.0.1 serves one deterministic file
(--throttled-mib, 1 GiB by default) at 16 MiB/s per connection and logs `$request $status $bytes_sent` of
every request. `throttled` times our sync against `aria2c -x8` (8 connections; Debian package aria2) and
`curl -o` (one connection, timed once: it takes size / 16 MiB/s); `resume` SIGKILLs a sync when half the file
is on disk, syncs again and counts, from the access log, the bytes the server sent for the file in all.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

PROC = "ocrd-bench-recognize"
MODELSYNC = str(Path(sys.executable).parent / "modelsync")
THROTTLE_MIB_S = 16  # the throttled server's limit per connection (nginx `limit_rate 16m`: MiB/s)
RSS_TARGET_MIB = 64  # peak RSS of every cold sync measured


# -- corpus --------------------------------------------------------------------------------------

def _random_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 64 << 20)
            fh.write(rng.randbytes(n))
            left -= n


def make_corpus(root: Path, small: bool) -> dict:
    """Deterministic corpus; regenerated only when its parameters change."""
    big = (128 if small else 1024) << 20
    model_files = 6 if small else 30
    stamp = root / f"stamp-{big}-{model_files}"
    info = {"big": root / "big.bin", "small": [root / "small" / f"f{i:03}.bin" for i in range(200)],
            "archives": {k: root / f"model.{k}" for k in ("tar.xz", "tar.gz", "zip")},
            "many": root / "many"}
    if stamp.exists():
        return info
    shutil.rmtree(root, ignore_errors=True)
    (root / "small").mkdir(parents=True)
    print(f"generating corpus in {root} (once)...", file=sys.stderr)
    _random_file(info["big"], big, 1)
    for i, p in enumerate(info["small"]):
        _random_file(p, 1 << 20, 100 + i)
    model = root / "model"
    (model / "weights").mkdir(parents=True)
    for i in range(model_files):
        _random_file(model / "weights" / f"part{i:02}.bin", 5 << 20, 1000 + i)
    (model / "config.json").write_text('{"model": "bench"}')
    with tarfile.open(info["archives"]["tar.gz"], "w:gz", compresslevel=1) as tf:
        tf.add(model, "model")
    with lzma.open(info["archives"]["tar.xz"], "wb", preset=0) as xz, tarfile.open(fileobj=xz, mode="w") as tf:
        tf.add(model, "model")
    with zipfile.ZipFile(info["archives"]["zip"], "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in sorted(model.rglob("*")):
            zf.write(p, "model/" + p.relative_to(model).as_posix())
    shutil.rmtree(model)
    info["many"].mkdir()
    for i in range(10_000):
        (info["many"] / f"r{i:05}.bin").write_bytes(random.Random(i).randbytes(64))
    stamp.touch()
    return info


def make_throttled_file(root: Path, mib: int) -> tuple[Path, str]:
    """The throttled tasks' file (deterministic, ``mib`` MiB) and its SHA-256; generated once per size."""
    path = root / f"throttled-{mib}MiB.bin"
    digest_file = path.with_name(path.name + ".sha256")
    if path.exists() and digest_file.exists():
        return path, digest_file.read_text().strip()
    root.mkdir(parents=True, exist_ok=True)
    print(f"generating {path} (once)...", file=sys.stderr)
    tmp = path.with_name(path.name + ".tmp")
    _random_file(tmp, mib << 20, 7)
    h = hashlib.sha256()
    with open(tmp, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    os.replace(tmp, path)
    digest_file.write_text(h.hexdigest() + "\n")
    return path, h.hexdigest()


# -- server --------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nginx() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


class Server:
    """nginx serving ``root`` on 127.0.0.1, or a threaded Python server when nginx is missing.

    ``limit_mib_s``: a throttled nginx (needs nginx): each connection limited to that many MiB/s from its
    first byte, every request logged to ``self.log`` as ``$request $status $bytes_sent``."""

    def __init__(self, root: Path, work: Path, limit_mib_s: int | None = None):
        self.port = _free_port()
        self.kind = "nginx"
        self.log: Path | None = None
        nginx = _nginx()
        if limit_mib_s and not nginx:
            raise SystemExit("the throttled server needs nginx")
        if nginx:
            prefix = work / ("nginx-throttled" if limit_mib_s else "nginx")
            (prefix / "logs").mkdir(parents=True)
            logging, throttle = "", ""
            if limit_mib_s:
                self.kind = f"nginx, {limit_mib_s} MiB/s per connection"
                self.log = prefix / "logs" / "bytes.log"
                logging = "\n  log_format bytes '$request $status $bytes_sent';"
                throttle = f" limit_rate {limit_mib_s}m; limit_rate_after 0; access_log {self.log} bytes;"
            conf = prefix / "nginx.conf"
            user = "user root root;" if os.geteuid() == 0 else ""  # workers must read the corpus where it is
            conf.write_text(f"""{user}
worker_processes 2; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log;
events {{ worker_connections 512; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  default_type application/octet-stream;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fcgi;
  uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;{logging}
  server {{ listen 127.0.0.1:{self.port}; root {root};{throttle} }}
}}""")
            self.proc = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                                         stderr=subprocess.DEVNULL)
        else:
            self.kind = "python"
            self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                          "--directory", str(root)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SystemExit("the benchmark web server did not start")

    def url(self, path: Path, root: Path) -> str:
        return f"http://127.0.0.1:{self.port}/{path.relative_to(root).as_posix()}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# Sub-second rows get more runs: on a shared machine one slow run moves a median of 3 by 30 %.
CHEAP_RUNS = 7

# The floor's hasher: OpenSSL, as hashlib uses it (coreutils' sha256sum has its own, slower code here).
HASHER = ["openssl", "dgst", "-sha256"] if shutil.which("openssl") else ["sha256sum"]


# -- timing --------------------------------------------------------------------------------------

def run(cmd: list[str], env: dict, cwd: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command; fails loudly."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{b''.join(err_chunks)[-2000:].decode()}")
    return elapsed, usage.ru_maxrss


class Bench:
    def __init__(self, work: Path, server: Server, corpus_root: Path, runs: int):
        self.work, self.server, self.corpus_root, self.runs = work, server, corpus_root, runs
        self.rows: list[tuple[str, str, float | None, float | None, str, str]] = []
        self.floors: dict[str, float] = {}  # row label -> median seconds of sha256sum over the bytes it must hash
        self.project = work / "project"
        self.project.mkdir()
        (work / "home").mkdir()  # OCR-D refuses a HOME that does not exist
        self.env = {"HOME": str(work / "home"), "XDG_DATA_HOME": str(work / "data"),
                    "XDG_CACHE_HOME": str(work / "cache"), "XDG_STATE_HOME": str(work / "state"),
                    "XDG_CONFIG_HOME": str(work / "config"), "PATH": os.environ["PATH"], "CI": "1"}
        self.dest = work / "data" / "ocrd-resources" / PROC

    def fresh(self) -> None:
        for d in ("data", "cache", "state", "curl"):
            shutil.rmtree(self.work / d, ignore_errors=True)
        (self.project / "models.lock").unlink(missing_ok=True)
        (self.work / "curl").mkdir()

    def manifest(self, items: list[str]) -> None:
        (self.project / "models.toml").write_text(
            "[settings]\nparallel = 4\n[processors]\n" + f"{PROC} = [\n" + ",\n".join(items) + "\n]\n")

    def pair(self, label: str, ours: list[str], theirs: list[str] | None, target: str, check,
             fresh_ours: bool = True, fresh_theirs: bool = True, faster: bool = False,
             floor: list[str] | None = None, runs: int | None = None) -> tuple[float, float | None, int]:
        """Time ours and theirs alternately; ``floor``: a command hashing the bytes a verified install must
        hash (sha256sum, one core), timed too: what no verifying tool can beat on this CPU."""
        t_ours, t_theirs, t_floor, rss = [], [], [], 0
        for _ in range(runs or self.runs):
            if floor:
                t_floor.append(run(floor, self.env, self.work)[0])
            if fresh_theirs:
                self.fresh()
            if theirs:
                t_theirs.append(run(theirs, self.env, self.work / "curl" if (self.work / "curl").exists()
                                    else self.work)[0])
            if fresh_ours:
                self.fresh()
            secs, peak = run(ours, self.env, self.project)
            t_ours.append(secs)
            rss = max(rss, peak)
        mo = statistics.median(t_ours)
        mt = statistics.median(t_theirs) if t_theirs else None
        if t_floor:
            self.floors[label] = statistics.median(t_floor)
        verdict = check(mo, mt)
        ratio = "-" if not mt else (f"{mt / mo:.1f}x fast" if faster else f"{mo / mt:.2f}x")
        self.rows.append((label, target, mo, mt, ratio, verdict))
        return mo, mt, rss

    def print(self) -> None:
        print(f"\nCPU: {cpu_name()} ({os.cpu_count()} CPUs)")
        print(f"{'task':44} {'target':24} {'modelsync':>10} {'baseline':>10} {'ratio':>8}  result")
        for label, target, mo, mt, ratio, verdict in self.rows:
            ours = f"{mo:.2f}s" if mo is not None else "-"
            base = f"{mt:.2f}s" if mt is not None else "-"
            print(f"{label:44} {target:24} {ours:>10} {base:>10} {ratio:>8}  {verdict}")
        if self.floors:
            print(f"\nSHA-256 floor: `{' '.join(HASHER)}` (one core; the libcrypto Python's hashlib uses) over the bytes each")
            print("verified install must hash, in the same run;")
            print("floor / baseline is the best ratio any tool that verifies every byte can reach on this CPU with one core.")
            for label, _, mo, mt, _, _ in self.rows:
                if label in self.floors and mt:
                    f = self.floors[label]
                    print(f"  {label:44} sha256 {f:.2f}s  floor/baseline {f / mt:.2f}x  ours/floor {mo / f:.2f}x")


def ok(cond: bool, detail: str = "") -> str:
    return ("met" if cond else "MISSED") + (f" ({detail})" if detail else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def rss_row(b: "Bench", rss_kib: int, label: str = "peak RSS during that sync") -> None:
    """Peak RSS (the child's ru_maxrss, from wait4) beside the row above it."""
    b.rows.append((label, f"<= {RSS_TARGET_MIB} MiB", None, None, f"{rss_kib / 1024:.0f} MiB",
                   ok(rss_kib / 1024 <= RSS_TARGET_MIB)))


def _bytes_below(dirs: list[Path], pid: int | None = None) -> int:
    """Bytes written to the files under ``dirs`` (a download in progress: the cache's tmp/ and partial/).

    A file's allocated blocks, not its length: a segmented download writes each range at its offset
    (``pwrite``), and its sparse file is as long as its farthest byte from the start. Capped by the bytes
    process ``pid`` has written so far (``wchar`` of /proc/PID/io) where Linux tells it."""
    total = 0
    for d in dirs:
        for dirpath, _, files in os.walk(d):
            for f in files:
                try:
                    st = os.lstat(os.path.join(dirpath, f))
                except OSError:
                    continue  # renamed or removed while we looked
                total += min(st.st_size, st.st_blocks * 512)
    if pid is not None:
        try:
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("wchar:"):
                    total = min(total, int(line.split()[1]))
        except (OSError, ValueError):
            pass
    return total


def _served(log: Path, offset: int, path: str) -> tuple[int, list[str]]:
    """Bytes the server sent (``$bytes_sent``, headers included) for ``path`` in log lines after ``offset``,
    and each such request's status."""
    sent, statuses = 0, []
    with open(log, "rb") as fh:
        fh.seek(offset)
        for line in fh.read().decode(errors="replace").splitlines():
            request, _, rest = line.rpartition(" ")  # '$request $status $bytes_sent'
            request, _, status = request.rpartition(" ")
            parts = request.split()
            if len(parts) >= 2 and parts[1].split("?")[0] == path and rest.isdigit():
                sent += int(rest)
                statuses.append(status)
    return sent, statuses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--corpus", type=Path, default=Path.home() / ".cache" / "ocrd-modelsync-bench")
    ap.add_argument("--small", action="store_true", help="128 MiB instead of 1 GiB, a 30 MiB model (quick check)")
    ap.add_argument("--ocrd-venv", type=Path, default=Path(os.environ.get("MODELSYNC_OCRD_VENV")
                                                              or Path(__file__).resolve().parent.parent / ".venv-ocrd"))
    ap.add_argument("--only", help="comma-separated task keys: "
                    "big,small,archives,noop,available,plan,resmgr,throttled,resume")
    ap.add_argument("--throttled-mib", type=int, default=1024,
                    help="size of the file the throttled and resume tasks fetch at 16 MiB/s (default 1024)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    corpus_root = args.corpus / ("small" if args.small else "full")
    corpus = make_corpus(corpus_root, args.small)
    work = Path(tempfile.mkdtemp(prefix="modelsync-perf-", dir=str(Path.home())))  # same fs as a user's models
    server = Server(corpus_root, work)
    print(f"server: {server.kind} on 127.0.0.1:{server.port}; corpus {corpus_root}; runs {args.runs}", file=sys.stderr)
    b = Bench(work, server, corpus_root, args.runs)
    throttled = None  # the second, throttled nginx: started only for the tasks that use it
    url = lambda p: server.url(p, corpus_root)  # noqa: E731
    want = lambda key: only is None or key in only  # noqa: E731
    try:
        big_rss = None
        if want("big"):
            b.manifest([f'{{ name = "big.bin", url = "{url(corpus["big"])}" }}'])
            _, _, big_rss = b.pair(f"cold sync, {corpus['big'].stat().st_size >> 20} MiB file", [MODELSYNC, "sync"],
                                   ["curl", "-s", "-o", str(work / "curl" / "big.bin"), url(corpus["big"])],
                                   "<= 1.2x curl -o", lambda mo, mt: ok(mo <= 1.2 * mt),
                                   floor=[*HASHER, str(corpus["big"])])
            rss_row(b, big_rss)
        if want("small"):
            b.manifest([f'{{ name = "{p.name}", url = "{url(p)}" }}' for p in corpus["small"]])
            curl = ["curl", "-s"]
            for p in corpus["small"]:
                curl += ["-o", p.name, url(p)]
            b.pair("cold sync, 200 files of 1 MiB", [MODELSYNC, "sync"], curl, "<= 3x one curl, sequential",
                   lambda mo, mt: ok(mo <= 3 * mt), floor=[*HASHER, *map(str, corpus["small"])])
        if want("archives"):
            unpacked = work / "floor-model"  # the members, for the floor: the archive and each file are hashed
            unpacked.mkdir()
            subprocess.run(["tar", "xf", str(corpus["archives"]["tar.gz"]), "-C", str(unpacked)], check=True)
            members = sorted(str(p) for p in unpacked.rglob("*") if p.is_file())
            model_mib = round(sum(os.path.getsize(m) for m in members) / (1 << 20))
            for kind, path in corpus["archives"].items():
                b.manifest([f'{{ name = "model", url = "{url(path)}", type = "archive", path_in_archive = "model" }}'])
                unpack = ("unzip -q a -d out" if kind == "zip" else "mkdir out && tar xf a -C out")
                _, _, rss = b.pair(f"cold sync, {model_mib} MiB model as .{kind}", [MODELSYNC, "sync"],
                                   ["sh", "-c", f"curl -s -o a {url(path)} && {unpack}"], "<= 1.5x curl + unpack",
                                   lambda mo, mt: ok(mo <= 1.5 * mt), floor=[*HASHER, str(path), *members])
                rss_row(b, rss)
        if want("noop"):
            items = [f'{{ name = "big.bin", url = "{url(corpus["big"])}" }}']
            items += [f'{{ name = "{p.name}", url = "{url(p)}" }}' for p in corpus["small"]]
            items += [f'{{ name = "model-{k.replace(".", "-")}", url = "{url(p)}", type = "archive" }}'
                      for k, p in corpus["archives"].items()]
            b.manifest(items)
            b.fresh()
            run([MODELSYNC, "sync"], b.env, b.project)
            baseline = [sys.executable, "-c", "import urllib3, rich, typer, pydantic, yaml"]
            for cmd in ("sync", "status"):
                b.pair(f"no-op {cmd}, everything installed", [MODELSYNC, cmd], baseline,
                       "<= 1.5x python -c import", lambda mo, mt: ok(mo <= 1.5 * mt), fresh_ours=False,
                       fresh_theirs=False, runs=max(args.runs, CHEAP_RUNS))
        if want("available"):
            ocrd = args.ocrd_venv / "bin" / "ocrd"
            theirs = [str(ocrd), "resmgr", "list-available"] if ocrd.exists() else None
            b.pair("available (all known resources)", [MODELSYNC, "available"], theirs,
                   "<= 0.5 s median", lambda mo, mt: ok(mo <= 0.5), fresh_ours=False, fresh_theirs=False,
                   runs=max(args.runs, CHEAP_RUNS))
        if want("plan"):
            many = sorted(corpus["many"].iterdir())
            b.manifest([f'{{ name = "{p.name}", url = "{p}" }}' for p in many])
            b.fresh()
            run([MODELSYNC, "sync", "-j", "8"], b.env, b.project)
            b.pair("plan, 10 000 resources all installed", [MODELSYNC, "plan"], None, "<= 1 s",
                   lambda mo, mt: ok(mo <= 1.0), fresh_ours=False, fresh_theirs=False,
                   runs=max(args.runs, CHEAP_RUNS))
        if want("resmgr"):
            ocrd = args.ocrd_venv / "bin" / "ocrd"
            if not ocrd.exists():
                b.rows.append(("200 files vs ocrd resmgr download", ">= 15x faster", None, None, "-",
                               f"skipped: no OCR-D venv at {args.ocrd_venv}"))
            else:
                import yaml

                entries = [{"name": p.name, "url": url(p), "description": "bench", "size": 1 << 20}
                           for p in corpus["small"]]
                (work / "config" / "ocrd").mkdir(parents=True, exist_ok=True)
                (work / "config" / "ocrd" / "resources.yml").write_text(yaml.safe_dump({PROC: entries}))
                b.manifest([f'"{p.name}"' for p in corpus["small"]])
                mo, mt, _ = b.pair("200 files: sync vs ocrd resmgr download '*'", [MODELSYNC, "sync"],
                                   [str(ocrd), "resmgr", "download", "-a", PROC, "*"], ">= 15x faster",
                                   lambda mo, mt: ok(mt / mo >= 15), faster=True)
        if want("throttled") or want("resume"):
            tag = f"{args.throttled_mib} MiB @ {THROTTLE_MIB_S} MiB/s"
            if not _nginx():
                for key in ("throttled", "resume"):
                    if want(key):
                        b.rows.append((f"{key}: {tag}", "-", None, None, "-",
                                       "skipped: needs nginx (apt install nginx)"))
            else:
                tfile, tsha = make_throttled_file(args.corpus / "throttled", args.throttled_mib)
                throttled = Server(tfile.parent, work, THROTTLE_MIB_S)
                print(f"throttled server: {throttled.kind} on 127.0.0.1:{throttled.port}", file=sys.stderr)
                turl = throttled.url(tfile, tfile.parent)
                size = tfile.stat().st_size
                wire = size / (THROTTLE_MIB_S << 20)  # seconds one connection needs at the limit
                b.manifest([f'{{ name = "{tfile.name}", url = "{turl}", type = "file", sha256 = "{tsha}" }}'])
                if want("throttled"):
                    aria2c = shutil.which("aria2c")
                    aria = (["aria2c", "-x8", "-s8", "-k1M", "--file-allocation=none", "-d", str(work / "curl"),
                             "-o", tfile.name, turl] if aria2c else None)
                    mo, _, rss = b.pair(f"throttled {tag}: vs aria2c -x8", [MODELSYNC, "sync"], aria,
                                        "<= 1.15x aria2c -x8",
                                        lambda mo, mt: ok(mo <= 1.15 * mt) if mt
                                        else "skipped: aria2c missing (apt install aria2)",
                                        floor=[*HASHER, str(tfile)])
                    b.fresh()  # curl at the limit takes size / 16 MiB/s (64 s for 1 GiB): timed once
                    mc, _ = run(["curl", "-s", "-o", str(work / "curl" / tfile.name), turl], b.env, work / "curl")
                    b.rows.append((f"throttled {tag}: vs curl -o", ">= 6x faster than curl", mo, mc,
                                   f"{mc / mo:.1f}x fast",
                                   ok(mc / mo >= 6, f"curl timed once, not a median; ours: the median above; "
                                                    f"one connection at the limit needs {wire:.1f}s")))
                    rss_row(b, rss, "peak RSS during the throttled sync")
                if want("resume"):
                    b.fresh()
                    cache = Path(b.env.get("MODELSYNC_CACHE_DIR")
                                 or Path(b.env["XDG_CACHE_HOME"]) / "ocrd-modelsync")
                    offset = throttled.log.stat().st_size if throttled.log.exists() else 0
                    half, deadline = size // 2, wire / 2 + 5  # the elapsed-time fallback, should polling see nothing
                    t0 = time.perf_counter()
                    proc = subprocess.Popen([MODELSYNC, "sync"], env=b.env, cwd=b.project,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    on_disk, how = 0, "on reaching half"
                    try:
                        while proc.poll() is None:
                            on_disk = _bytes_below([cache / "partial", cache / "tmp"], proc.pid)
                            if on_disk >= half:
                                break
                            if time.perf_counter() - t0 >= deadline:
                                how = "by elapsed time"
                                break
                            time.sleep(0.02)
                    finally:
                        finished = proc.poll() is not None
                        if not finished:
                            os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
                    killed_after = time.perf_counter() - t0
                    label = f"resume, SIGKILL at 50 %, {tag}"
                    if finished:
                        b.rows.append((label, "<= 1.1x file size sent", None, None, "-",
                                       f"MISSED (the first sync ended, exit {proc.returncode}, before the kill)"))
                    else:
                        second, _ = run([MODELSYNC, "sync"], b.env, b.project)
                        installed = b.dest / tfile.name
                        h = hashlib.sha256()
                        with open(installed, "rb") as fh:
                            while chunk := fh.read(8 << 20):
                                h.update(chunk)
                        time.sleep(0.5)  # nginx logs a request when its connection ends
                        sent, statuses = _served(throttled.log, offset, "/" + tfile.name)
                        answers = ", ".join(f"{n}x {st}" for st, n in sorted(Counter(statuses).items()))
                        detail = (f"killed {how}, {on_disk / (1 << 20):.0f} MiB on disk, after {killed_after:.1f}s; "
                                  f"server sent {sent / (1 << 20):.0f} MiB in {len(statuses)} requests ({answers}); "
                                  f"second sync {second:.2f}s; sha256 {'ok' if h.hexdigest() == tsha else 'MISMATCH'}; "
                                  "one run")
                        b.rows.append((label, "<= 1.1x file size sent", second, None, f"{sent / size:.2f}x",
                                       ok(sent / size <= 1.1 and h.hexdigest() == tsha, detail)))
    finally:
        server.stop()
        if throttled is not None:
            throttled.stop()
        shutil.rmtree(work, ignore_errors=True)
    b.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
