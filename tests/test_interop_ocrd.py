"""Interop with the real OCR-D core (``ocrd`` 3.x from PyPI), installed into its own venv.

The venv is created once (``<repo>/.venv-ocrd``, reused while it works; ``$MODELSYNC_OCRD_VENV``
points elsewhere). Every claim about OCR-D's locations and formats is checked against OCR-D's
own code here: its resolver, its resource manager, its package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import OCRD_TOOL_DIR, REPO, make_tar, make_zip, tree_files

OCRD_SPEC = "ocrd>=3,<4"


def _venv_dir() -> Path:
    return Path(os.environ.get("MODELSYNC_OCRD_VENV") or REPO / ".venv-ocrd")


@pytest.fixture(scope="session")
def ocrd_venv() -> Path:
    """A venv with OCR-D core; created on first use, reused afterwards."""
    venv = _venv_dir()
    ocrd = venv / "bin" / "ocrd"
    if not (ocrd.exists() and subprocess.run([str(ocrd), "--version"], capture_output=True).returncode == 0):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", OCRD_SPEC], capture_output=True, text=True)
        if proc.returncode != 0:
            msg = f"cannot install {OCRD_SPEC} from PyPI: {proc.stderr[-2000:]}"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
    return venv


def ocrd(venv: Path, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ocrd ARGS`` from the interop venv with the test's environment (XDG dirs of the sandbox)."""
    proc = subprocess.run([str(venv / "bin" / "ocrd"), *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ), timeout=300)
    if check:
        assert proc.returncode == 0, f"ocrd {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


def resolve(venv: Path, tool_json: Path, exe: str, name: str, cwd: Path) -> str:
    """OCR-D's own answer: ``ocrd ocrd-tool JSON tool EXE resolve-resource NAME`` (module dir = JSON's dir)."""
    out = ocrd(venv, "ocrd-tool", str(tool_json), "tool", exe, "resolve-resource", name, cwd=cwd).stdout.strip()
    return os.path.normpath(os.path.join(cwd, out.splitlines()[-1]))


def status_paths(sandbox, *args: str) -> dict[str, str]:
    r = sandbox.run("status", "--json", *args)
    assert r.code == 0, r.err
    return {row["name"]: row["path"] for row in json.loads(r.out)["resources"]}


# -- 1. OCR-D finds what we install ---------------------------------------------------------

def test_ocrd_resolves_exactly_what_status_reports(sandbox, server, ocrd_venv):
    tess_json = sandbox.tessdata / "ocrd-tool.json"  # a package dir holds its ocrd-tool.json: module dir = tessdata
    shutil.copy(OCRD_TOOL_DIR / "OCR-D__ocrd_tesserocr.json", tess_json)
    extra = sandbox.project / "extra-models"
    sandbox.monkeypatch.setenv("OCRD_KRAKEN_SEGMENT_PATH", f"/nonexistent:{extra}")
    url = lambda path, data: server.add(path, data)  # noqa: E731
    sandbox.write_manifest(
        "[processors]\n"
        f'ocrd-tesserocr-recognize = [{{ name = "frk.traineddata", url = "{url("/t", b"tess")}" }}]\n'
        f'ocrd-calamari-recognize = [{{ name = "cal", url = "{url("/c.tar.gz", make_tar({"ck/a.json": b"1"}))}",'
        ' type = "archive", path_in_archive = "ck" }]\n'
        f'ocrd-cis-ocropy-recognize = [{{ name = "fraktur-jze.pyrnn.gz", url = "{url("/o", b"pickle")}" }}]\n'
        "ocrd-kraken-recognize = [\n"
        f'  {{ name = "in-data.mlmodel", url = "{url("/k1", b"1")}", location = "data" }},\n'
        f'  {{ name = "in-cwd.mlmodel", url = "{url("/k2", b"2")}", location = "cwd" }},\n'
        "]\n"
        f'ocrd-kraken-segment = [{{ name = "in-path.mlmodel", url = "{url("/k3", b"3")}", location = "./extra-models" }}]\n'
    )
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    ours = status_paths(sandbox)
    cases = [
        ("OCR-D__ocrd_tesserocr.json", tess_json, "ocrd-tesserocr-recognize", "frk.traineddata"),
        ("OCR-D__ocrd_calamari.json", None, "ocrd-calamari-recognize", "cal"),
        ("cisocrgroup__ocrd_cis.json", None, "ocrd-cis-ocropy-recognize", "fraktur-jze.pyrnn.gz"),
        ("OCR-D__ocrd_kraken.json", None, "ocrd-kraken-recognize", "in-data.mlmodel"),
        ("OCR-D__ocrd_kraken.json", None, "ocrd-kraken-recognize", "in-cwd.mlmodel"),
        ("OCR-D__ocrd_kraken.json", None, "ocrd-kraken-segment", "in-path.mlmodel"),
    ]
    for shared_json, tool_json, exe, name in cases:
        theirs = resolve(ocrd_venv, tool_json or OCRD_TOOL_DIR / shared_json, exe, name, sandbox.project)
        assert theirs == ours[name], (exe, name)
    assert ours["frk.traineddata"] == str(sandbox.tessdata / "frk.traineddata")
    assert ours["in-path.mlmodel"] == str(extra / "in-path.mlmodel")


