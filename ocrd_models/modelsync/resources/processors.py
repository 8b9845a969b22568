"""Ask installed processors about themselves: ``--dump-json`` and ``--dump-module-dir``.

Each answer is cached on disk, keyed by the executable's real path, size, mtime and
inode, so a processor is asked once per version (OCR-D processors are slow to start).
Several processors are asked in parallel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..atomic import write_text_atomic
from ..config import Environment

QUERY_TIMEOUT = 120.0  # seconds; a processor importing TensorFlow can take a while


def find_executable(exe: str, env: Environment) -> Path | None:
    """Return the path of ``exe`` on ``env``'s PATH, or None."""
    found = shutil.which(exe, path=env.path)
    return Path(found) if found else None


def executables_on_path(env: Environment, prefix: str = "ocrd-") -> list[str]:
    """Names of executables on PATH starting with ``prefix`` (first PATH hit per name)."""
    names: set[str] = set()
    for folder in env.path.split(os.pathsep):
        try:
            with os.scandir(folder or ".") as it:
                for entry in it:
                    if entry.name.startswith(prefix) and os.access(entry.path, os.X_OK) and entry.is_file():
                        names.add(entry.name)
        except OSError:
            continue
    return sorted(names)


def _cache_file(exe_path: Path, flag: str, env: Environment) -> Path | None:
    try:
        real = exe_path.resolve()
        st = real.stat()
    except OSError:
        return None
    key = f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{flag}"
    return env.cache_dir / "processors" / (hashlib.sha256(key.encode()).hexdigest() + ".json")


def query(exe: str, flag: str, env: Environment) -> str | None:
    """Run ``exe flag`` (cached until the executable changes); None if it is not installed or fails."""
    path = find_executable(exe, env)
    if path is None:
        return None
    cache = _cache_file(path, flag, env)
    if cache is not None:
        try:
            return json.loads(cache.read_text())["stdout"]
        except (OSError, ValueError, KeyError):
            pass
    try:
        proc = subprocess.run([str(path), flag], capture_output=True, text=True, timeout=QUERY_TIMEOUT,
                              env=env.vars or None, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    if cache is not None:
        try:
            write_text_atomic(cache, json.dumps({"exe": str(path), "flag": flag, "stdout": proc.stdout}))
        except OSError:
            pass  # an unwritable cache only costs speed
    return proc.stdout


def dump_json(exe: str, env: Environment) -> dict | None:
    """The processor's own ocrd-tool entry (``--dump-json``), or None."""
    out = query(exe, "--dump-json", env)
    if not out:
        return None
    try:
        data = json.loads(out)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def module_dir(exe: str, env: Environment) -> Path | None:
    """The processor's module directory (``--dump-module-dir``), or None."""
    out = query(exe, "--dump-module-dir", env)
    line = out.strip().splitlines()[-1].strip() if out and out.strip() else ""
    return Path(line) if line else None


def dump_many(exes: list[str], env: Environment, workers: int = 8) -> dict[str, dict]:
    """``--dump-json`` of several processors in parallel; processors not installed are left out."""
    if not exes:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(exes)))) as pool:
        answers = list(pool.map(lambda e: dump_json(e, env), exes))
    return {exe: ans for exe, ans in zip(exes, answers) if ans is not None}
