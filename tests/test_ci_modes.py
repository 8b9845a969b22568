"""CI and Docker modes: --locked, --frozen, --offline, --check; the shared cache; no-op speed; import."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
from conftest import Model, make_tar, sha256, tree_files

BLOB = os.urandom(60_000)


def _manifest(sandbox, server, settings: str = "") -> None:
    a = server.add("/a.traineddata", BLOB)
    b = server.add("/b.tar.xz", make_tar({"ckpt/x.json": b"{}", "ckpt/w.bin": os.urandom(5000)}, "xz"))
    sandbox.declare(settings=settings, processors={
        "ocrd-tesserocr-recognize": [Model("a.traineddata", a)],
        "ocrd-calamari-recognize": [Model("b", b, type="archive", path_in_archive="ckpt")],
    })


def _installed(sandbox) -> dict[str, bytes]:
    out = {"a": (sandbox.tessdata / "a.traineddata").read_bytes()}
    out.update({f"b/{k}": v for k, v in tree_files(sandbox.data_dir("ocrd-calamari-recognize") / "b").items()})
    return out


# -- --locked ----------------------------------------------------------------------------

def test_locked_fails_without_a_lock_and_installs_nothing(sandbox, server):
    _manifest(sandbox, server)
    r = sandbox.run("sync", "--locked")
    assert r.code == 5
    assert "models.lock does not exist" in r.err and "modelsync lock" in r.err
    assert not sandbox.lock.exists() and list(sandbox.tessdata.iterdir()) == []
    assert server.requests == []


def test_locked_lists_the_differences_when_the_manifest_changed(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("lock").code == 0
    lock_before = sandbox.lock.read_bytes()
    url = server.add("/c.mlmodel", b"c")
    text = sandbox.manifest.read_text().replace('url = "' + server.url("/a.traineddata"),
                                                 'url = "' + server.url("/a2.traineddata"))
    sandbox.write_manifest(text + f'ocrd-kraken-recognize = [{{ name = "c.mlmodel", url = "{url}" }}]\n')
    r = sandbox.run("sync", "--locked")
    assert r.code == 5
    assert "+ ocrd-kraken-recognize c.mlmodel: declared, not locked" in r.err
    assert "~ ocrd-tesserocr-recognize a.traineddata: url" in r.err
    assert sandbox.lock.read_bytes() == lock_before
    assert list(sandbox.tessdata.iterdir()) == []


def test_locked_installs_an_up_to_date_lock_without_rewriting_it(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("lock").code == 0
    before = sandbox.lock.read_bytes()
    mtime = sandbox.lock.stat().st_mtime_ns
    r = sandbox.run("sync", "--locked")
    assert r.code == 0, r.err
    assert _installed(sandbox)["a"] == BLOB
    assert sandbox.lock.read_bytes() == before and sandbox.lock.stat().st_mtime_ns == mtime


def test_edited_lock_hash_fails_locked_sync_and_installs_nothing(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("lock").code == 0
    shutil.rmtree(sandbox.cache)
    sandbox.lock.write_text(sandbox.lock.read_text().replace(sha256(BLOB), "f" * 64))
    r = sandbox.run("sync", "--locked")
    assert r.code == 4 and "f" * 64 in r.err and sha256(BLOB) in r.err
    assert not (sandbox.tessdata / "a.traineddata").exists()


# -- --frozen ----------------------------------------------------------------------------

def test_frozen_installs_the_lock_without_resolving_names(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("lock").code == 0
    # A processor on PATH that must not be asked, and a manifest whose names no longer resolve.
    bindir = sandbox.root / "bin"
    bindir.mkdir()
    calls = sandbox.root / "calls"
    exe = bindir / "ocrd-calamari-recognize"
    exe.write_text(f"#!/bin/sh\necho called >> {calls}\necho '{{}}'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    sandbox.monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    sandbox.declare("no-such-model", processor="ocrd-tesserocr-recognize")
    before = sandbox.lock.read_bytes()
    r = sandbox.run("sync", "--frozen")
    assert r.code == 0, r.err
    assert _installed(sandbox)["a"] == BLOB
    assert not calls.exists()
    assert sandbox.lock.read_bytes() == before
    # Without any models.toml at all, too.
    sandbox.manifest.unlink()
    assert sandbox.run("sync", "--frozen").code == 0


def test_frozen_without_a_lock_is_a_stale_lock(sandbox, server):
    _manifest(sandbox, server)
    r = sandbox.run("sync", "--frozen")
    assert r.code == 5 and "does not exist" in r.err


# -- --offline ---------------------------------------------------------------------------

def test_offline_lists_every_missing_resource_and_installs_nothing(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("lock").code == 0
    shutil.rmtree(sandbox.cache)
    server.requests.clear()
    r = sandbox.run("sync", "--offline")
    assert r.code == 6
    assert "a.traineddata" in r.err and "ocrd-calamari-recognize b" in r.err
    assert "modelsync sync --manifest" in r.err
    assert server.requests == [] and list(sandbox.tessdata.iterdir()) == []
    sandbox.monkeypatch.setenv("MODELSYNC_OFFLINE", "1")
    assert sandbox.run("sync").code == 6


def test_offline_installs_from_the_cache_with_the_origin_gone(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("lock").code == 0  # fills the cache
    server.stop()
    r = sandbox.run("sync", "--offline")
    assert r.code == 0, r.err
    assert _installed(sandbox)["a"] == BLOB


def test_offline_without_a_lock_cannot_know_the_bytes(sandbox, server):
    _manifest(sandbox, server)
    r = sandbox.run("sync", "--offline")
    assert r.code == 6 and server.requests == []


# -- --check -----------------------------------------------------------------------------

def test_check_changes_nothing_and_reports_pending_changes(sandbox, server):
    _manifest(sandbox, server)
    r = sandbox.run("sync", "--check")
    assert r.code == 7 and "2 change(s) pending" in r.err and "a.traineddata" in r.out
    assert not sandbox.lock.exists() and server.requests == []
    r = sandbox.run("sync", "--check", "--json")
    assert r.code == 7 and json.loads(r.out)["changes"] == 2
    assert sandbox.run("sync").code == 0
    assert sandbox.run("sync", "--check").code == 0
    assert sandbox.run("plan", "--check").code == 0


# -- the shared cache ----------------------------------------------------------------------

def test_second_project_with_the_same_bytes_downloads_nothing(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("sync").code == 0
    assert server.count("/a.traineddata") == 1
    other = sandbox.root / "project2"
    other.mkdir()
    shutil.copy(sandbox.manifest, other / "models.toml")
    shutil.copy(sandbox.lock, other / "models.lock")
    text = (other / "models.toml").read_text() + '[settings]\nlocation = "cwd"\n'
    (other / "models.toml").write_text(text.replace("[processors]", "[settings.locations]\n"
                                                    'ocrd-calamari-recognize = "cwd"\n[processors]', 1))
    (other / "models.lock").unlink()
    r = sandbox.run("lock", "--manifest", str(other / "models.toml"))
    assert r.code == 0, r.err
    # A lock to share: the second project locks the same URLs; bytes known -> from the cache.
    shutil.rmtree(sandbox.data_dir("ocrd-calamari-recognize"))
    (sandbox.tessdata / "a.traineddata").unlink()
    requests = len(server.requests)
    assert sandbox.run("sync", "--manifest", str(other / "models.toml")).code == 0
    assert sandbox.run("sync").code == 0
    assert len(server.requests) == requests
    assert (other / "b" / "x.json").read_bytes() == b"{}"


def test_hardlink_by_default_copy_on_request(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("sync").code == 0
    installed = sandbox.tessdata / "a.traineddata"
    blob = sandbox.cache / "ocrd-modelsync" / "blobs" / "sha256" / sha256(BLOB)[:2] / sha256(BLOB)
    assert installed.stat().st_ino == blob.stat().st_ino
    installed.unlink()
    r = sandbox.run("sync", "--link-mode", "copy")
    assert r.code == 0
    assert installed.stat().st_ino != blob.stat().st_ino and installed.read_bytes() == BLOB
    assert sandbox.run("sync", "--link-mode", "symlink").code == 2


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs a second filesystem (/dev/shm)")
def test_cache_on_another_filesystem_falls_back_to_copy_with_a_notice(sandbox, server):
    _manifest(sandbox, server)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other_fs:
        r = sandbox.run("sync", "--cache-dir", other_fs)
        assert r.code == 0, r.err
        assert r.err.count("notice: hardlinks not possible") == 1
        assert _installed(sandbox)["a"] == BLOB
        r = sandbox.run("sync", "--cache-dir", other_fs, "--link-mode", "hardlink")
        assert r.code == 0  # nothing to do: no link needed


def test_cache_dir_from_env_and_settings(sandbox, server):
    _manifest(sandbox, server, settings='cache_dir = "./.models-cache"')
    assert sandbox.run("sync").code == 0
    assert sandbox.run("cache", "dir").out.strip() == str(sandbox.project / ".models-cache")
    assert (sandbox.project / ".models-cache" / "blobs").is_dir()
    sandbox.monkeypatch.setenv("MODELSYNC_CACHE_DIR", str(sandbox.root / "envcache"))
    assert sandbox.run("cache", "dir").out.strip() == str(sandbox.root / "envcache")


def test_deleted_truncated_or_edited_files_are_repaired_from_the_cache(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("sync").code == 0
    good = _installed(sandbox)
    requests = len(server.requests)
    (sandbox.tessdata / "a.traineddata").unlink()
    assert sandbox.run("sync").code == 0
    target = sandbox.data_dir("ocrd-calamari-recognize") / "b" / "w.bin"
    os.chmod(target, 0o644)
    with open(target, "r+b") as fh:
        fh.truncate(10)
    assert sandbox.run("sync").code == 0
    assert _installed(sandbox) == good
    # Only the edit through a hardlink reached the cached copy: re-fetched, not trusted.
    with open(sandbox.tessdata / "a.traineddata", "r+b") as fh:
        fh.write(b"EDITED")
    assert sandbox.run("sync").code == 0
    assert _installed(sandbox) == good
    assert server.count("/a.traineddata") == 2  # the edit reached the cache through the hardlink
    assert len(server.requests) == requests + 1  # the archive never again: re-extracted from its cached blob


def test_no_op_sync_and_status_hash_nothing(sandbox, server, monkeypatch):
    _manifest(sandbox, server)
    assert sandbox.run("sync").code == 0
    import ocrd_models.modelsync.digest as digest

    calls = []
    real = digest.sha256_file
    monkeypatch.setattr(digest, "sha256_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert sandbox.run("sync").code == 0
    assert sandbox.run("status").code == 0
    assert calls == []
    assert sandbox.run("verify").code == 0
    assert len(calls) >= 3  # verify always re-hashes


def test_hardlinks_of_sealed_cache_blobs_are_trusted_without_records(sandbox, server, monkeypatch):
    _manifest(sandbox, server)
    assert sandbox.run("sync").code == 0
    shutil.rmtree(sandbox.state / "ocrd-modelsync" / "records")  # no install record left to vouch
    import ocrd_models.modelsync.digest as digest

    calls = []
    real = digest.sha256_file
    monkeypatch.setattr(digest, "sha256_file", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    plan = json.loads(sandbox.run("plan", "-v", "--json").out)
    rows = {a["name"]: a for a in plan["actions"]}
    assert plan["changes"] == 0
    assert "(verified)" in rows["a.traineddata"]["reason"]  # a file: the cache's own inode vouches for it
    assert "(hashed)" in rows["b"]["reason"]  # an unpacked tree has no single blob: hashed without a record
    assert not any(str(c).startswith(str(sandbox.tessdata)) for c in calls)
    # A copy that is not the cache's inode is not trusted that way: hashed (and still correct)
    victim = sandbox.tessdata / "a.traineddata"
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data)
    plan = json.loads(sandbox.run("plan", "-v", "--json").out)
    row = next(a for a in plan["actions"] if a["path"] == str(victim))
    assert row["action"] == "keep" and "(hashed)" in row["reason"]


def test_two_concurrent_syncs_share_cache_and_location(sandbox, server):
    _manifest(sandbox, server)
    server.delay = 0.2
    exe = os.path.join(os.path.dirname(sys.executable), "modelsync")
    env = dict(os.environ)
    procs = [subprocess.Popen([exe, "sync"], cwd=sandbox.project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert [r[2] for r in results] == [0, 0], results
    assert sandbox.run("verify").code == 0
    leftovers = [p for p in sandbox.root.rglob(".modelsync-tmp-*")]
    assert leftovers == []


# -- cache info / prune ------------------------------------------------------------------

def test_cache_info_and_prune(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("sync").code == 0
    info = json.loads(sandbox.run("cache", "info", "--json").out)["cache"]
    assert info["blobs"] == 2 and info["trees"] == 1 and info["projects"] == 1 and info["bytes"] > len(BLOB)
    # Referenced by this project's lock: nothing to prune.
    assert json.loads(sandbox.run("cache", "prune", "--json").out)["removed"] == []
    # Drop a model from the project and its installed files: its blob and tree become unreferenced.
    # (A plain `remove` keeps the model installed and in the lock, as undeclared: still referenced.)
    sandbox.run("remove", "ocrd-calamari-recognize")
    assert sandbox.run("sync").code == 0
    assert json.loads(sandbox.run("cache", "prune", "--dry-run", "--json").out)["removed"] == []
    assert sandbox.run("sync", "--prune").code == 0
    r = sandbox.run("cache", "prune", "--dry-run", "--json")
    doc = json.loads(r.out)
    assert doc["dry_run"] and {x["kind"] for x in doc["removed"]} == {"blob", "tree"}
    assert json.loads(sandbox.run("cache", "info", "--json").out)["cache"]["blobs"] == 2  # dry run kept it
    assert sandbox.run("cache", "prune").code == 0
    assert json.loads(sandbox.run("cache", "info", "--json").out)["cache"]["blobs"] == 1
    assert _installed_a_only(sandbox) == BLOB  # installed models keep their bytes
    assert json.loads(sandbox.run("cache", "prune", "--older-than", "1", "--json").out)["removed"] == []
    assert len(json.loads(sandbox.run("cache", "prune", "--older-than", "0", "--json").out)["removed"]) == 1


def test_a_download_adds_no_used_marker_and_counts_as_used_when_added(tmp_path):
    import time

    from ocrd_models.modelsync.install.cache import Cache

    cache = Cache(tmp_path / "cache")
    cache.tmp.mkdir(parents=True)
    (cache.tmp / "t").write_bytes(BLOB)
    blob = cache.add_blob(cache.tmp / "t", sha256(BLOB))
    assert not (cache.root / "used").exists()  # one file fewer per download
    assert time.time() - cache.last_used(sha256(BLOB), blob) < 60
    marker = cache.root / "used" / sha256(BLOB)  # a stale marker (say, from before a manual delete)
    marker.parent.mkdir()
    marker.touch()
    os.utime(marker, (time.time() - 30 * 86400,) * 2)
    assert time.time() - cache.last_used(sha256(BLOB), blob) < 60  # the later of marker and addition
    assert cache.get_blob(sha256(BLOB)) == blob  # a reuse touches the marker
    assert time.time() - marker.stat().st_mtime < 60


def _installed_a_only(sandbox) -> bytes:
    return (sandbox.tessdata / "a.traineddata").read_bytes()


# -- import ------------------------------------------------------------------------------

def test_import_adopts_known_files_and_lists_unknown_ones(sandbox, server):
    # What `ocrd resmgr download` leaves behind: known names in several locations, plus strays.
    data = sandbox.data_dir("ocrd-cis-ocropy-recognize")
    data.mkdir(parents=True)
    # Real-looking copies (an empty or cut-short file is refused: tests/test_installed.py): the known
    # sizes, a traineddata header, a gzip stream.
    import gzip

    from conftest import make_traineddata

    deu = make_traineddata(b"w" * 8_628_000)
    (data / "fraktur-jze.pyrnn.gz").write_bytes(gzip.compress(os.urandom(2_961_000)))
    (sandbox.tessdata / "deu.traineddata").write_bytes(deu)
    (sandbox.tessdata / "my-own.traineddata").write_bytes(b"unknown")
    cal = sandbox.system / "ocrd-calamari-recognize" / "qurator-gt4histocr-1.0"
    cal.mkdir(parents=True)
    (cal / "0.ckpt.json").write_text("{}")
    r = sandbox.run("import")
    assert r.code == 0, r.err
    assert "my-own.traineddata" in r.err and "unknown" in r.err
    manifest = tomllib.loads(sandbox.manifest.read_text())["processors"]
    assert manifest["ocrd-tesserocr-recognize"] == ["deu.traineddata"]
    assert manifest["ocrd-cis-ocropy-recognize"] == ["fraktur-jze.pyrnn.gz"]
    assert manifest["ocrd-calamari-recognize"] == [{"name": "qurator-gt4histocr-1.0", "location": "system"}]
    lock = {e["name"]: e for e in tomllib.loads(sandbox.lock.read_text())["resource"]}
    assert lock["deu.traineddata"]["sha256"] == sha256(deu)
    assert "sha256" not in lock["qurator-gt4histocr-1.0"] and lock["qurator-gt4histocr-1.0"]["installed_sha256"]
    assert server.requests == []
    r = sandbox.run("plan", "--json")
    assert json.loads(r.out)["changes"] == 0
    assert sandbox.run("verify").code == 0
    assert sandbox.run("sync", "--locked").code == 0


# -- Docker recipe and portability ---------------------------------------------------------

def _docker_root(root: Path) -> dict[str, str]:
    """The ocrd/all image layout below ``root`` (XDG_DATA_HOME=/usr/local/share, ...)."""
    share = root / "usr" / "local" / "share"
    (share / "ocrd-resources").mkdir(parents=True)
    (root / "home").mkdir()
    (root / "tessdata").mkdir()
    return {"HOME": str(root / "home"), "XDG_DATA_HOME": str(share),
            "XDG_CONFIG_HOME": str(share / "ocrd-resources"), "MODELSYNC_SYSTEM_DIR": str(share / "ocrd-resources"),
            "XDG_STATE_HOME": str(root / "home" / ".local" / "state"), "TESSDATA_PREFIX": str(root / "tessdata")}


def _recipe_commands() -> list[list[str]]:
    """The `modelsync ...` command lines of examples/Dockerfile (the RUN line, then the offline variant)."""
    import shlex

    from conftest import REPO

    lines = (REPO / "examples" / "Dockerfile").read_text().splitlines()
    cmds = [shlex.split(line.split("modelsync", 1)[1]) for line in lines if "modelsync sync" in line]
    assert len(cmds) == 2, cmds
    return cmds


def test_docker_recipe_cold_then_offline_frozen_from_the_cache_alone(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("lock").code == 0
    shutil.rmtree(sandbox.cache)
    cache = sandbox.root / "buildkit-cache"  # RUN --mount=type=cache,target=/var/cache/modelsync
    recipe = [[str(cache) if a == "/var/cache/modelsync" else a for a in cmd] for cmd in _recipe_commands()]
    assert recipe[0][:2] == ["sync", "--locked"] and {"--offline", "--frozen"} <= set(recipe[1])
    trees, locks = [], []
    for i, args in enumerate(recipe):
        root = sandbox.root / f"image{i}"
        for k, v in _docker_root(root).items():
            sandbox.monkeypatch.setenv(k, v)
        if i == 1:
            server.stop()  # the second build has no network at all
        r = sandbox.run(*args)
        assert r.code == 0, r.err
        trees.append(tree_files(root / "usr"))
        trees[-1].update({f"tess/{k}": v for k, v in tree_files(root / "tessdata").items()})
        locks.append(sandbox.lock.read_bytes())
    assert trees[0] == trees[1] and len(trees[0]) == 3
    assert "local/share/ocrd-resources/ocrd-calamari-recognize/b/x.json" in trees[0]
    assert locks[0] == locks[1]


def test_the_same_lock_works_on_another_machine(sandbox, server):
    _manifest(sandbox, server)
    assert sandbox.run("sync").code == 0
    lock = sandbox.lock.read_bytes()
    machine_b = sandbox.root / "machine-b"
    for k, v in _docker_root(machine_b).items():
        sandbox.monkeypatch.setenv(k, v)
    sandbox.monkeypatch.setenv("XDG_CACHE_HOME", str(machine_b / "cache"))
    project_b = machine_b / "checkout"
    project_b.mkdir()
    shutil.copy(sandbox.manifest, project_b)
    shutil.copy(sandbox.lock, project_b)
    r = sandbox.run("sync", "--locked", "--manifest", str(project_b / "models.toml"))
    assert r.code == 0, r.err
    assert (project_b / "models.lock").read_bytes() == lock
    assert (machine_b / "tessdata" / "a.traineddata").read_bytes() == BLOB


# -- machine-readable output -------------------------------------------------------------

@pytest.mark.parametrize("args", [("plan", "--json"), ("sync", "--json"), ("status", "--json"),
                                  ("verify", "--json"), ("available", "ocrd-kraken-recognize", "--json"),
                                  ("list-installed", "--json"), ("cache", "info", "--json"),
                                  ("cache", "prune", "--dry-run", "--json"), ("import", "--json")])
def test_json_output_is_one_document_and_nothing_else(sandbox, server, args):
    _manifest(sandbox, server)
    if args[0] in ("verify", "status"):
        sandbox.run("sync")
    r = sandbox.run(*args)
    assert r.code == 0, r.err
    doc = json.loads(r.out)  # raises if anything else is on stdout
    assert isinstance(doc, dict) and doc["schema_version"] == 1


def test_ci_workflow_caches_by_lock_hash_and_syncs_locked():
    import yaml
    from conftest import REPO

    wf = yaml.safe_load((REPO / "examples" / "ci" / "models.yml").read_text())
    steps = wf["jobs"]["ocr"]["steps"]
    cache = next(s for s in steps if s.get("uses", "").startswith("actions/cache"))
    assert "hashFiles('models.lock')" in cache["with"]["key"]
    assert cache["with"]["path"] == "${{ env.MODELSYNC_CACHE_DIR }}"
    runs = [s["run"] for s in steps if "run" in s]
    assert "modelsync sync --locked" in runs


def test_a_large_trees_install_record_is_read_whole(tmp_path):
    # A tree's record lists every file: thousands of files make it larger than any one read.
    from ocrd_models.modelsync.digest import StatSig
    from ocrd_models.modelsync.plan.records import InstallRecord, RecordStore

    store = RecordStore(tmp_path / "state")
    sigs = {f"weights/part{i:05}.bin": StatSig(1000 + i, 10**18 + i, 10**6 + i) for i in range(3000)}
    rec = InstallRecord(str(tmp_path / "model"), "ocrd-x", "model", "d" * 64, True, sigs)
    store.put(rec)
    assert len(rec.to_json()) > 2 * 65536
    got = store.get(tmp_path / "model")
    assert got is not None and got.sigs == sigs and got.digest == "d" * 64


def test_a_large_lock_is_checked_once_per_content(tmp_path, monkeypatch):
    from ocrd_models.modelsync.spec import lockfile, parsecache
    from ocrd_models.modelsync.errors import LockfileError

    monkeypatch.setattr(parsecache, "PARSE_CACHE_DIR", tmp_path / "cache")
    entries = [lockfile.LockEntry("ocrd-x", f"m{i:04}.bin", f"https://example.org/m{i}", sha256=sha256(b"%d" % i),
                                  size=i) for i in range(400)]
    text = lockfile.dumps(lockfile.Lockfile("a" * 64).with_entries(entries, "a" * 64))
    assert len(text) > 64 * 1024
    first = lockfile.parse_lock(text, tmp_path / "models.lock")
    parsecache.flush()  # what a successful command does at its end

    def no_checks(*args):
        raise AssertionError("checked again although these bytes passed before")

    monkeypatch.setattr(lockfile, "_entry", no_checks)
    assert lockfile.parse_lock(text, tmp_path / "models.lock") == first
    monkeypatch.undo()
    monkeypatch.setattr(parsecache, "PARSE_CACHE_DIR", tmp_path / "cache")
    # Other bytes (a hand edit, a bad merge) are checked in full.
    bad = text.replace(sha256(b"7"), "not-a-digest", 1)
    with pytest.raises(LockfileError, match="must be 64 lowercase hexadecimal digits"):
        lockfile.parse_lock(bad, tmp_path / "models.lock")
