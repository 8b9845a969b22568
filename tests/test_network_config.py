"""One network configuration for every request (issue 14): downloads and the OCI registry client share
proxies (``NO_PROXY`` with CIDR ranges, suffixes and ``*``), CA bundles, credentials, time bounds and
retries; Docker credential helpers are consulted for registry logins.

Servers are real sockets on 127.0.0.1. Host names that are not this machine (``registry.test``) are
reached through a recording HTTPS proxy that tunnels them to a local server with that name's
certificate, so nothing touches the machine's resolver. Every test asserts the exit code, that
nothing was written outside the sandbox's targets, and where credentials are involved that none
reached a host they were not for.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys

import pytest
from conftest import Model
from httpserver import FileServer, TunnelProxy, make_cert
from test_attack_registry import (BASIC, BLOB, DIGEST, NAME, PROC, REPO_NAME, SECRET, TOKEN, USER, FakeRegistry,
                                  Host, Outside, Reply, Seen, _basic_user, _clean_exit, _env, _forget, _installed,
                                  _leaks, _locked, _no_temp_left, _pull, _push, hosts)  # noqa: F401 (fixture)

CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR")


def _no_ca_variables(sandbox) -> None:
    for var in CA_VARIABLES:
        sandbox.monkeypatch.delenv(var, raising=False)


# -- 1. a ~/.netrc entry never replaces or adds to what the registry gets ------------------------------

NETRC_USER, NETRC_SECRET = "netrc-user", "netrc-Secret-8c2b"
NETRC_BASIC = base64.b64encode(f"{NETRC_USER}:{NETRC_SECRET}".encode()).decode()


def _netrc_for(sandbox, registry: Host) -> None:
    # Both spellings: the host alone (requests' reading, any port) and host:port (ours, that origin only).
    (sandbox.home / ".netrc").write_text(f"machine 127.0.0.1 login {NETRC_USER} password {NETRC_SECRET}\n"
                                         f"machine {registry.host} login {NETRC_USER} password {NETRC_SECRET}\n")
    os.chmod(sandbox.home / ".netrc", 0o600)


@pytest.mark.parametrize("auth", ["bearer", None])
def test_a_netrc_entry_for_the_registry_never_reaches_it(sandbox, server, hosts, auth):
    """Every request to the registry's origin (API calls and blob downloads alike) carries the registry's
    own authorization and nothing else: not the netrc login for that host, with or without a token."""
    registry = hosts(FakeRegistry(auth=auth))
    _env(sandbox)
    _locked(sandbox, server)
    _netrc_for(sandbox, registry)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and outside.unchanged()
    sent = [(s.method, s.path, s.headers.get("authorization")) for s in registry.seen]
    assert any(m == "GET" and p.endswith(DIGEST) for m, p, _ in sent)  # the blob came from the registry
    assert NETRC_SECRET not in str(sent) and NETRC_BASIC not in str(sent)
    if auth == "bearer":  # the token wherever the registry asked for it; the login only at its token service
        assert {a for m, p, a in sent if p != "/token" and a} == {f"Bearer {TOKEN}"}
        assert {a for m, p, a in sent if p == "/token"} == {f"Basic {BASIC}"}
    else:
        assert {a for m, p, a in sent} == {None}


def test_a_netrc_entry_still_serves_downloads_from_its_origin(sandbox, server):
    """The registry's origin aside, netrc works as before: the origin it names gets its login."""
    url = server.add("/m", BLOB)
    _env(sandbox)
    (sandbox.home / ".netrc").write_text(f"machine 127.0.0.1:{server.httpd.server_address[1]} login {NETRC_USER} "
                                         f"password {NETRC_SECRET}\n")
    sandbox.declare(Model(NAME, url), processor=PROC)
    r = sandbox.run("sync")
    _clean_exit(r, 0)
    assert [h.get("Authorization") for p, h in server.headers_seen if p == "/m"] == [f"Basic {NETRC_BASIC}"]


# -- 2. NO_PROXY: CIDR ranges, suffixes, *, ports; the same for downloads and the registry --------------

def _proxy_answering_everything() -> FakeRegistry:
    """A recording HTTP proxy that answers what it is asked for as the origin and the registry would."""
    def hook(seen: Seen) -> Reply | None:
        return Reply(200, {}, BLOB) if seen.path == f"/origin/{NAME}" else None

    return FakeRegistry(auth=None, hook=hook)


