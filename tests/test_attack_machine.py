"""The machine at fault: a full disk, a read-only filesystem, a directory we may not write.

Each case runs on a real small tmpfs (or a real read-only mount) over one of the directories a sync
writes to: the project (the lock), the state dir (install records), a location, the cache. Each
asserts exit 8 with the filesystem named, the model either fully replaced and recorded or left as it
was, no temp file anywhere, and that the next `sync` after the fault is gone converges without
fetching twice. Needs root (mount); skipped elsewhere, saying so.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Model, sha256
from httpserver import Fault

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")

PROC = "ocrd-x"
MODEL = os.urandom(300_000)
NEW_MODEL = os.urandom(300_000)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64k", read_only: bool = False):
    """A tmpfs mounted over ``path`` (its contents hidden meanwhile); unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    inside = Path.cwd() == path
    if inside:
        os.chdir(path)  # the process's cwd still is the directory the mount now hides
    try:
        yield path
    finally:
        if inside:
            os.chdir(path.parent)
        subprocess.run(["umount", "-l", str(path)], check=False)
        if inside:
            os.chdir(path)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte; return the filler to delete later."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
    return filler


def temp_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob(".modelsync-tmp-*")]


def test_full_project_dir_fails_on_the_lock_after_the_install_and_converges(sandbox, server):
    with tmpfs(sandbox.project, "64k"):
        sandbox.declare(Model("m.bin", server.add("/m.bin", MODEL)), processor=PROC)
        filler = fill(sandbox.project)
        r = sandbox.run("sync")
        assert r.code == 8, r.err
        assert f"filesystem mounted at {sandbox.project} is full" in r.err, r.err
        assert "unexpected" not in r.err and "bug" not in r.err
        assert (sandbox.data_dir(PROC) / "m.bin").read_bytes() == MODEL  # installed, verified
        assert not sandbox.lock.exists() and not temp_files(sandbox.project, sandbox.data, sandbox.cache)
        filler.unlink()
        again = sandbox.run("sync")
        assert again.code == 0, again.err
        assert sha256(MODEL) in sandbox.lock.read_text()
        assert server.count("/m.bin") == 1  # the second run fetched nothing


def test_read_only_project_dir_is_refused_before_anything_is_fetched(sandbox, server):
    sandbox.declare(Model("m.bin", server.add("/m.bin", MODEL)), processor=PROC)
    text = sandbox.manifest.read_text()
    with tmpfs(sandbox.project, "64k"):
        sandbox.manifest.write_text(text)
        subprocess.run(["mount", "-o", "remount,ro", str(sandbox.project)], check=True)
        r = sandbox.run("sync")
        assert r.code == 8, r.err
        assert f"filesystem mounted at {sandbox.project} is read-only" in r.err, r.err
        assert server.count("/m.bin") == 0
        assert not (sandbox.data_dir(PROC) / "m.bin").exists()


def test_read_only_state_dir_is_refused_before_anything_is_fetched(sandbox, server):
    sandbox.declare(Model("m.bin", server.add("/m.bin", MODEL)), processor=PROC)
    with tmpfs(sandbox.state, "64k", read_only=True):
        r = sandbox.run("sync")
        assert r.code == 8, r.err
        assert f"filesystem mounted at {sandbox.state} is read-only" in r.err, r.err
        assert server.count("/m.bin") == 0 and not sandbox.lock.exists()


def test_read_only_location_is_refused_before_anything_is_fetched(sandbox, server):
    sandbox.declare(Model("m.bin", server.add("/m.bin", MODEL)), processor=PROC)
    with tmpfs(sandbox.data, "64k", read_only=True):
        r = sandbox.run("sync")
        assert r.code == 8, r.err
        assert f"filesystem mounted at {sandbox.data} is read-only" in r.err, r.err
        assert server.count("/m.bin") == 0


