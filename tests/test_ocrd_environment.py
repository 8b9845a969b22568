"""OCR-D's environment read as OCR-D core reads it: ``$XDG_DATA_HOME``/``$XDG_CONFIG_HOME`` (every kind of
value) and its user database ``resources.yml`` (every kind of content), each checked against the real
``ocrd`` package of the interop venv (tests/test_interop_ocrd.py) and through our CLI.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Model
from test_interop_ocrd import ocrd_venv, resolve  # noqa: F401  (ocrd_venv is a fixture)

EXE = "ocrd-envtest"  # neither installed nor in the bundled index: only the user database knows it


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root`` with the bytes of files (None for directories)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


# -- item 6: XDG_DATA_HOME and XDG_CONFIG_HOME ------------------------------------------------------

_OCRD_DIRS = r"""
import json, os
from ocrd_utils import config
from ocrd.resource_manager import OcrdResourceManager
m = OcrdResourceManager(skip_init=True)
here = os.getcwd()
print(json.dumps({
    "data": os.path.normpath(os.path.join(here, m.location_to_resource_dir("data"))),
    "config_data": os.path.normpath(os.path.join(here, str(config.XDG_DATA_HOME), "ocrd-resources")),
    "user_list": os.path.normpath(os.path.join(here, str(m.user_list))),
}))
"""

# (XDG_DATA_HOME, XDG_CONFIG_HOME, HOME); None = unset, "=home" = the sandbox's home (absolute)
_CASES = {
    "unset": (None, None, "=home"),
    "absolute": ("=data", "=config", "=home"),
    "relative": ("rel-data", "rel-config", "=home"),
    "empty": ("", "", "=home"),
    "tilde": ("~/d", "~/c", "=home"),
    "bare-tilde": ("~", "~", "=home"),
    "relative-home": (None, None, "relhome"),
    "empty-home": (None, None, ""),
}


def _set_env(sandbox, data, config, home) -> None:
    given = {"=home": str(sandbox.home), "=data": str(sandbox.data), "=config": str(sandbox.config)}
    for var, value in (("XDG_DATA_HOME", data), ("XDG_CONFIG_HOME", config), ("HOME", home)):
        if value is None:
            sandbox.monkeypatch.delenv(var, raising=False)
        else:
            sandbox.monkeypatch.setenv(var, given.get(value, value))


def _ocrd_dirs(venv: Path, cwd: Path) -> dict[str, str]:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", _OCRD_DIRS], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(_CASES))
def test_data_dir_and_user_database_are_ocrds_for_every_value(sandbox, server, ocrd_venv, case):  # noqa: F811
    data, config, home = _CASES[case]
    (sandbox.project / "relhome").mkdir()  # OCR-D refuses a $HOME that is not a directory
    _set_env(sandbox, data, config, home)
    theirs = _ocrd_dirs(ocrd_venv, sandbox.project)
    assert theirs["data"] == theirs["config_data"]  # OCR-D's two readings agree with each other
    ocrd_data, user_list = Path(theirs["data"]), Path(theirs["user_list"])
    for must_be_new in (ocrd_data, user_list.parent):
        # Every case points somewhere of its own below the sandbox: the test writes only there.
        assert str(must_be_new).startswith(str(sandbox.root)), must_be_new

    # The user database there is the one we read (an entry only it knows) ...
    user_list.parent.mkdir(parents=True, exist_ok=True)
    user_list.write_text(json.dumps({EXE: [{"name": "from-db.bin", "url": server.add("/db", b"db"),
                                            "description": "only in OCR-D's user database", "size": 2}]}))
    listed = sandbox.run("available", EXE, "--json")
    assert listed.code == 0, listed.err
    assert [(e["name"], e["source"]) for e in json.loads(listed.out)["resources"]] == \
        [("from-db.bin", "user-database")]

    # ... and a model we put in `data` is where OCR-D's own resolver finds it.
    sandbox.declare(Model("m.bin", server.add("/m", b"m"), location="data"), processor=EXE)
    synced = sandbox.run("sync")
    assert synced.code == 0, synced.err
    status = sandbox.run("status", "--json")
    ours = {row["name"]: row["path"] for row in json.loads(status.out)["resources"]}["m.bin"]
    assert ours == str(ocrd_data / EXE / "m.bin")
    tool_json = sandbox.root / "ocrd-tool.json"
    tool_json.write_text(json.dumps({"tools": {EXE: {"executable": EXE, "description": "env test"}}}))
    assert resolve(ocrd_venv, tool_json, EXE, "m.bin", sandbox.project) == ours

    # A value OCR-D takes against the current directory is named in a warning (once); an absolute one is not.
    told = listed.err + synced.err + status.err
    relative = [(var, value) for var, value in (("XDG_DATA_HOME", data), ("XDG_CONFIG_HOME", config), ("HOME", home))
                if value is not None and not value.startswith("=")]
    for var, value in relative:
        assert f"${var}={value!r}" in told, (var, told)
    if not relative:
        assert "relative path" not in told and "is empty" not in told, told

    # The library answers the same (asked last: a warning is told once per process).
    from ocrd_models.modelsync.config import Environment

    env = Environment.from_os()
    assert (env.ocrd_data_dir, env.ocrd_user_database) == (ocrd_data, user_list)


def test_our_own_xdg_dirs_still_follow_the_xdg_spec(sandbox, server):
    # Our cache and install records (XDG_CACHE_HOME, XDG_STATE_HOME) are ours alone: a relative value
    # is invalid per the XDG spec and ignored, never a directory below wherever the command runs.
    sandbox.monkeypatch.setenv("XDG_CACHE_HOME", "rel-cache")
    sandbox.monkeypatch.setenv("XDG_STATE_HOME", "")
    sandbox.declare(Model("m.bin", server.add("/m", b"m")), processor=EXE)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert not (sandbox.project / "rel-cache").exists()
    assert (sandbox.home / ".cache" / "ocrd-modelsync").is_dir()
    assert (sandbox.home / ".local" / "state" / "ocrd-modelsync").is_dir()
    assert "XDG_CACHE_HOME" not in r.err and "XDG_STATE_HOME" not in r.err


# -- item 7: OCR-D's user database, read as `ocrd resmgr` reads it ---------------------------------

_OK = '{url: "http://127.0.0.1:9/ok", description: "fine", name: ok.bin, size: 1}'


def _db(*entries: str, exe: str = EXE) -> bytes:
    """A resources.yml with the entries (flow mappings or other YAML) of one processor, in block style."""
    return (f"{exe}:\n" + "".join(f"- {e}\n" for e in entries)).encode()


# name -> (bytes of resources.yml, the names we load for EXE). Whether OCR-D accepts each file is asked
# of OCR-D itself; every file OCR-D refuses must give us a warning, every file it accepts none.
_DB_CASES: dict[str, tuple[bytes, set[str]]] = {
    "valid": (_db(_OK), {"ok.bin"}),
    "all-fields": (_db('{url: "http://h/a.zip", description: d, name: a, size: 2.5, type: archive, '
                       'path_in_archive: m, parameter_usage: without-extension, version_range: ">= 1"}'), {"a"}),
    "size-infinite": (_db('{url: "http://h/a", description: d, name: a, size: .inf}'), {"a"}),
    "timestamp-kept-as-string": (_db('{url: "http://h/a", description: 2021-01-01, name: a, size: 1}'), {"a"}),
    "bom": (b"\xef\xbb\xbf" + _db(_OK), {"ok.bin"}),
    "empty-file": (b"", set()),
    "empty-list-on-top": (b"[]\n", set()),
    "comment-only": (b"# OCR-D private resource list\n", set()),
    # one entry OCR-D's schema rejects, next to a valid one: the valid one is used
    "unknown-key-sha256": (_db(_OK, '{url: "http://h/x", description: d, name: x, size: 1, sha256: abc}'),
                           {"ok.bin"}),
    "no-size": (_db(_OK, '{url: "http://h/x", description: d, name: x}'), {"ok.bin"}),
    "no-url": (_db(_OK, '{description: d, name: x, size: 1}'), {"ok.bin"}),
    "no-name": (_db(_OK, '{url: "http://h/x", description: d, size: 1}'), {"ok.bin"}),
    "no-description": (_db(_OK, '{url: "http://h/x", name: x, size: 1}'), {"ok.bin"}),
    "size-string": (_db(_OK, '{url: "http://h/x", description: d, name: x, size: "12"}'), {"ok.bin"}),
    "size-boolean": (_db(_OK, '{url: "http://h/x", description: d, name: x, size: true}'), {"ok.bin"}),
    "name-number": (_db(_OK, '{url: "http://h/x", description: d, name: 123, size: 1}'), {"ok.bin"}),
    "type-tarball": (_db(_OK, '{url: "http://h/x", description: d, name: x, size: 1, type: tarball}'), {"ok.bin"}),
    "parameter-usage-other": (_db(_OK, '{url: "http://h/x", description: d, name: x, size: 1, '
                                       'parameter_usage: stem}'), {"ok.bin"}),
    "entry-a-string": (_db(_OK, "just a string"), {"ok.bin"}),
    "entry-empty": (_db(_OK, ""), {"ok.bin"}),
    "entry-a-list": (_db(_OK, "[1, 2]"), {"ok.bin"}),
    "key-not-ocrd": (_db(_OK) + _db(_OK, exe="foo"), {"ok.bin"}),
    "key-a-number": (_db(_OK) + b"1: []\n", {"ok.bin"}),
    "processor-empty": (_db(_OK) + b"ocrd-other:\n", {"ok.bin"}),
    "processor-a-mapping": (_db(_OK) + b"ocrd-other: {a: 1}\n", {"ok.bin"}),
    # the whole file
    "top-level-list": (b"- a\n- b\n", set()),
    "top-level-string": (b"hello\n", set()),
    "not-yaml": (b"ocrd-envtest: [ {name: a\n", set()),
    "not-utf8": (_db(_OK) + b"# caf\xe9\n", set()),
    "control-character": (_db(_OK) + b"# \x01\n", set()),
    "two-documents": (_db(_OK) + b"---\n" + _db(_OK), set()),
    "undefined-alias": (b"ocrd-envtest: *nothing\n", set()),
    "python-tag": (b"ocrd-envtest: !!python/object/apply:os.system ['touch /tmp/pwned-by-yaml']\n", set()),
    "deep-nesting": (b"ocrd-envtest: " + b"[" * 3000 + b"]" * 3000 + b"\n", set()),
    "alias-to-itself": (b"ocrd-envtest: &a [*a]\n", set()),
    "integer-too-long": (_db('{url: "http://h/a", description: d, name: a, size: 1' + "0" * 5000 + "}"), set()),
}
# Accepted by OCR-D, and still a note from us (the entry OCR-D would use is the one we use).
_DB_NOTED = {"duplicate-name": (_db(_OK, '{url: "http://127.0.0.1:9/second", description: d, name: ok.bin, '
                                         'size: 1}'), {"ok.bin"})}
# Accepted by OCR-D and deliberately not used by us: its stub for a file it cannot attribute.
_DB_STUB = {"stub-url": (_db(_OK, '{url: "???", description: "Found at data", name: s.bin, size: 3, '
                                  'version_range: "???"}'), {"ok.bin"})}

_OCRD_LOAD = r"""
import json, sys
from pathlib import Path
from ocrd.resource_manager import OcrdResourceManager  # also applies OCR-D's timestamp patch to PyYAML
out = {}
for path in sys.argv[1:]:
    m = OcrdResourceManager(skip_init=True, xdg_config_home=str(Path(path).parent))
    try:
        db = m.load_resource_list(Path(path))
        out[path] = {"ok": {exe: [r.get("name") for r in entries] for exe, entries in db.items()}}
    except BaseException as err:  # what `ocrd resmgr` would die of
        out[path] = {"error": type(err).__name__}