@pytest.mark.parametrize("host,no_proxy,direct", [
    ("127.0.0.1", "127.0.0.0/8", True),  # a CIDR range (requests honoured it, downloads did not)
    ("127.0.0.1", "10.0.0.0/8, 127.0.0.1/32", True),
    ("127.0.0.1", "10.0.0.0/8", False),
    ("127.0.0.1", "*", True),
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1", "127.0.0.1:{port}", True),
    ("127.0.0.1", "127.0.0.1:1", False),  # another port
    ("127.0.0.1", "127.0.0.2", False),
    ("localhost", "localhost", True),
    ("localhost", ".localhost", True),  # a suffix also matches the domain itself (as curl reads it)
    ("localhost", "*.localhost", True),
    ("localhost", "calhost", False),  # a suffix matches whole labels only
    ("localhost", "LOCALHOST:{port}", True),
])
def test_no_proxy_applies_the_same_to_downloads_and_the_registry(sandbox, hosts, host, no_proxy, direct):
    origin = hosts(FakeRegistry(auth=None, hook=lambda seen: Reply(200, {}, BLOB) if "origin" in seen.path
                                else None))  # serves the model and, as the registry, its blob
    proxy = hosts(_proxy_answering_everything())
    _env(sandbox)
    url = f"http://{host}:{origin.port}/origin/{NAME}"
    sandbox.declare(Model(NAME, url), processor=PROC)
    sandbox.monkeypatch.setenv("HTTP_PROXY", proxy.origin)
    sandbox.monkeypatch.setenv("NO_PROXY", no_proxy.format(port=origin.port))
    outside = Outside(sandbox)
    r = sandbox.run("sync")
    _clean_exit(r, 0)
    _forget(sandbox)
    r = sandbox.run("sync", "--locked", "--registry", f"{host}:{origin.port}/{REPO_NAME}", "--registry-only")
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and outside.unchanged("project/models.lock")
    seen = [(s.method, s.path) for s in (origin if direct else proxy).seen]
    assert seen == [("GET", f"/origin/{NAME}"), ("HEAD", f"/v2/{REPO_NAME}/blobs/{DIGEST}"),
                    ("GET", f"/v2/{REPO_NAME}/blobs/{DIGEST}")]
    assert (proxy if direct else origin).seen == []


# -- 3. CA bundles: the same for the registry as for downloads ---------------------------------------------

@pytest.fixture
def tls_registry(tmp_path, hosts):
    """A bearer-token registry at https://registry.test (a certificate for that name only), reached through a
    recording HTTPS proxy; the token service is the registry's own origin."""
    cert, key = make_cert(tmp_path, "registry.test")
    registry = hosts(FakeRegistry(tls=(cert, key)))
    registry.realm = "https://registry.test/token"
    proxy = TunnelProxy({"registry.test:443": registry.port})
    yield registry, proxy, cert
    proxy.stop()


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_registry_client_trusts_the_ca_bundle_downloads_trust(sandbox, server, tls_registry, variable):
    registry, proxy, cert = tls_registry
    _env(sandbox)
    _locked(sandbox, server)
    _no_ca_variables(sandbox)
    sandbox.monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    outside = Outside(sandbox)
    r = sandbox.run("sync", "--locked", "--registry", f"registry.test/{REPO_NAME}", "--registry-only")
    _clean_exit(r, 3)  # the certificate is trusted by nothing yet
    assert "not trusted" in r.err and "SSL_CERT_FILE" in r.err and _installed(sandbox) is None
    sandbox.monkeypatch.setenv(variable, cert)
    r = sandbox.run("sync", "--locked", "--registry", f"registry.test/{REPO_NAME}", "--registry-only")
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and outside.unchanged()
    assert proxy.seen and all(line.startswith("CONNECT registry.test:443 ") for line in proxy.seen)
    methods = [(s.method, s.path) for s in registry.seen]
    assert ("GET", "/token") in methods and ("GET", f"/v2/{REPO_NAME}/blobs/{DIGEST}") in methods


# -- 4. registry calls are retried like downloads -----------------------------------------------------------

def _failing_first(times: int, reply: Reply, where: str):
    left = {"n": times}

    def hook(seen: Seen) -> Reply | None:
        if where in seen.path and seen.method in ("HEAD", "GET") and left["n"] > 0:
            left["n"] -= 1
            return reply
        return None

    return hook


@pytest.mark.parametrize("where,reply", [
    ("/blobs/", Reply(503, {"Retry-After": "1"})),
    ("/blobs/", Reply(502)),
    ("/token", Reply(429, {"Retry-After": "0"})),
    ("/token", Reply(500, {}, b"try again")),
])
def test_registry_calls_are_retried_on_5xx_and_429(sandbox, server, hosts, where, reply):
    registry = hosts(FakeRegistry(hook=_failing_first(2, reply, where)))
    _env(sandbox, MODELSYNC_RETRIES="3", MODELSYNC_BACKOFF="0.05")
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and outside.unchanged()
    failed = [s for s in registry.seen if where in s.path]
    assert len(failed) >= 3  # two answered with the fault, then one that got through