def test_ocrd_resolves_the_system_location(sandbox, server, ocrd_venv, tmp_path):
    system = Path("/usr/local/share/ocrd-resources")
    exe = f"ocrd-modelsync-interop-{uuid.uuid4().hex[:8]}"  # never collides with a real processor
    try:
        (system / exe).mkdir(parents=True)
    except OSError as err:
        pytest.skip(f"OCR-D's system location {system} is fixed in OCR-D and not writable here: {err}")
    try:
        sandbox.monkeypatch.delenv("MODELSYNC_SYSTEM_DIR")
        sandbox.write_manifest(f'[processors]\n{exe} = [{{ name = "s.bin", url = "{server.add("/s", b"s")}", '
                               'location = "system" }]\n')
        assert sandbox.run("sync").code == 0
        tool_json = tmp_path / "ocrd-tool.json"
        tool_json.write_text(json.dumps({"tools": {exe: {"executable": exe, "description": "interop test"}}}))
        theirs = resolve(ocrd_venv, tool_json, exe, "s.bin", sandbox.project)
        assert theirs == status_paths(sandbox)["s.bin"] == str(system / exe / "s.bin")
    finally:
        shutil.rmtree(system / exe, ignore_errors=True)


# -- 2./3. We see what OCR-D installed, in the same layout -------------------------------------

def _user_db(sandbox, entries: dict[str, list[dict]]) -> Path:
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir(parents=True, exist_ok=True)
    db.write_text(yaml.safe_dump(entries, sort_keys=False))
    return db


def _archive_entries(server) -> list[dict]:
    tar = make_tar({"pkg/models/a.bin": b"A", "pkg/models/sub/b.bin": b"B", "pkg/readme.txt": b"r"})
    return [
        {"url": server.add("/pkg.tar.gz", tar), "name": "with-path", "description": "archive, member",
         "size": len(tar), "type": "archive", "path_in_archive": "pkg/models"},
        {"url": server.add("/pkg2.tar.gz", tar), "name": "whole", "description": "archive, all",
         "size": len(tar), "type": "archive"},
        {"url": server.add("/z.zip", make_zip({"m/x.json": b"{}", "m/y.bin": b"y"})), "name": "zipped",
         "description": "zip archive", "size": 10, "type": "archive", "path_in_archive": "m"},
        {"url": server.add("/f.mlmodel", b"a plain file"), "name": "f.mlmodel", "description": "file", "size": 12},
    ]


def _resmgr_install(sandbox, server, venv: Path, exe: str) -> list[dict]:
    """Register files and archives in OCR-D's user database and let `ocrd resmgr download -a` install them."""
    entries = _archive_entries(server)
    _user_db(sandbox, {exe: entries})
    for e in entries:
        ocrd(venv, "resmgr", "download", "-a", exe, e["name"], cwd=sandbox.project)
    return entries