print(json.dumps(out))
"""


def _ocrd_loads(venv: Path, paths: list[Path]) -> dict[str, dict]:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", _OCRD_LOAD, *map(str, paths)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _write_db(sandbox, tag: str, data: bytes) -> Path:
    """resources.yml below a config dir of its own (warnings name it; one file per case)."""
    config = sandbox.root / f"config-{tag}"
    (config / "ocrd").mkdir(parents=True)
    (config / "ocrd" / "resources.yml").write_bytes(data)
    sandbox.monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return config / "ocrd" / "resources.yml"


def _ours(sandbox) -> tuple[set[str], list[str], int]:
    """What `modelsync available` takes from the user database for EXE, its warnings, its exit code."""
    r = sandbox.run("available", "--json")
    names = set()
    if r.code == 0:
        names = {e["name"] for e in json.loads(r.out)["resources"]
                 if e["processor"] == EXE and e["source"] == "user-database"}
    return names, [line for line in r.err.splitlines() if line.startswith("warning:")], r.code


def test_user_database_is_read_as_ocrd_reads_it(sandbox, ocrd_venv):  # noqa: F811
    cases = {**_DB_CASES, **_DB_NOTED, **_DB_STUB}
    files = {}
    for tag, (data, _) in cases.items():
        files[tag] = _write_db(sandbox, tag, data)
    theirs = _ocrd_loads(ocrd_venv, list(files.values()))
    assert not Path("/tmp/pwned-by-yaml").exists()
    outcomes = {}
    for tag, (data, expected) in cases.items():
        sandbox.monkeypatch.setenv("XDG_CONFIG_HOME", str(files[tag].parent.parent))
        before = files[tag].read_bytes()
        names, warnings, code = _ours(sandbox)
        outcomes[tag] = (code, names, warnings)
        assert code == 0, (tag, warnings)
        assert files[tag].read_bytes() == before  # only ever read
        assert names == expected, (tag, names)
        verdict = theirs[str(files[tag])]
        if "error" in verdict or tag in _DB_NOTED:
            # OCR-D refuses the file (`ocrd resmgr` dies): each problem is a warning naming the file.
            assert warnings, (tag, verdict)
            assert all(str(files[tag]) in w for w in warnings), (tag, warnings)
        else:
            assert warnings == [], (tag, warnings)
            ocrd_names = set(verdict["ok"].get(EXE, []))
            assert names == ocrd_names - ({"s.bin"} if tag in _DB_STUB else set()), (tag, verdict)
    # The file-level refusals OCR-D dies of, checked above against its verdict, are really refusals:
    for tag in ("unknown-key-sha256", "no-size", "top-level-list", "not-yaml", "not-utf8", "key-not-ocrd"):
        assert "error" in theirs[str(files[tag])], tag
    # The skipped entry is named: its processor, its position and its name.
    warned = outcomes["unknown-key-sha256"][2]
    assert any("'ocrd-envtest' entry 2 ('x')" in w and "unknown key 'sha256'" in w for w in warned), warned
    assert any("entry 2 ('x')" in w and "no 'size'" in w for w in outcomes["no-size"][2])
    assert any("not UTF-8" in w and "line 3" in w for w in outcomes["not-utf8"][2])
    assert any("not valid YAML" in w for w in outcomes["not-yaml"][2])
    assert any("top level is a list" in w for w in outcomes["top-level-list"][2])


def test_a_directory_or_fifo_at_the_user_database_path_is_ignored_with_a_warning(sandbox, ocrd_venv):  # noqa: F811
    directory = sandbox.config / "ocrd" / "resources.yml"
    directory.mkdir(parents=True)
    assert _ocrd_loads(ocrd_venv, [directory])[str(directory)] == {"ok": {}}  # OCR-D skips it, silently
    names, warnings, code = _ours(sandbox)
    assert (code, names) == (0, set())
    assert len(warnings) == 1 and str(directory) in warnings[0] and "a directory" in warnings[0]
    directory.rmdir()
    os.mkfifo(directory)  # opening a FIFO for reading would wait for a writer forever
    proc = _cli_subprocess(["available", "--json"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert str(directory) in proc.stderr and "not a regular file" in proc.stderr


def test_every_command_survives_a_non_utf8_user_database(sandbox, server):
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"ocrd-envtest:\n- {url: 'http://h/a', description: 'caf\xe9', name: a, size: 1}\n")
    sandbox.declare(Model("m.bin", server.add("/m", b"m")), processor=EXE)
    for step in (("plan",), ("sync",), ("status",), ("verify",), ("available",), ("list-installed",)):
        r = sandbox.run(*step)
        assert r.code == 0, (step, r.err)
    assert db.read_bytes().endswith(b"size: 1}\n")


def test_each_problem_is_told_once_per_command(sandbox, server):
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir(parents=True)
    db.write_text(f"{EXE}:\n- {{url: 'http://h/a', description: d, name: a.bin, size: 1, sha256: abc}}\n")
    data = sandbox.data_dir(EXE)
    data.mkdir(parents=True)
    (data / "m.bin").write_bytes(b"m")
    # `import` reads the registry twice (to scan the locations, then to lock): the problem is told once.
    sandbox.declare(Model("m.bin", server.add("/m", b"m")), processor=EXE)
    r = sandbox.run("import")
    assert r.code == 0, r.err
    lines = [line for line in r.err.splitlines() if "sha256" in line]
    assert len(lines) == 1 and str(db) in lines[0] and "'a.bin'" in lines[0], r.err


def test_too_many_bad_entries_are_counted_not_listed(sandbox):
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir(parents=True)
    db.write_text(f"{EXE}:\n" + "".join(f"- {{name: n{i}, url: u}}\n" for i in range(500)))
    names, warnings, code = _ours(sandbox)
    assert (code, names) == (0, set())
    assert len(warnings) == 11 and "500 invalid entries skipped (490 not listed)" in warnings[-1], warnings


def _cli_subprocess(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """The CLI in a child with 2 GiB of address space: a hostile file that makes it hang or grow fails
    the test (timeout, MemoryError) instead of taking the machine down."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run([sys.executable, "-m", "ocrd_models.modelsync", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ), preexec_fn=limit)


