"""Every command through the CLI, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest
from conftest import Model, make_tar, sha256

BLOB = os.urandom(40_000)
COMMANDS = ["init", "add", "remove", "lock", "sync", "plan", "status", "verify", "available", "list-installed"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(sandbox, command):
    r = sandbox.run(command, "--help")
    assert r.code == 0
    assert "Example" in r.out, r.out
    assert "modelsync " + command.split()[0] in r.out


def test_console_script_runs_as_a_separate_process(sandbox):
    exe = os.path.join(os.path.dirname(sys.executable), "modelsync")
    proc = subprocess.run([exe, "available", "ocrd-cis-ocropy-recognize"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "fraktur-jze.pyrnn.gz" in proc.stdout


def test_init_add_remove_keep_comments_and_layout(sandbox):
    assert sandbox.run("init").code == 0
    assert sandbox.run("init").code == 2  # never overwrites silently
    text = sandbox.manifest.read_text()
    text = text.replace("[processors]\n", "[processors]\n# my own comment, kept\n")
    sandbox.manifest.write_text(text)
    r = sandbox.run("add", "ocrd-tesserocr-recognize", "deu.traineddata", "frk.traineddata")
    assert r.code == 0, r.err
    r = sandbox.run("add", "ocrd-calamari-recognize", "mine", "--url", "./m.tar.gz", "--type", "archive")
    assert r.code == 2 and "m.tar.gz does not exist" in r.err, r.err  # a local path must be there
    (sandbox.project / "m.tar.gz").write_bytes(b"")
    r = sandbox.run("add", "ocrd-calamari-recognize", "mine", "--url", "./m.tar.gz", "--type", "archive")
    assert r.code == 0, r.err
    after = sandbox.manifest.read_text()
    assert "# my own comment, kept" in after
    assert "# ocrd-cis-ocropy-recognize" in after  # template comments survive
    data = tomllib.loads(after)
    assert data["processors"]["ocrd-tesserocr-recognize"] == ["deu.traineddata", "frk.traineddata"]
    assert data["processors"]["ocrd-calamari-recognize"] == [{"name": "mine", "url": "./m.tar.gz", "type": "archive"}]
    assert sandbox.run("remove", "ocrd-tesserocr-recognize", "frk.traineddata").code == 0
    data = tomllib.loads(sandbox.manifest.read_text())
    assert data["processors"]["ocrd-tesserocr-recognize"] == ["deu.traineddata"]
    assert "# my own comment, kept" in sandbox.manifest.read_text()


def test_add_unknown_name_suggests_and_leaves_file_alone(sandbox):
    sandbox.run("init")
    before = sandbox.manifest.read_bytes()
    r = sandbox.run("add", "ocrd-tesserocr-recognize", "frk.traineddta")
    assert r.code == 2 and "Did you mean 'frk.traineddata'" in r.err
    r = sandbox.run("add", "ocrd-calamari-recognize", "x", "--url", "./x", "--type", "zip")
    # Refused as the option's value, before models.toml is touched (not as "line N of models.toml").
    assert r.code == 2 and "Invalid value for '--type'" in r.err and "'file', 'archive', 'directory'" in r.err
    assert sandbox.manifest.read_bytes() == before


def _two_resources(sandbox, server) -> None:
    a = server.add("/a.traineddata", BLOB)
    b = server.add("/b.tar.gz", make_tar({"m/x": b"x", "m/y": b"y"}))
    sandbox.declare(processors={"ocrd-tesserocr-recognize": [Model("a.traineddata", a)],
                                "ocrd-calamari-recognize": [Model("b", b, type="archive", path_in_archive="m")]})


def test_lock_installs_nothing_and_is_byte_identical_when_repeated(sandbox, server):
    _two_resources(sandbox, server)
    r = sandbox.run("lock")
    assert r.code == 0, r.err
    assert list(sandbox.tessdata.iterdir()) == []
    assert not (sandbox.data / "ocrd-resources").exists()
    first = sandbox.lock.read_bytes()
    sandbox.lock.unlink()
    assert sandbox.run("lock").code == 0
    assert sandbox.lock.read_bytes() == first  # a fresh lock of the same manifest: same bytes
    assert sandbox.run("lock").code == 0
    assert sandbox.lock.read_bytes() == first
    lock = tomllib.loads(first.decode())
    assert [e["name"] for e in lock["resource"]] == ["b", "a.traineddata"]  # sorted by (processor, name)
    assert "T" not in lock["manifest_hash"] and str(sandbox.root) not in first.decode()
    # sync then installs exactly the locked bytes
    assert sandbox.run("sync").code == 0
    assert (sandbox.tessdata / "a.traineddata").read_bytes() == BLOB
    assert sandbox.lock.read_bytes() == first


def test_lock_refuses_bytes_that_changed_under_a_locked_url(sandbox, server):
    _two_resources(sandbox, server)
    assert sandbox.run("lock").code == 0
    server.add("/a.traineddata", b"new upstream bytes")
    import shutil

    shutil.rmtree(sandbox.cache)  # another machine: only the lock travels
    r = sandbox.run("sync")
    assert r.code == 4 and sha256(BLOB) in r.err and "--upgrade" in r.err
    r = sandbox.run("sync", "--upgrade-model", "a.traineddata")
    assert r.code == 0, r.err
    assert (sandbox.tessdata / "a.traineddata").read_bytes() == b"new upstream bytes"
    entry = [e for e in tomllib.loads(sandbox.lock.read_text())["resource"] if e["name"] == "a.traineddata"][0]
    assert entry["sha256"] == sha256(b"new upstream bytes")


def test_plan_status_verify_and_list_installed(sandbox, server):
    _two_resources(sandbox, server)
    r = sandbox.run("plan", "--json")
    doc = json.loads(r.out)
    assert doc["changes"] == 2 and {a["action"] for a in doc["actions"]} == {"install"}
    assert sandbox.run("plan", "--check").code == 7
    r = sandbox.run("status", "--json")
    assert {row["state"] for row in json.loads(r.out)["resources"]} == {"missing"}
    assert sandbox.run("sync").code == 0
    assert sandbox.run("plan", "--check").code == 0
    r = sandbox.run("status", "--json")
    rows = json.loads(r.out)["resources"]
    assert {(row["name"], row["state"], row["locked"]) for row in rows} == {("a.traineddata", "ok", "yes"),
                                                                           ("b", "ok", "yes")}
    r = sandbox.run("verify")
    assert r.code == 0 and r.out.count("ok") >= 2
    r = sandbox.run("list-installed", "--json")
    listed = {(x["processor"], x["name"], x["location"], x["recorded"]) for x in json.loads(r.out)["resources"]}
    assert ("ocrd-calamari-recognize", "b", "data", "verified") in listed
    assert ("ocrd-tesserocr-recognize", "a.traineddata", "module", "verified") in listed
    # Tamper with an installed file while keeping its size and mtime: only verify notices.
    f = sandbox.tessdata / "a.traineddata"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[0] ^= 0xFF
    with open(f, "r+b") as fh:
        fh.write(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = sandbox.run("verify")
    assert r.code == 4 and "FAILED" in r.out
    r = sandbox.run("verify", "--json")
    assert json.loads(r.out)["ok"] is False


def test_prune_removes_only_what_we_installed(sandbox, server):
    _two_resources(sandbox, server)
    assert sandbox.run("sync").code == 0
    assert sandbox.run("remove", "ocrd-calamari-recognize").code == 0
    r = sandbox.run("sync")  # without --prune nothing is deleted
    target = sandbox.data_dir("ocrd-calamari-recognize") / "b"
    assert target.exists()
    # The lock forgot it; re-lock with it, then prune.
    _two_resources(sandbox, server)
    assert sandbox.run("sync").code == 0
    sandbox.run("remove", "ocrd-calamari-recognize")
    r = sandbox.run("plan", "--prune")
    assert "remove" in r.out
    r = sandbox.run("sync", "--prune")
    assert r.code == 0, r.err
    assert not target.exists()
    assert [e["name"] for e in tomllib.loads(sandbox.lock.read_text())["resource"]] == ["a.traineddata"]


def test_sync_json_output_is_only_json_on_stdout(sandbox, server):
    _two_resources(sandbox, server)
    r = sandbox.run("sync", "--json")
    assert r.code == 0
    doc = json.loads(r.out)
    assert doc["ok"] is True and doc["changes"] == 2


def test_stale_lock_entry_is_updated_when_the_declaration_changes(sandbox, server):
    _two_resources(sandbox, server)
    assert sandbox.run("sync").code == 0
    new = server.add("/a2.traineddata", b"version 2")
    text = sandbox.manifest.read_text().replace(server.url("/a.traineddata"), new)
    sandbox.write_manifest(text)
    r = sandbox.run("plan")
    assert "declaration changed" in r.out and "url" in r.out
    assert sandbox.run("sync").code == 0
    assert (sandbox.tessdata / "a.traineddata").read_bytes() == b"version 2"


def test_usage_errors_exit_2(sandbox):
    assert sandbox.run("sync", "--parallel", "0").code == 2
    assert sandbox.run("frobnicate").code == 2


def test_verify_without_a_lock_says_there_is_nothing_to_verify(sandbox):
    sandbox.declare("deu.traineddata", processor="ocrd-tesserocr-recognize")
    r = sandbox.run("verify")
    assert r.code == 0, r.err
    assert "nothing to verify: models.lock does not exist" in r.out + r.err
    assert "processor" not in r.out  # no empty table


def test_modelsync_manifest_names_the_project_from_anywhere(sandbox, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = sandbox.project / "sub" / "models.toml"
    target.parent.mkdir()
    sandbox.monkeypatch.setenv("MODELSYNC_MANIFEST", str(target))
    sandbox.monkeypatch.chdir(elsewhere)
    assert sandbox.run("init").code == 0  # created where the variable says
    assert target.is_file() and not (elsewhere / "models.toml").exists()
    r = sandbox.run("plan")
    assert r.code == 0, r.err
    assert str(target) in r.out + r.err  # the header names the manifest used
    other = tmp_path / "other.toml"
    other.write_text(target.read_text())
    r = sandbox.run("plan", "--manifest", str(other))  # the flag wins over the variable
    assert r.code == 0 and str(other) in r.out + r.err


@pytest.mark.parametrize("var", ["MODELSYNC_OFFLINE", "MODELSYNC_REGISTRY_ONLY", "MODELSYNC_DISABLE_AUTOCONVERSION"])
def test_a_yes_no_variable_with_another_value_is_refused_by_name(sandbox, var):
    sandbox.declare("deu.traineddata", processor="ocrd-tesserocr-recognize")
    sandbox.monkeypatch.setenv(var, "maybe")
    r = sandbox.run("sync", "--check")
    assert r.code == 2, (r.code, r.err)
    assert f"${var}='maybe' is not a yes/no value" in r.err
