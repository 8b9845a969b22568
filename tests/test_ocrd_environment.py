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
    sandbox.write_manifest(f'[processors]\n{EXE} = [{{ name = "m.bin", url = "{server.add("/m", b"m")}", '
                           'location = "data" }]\n')
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
    from ocrd_models.modelsync.settings import Environment

    env = Environment.from_os()
    assert (env.ocrd_data_dir, env.ocrd_user_database) == (ocrd_data, user_list)


def test_our_own_xdg_dirs_still_follow_the_xdg_spec(sandbox, server):
    # Our cache and install records (XDG_CACHE_HOME, XDG_STATE_HOME) are ours alone: a relative value
    # is invalid per the XDG spec and ignored, never a directory below wherever the command runs.
    sandbox.monkeypatch.setenv("XDG_CACHE_HOME", "rel-cache")
    sandbox.monkeypatch.setenv("XDG_STATE_HOME", "")
    sandbox.write_manifest(f'[processors]\n{EXE} = [{{ name = "m.bin", url = "{server.add("/m", b"m")}" }}]\n')
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert not (sandbox.project / "rel-cache").exists()
    assert (sandbox.home / ".cache" / "ocrd-modelsync").is_dir()
    assert (sandbox.home / ".local" / "state" / "ocrd-modelsync").is_dir()
    assert "XDG_CACHE_HOME" not in r.err and "XDG_STATE_HOME" not in r.err