def _laughs(levels: int) -> bytes:
    """The billion laughs in one entry (no url: a malformed entry): 9 aliases to the level below,
    ``levels`` deep, 9**levels strings from ~700 bytes."""
    lines = [f"{EXE}:", "- name: laughs", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


def _merges(levels: int) -> bytes:
    """Merge keys doubling at each level (exponential in PyYAML < 6.0.2's flatten_mapping)."""
    lines = ["m0: &m0 {url: u, description: d, name: n, size: 1}"]
    lines += [f"m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}], k{i}: v}}" for i in range(1, levels)]
    lines.append(f"{EXE}: [*m{levels - 1}]")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("payload", [_laughs(9), _merges(24)], ids=["billion-laughs", "merge-keys"])
def test_an_exploding_user_database_is_refused_in_time(sandbox, server, payload):
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir(parents=True)
    db.write_bytes(payload)
    sandbox.declare(Model("m.bin", server.add("/m", b"m")), processor=EXE)
    outside = {d: _snapshot(d) for d in (sandbox.config, sandbox.system, sandbox.home)}
    for args in (["available", "--json"], ["sync"]):
        proc = _cli_subprocess(args, timeout=120)  # generous: only to fail instead of hanging
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert str(db) in proc.stderr and "expand to more than" in proc.stderr, proc.stderr[-2000:]
    assert {d: _snapshot(d) for d in outside} == outside
    assert (sandbox.data_dir(EXE) / "m.bin").read_bytes() == b"m"


def test_an_oversized_user_database_is_ignored(sandbox):
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir(parents=True)
    pad = "x" * (4 * 1024 * 1024)
    db.write_text(f"{EXE}:\n- {{url: 'http://h/a', description: '{pad}', name: a, size: 1}}\n")
    names, warnings, code = _ours(sandbox)
    assert (code, names) == (0, set())
    assert len(warnings) == 1 and str(db) in warnings[0] and "larger than 1 MiB" in warnings[0]


def test_a_dense_user_database_is_bounded(sandbox):
    # 150 000 YAML nodes in 300 kB, no alias: refused before they are built (a real file has a few thousand).
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir(parents=True)
    db.write_text(f"{EXE}: [" + ",".join(["1"] * 150_000) + "]\n")
    proc = _cli_subprocess(["available", "--json"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(db) in proc.stderr and "more than 100,000 YAML nodes" in proc.stderr, proc.stderr[-2000:]