def test_full_state_dir_still_locks_what_was_installed_and_converges(sandbox, server):
    sandbox.declare(Model("m.bin", server.add("/m.bin", MODEL)), processor=PROC)
    with tmpfs(sandbox.state, "16k"):
        filler = fill(sandbox.state)
        r = sandbox.run("sync")
        assert r.code == 8, r.err
        assert f"filesystem mounted at {sandbox.state} is full" in r.err, r.err
        assert "install records" in r.err
        # The model is in place and locked: a lock names exactly the installed bytes.
        assert (sandbox.data_dir(PROC) / "m.bin").read_bytes() == MODEL
        assert sha256(MODEL) in sandbox.lock.read_text()
        assert not temp_files(sandbox.state, sandbox.data, sandbox.cache, sandbox.project)
        filler.unlink()
        again = sandbox.run("sync")
        assert again.code == 0, again.err
        assert server.count("/m.bin") == 1


def test_full_location_during_an_update_keeps_the_old_model_and_converges(sandbox, server):
    """The location fills up while the new model is copied in beside the old one (copy mode)."""
    location = sandbox.root / "small"
    with tmpfs(location, "1m"):
        url = server.add("/m.bin", MODEL)
        sandbox.declare(Model("m.bin", url, location=str(location)), processor=PROC, settings='link_mode = "copy"')
        assert sandbox.run("sync").code == 0
        assert (location / "m.bin").read_bytes() == MODEL
        sandbox.declare(Model("m.bin", server.add("/m2.bin", NEW_MODEL), location=str(location)), processor=PROC,
                        settings='link_mode = "copy"')
        # No length announced: no check is possible before the download (with one, the run fails before
        # it fetches anything: tests/test_resume.py), so the disk is found full while copying in.
        server.faults["/m2.bin"] = Fault(no_length=True)
        filler = fill(location)
        r = sandbox.run("sync")
        assert r.code == 8, r.err
        assert f"filesystem mounted at {location} is full" in r.err, r.err
        assert f"cannot write {location / 'm.bin'}:" in r.err  # the model, not our temp name for it
        assert (location / "m.bin").read_bytes() == MODEL  # the working model is untouched
        assert not temp_files(location, sandbox.cache)
        assert sha256(MODEL) in sandbox.lock.read_text() and sha256(NEW_MODEL) not in sandbox.lock.read_text()
        filler.unlink()
        again = sandbox.run("sync")
        assert again.code == 0, again.err
        assert (location / "m.bin").read_bytes() == NEW_MODEL
        assert sha256(NEW_MODEL) in sandbox.lock.read_text()


def _run_as_nobody(sandbox, *args: str) -> subprocess.CompletedProcess:
    cli = str(Path(sys.executable).parent / "modelsync")
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", cli, *args],
                          cwd=sandbox.project, env=sandbox.env(), capture_output=True, text=True, timeout=120)


def test_a_location_we_may_not_write_is_refused_before_anything_is_fetched(sandbox, server):
    """Permission denied needs a user without root's override: the CLI runs as nobody (setpriv)."""
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                            "-c", "import ocrd_models.modelsync.cli"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"the CLI cannot run as nobody here: {probe.stderr.decode().strip()[-200:]}")
    sandbox.declare(Model("m.bin", server.add("/m.bin", MODEL)), processor=PROC)
    for parent in sandbox.root.parents:  # pytest's base dir is 0700: let nobody pass through
        if not parent.stat().st_mode & 0o001:
            os.chmod(parent, parent.stat().st_mode | 0o001)
    os.chmod(sandbox.root, 0o755)
    for d in (sandbox.root, sandbox.home, sandbox.cache, sandbox.state, sandbox.project, sandbox.config):
        os.chown(d, 65534, 65534)
    os.chown(sandbox.manifest, 65534, 65534)
    os.chmod(sandbox.data, 0o755)  # owned by root: nobody may not create the location in it
    r = _run_as_nobody(sandbox, "sync")
    assert r.returncode == 8, r.stderr
    assert f"permission denied for user nobody" in r.stderr and str(sandbox.data) in r.stderr, r.stderr
    assert server.count("/m.bin") == 0
    assert not list(sandbox.data.iterdir())