def test_we_see_what_ocrd_resmgr_installed(sandbox, server, ocrd_venv):
    exe = "ocrd-calamari-recognize"
    entries = _resmgr_install(sandbox, server, ocrd_venv, exe)
    for e in entries:
        assert (sandbox.data_dir(exe) / e["name"]).exists()
    server.requests.clear()
    sandbox.write_manifest(f"[processors]\n{exe} = {json.dumps([e['name'] for e in entries])}\n")
    r = sandbox.run("plan", "--json")
    assert r.code == 0, r.err
    plan = json.loads(r.out)
    assert plan["changes"] == 0 and {a["action"] for a in plan["actions"]} == {"keep"}
    sandbox.manifest.unlink()
    r = sandbox.run("import")
    assert r.code == 0, r.err
    lock = sandbox.lock.read_text()
    assert all(f'name = "{e["name"]}"' in lock for e in entries)
    assert sandbox.run("verify").code == 0
    assert sandbox.run("sync", "--locked").code == 0
    assert server.requests == []  # nothing downloaded again


def test_same_tree_as_ocrd_resmgr_for_archives(sandbox, server, ocrd_venv):
    exe = "ocrd-calamari-recognize"
    entries = _resmgr_install(sandbox, server, ocrd_venv, exe)
    theirs = {e["name"]: tree_files(sandbox.data_dir(exe) / e["name"]) if e.get("type") == "archive"
              else (sandbox.data_dir(exe) / e["name"]).read_bytes() for e in entries}
    # Our install goes to a second, empty data root (else it would rightly keep resmgr's copies).
    sandbox.monkeypatch.setenv("XDG_DATA_HOME", str(sandbox.root / "ours"))
    ours_root = sandbox.root / "ours" / "ocrd-resources" / exe
    sandbox.write_manifest(f"[processors]\n{exe} = {json.dumps([e['name'] for e in entries])}\n")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    ours = {e["name"]: tree_files(ours_root / e["name"]) if e.get("type") == "archive"
            else (ours_root / e["name"]).read_bytes() for e in entries}
    assert ours == theirs
    assert set(theirs["with-path"]) == {"a.bin", "sub/b.bin"}
    assert "pkg/readme.txt" in theirs["whole"]


# -- 4. We never harm OCR-D ----------------------------------------------------------------