def test_registry_retries_stop_at_the_retry_count_and_say_why(sandbox, server, hosts):
    registry = hosts(FakeRegistry(hook=_failing_first(100, Reply(503), "/blobs/")))
    _env(sandbox, MODELSYNC_RETRIES="2", MODELSYNC_BACKOFF="0.05")
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 3)
    assert "HTTP 503 (after 3 attempt(s))" in r.err
    assert len([s for s in registry.seen if s.method == "HEAD"]) == 3  # retries = 2: three attempts
    assert _installed(sandbox) is None and outside.unchanged()


def test_a_registry_retry_after_beyond_max_retry_time_gives_up_at_once(sandbox, server, hosts):
    registry = hosts(FakeRegistry(hook=_failing_first(100, Reply(429, {"Retry-After": "3600"}), "/blobs/")))
    _env(sandbox, MODELSYNC_RETRIES="5", MODELSYNC_RETRY_MAX_TIME="30")
    _locked(sandbox, server)
    r = _pull(sandbox, registry)
    _clean_exit(r, 3)
    assert len([s for s in registry.seen if s.method == "HEAD"]) == 1
    assert "HTTP 429" in r.err and "retry after 3600 s" in r.err and "max_retry_time = 30" in r.err


def test_a_registry_name_that_does_not_resolve_is_asked_twice(sandbox, server):
    _env(sandbox, MODELSYNC_RETRIES="4", MODELSYNC_BACKOFF="0.05")
    _locked(sandbox, server)
    r = sandbox.run("sync", "--locked", "--registry", f"registry.invalid/{REPO_NAME}", "--registry-only")
    _clean_exit(r, 3)
    assert "after 2 attempt(s)" in r.err and _installed(sandbox) is None


# -- 5. Docker credential helpers --------------------------------------------------------------------------

HELPER = """#!{python}
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
name = os.path.basename(sys.argv[0]).removeprefix("docker-credential-")
server = sys.stdin.read()
with open(os.path.join(here, "calls.log"), "a") as log:
    log.write(json.dumps([name, sys.argv[1:], server]) + "\\n")
mode = open(os.path.join(here, name + ".mode")).read().strip()
if mode == "ok":
    print(json.dumps({{"ServerURL": server, "Username": "{user}", "Secret": "{secret}"}}))
elif mode == "notfound":
    print("credentials not found in native keychain")
    sys.exit(1)
elif mode == "fail":
    print("\\x1b[31mboom: the keyring is locked")
    sys.exit(3)
elif mode == "garbage":
    print("not json")
elif mode == "identity":
    print(json.dumps({{"ServerURL": server, "Username": "<token>", "Secret": "refresh-token"}}))
elif mode == "hang":
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.path.join(here, "pids"), "w").write(f"{{os.getpid()}} {{child.pid}}")
    time.sleep(600)
"""


@pytest.fixture
def helpers(sandbox):
    """Install docker-credential-NAME scripts on PATH; ``set(name, mode)`` says how each answers."""
    bindir = sandbox.root / "helpers"
    bindir.mkdir()
    sandbox.monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    class Helpers:
        dir = bindir

        def set(self, name: str, mode: str) -> None:
            script = bindir / f"docker-credential-{name}"
            script.write_text(HELPER.format(python=sys.executable, user=USER, secret=SECRET))
            script.chmod(script.stat().st_mode | stat.S_IXUSR)
            (bindir / f"{name}.mode").write_text(mode)

        def calls(self) -> list[list]:
            log = bindir / "calls.log"
            return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return Helpers()


def _docker_config(sandbox, config: dict) -> None:
    (sandbox.home / ".docker").mkdir(exist_ok=True)
    (sandbox.home / ".docker" / "config.json").write_text(json.dumps(config))


def _helper_env(sandbox) -> None:
    _env(sandbox)
    for var in ("MODELSYNC_REGISTRY_USERNAME", "MODELSYNC_REGISTRY_PASSWORD"):
        sandbox.monkeypatch.delenv(var)


@pytest.mark.parametrize("config", ["credsStore", "credHelpers"])
def test_a_credential_helper_gives_the_registry_login(sandbox, server, hosts, helpers, config):
    registry = hosts(FakeRegistry(auth="basic"))
    helpers.set("fake", "ok")
    helpers.set("other", "notfound")
    _helper_env(sandbox)
    _locked(sandbox, server)
    # credHelpers for the host wins over credsStore; an auths entry with another password loses to both.
    _docker_config(sandbox, {"auths": {registry.host: {"auth": base64.b64encode(b"stale:wrong").decode()}},
                             **({"credsStore": "fake"} if config == "credsStore" else
                                {"credsStore": "other", "credHelpers": {registry.host: "fake"}})})
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and outside.unchanged()
    assert helpers.calls() == [["fake", ["get"], registry.host]]  # asked once, with the server on stdin
    assert {_basic_user(s.headers.get("authorization")) for s in registry.seen if s.method == "GET"} == {(USER, SECRET)}


