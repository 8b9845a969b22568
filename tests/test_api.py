"""The Python API, used only through what ``ocrd_models.modelsync`` exports (``__all__``)."""

from __future__ import annotations

import ocrd_models.modelsync as modelsync
from conftest import Model, sha256


def test_every_public_name_resolves():
    for name in modelsync.__all__:
        assert getattr(modelsync, name) is not None, name


def test_plan_sync_status_verify_resolve_through_the_api(sandbox, server):
    good, bad = b"a model" * 1000, b"other"
    sandbox.declare(Model("good.bin", server.add("/good.bin", good)), Model("bad.bin", server.url("/missing.bin")))
    sub = sandbox.project / "sub"
    sub.mkdir()
    sandbox.monkeypatch.chdir(sub)  # open_project finds models.toml in a parent, as the CLI does
    project = modelsync.open_project()
    assert project.manifest_path == sandbox.manifest
    plan = project.plan()
    assert [(a.name, a.kind) for a in plan.actions] == [("bad.bin", "install"), ("good.bin", "install")]
    try:
        project.sync()
        raise AssertionError("bad.bin cannot be fetched")
    except modelsync.SyncFailed as err:
        assert [(f.name, f.error.exit_code) for f in err.failures] == [("bad.bin", 3)]
        assert isinstance(err.failures[0].error, modelsync.NetworkError)
    fresh = modelsync.open_project(sandbox.manifest)  # a project is one run's view: reopen to see the new state
    states = {r.name: r.state for r in fresh.status()}
    assert states == {"good.bin": "ok", "bad.bin": "missing"}
    assert [(r.name, r.ok) for r in fresh.verify()] == [("good.bin", True)]
    found = fresh.resolve_model("ocrd-x", "good.bin")
    assert sha256(open(found["path"], "rb").read()) == sha256(good)
    try:
        fresh.resolve_model("ocrd-x", "nope.bin")
        raise AssertionError("not declared")
    except modelsync.UserInputError as err:
        assert err.exit_code == 2


def test_no_manifest_is_a_manifest_error(sandbox):
    try:
        modelsync.open_project()
        raise AssertionError("there is no models.toml")
    except modelsync.ManifestError as err:
        assert "modelsync init" in str(err) and err.exit_code == 2


def test_a_run_configuration_never_shows_the_environment_in_its_repr(sandbox):
    from ocrd_models.modelsync.config import Environment

    sandbox.declare()
    env = Environment({**Environment.from_os().vars, "MODELSYNC_REGISTRY_PASSWORD": "pw-4711",
                       "MODELSYNC_TOKENS": "example.org=tok-4711"})
    project = modelsync.open_project(sandbox.manifest, env=env)
    assert project.env is env and project.config.net.credentials is not None
    assert "4711" not in repr(project.config) and "4711" not in repr(project)
