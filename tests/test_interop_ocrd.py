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
from conftest import OCRD_TOOL_DIR, REPO, Model, make_tar, make_zip, tree_files

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
    sandbox.declare(processors={
        "ocrd-tesserocr-recognize": [Model("frk.traineddata", url("/t", b"tess"))],
        "ocrd-calamari-recognize": [Model("cal", url("/c.tar.gz", make_tar({"ck/a.json": b"1"})), type="archive",
                                          path_in_archive="ck")],
        "ocrd-cis-ocropy-recognize": [Model("fraktur-jze.pyrnn.gz", url("/o", b"pickle"))],
        "ocrd-kraken-recognize": [Model("in-data.mlmodel", url("/k1", b"1"), location="data"),
                                  Model("in-cwd.mlmodel", url("/k2", b"2"), location="cwd")],
        "ocrd-kraken-segment": [Model("in-path.mlmodel", url("/k3", b"3"), location="./extra-models")],
    })
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
        sandbox.declare(Model("s.bin", server.add("/s", b"s"), location="system"), processor=exe)
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
    sandbox.declare(*(e["name"] for e in entries), processor=exe)
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
    sandbox.declare(*(e["name"] for e in entries), processor=exe)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    ours = {e["name"]: tree_files(ours_root / e["name"]) if e.get("type") == "archive"
            else (ours_root / e["name"]).read_bytes() for e in entries}
    assert ours == theirs
    assert set(theirs["with-path"]) == {"a.bin", "sub/b.bin"}
    assert "pkg/readme.txt" in theirs["whole"]


# -- 4. We never harm OCR-D ----------------------------------------------------------------

def _resmgr_errors(venv: Path, cwd: Path, ocrd_bug_expected: bool = False) -> set[str]:
    """Run `ocrd resmgr list-installed`, then `list-available`: both exit 0 (with ``ocrd_bug_expected``,
    list-installed dies of OCR-D's own bug instead, and of nothing else); return the ERROR lines they log,
    without their time stamps. One after the other: each rewrites OCR-D's resources.yml in place (open
    for writing, then dump), so two at once can leave it truncated, and an entry the test declared by
    name (d.bin) was then gone for our next command (a flaky 'unknown model')."""
    procs = [ocrd(venv, "resmgr", cmd, cwd=cwd, check=False) for cmd in ("list-installed", "list-available")]
    if ocrd_bug_expected:
        assert _ocrds_list_installed_bug(procs[0]), ("OCR-D's list-installed no longer crashes here: update "
                                                     "README 'Proven against OCR-D core'", procs[0].stderr[-2000:])
    else:
        assert procs[0].returncode == 0, procs[0].stderr
    assert procs[1].returncode == 0, procs[1].stderr
    return {line.split(" ", 1)[1] for proc in procs for line in (proc.stdout + proc.stderr).splitlines()
            if " ERROR " in line}


def _resmgr_clean(venv: Path, cwd: Path) -> None:
    """`ocrd resmgr list-installed` and `list-available` exit 0 and log no ERROR."""
    assert _resmgr_errors(venv, cwd) == set()