def test_an_auths_entry_is_used_when_the_helper_has_nothing(sandbox, server, hosts, helpers):
    registry = hosts(FakeRegistry(auth="basic"))
    helpers.set("fake", "notfound")
    _helper_env(sandbox)
    _locked(sandbox, server)
    _docker_config(sandbox, {"credsStore": "fake",
                             "auths": {registry.host: {"auth": base64.b64encode(f"{USER}:{SECRET}".encode()).decode()}}})
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and len(helpers.calls()) == 1


@pytest.mark.parametrize("mode,says", [
    ("missing", "docker-credential-missing, which is not on PATH"),
    ("fail", "docker-credential-fake failed (exit 3"),
    ("garbage", "docker-credential-fake answered no usable login"),
    ("identity", "identity token"),
    ("notfound", "no credentials were found"),
])
def test_a_broken_credential_helper_means_no_credentials_and_says_why(sandbox, server, hosts, helpers, mode, says):
    """Missing, failing or nonsensical helpers: the registry is asked without credentials (a public one still
    serves), and a refusal names the helper and what went wrong."""
    public = hosts(FakeRegistry(auth=None))
    private = hosts(FakeRegistry(auth="basic"))
    if mode != "missing":
        helpers.set("fake", mode)
    _helper_env(sandbox)
    _locked(sandbox, server)
    _docker_config(sandbox, {"credsStore": "missing" if mode == "missing" else "fake"})
    outside = Outside(sandbox)
    r = _pull(sandbox, public)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB
    assert helpers.calls() == []  # a registry that asks for no credentials never runs a helper
    _forget(sandbox)
    r = _pull(sandbox, private)
    _clean_exit(r, 3)
    assert says in r.err and "\x1b" not in r.err and "refresh-token" not in r.err
    assert _leaks(private) == [] and _installed(sandbox) is None and outside.unchanged()


def _gone(pid: int, wait: float = 10) -> bool:
    """The process has ended (a zombie counts as ended: init in a container may not reap it at once)."""
    import time

    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_a_hanging_credential_helper_is_stopped_with_its_children(sandbox, server, hosts, helpers):
    from ocrd_models.modelsync.oci import client as oci

    sandbox.monkeypatch.setattr(oci, "HELPER_TIMEOUT", 2.0)  # 30 s in real life: a passphrase prompt may wait
    registry = hosts(FakeRegistry(auth="basic"))
    helpers.set("fake", "hang")
    _helper_env(sandbox)
    _locked(sandbox, server)
    _docker_config(sandbox, {"credsStore": "fake"})
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 3)
    assert "docker-credential-fake did not answer within 2 s" in r.err
    for pid in map(int, (helpers.dir / "pids").read_text().split()):
        assert _gone(pid)  # the helper and what it started
    assert _installed(sandbox) is None and outside.unchanged()


def test_a_credential_helper_entry_for_the_token_service_is_used_there_only(sandbox, server, hosts, helpers):
    """GitLab-style: the realm is another origin the user logged in to through a helper."""
    def token_service(seen: Seen) -> Reply:
        if _basic_user(seen.headers.get("authorization")) == (USER, SECRET):
            return Reply(200, {}, json.dumps({"token": TOKEN}).encode())
        return Reply(401)

    realm = hosts(Host(token_service))
    registry = hosts(FakeRegistry(realm=f"{realm.origin}/token"))
    helpers.set("fake", "ok")
    _helper_env(sandbox)
    _locked(sandbox, server)
    _docker_config(sandbox, {"credHelpers": {realm.host: "fake"}})
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and outside.unchanged()
    assert [c[2] for c in helpers.calls()] == [realm.host]
    assert all(_basic_user(s.headers.get("authorization")) == (USER, SECRET) for s in realm.seen)
    assert not any(BASIC in s.headers.get("authorization", "") for s in registry.seen)


def test_push_uses_the_credential_helper_too(sandbox, server, hosts, helpers):
    registry = hosts(FakeRegistry(auth="basic"))
    registry.blobs.clear()
    helpers.set("fake", "ok")
    _helper_env(sandbox)
    _locked(sandbox, server)
    _docker_config(sandbox, {"credsStore": "fake"})
    r = _push(sandbox, registry)
    _clean_exit(r, 0)
    assert registry.blobs[DIGEST] == BLOB and _no_temp_left(sandbox)
