"""Sharing locked models through a real OCI registry (Debian's docker-registry on 127.0.0.1).

Push from one machine, then sync on "other machines" (fresh HOME, XDG data, cache and state)
from the registry alone, with the origin server stopped; anonymous, basic and bearer-token auth.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from conftest import Model, make_tar, sha256, tree_files
from oci_registry import BINARY, SKIP_REASON, ResourceIndex

pytestmark = pytest.mark.skipif(BINARY is None, reason=SKIP_REASON)

PROC = "ocrd-kraken-recognize"


@pytest.fixture
def registries(tmp_path):
    started: list[ResourceIndex] = []

    def start(mode: str = "anonymous", **kw) -> ResourceIndex:
        r = ResourceIndex(tmp_path / f"registry-{len(started)}", mode, **kw)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def _declared(server) -> list[Model]:
    """The models of the project _project syncs."""
    return [Model("a.mlmodel", server.url("/origin/a.mlmodel")), Model("b.mlmodel", server.url("/origin/b.mlmodel")),
            Model("model", server.url("/origin/model.tar.gz"), type="archive", path_in_archive="model")]


def _project(sandbox, server) -> dict[str, bytes]:
    files = {"a.mlmodel": os.urandom(40_000), "b.mlmodel": os.urandom(70_000),
             "model.tar.gz": make_tar({"model/w.bin": os.urandom(30_000), "model/c.json": b"{}"})}
    for name, data in files.items():
        server.add(f"/origin/{name}", data)
    sandbox.declare(*_declared(server), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    return files


def _other_machine(sandbox, name: str):
    """Point HOME and every XDG directory somewhere new: another host with the same project checkout."""
    root = sandbox.root / name
    for var, sub in (("HOME", "home"), ("XDG_DATA_HOME", "data"), ("XDG_CACHE_HOME", "cache"),
                     ("XDG_STATE_HOME", "state"), ("XDG_CONFIG_HOME", "config")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        sandbox.monkeypatch.setenv(var, str(root / sub))
    return root


def _models(machine):
    """The data location of PROC on a machine made by _other_machine."""
    return machine / "data" / "ocrd-resources" / PROC


def _docker_login(home, host: str, user: str, password: str) -> None:
    (home / ".docker").mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def test_push_then_sync_from_the_registry_alone(sandbox, server, registries):
    reg = registries()
    files = _project(sandbox, server)
    installed = tree_files(sandbox.data_dir(PROC))
    ref = f"{reg.host}/ocr/models:v1"
    r = sandbox.run("push", ref, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert len(doc["uploaded"]) == 3 and doc["present"] == [] and doc["skipped"] == []
    assert all(server.count(f"/origin/{n}") == 1 for n in files)  # push took the bytes from the cache
    # the manifest lists every artifact by the lock's digest, annotated with processor and name
    lock = sandbox.lock.read_text()
    manifest = json.loads(_get(f"http://{reg.host}/v2/ocr/models/manifests/v1").decode())
    assert manifest["artifactType"] == "application/vnd.ocrd.models.v1"
    layers = {layer["annotations"]["org.ocrd.models.name"]: layer for layer in manifest["layers"]}
    assert set(layers) == {"a.mlmodel", "b.mlmodel", "model"}
    for name, data in files.items():
        layer = layers[name if name != "model.tar.gz" else "model"]
        assert layer["digest"] == f"sha256:{sha256(data)}" and f'sha256 = "{sha256(data)}"' in lock
        assert layer["annotations"]["org.ocrd.models.processor"] == PROC
    assert layers["model"]["mediaType"] == "application/vnd.ocrd.models.archive.v1"

    server.stop()  # the origin is gone: everything must come from the registry
    host2 = _other_machine(sandbox, "host2")
    r = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only")
    assert r.code == 0, r.err
    assert tree_files(_models(host2)) == installed
    assert sandbox.lock.read_text() == lock  # the lock names origins, never the registry
    assert sandbox.run("verify").code == 0
    assert sorted(reg.blob_gets()) == sorted(f"sha256:{sha256(d)}" for d in files.values())
    # without --registry-only, too (the registry is asked first; the dead origin is never needed)
    host3 = _other_machine(sandbox, "host3")
    sandbox.monkeypatch.setenv("MODELSYNC_REGISTRY", f"{reg.host}/ocr/models")
    assert sandbox.run("sync", "--locked").code == 0
    assert tree_files(_models(host3)) == installed


def _get(url: str) -> bytes:
    import requests

    resp = requests.get(url, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    resp.raise_for_status()
    return resp.content


def test_second_push_uploads_nothing(sandbox, server, registries):
    reg = registries()
    _project(sandbox, server)
    ref = f"{reg.host}/ocr/models:v1"
    assert sandbox.run("push", ref).code == 0
    uploads = reg.blob_uploads()
    assert uploads == 4  # three artifacts and the config
    again = json.loads(sandbox.run("push", ref, "--json").out)
    assert again["uploaded"] == [] and len(again["present"]) == 3 and again["bytes_uploaded"] == 0
    assert reg.blob_uploads() == uploads


def test_registry_lacking_an_artifact_falls_back_or_fails_strictly(sandbox, server, registries):
    reg = registries()
    _project(sandbox, server)
    assert sandbox.run("push", f"{reg.host}/ocr/models:v1").code == 0
    late = os.urandom(5000)
    server.add("/origin/late.bin", late)
    sandbox.declare(*_declared(server), Model("late.bin", server.url("/origin/late.bin")), processor=PROC)
    assert sandbox.run("sync").code == 0  # locked, not pushed
    host2 = _other_machine(sandbox, "host2")
    strict = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only")
    assert strict.code == 6
    assert "late.bin" in strict.err and "--registry-only" in strict.err and "push" in strict.err
    assert not (_models(host2) / "late.bin").exists()
    assert (_models(host2) / "a.mlmodel").exists()  # the rest came from the registry
    before = server.count("/origin/late.bin")
    r = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models")
    assert r.code == 0, r.err
    assert (_models(host2) / "late.bin").read_bytes() == late
    assert server.count("/origin/late.bin") == before + 1
    assert server.count("/origin/a.mlmodel") == 1  # only the first machine's original download


def test_a_registry_outage_falls_back_to_the_origin_unless_strict(sandbox, server, registries):
    reg = registries()
    files = _project(sandbox, server)
    assert sandbox.run("push", f"{reg.host}/ocr/models:v1").code == 0
    reg.stop()
    host2 = _other_machine(sandbox, "host2")
    sandbox.monkeypatch.setenv("MODELSYNC_RETRIES", "0")
    strict = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only")
    assert strict.code == 3 and not (_models(host2) / "a.mlmodel").exists()
    r = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models")
    assert r.code == 0, r.err
    assert (_models(host2) / "a.mlmodel").read_bytes() == files["a.mlmodel"]
    assert server.count("/origin/a.mlmodel") == 2


def test_a_tampered_blob_is_refused(sandbox, server, registries):
    reg = registries()
    files = _project(sandbox, server)
    assert sandbox.run("push", f"{reg.host}/ocr/models:v1").code == 0
    blob = reg.blob_file(f"sha256:{sha256(files['a.mlmodel'])}")
    blob.write_bytes(b"evil" + files["a.mlmodel"][4:])
    host2 = _other_machine(sandbox, "host2")
    r = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only")
    assert r.code == 4
    assert "checksum mismatch" in r.err and "registry" in r.err and sha256(files["a.mlmodel"]) in r.err
    # The advice fits where the bytes came from: the registry's copy is bad, the lock is right.
    assert "`modelsync push`" in r.err and "lock --upgrade" not in r.err, r.err
    assert not (_models(host2) / "a.mlmodel").exists()
    assert (_models(host2) / "b.mlmodel").exists()
    # --json carries the facts as fields, not only in the message.
    r = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only", "--json")
    assert r.code == 4
    [failure] = json.loads(r.out)["failures"]
    assert failure["kind"] == "ChecksumMismatch" and failure["exit_code"] == 4
    assert failure["expected"] == sha256(files["a.mlmodel"])
    assert failure["actual"] == sha256(b"evil" + files["a.mlmodel"][4:])
    assert failure["url"].startswith(f"http://{reg.host}/v2/ocr/models/blobs/sha256:")


def test_chunked_upload(sandbox, server, registries):
    reg = registries()
    big = os.urandom((2 << 20) + 12345)
    url = server.add("/origin/big.bin", big)
    sandbox.declare(Model("big.bin", url), processor=PROC)
    assert sandbox.run("sync").code == 0
    assert sandbox.run("push", f"{reg.host}/ocr/big:v1", "--chunk-mib", "1").code == 0
    patches = [p for m, p, st in reg.access() if m == "PATCH" and st == 202]
    assert len(patches) == 3  # 1 + 1 + 0.01 MiB
    assert reg.blob_file(f"sha256:{sha256(big)}").read_bytes() == big
    server.stop()
    host2 = _other_machine(sandbox, "host2")
    assert sandbox.run("sync", "--registry", f"{reg.host}/ocr/big", "--registry-only").code == 0
    assert (_models(host2) / "big.bin").read_bytes() == big


def test_basic_auth_from_the_docker_config(sandbox, server, registries):
    reg = registries("basic", users={"ci": "push-secret", "reader": "read-secret"})
    _project(sandbox, server)
    installed = tree_files(sandbox.data_dir(PROC))
    ref = f"{reg.host}/ocr/models:v1"
    anonymous = sandbox.run("push", ref)
    assert anonymous.code == 3 and "refused access" in anonymous.err and "docker login" in anonymous.err
    _docker_login(sandbox.home, reg.host, "ci", "wrong-password")
    wrong = sandbox.run("push", ref)
    assert wrong.code == 3 and "refused access" in wrong.err and "wrong-password" not in wrong.err
    _docker_login(sandbox.home, reg.host, "ci", "push-secret")
    assert sandbox.run("push", ref).code == 0
    server.stop()
    host2 = _other_machine(sandbox, "host2")
    sandbox.monkeypatch.setenv("MODELSYNC_REGISTRY_USERNAME", "reader")
    sandbox.monkeypatch.setenv("MODELSYNC_REGISTRY_PASSWORD", "read-secret")
    r = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only")
    assert r.code == 0, r.err
    assert tree_files(_models(host2)) == installed
    assert "read-secret" not in sandbox.lock.read_text() and "reader" not in sandbox.lock.read_text()
    assert not (host2 / "home" / ".docker").exists()  # we read credentials, never write them


def test_bearer_token_flow(sandbox, server, registries):
    reg = registries("token", users={"ci": "push-secret", "reader": "read-secret"}, pushers={"ci"})
    _project(sandbox, server)
    installed = tree_files(sandbox.data_dir(PROC))
    ref = f"{reg.host}/ocr/models:v1"
    # The token service is another origin (another port): it gets the registry's login only once the
    # user says it belongs to the registry.
    _docker_login(sandbox.home, reg.host, "ci", "push-secret")
    untrusted = sandbox.run("push", ref)
    assert untrusted.code == 3 and "MODELSYNC_REGISTRY_REALMS" in untrusted.err and reg.token.host in untrusted.err
    assert reg.token.authorizations and set(reg.token.authorizations) == {None}
    sandbox.monkeypatch.setenv("MODELSYNC_REGISTRY_REALMS", reg.token.host)
    _docker_login(sandbox.home, reg.host, "reader", "read-secret")
    readonly = sandbox.run("push", ref)  # a token without push rights
    assert readonly.code == 3 and "refused access" in readonly.err and "read-secret" not in readonly.err
    _docker_login(sandbox.home, reg.host, "ci", "push-secret")
    assert sandbox.run("push", ref).code == 0
    assert any("scope=repository" in p for p in reg.token.requests)
    server.stop()
    host2 = _other_machine(sandbox, "host2")
    anon = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only")
    assert anon.code == 3 and "refused access" in anon.err
    assert not (_models(host2) / "a.mlmodel").exists()
    sandbox.monkeypatch.setenv("MODELSYNC_REGISTRY_USERNAME", "reader")
    sandbox.monkeypatch.setenv("MODELSYNC_REGISTRY_PASSWORD", "nope")
    bad = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only")
    assert bad.code == 3 and "refused access" in bad.err and "nope" not in bad.err
    sandbox.monkeypatch.setenv("MODELSYNC_REGISTRY_PASSWORD", "read-secret")
    r = sandbox.run("sync", "--registry", f"{reg.host}/ocr/models", "--registry-only")
    assert r.code == 0, r.err
    assert tree_files(_models(host2)) == installed


def test_bad_references_and_missing_registry_are_clear(sandbox, server):
    _project(sandbox, server)
    r = sandbox.run("push", "not a reference")
    assert r.code == 2 and "HOST[:PORT]/REPOSITORY[:TAG]" in r.err
    only = sandbox.run("sync", "--registry-only")
    assert only.code == 2 and "needs a registry" in only.err
