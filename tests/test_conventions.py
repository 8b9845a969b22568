"""Conventions every CLI user expects (issue 14): --version, python -m, and the like."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

from conftest import Model
from ocrd_models.modelsync import __version__


def test_version_is_one_value_everywhere(sandbox):
    assert __version__ == version("ocrd-modelsync")  # the installed metadata reads the package's value
    r = sandbox.run("--version")
    assert r.code == 0 and r.out.strip() == f"modelsync {__version__}"


def test_python_dash_m_runs_the_cli(sandbox):
    for module in ("ocrd_models.modelsync",):
        proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                              cwd=sandbox.project, env=sandbox.env(), timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"modelsync {__version__}"


def test_models_toml_is_found_in_a_parent_directory(sandbox, server):
    url = server.add("/m.bin", b"model")
    sandbox.declare(Model("m.bin", url))
    sub = sandbox.project / "a" / "b"
    sub.mkdir(parents=True)
    sandbox.monkeypatch.chdir(sub)
    r = sandbox.run("plan")
    assert r.code == 0, r.err
    assert "manifest: ../../models.toml" in r.err and "init" not in r.err
    assert sandbox.run("sync").code == 0
    assert sandbox.lock.exists() and not (sub / "models.lock").exists()  # beside the manifest found
    assert "manifest: ../../models.toml" in sandbox.run("status").err
    other = sandbox.root / "elsewhere"
    other.mkdir()
    (other / "models.toml").write_text("[processors]\n")
    r = sandbox.run("plan", "--manifest", str(other / "models.toml"))  # the flag still wins
    assert r.code == 0 and "nothing declared" in r.err


def test_without_any_manifest_the_message_suggests_init(sandbox):
    r = sandbox.run("plan")
    assert r.code == 2 and "modelsync init" in r.err


def test_plan_and_status_accept_the_shared_options(sandbox, server):
    url = server.add("/m.bin", b"model")
    sandbox.declare(Model("m.bin", url))
    for command in ("plan", "status"):
        r = sandbox.run(command, "--mirror", "https://example.org/=https://mirror.example.org/",
                        "--cache-dir", str(sandbox.root / "c2"))
        assert r.code == 0, (command, r.err)


def test_quiet_prints_only_errors_and_verbose_tells_retries(sandbox, server):
    from httpserver import Fault

    url = server.add("/m.bin", b"model")
    sandbox.declare(Model("m.bin", url), network="backoff = 0.01")
    server.faults["/m.bin"] = Fault(status=503, times=1)
    r = sandbox.run("sync", "-q")
    assert r.code == 0 and r.err == "" and r.out == "", r.err
    sandbox.lock.unlink()
    (sandbox.data_dir("ocrd-x") / "m.bin").unlink()
    server.faults["/m.bin"] = Fault(status=503, times=1)
    r = sandbox.run("sync", "-v")
    assert r.code == 0 and "retrying in" in r.err and "HTTP 503" in r.err, r.err


def test_a_name_that_does_not_resolve_is_not_retried_five_times(sandbox):
    sandbox.declare(Model("m.bin", "http://no-such-host.invalid/m.bin"), network="retries = 4\nbackoff = 0.01")
    r = sandbox.run("sync", "-v")
    assert r.code == 3, r.err
    assert "after 2 attempt(s)" in r.err, r.err


def test_json_on_failure_is_still_one_document(sandbox):
    import json

    r = sandbox.run("plan", "--json")  # no models.toml
    assert r.code == 2
    doc = json.loads(r.out)
    assert doc["schema_version"] == 1 and doc["error"]["exit_code"] == 2
    assert doc["error"]["kind"] == "ManifestError" and "models.toml" in doc["error"]["message"]
    r = sandbox.run("status", "--json", "--no-such-option")
    assert r.code == 2 and json.loads(r.out)["error"]["kind"] == "UsageError"


def test_help_shows_no_python_types(sandbox):
    for command in ("add", "remove", "resolve", "available", "inspect", "convert", "push"):
        r = sandbox.run(command, "--help")
        assert r.code == 0, r.err
        assert "<str>" not in r.out and "list[str]" not in r.out and "<path>" not in r.out, r.out


def test_add_refuses_misspellings_and_missing_local_files(sandbox):
    sandbox.run("init")
    before = sandbox.manifest.read_bytes()
    r = sandbox.run("add", "ocrd-tesserocr-recognise", "deu.traineddata")
    assert r.code == 2 and "ocrd-tesserocr-recognize" in r.err, r.err
    r = sandbox.run("add", "ocrd-calamari-recognise", "mine", "--url", "https://example.org/m.tar.gz")
    assert r.code == 2 and "Did you mean 'ocrd-calamari-recognize'" in r.err, r.err
    r = sandbox.run("add", "ocrd-my-own-tool", "mine", "--url", "./nowhere.bin")
    assert r.code == 2 and "does not exist" in r.err, r.err
    r = sandbox.run("add", "ocrd-x", "m", "--location", "somewhere")
    assert r.code == 2 and "--location" in r.err
    assert sandbox.manifest.read_bytes() == before
    assert sandbox.run("add", "ocrd-my-own-tool", "mine", "--url", "https://example.org/m.bin").code == 0


def test_available_is_sorted(sandbox):
    import json

    r = sandbox.run("available", "--no-processors", "--json")
    keys = [(e["processor"], e["name"]) for e in json.loads(r.out)["resources"]]
    assert keys == sorted(keys) and len(keys) > 100


def test_shell_completion_offers_processors_and_their_models(sandbox):
    env = {**sandbox.env(), "_MODELSYNC_COMPLETE": "complete_bash", "COMP_WORDS": "modelsync add ocrd-calam",
           "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-m", "ocrd_models.modelsync"], env=env, capture_output=True, text=True,
                          cwd=sandbox.project, timeout=60)
    assert "ocrd-calamari-recognize" in proc.stdout, (proc.stdout, proc.stderr)
    env.update(COMP_WORDS="modelsync add ocrd-tesserocr-recognize deu", COMP_CWORD="3")
    proc = subprocess.run([sys.executable, "-m", "ocrd_models.modelsync"], env=env, capture_output=True, text=True,
                          cwd=sandbox.project, timeout=60)
    assert "deu.traineddata" in proc.stdout, (proc.stdout, proc.stderr)