@pytest.mark.parametrize("installed", [True, False], ids=["processor-installed", "processor-not-installed"])
def test_our_commands_never_harm_ocrd(sandbox, server, ocrd_venv, installed):
    # ocrd-dummy is installed (OCR-D's own listing is then free of ERRORs); ocrd-kraken-recognize is not,
    # the common case: OCR-D's list-installed then dies of its own bug exactly while a file in the data
    # location is one its user database does not name (here: own.bin from `add --url`, until pruned),
    # as it does for the same file from `ocrd resmgr download` without its record (see above).
    exe = "ocrd-dummy" if installed else "ocrd-kraken-recognize"
    # PATH holds OCR-D's `ocrd`, the processor `ocrd-dummy` and our console script: resmgr runs every
    # ocrd-* executable it finds there (the others of the venv would only cost time).
    bindir = sandbox.root / "bin"
    bindir.mkdir()
    for name in ("ocrd", "ocrd-dummy"):
        (bindir / name).symlink_to(ocrd_venv / "bin" / name)
    (bindir / "modelsync").symlink_to(Path(sys.executable).parent / "modelsync")
    sandbox.monkeypatch.setenv("PATH", os.pathsep.join([str(bindir), "/usr/bin", "/bin"]))
    db = _user_db(sandbox, {exe: [{"url": server.add("/d.bin", b"dummy model"), "name": "d.bin",
                                   "description": f"a model of {exe}", "size": 11}]})

    def unknown_to_ocrd() -> set[str]:
        """Files in the data location of `exe` that OCR-D's user database does not name."""
        known = {e["name"] for e in (yaml.safe_load(db.read_text()) or {}).get(exe) or []}
        folder = sandbox.data_dir(exe)
        return {p.name for p in folder.iterdir()} - known if folder.is_dir() else set()

    # The baseline: clean for an installed processor; for one that is not, OCR-D logs an ERROR for each
    # query of it (--dump-json, --dump-module-dir), since its user database names it.
    baseline = _resmgr_errors(ocrd_venv, sandbox.project)
    assert (baseline == set()) == installed, baseline
    url = server.add("/own.bin", b"own")
    steps = [
        ("init",), ("add", exe, "d.bin"), ("add", exe, "own.bin", "--url", url), ("lock",), ("sync",),
        ("status",), ("verify",), ("list-installed",), ("available",), ("import",),
        ("remove", exe, "own.bin"), ("sync", "--prune"), ("cache", "prune"),
    ]
    bug_met = []
    for step in steps:
        before = db.read_bytes()
        r = sandbox.run(*step)
        assert r.code == 0, (step, r.err)
        assert db.read_bytes() == before, f"{step} changed OCR-D's resources.yml"
        expected = not installed and bool(unknown_to_ocrd())
        assert _resmgr_errors(ocrd_venv, sandbox.project, ocrd_bug_expected=expected) <= baseline, step
        bug_met.append(expected)
    # Not installed: the bug shows from the sync that installs own.bin to the prune that removes it.
    assert bug_met == ([False] * len(steps) if installed else [False] * 4 + [True] * 7 + [False] * 2)
    # The user database still validates under OCR-D's own schema.
    check = ("import sys, yaml; from ocrd_validators import OcrdResourceListValidator as V; "
             "r = V.validate(yaml.safe_load(open(sys.argv[1]))); print(r.is_valid); sys.exit(0 if r.is_valid else 1)")
    proc = subprocess.run([str(ocrd_venv / "bin" / "python"), "-c", check, str(db)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _list_installed(venv: Path, cwd: Path) -> subprocess.CompletedProcess:
    return ocrd(venv, "resmgr", "list-installed", cwd=cwd, check=False)


def _ocrds_list_installed_bug(proc: subprocess.CompletedProcess) -> bool:
    """OCR-D core's own crash (3.13, ocrd/resource_manager.py list_installed): for a processor that is
    not installed get_moduledir() is None, and any file in its data/system dir whose name OCR-D's user
    database does not list reaches `str(...).startswith(moduledir)`."""
    return (proc.returncode != 0 and "TypeError: startswith first arg must be str" in proc.stderr
            and "list_installed" in proc.stderr)


def _fresh_ocrd_dirs(sandbox, tag: str) -> tuple[Path, Path]:
    """Point XDG_DATA_HOME and XDG_CONFIG_HOME at new, empty directories; return them."""
    data, config = sandbox.root / f"data-{tag}", sandbox.root / f"config-{tag}"
    data.mkdir()
    config.mkdir()
    sandbox.monkeypatch.setenv("XDG_DATA_HOME", str(data))
    sandbox.monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return data, config


def test_processor_not_installed_same_files_as_resmgr_and_ocrds_own_crash(sandbox, server, ocrd_venv):
    # The common case: models for a processor that is not installed (yet), from a URL of our own.
    exe = "ocrd-kraken-recognize"
    assert shutil.which(exe) is None
    tar = make_tar({"pkg/models/a.bin": b"A", "pkg/models/sub/b.bin": b"B", "pkg/readme.txt": b"r"})
    file_url, tar_url = server.add("/m.mlmodel", b"a kraken model"), server.add("/pkg.tar.gz", tar)
    sandbox.declare(Model("m.mlmodel", file_url), Model("arch", tar_url, type="archive", path_in_archive="pkg/models"),
                    processor=exe)
    ours_data, ours_config = _fresh_ocrd_dirs(sandbox, "ours")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    ours = tree_files(ours_data / "ocrd-resources" / exe)
    assert set(ours) == {"m.mlmodel", "arch/a.bin", "arch/sub/b.bin"}
    crash = _list_installed(ocrd_venv, sandbox.project)
    assert _ocrds_list_installed_bug(crash), ("OCR-D's list-installed no longer crashes here: update README "
                                              "'Proven against OCR-D core'", crash.returncode, crash.stderr[-2000:])

    # `ocrd resmgr download -a` puts exactly the same files there ...
    theirs_data, theirs_config = _fresh_ocrd_dirs(sandbox, "resmgr")
    ocrd(ocrd_venv, "resmgr", "download", "-a", "-n", file_url, exe, "m.mlmodel", cwd=sandbox.project)
    ocrd(ocrd_venv, "resmgr", "download", "-a", "-n", tar_url, "-t", "archive", "-P", "pkg/models", exe, "arch",
         cwd=sandbox.project)
    assert tree_files(theirs_data / "ocrd-resources" / exe) == ours
    # ... and records them in its user database, which is all that spares its list-installed:
    recorded = yaml.safe_load((theirs_config / "ocrd" / "resources.yml").read_text())
    assert sorted(e["name"] for e in recorded[exe]) == ["arch", "m.mlmodel"]
    proc = _list_installed(ocrd_venv, sandbox.project)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Our files with resmgr's records: OCR-D lists them, no crash.
    sandbox.monkeypatch.setenv("XDG_DATA_HOME", str(ours_data))
    proc = _list_installed(ocrd_venv, sandbox.project)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "- m.mlmodel @" in proc.stdout and "- arch @" in proc.stdout, proc.stdout
    # resmgr's files without them (a database edited, reset or copied from elsewhere): the same crash.
    sandbox.monkeypatch.setenv("XDG_DATA_HOME", str(theirs_data))
    sandbox.monkeypatch.setenv("XDG_CONFIG_HOME", str(ours_config))
    assert _ocrds_list_installed_bug(_list_installed(ocrd_venv, sandbox.project))


def _fake_processor(bindir: Path, exe: str, tool: dict, module_dir: Path) -> None:
    """An executable answering --dump-json and --dump-module-dir as an OCR-D processor does."""
    bindir.mkdir(exist_ok=True)
    script = bindir / exe
    script.write_text("#!/bin/sh\ncase \"$1\" in\n"
                      f"  --dump-json) cat <<'EOF'\n{json.dumps(tool)}\nEOF\n  ;;\n"
                      f"  --dump-module-dir) echo '{module_dir}' ;;\n"
                      "  *) echo 'a fake processor: --dump-json or --dump-module-dir' >&2; exit 1 ;;\nesac\n")
    script.chmod(0o755)


def test_installed_processor_same_files_as_resmgr_and_ocrd_attributes_them(sandbox, server, ocrd_venv):
    exe = f"ocrd-modelsync-fake-{uuid.uuid4().hex[:8]}"
    tar = make_tar({"pkg/models/a.bin": b"A", "pkg/models/sub/b.bin": b"B", "pkg/readme.txt": b"r"})
    resources = [
        {"name": "f.bin", "url": server.add("/f.bin", b"a file model"), "description": "a file", "size": 12},
        {"name": "arch", "url": server.add("/arch.tar.gz", tar), "description": "an archive", "size": len(tar),
         "type": "archive", "path_in_archive": "pkg/models"},
    ]
    module = sandbox.root / "module"
    module.mkdir()
    bindir = sandbox.root / "bin"
    _fake_processor(bindir, exe, {"executable": exe, "description": "fake", "resources": resources,
                                  "resource_locations": ["data", "cwd", "system", "module"]}, module)
    sandbox.monkeypatch.setenv("PATH", os.pathsep.join([str(bindir), os.environ["PATH"]]))
    # resmgr: the processor's own list, no -a needed
    theirs_data, _ = _fresh_ocrd_dirs(sandbox, "resmgr")
    ocrd(ocrd_venv, "resmgr", "download", exe, "*", cwd=sandbox.project)
    theirs = tree_files(theirs_data / "ocrd-resources" / exe)
    assert set(theirs) == {"f.bin", "arch/a.bin", "arch/sub/b.bin"}
    # ours: the names resolved from the processor's --dump-json
    ours_data, ours_config = _fresh_ocrd_dirs(sandbox, "ours")
    sandbox.declare("f.bin", "arch", processor=exe)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert tree_files(ours_data / "ocrd-resources" / exe) == theirs
    # OCR-D attributes our files to the processor's own entries (its urls, not "???" stubs).
    proc = _list_installed(ocrd_venv, sandbox.project)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in (proc.stdout + proc.stderr).splitlines() if " ERROR " in line] == []
    for res in resources:
        assert f"- {res['name']} @  ({res['url']})" in proc.stdout, proc.stdout
    db = yaml.safe_load((ours_config / "ocrd" / "resources.yml").read_text()) or {}
    assert all(e.get("url") != "???" for e in db.get(exe, [])), db


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