def _resmgr_clean(venv: Path, cwd: Path) -> None:
    """`ocrd resmgr list-installed` and `list-available` (run side by side) exit 0 and log no ERROR."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda cmd: ocrd(venv, "resmgr", cmd, cwd=cwd, check=False),
                              ("list-installed", "list-available")))
    for proc in procs:
        assert proc.returncode == 0, proc.stderr
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if " ERROR " in line]
        assert errors == [], errors


def test_our_commands_never_harm_ocrd(sandbox, server, ocrd_venv):
    # Resources for ocrd-dummy, which is installed: OCR-D's own listing is then free of ERRORs.
    exe = "ocrd-dummy"
    # PATH holds OCR-D's `ocrd`, the processor `ocrd-dummy` and our console script: resmgr runs every
    # ocrd-* executable it finds there (the others of the venv would only cost time).
    bindir = sandbox.root / "bin"
    bindir.mkdir()
    for name in ("ocrd", "ocrd-dummy"):
        (bindir / name).symlink_to(ocrd_venv / "bin" / name)
    (bindir / "modelsync").symlink_to(Path(sys.executable).parent / "modelsync")
    sandbox.monkeypatch.setenv("PATH", os.pathsep.join([str(bindir), "/usr/bin", "/bin"]))
    db = _user_db(sandbox, {exe: [{"url": server.add("/d.bin", b"dummy model"), "name": "d.bin",
                                   "description": "a model of ocrd-dummy", "size": 11}]})
    _resmgr_clean(ocrd_venv, sandbox.project)  # the baseline is clean
    url = server.add("/own.bin", b"own")
    steps = [
        ("init",), ("add", exe, "d.bin"), ("add", exe, "own.bin", "--url", url), ("lock",), ("sync",),
        ("status",), ("verify",), ("list-installed",), ("available",), ("import",),
        ("remove", exe, "own.bin"), ("sync", "--prune"), ("cache", "prune"),
    ]
    for step in steps:
        before = db.read_bytes()
        r = sandbox.run(*step)
        assert r.code == 0, (step, r.err)
        assert db.read_bytes() == before, f"{step} changed OCR-D's resources.yml"
        _resmgr_clean(ocrd_venv, sandbox.project)
    # The user database still validates under OCR-D's own schema.
    check = ("import sys, yaml; from ocrd_validators import OcrdResourceListValidator as V; "
             "r = V.validate(yaml.safe_load(open(sys.argv[1]))); print(r.is_valid); sys.exit(0 if r.is_valid else 1)")
    proc = subprocess.run([str(ocrd_venv / "bin" / "python"), "-c", check, str(db)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- 5. One environment ----------------------------------------------------------------------

def _record(venv: Path, dist: str) -> list[str]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    info = next(site.glob(f"{dist}-*.dist-info"))
    return [line.split(",")[0] for line in (info / "RECORD").read_text().splitlines() if line]


def _py(venv: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": os.environ["HOME"]})


def test_one_environment_with_ocrd(ocrd_venv, tmp_path):
    pip = str(ocrd_venv / "bin" / "pip")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True)
    wheel = next(dist.glob("*.whl"))
    ocrd_files_before = {p: _hash(ocrd_venv, p) for p in _record(ocrd_venv, "ocrd") if not p.endswith(".pyc")}
    try:
        subprocess.run([pip, "install", "-q", str(wheel)], check=True, capture_output=True)
        ours = set(_record(ocrd_venv, "ocrd_modelsync"))
        theirs = set(_record(ocrd_venv, "ocrd"))
        shared = {p for p in ours & theirs if not p.startswith("../")}
        assert shared == set(), shared
        assert all(p.startswith(("ocrd_models/modelsync/", "ocrd_modelsync-", "../")) for p in ours), ours
        assert {p: _hash(ocrd_venv, p) for p in ocrd_files_before} == ocrd_files_before  # nothing overwritten
        assert _py(ocrd_venv, "from ocrd_models import OcrdMets; import ocrd_models.modelsync.cli").returncode == 0
        cli = subprocess.run([str(ocrd_venv / "bin" / "modelsync"), "available", "ocrd-cis-ocropy-recognize"],
                             capture_output=True, text=True)
        assert cli.returncode == 0 and "fraktur-jze.pyrnn.gz" in cli.stdout, cli.stderr
        # Uninstalling ours leaves OCR-D working.
        subprocess.run([pip, "uninstall", "-y", "-q", "ocrd-modelsync"], check=True, capture_output=True)
        assert _py(ocrd_venv, "from ocrd_models import OcrdMets").returncode == 0
        assert subprocess.run([str(ocrd_venv / "bin" / "ocrd"), "--version"], capture_output=True).returncode == 0
        # Uninstalling OCR-D leaves ours working.
        subprocess.run([pip, "install", "-q", str(wheel)], check=True, capture_output=True)
        subprocess.run([pip, "uninstall", "-y", "-q", "ocrd"], check=True, capture_output=True)
        proc = _py(ocrd_venv, "import ocrd_models.modelsync.cli, ocrd_models; print(getattr(ocrd_models, '__file__', None))")
        assert proc.returncode == 0 and proc.stdout.strip() == "None", proc.stderr  # a namespace package now
        cli = subprocess.run([str(ocrd_venv / "bin" / "modelsync"), "available", "ocrd-cis-ocropy-recognize"],
                             capture_output=True, text=True)
        assert cli.returncode == 0, cli.stderr
    finally:
        # Leave the shared venv as we found it: OCR-D in, ours out.
        subprocess.run([pip, "uninstall", "-y", "-q", "ocrd-modelsync"], capture_output=True)
        subprocess.run([pip, "install", "-q", OCRD_SPEC], capture_output=True)


def _hash(venv: Path, rel: str) -> str | None:
    import hashlib

    site = next((venv / "lib").glob("python3*/site-packages"))
    try:
        return hashlib.sha256((site / rel).read_bytes()).hexdigest()
    except OSError:
        return None
