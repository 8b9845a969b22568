"""Hostile registries and token services, from the attacker's side.

A fake registry and an "other" host run on 127.0.0.1 on different ports (different origins). The
other host records every request it sees (request line, headers, body); it also serves as an HTTP
proxy, which is how a non-loopback host name (``auth.registry.test``) is reached over plain HTTP
without touching the machine's resolver. Every test asserts the documented exit code, that
nothing was written outside the sandbox's target, and that the registry password (and the token
the registry issued) never reached any origin but the registry's own.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import Model, sha256, tree_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from httpserver import POLL

PROC = "ocrd-kraken-recognize"
NAME = "m.mlmodel"
REPO_NAME = "ocr/models"
USER = "ci-user"
SECRET = "reg-Pa55-w0rd-7f3c91"
TOKEN = "tok.issued-for-the-registry.9d2e"
BASIC = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
BLOB = os.urandom(30_000)
DIGEST = f"sha256:{sha256(BLOB)}"
FAR_HOST = "auth.registry.test"  # not loopback: reached only through the recording proxy
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}  # README "Exit codes"; 1 means a bug


# -- servers -------------------------------------------------------------------------------------

@dataclass
class Seen:
    """One request as it arrived."""

    method: str
    target: str  # the path, or the absolute URL of a request sent to us as a proxy
    headers: dict[str, str]  # lower-case names
    raw: bytes  # request line, headers and body, for "is the secret anywhere in it"
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path


@dataclass
class Reply:
    """What a host answers: a status, headers and a body (bytes, or chunks of a declared length)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | Callable[[], Iterable[bytes]] = b""
    length: int | None = None  # Content-Length of a chunked (callable) body


class Host:
    """An HTTP server on ``bind`` (127.0.0.1) that records every request and answers with ``answer(seen)``;
    with ``tls`` (certificate and key files) it speaks HTTPS."""

    def __init__(self, answer: Callable[[Seen], Reply] | None = None, bind: str = "127.0.0.1",
                 tls: tuple[str, str] | None = None):
        self.seen: list[Seen] = []
        self.tls = tls
        self.answer = answer or (lambda seen: Reply(404))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                raw = self.requestline.encode("latin-1", "replace") + b"\r\n" + \
                    bytes(self.headers).replace(b"\n", b"\r\n") + body
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, raw, body)
                outer.seen.append(seen)
                reply = outer.answer(seen)
                self.close_connection = True
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    chunks = [reply.body] if isinstance(reply.body, bytes) else reply.body()
                    length = len(reply.body) if isinstance(reply.body, bytes) else reply.length
                    self.send_header("Content-Length", str(length))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        for chunk in chunks:
                            self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading, as it should for an oversized reply

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        class Quiet(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass

        self.httpd = Quiet((bind, 0), Handler)
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": POLL}, daemon=True).start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def host(self) -> str:
        return f"{self.httpd.server_address[0]}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _basic_user(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, pw


class FakeRegistry(Host):
    """Enough of the OCI distribution API for `sync --registry` and `push`, with hostile knobs.

    ``auth``: "bearer" (a token from ``realm``, default this registry's /token), "basic" or None.
    ``hook(seen)`` may answer any request first (the attack); None lets the registry answer.
    """

    def __init__(self, auth: str | None = "bearer", realm: str | None = None,
                 hook: Callable[[Seen], Reply | None] | None = None, **host: Any):
        self.auth, self.hook = auth, hook
        self.blobs: dict[str, bytes] = {DIGEST: BLOB}
        self.upload_location: str | None = None  # where POST /blobs/uploads/ sends the client
        self.blob_redirect: str | None = None  # a GET of a blob answers 307 to this URL
        super().__init__(self._answer, **host)
        self.realm = realm or f"{self.origin}/token"

    def _authorized(self, seen: Seen) -> bool:
        header = seen.headers.get("authorization")
        if self.auth == "bearer":
            return header == f"Bearer {TOKEN}"
        if self.auth == "basic":
            return _basic_user(header) == (USER, SECRET)
        return True

    def _answer(self, seen: Seen) -> Reply:
        reply = self.hook(seen) if self.hook else None
        if reply is not None:
            return reply
        if seen.path == "/token":
            if _basic_user(seen.headers.get("authorization")) != (USER, SECRET):
                return Reply(401)
            return Reply(200, {"Content-Type": "application/json"}, json.dumps({"token": TOKEN}).encode())
        if not self._authorized(seen):
            challenge = (f'Bearer realm="{self.realm}",service="fake",scope="repository:{REPO_NAME}:pull"'
                         if self.auth == "bearer" else 'Basic realm="fake"')
            return Reply(401, {"WWW-Authenticate": challenge})
        return self._api(seen)

    def _api(self, seen: Seen) -> Reply:
        prefix = f"/v2/{REPO_NAME}"
        path = seen.path
        if path.startswith(f"{prefix}/blobs/sha256:"):
            data = self.blobs.get(path.rsplit("/", 1)[1])
            if data is None:
                return Reply(404)
            if seen.method == "HEAD":
                return Reply(200)
            if self.blob_redirect:
                return Reply(307, {"Location": self.blob_redirect})
            return Reply(200, {}, data)
        if path == f"{prefix}/blobs/uploads/" and seen.method == "POST":
            return Reply(202, {"Location": self.upload_location or f"{prefix}/blobs/uploads/u1"})
        if path.startswith(f"{prefix}/blobs/uploads/") and seen.method in ("PUT", "PATCH"):
            return accept_upload(self, seen)
        if path.startswith(f"{prefix}/manifests/") and seen.method == "PUT":
            return Reply(201)
        return Reply(404)


def accept_upload(registry: FakeRegistry, seen: Seen) -> Reply:
    """Store an uploaded blob under the digest its PUT names."""
    if seen.method == "PATCH":
        return Reply(202, {"Location": seen.target})
    digest = parse_qs(urlsplit(seen.target).query).get("digest", [""])[0]
    registry.blobs[digest] = seen.body
    return Reply(201)


@pytest.fixture
def hosts():
    started: list[Host] = []

    def start(host: Host) -> Host:
        started.append(host)
        return host

    yield start
    for h in started:
        h.stop()


# -- the sandbox ---------------------------------------------------------------------------------

def _env(sandbox, **extra: str) -> None:
    mp = sandbox.monkeypatch
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                "no_proxy", "MODELSYNC_TOKENS", "MODELSYNC_REGISTRY", "MODELSYNC_REGISTRY_ONLY", "DOCKER_CONFIG",
                "MODELSYNC_REGISTRY_REALMS", "NETRC"):
        mp.delenv(var, raising=False)
    mp.setenv("MODELSYNC_REGISTRY_USERNAME", USER)
    mp.setenv("MODELSYNC_REGISTRY_PASSWORD", SECRET)
    mp.setenv("MODELSYNC_RETRIES", "0")
    mp.setenv("MODELSYNC_CONNECT_TIMEOUT", "5")
    mp.setenv("MODELSYNC_READ_TIMEOUT", "20")
    for k, v in extra.items():
        mp.setenv(k, v)


def _locked(sandbox, server, settings: str = "", network: str = "") -> None:
    """A project whose lock records BLOB; then the installed copy and the cache are forgotten."""
    url = server.add(f"/origin/{NAME}", BLOB)
    sandbox.declare(Model(NAME, url), processor=PROC, settings=settings, network=network)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    _forget(sandbox)


def _forget(sandbox) -> None:
    import shutil

    (sandbox.data_dir(PROC) / NAME).unlink(missing_ok=True)
    shutil.rmtree(sandbox.cache, ignore_errors=True)


def _pull(sandbox, registry: Host, *more: str):
    return sandbox.run("sync", "--locked", "--registry", f"{registry.host}/{REPO_NAME}", "--registry-only", *more)


def _push(sandbox, registry: Host):
    return sandbox.run("push", f"{registry.host}/{REPO_NAME}:v1")


class Outside:
    """Everything a command must leave alone: the user's files, the project, and a canary dir beside them."""

    def __init__(self, sandbox):
        self.sandbox = sandbox
        self.canary = sandbox.root / "outside"
        self.canary.mkdir(exist_ok=True)
        (self.canary / "canary.txt").write_text("untouched")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, bytes]:
        files = {}
        for part in ("home", "config", "system", "tessdata", "project", "outside"):
            files.update({f"{part}/{k}": v for k, v in tree_files(self.sandbox.root / part).items()})
        return files

    def unchanged(self, *written: str) -> bool:
        """Nothing changed but the files named in ``written`` (e.g. ``project/models.lock``)."""
        now = self.snapshot()
        return {k: v for k, v in now.items() if k not in written} == \
            {k: v for k, v in self.before.items() if k not in written}


def _leaks(host: Host, secrets: Iterable[str] = (SECRET, BASIC, TOKEN)) -> list[str]:
    """Requests that reached ``host`` carrying an Authorization header or any secret anywhere."""
    out = []
    for s in host.seen:
        if "authorization" in s.headers or any(x.encode() in s.raw for x in secrets):
            out.append(s.raw[:300].decode("latin-1"))
    return out


def _installed(sandbox) -> bytes | None:
    path = sandbox.data_dir(PROC) / NAME
    return path.read_bytes() if path.exists() else None


def _no_temp_left(sandbox) -> bool:
    d = sandbox.data_dir(PROC)
    return not d.exists() or not any(".modelsync-tmp" in p.name for p in d.iterdir())


def _clean_exit(r, *codes: int, echoed: bool = False) -> None:
    """The exit code is one of ``codes``, no traceback, and no secret printed (``echoed``: the registry itself
    sent the token back in a body it then had quoted, which is no leak of ours)."""
    assert r.code in codes, (r.code, r.err)
    assert "Traceback" not in r.err and "unexpected" not in r.err, r.err
    assert SECRET not in r.out + r.err and BASIC not in r.out + r.err
    assert echoed or TOKEN not in r.out + r.err


# -- 3. credentials stay with their origin ------------------------------------------------------

def test_a_token_realm_on_another_origin_gets_no_password(sandbox, server, hosts):
    other = hosts(Host(lambda seen: Reply(401)))  # a token service that wants credentials
    registry = hosts(FakeRegistry(realm=f"{other.origin}/token"))
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 3)
    assert other.seen, "the client never asked the realm: the test proves nothing"
    assert _leaks(other) == []
    assert other.host in r.err and "MODELSYNC_REGISTRY_REALMS" in r.err  # says why, and how to trust it
    assert _installed(sandbox) is None and _no_temp_left(sandbox) and outside.unchanged()
    # The user may say that realm belongs to the registry: then (and only then) it gets the login.
    sandbox.monkeypatch.setenv("MODELSYNC_REGISTRY_REALMS", other.host)
    other.seen.clear()
    assert _pull(sandbox, registry).code == 3  # it still refuses us, but now it saw the login
    assert [_basic_user(s.headers.get("authorization")) for s in other.seen] == [(USER, SECRET)]


def test_a_netrc_login_is_never_added_by_requests(sandbox, server, hosts):
    """requests' trust_env would add a ~/.netrc login by host name alone, on any port: it must not."""
    netrc_secret = "netrc-Secret-31337"
    other = hosts(Host(lambda seen: Reply(401)))
    registry = hosts(FakeRegistry(realm=f"{other.origin}/token"))
    _env(sandbox)
    _locked(sandbox, server)
    sandbox.monkeypatch.delenv("MODELSYNC_REGISTRY_USERNAME")  # no registry login: nothing of ours to send
    sandbox.monkeypatch.delenv("MODELSYNC_REGISTRY_PASSWORD")
    (sandbox.home / ".netrc").write_text(f"machine 127.0.0.1 login netrc-user password {netrc_secret}\n")
    os.chmod(sandbox.home / ".netrc", 0o600)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 3)
    assert other.seen and registry.seen
    netrc_basic = base64.b64encode(f"netrc-user:{netrc_secret}".encode()).decode()
    assert _leaks(other, (netrc_secret, netrc_basic)) == []
    # A netrc entry without a port is for the default port: not even this registry (another port) gets it.
    assert _leaks(registry, (netrc_secret, netrc_basic)) == []
    assert netrc_secret not in r.err and outside.unchanged()


def test_a_docker_login_for_the_realm_host_is_sent_there(sandbox, server, hosts):
    """GitLab-style: the token service is another origin the user logged in to; it gets that login only."""
    realm_user, realm_pw = "realm-user", "realm-pass-55"

    def token_service(seen: Seen) -> Reply:
        if _basic_user(seen.headers.get("authorization")) == (realm_user, realm_pw):
            return Reply(200, {}, json.dumps({"access_token": TOKEN}).encode())
        return Reply(401)

    other = hosts(Host(token_service))
    registry = hosts(FakeRegistry(realm=f"{other.origin}/token"))
    _env(sandbox)
    _locked(sandbox, server)
    (sandbox.home / ".docker").mkdir()
    auth = base64.b64encode(f"{realm_user}:{realm_pw}".encode()).decode()
    (sandbox.home / ".docker" / "config.json").write_text(json.dumps({"auths": {other.host: {"auth": auth}}}))
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and outside.unchanged()
    # The realm got its own login, never the registry's password (nor the token it issued back to it).
    assert other.seen and all(_basic_user(s.headers.get("authorization")) == (realm_user, realm_pw)
                              for s in other.seen)
    assert not any(x.encode() in s.raw for s in other.seen for x in (SECRET, BASIC))


def test_a_plain_http_realm_on_a_remote_host_gets_no_credentials_unless_allowed(sandbox, server, hosts):
    proxy = hosts(Host(lambda seen: Reply(401)))  # stands in for http://auth.registry.test
    registry = hosts(FakeRegistry(realm=f"http://{FAR_HOST}/token"))
    _env(sandbox, HTTP_PROXY=proxy.origin, NO_PROXY="127.0.0.1,localhost")
    _locked(sandbox, server)
    # The user even logged in to that host; plain HTTP to a remote host still never carries it.
    (sandbox.home / ".docker").mkdir()
    auth = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    (sandbox.home / ".docker" / "config.json").write_text(json.dumps({"auths": {FAR_HOST: {"auth": auth}}}))
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 3)
    assert [s.target.split("?")[0] for s in proxy.seen] == [f"http://{FAR_HOST}/token"]
    assert _leaks(proxy) == []
    assert "plain HTTP" in r.err and "allow_http" in r.err
    assert _installed(sandbox) is None and outside.unchanged()
    # Allowed by the user: now the login for that host goes there (and only its own login).
    _locked(sandbox, server, settings=f'allow_http = ["{FAR_HOST}"]')
    proxy.seen.clear()
    _pull(sandbox, registry)
    assert [_basic_user(s.headers.get("authorization")) for s in proxy.seen] == [(USER, SECRET)]


def test_an_upload_location_on_another_origin_gets_no_authorization(sandbox, server, hosts):
    other = hosts(Host())
    registry = hosts(FakeRegistry(auth="basic"))  # basic: every registry request carries the password
    other.answer = lambda seen: accept_upload(registry, seen)
    registry.blobs.clear()  # everything is uploaded
    registry.upload_location = f"{other.origin}/upload/u1"
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _push(sandbox, registry)
    _clean_exit(r, 0)  # the registry chose where the bytes go; they went there, without our login
    assert [s.method for s in other.seen] == ["PUT", "PUT"]  # the model and the config blob
    assert _leaks(other) == []
    assert registry.blobs[DIGEST] == BLOB
    assert outside.unchanged()


def test_an_upload_location_over_plain_http_to_a_remote_host_is_refused(sandbox, server, hosts):
    proxy = hosts(Host(lambda seen: Reply(201)))
    registry = hosts(FakeRegistry(auth="basic"))
    registry.blobs.clear()
    registry.upload_location = f"http://{FAR_HOST}/upload/u1"
    _env(sandbox, HTTP_PROXY=proxy.origin, NO_PROXY="127.0.0.1,localhost")
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _push(sandbox, registry)
    _clean_exit(r, 3)
    assert proxy.seen == [] and "plain HTTP" in r.err and "allow_http" in r.err
    assert outside.unchanged()


def test_a_blob_redirect_to_another_origin_carries_no_token(sandbox, server, hosts):
    other = hosts(Host(lambda seen: Reply(200, {}, BLOB)))
    registry = hosts(FakeRegistry())
    registry.blob_redirect = f"{other.origin}/storage/blob"
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB  # verified by its digest, wherever it came from
    assert [s.path for s in other.seen] == ["/storage/blob"] and _leaks(other) == []
    assert any(s.headers.get("authorization") == f"Bearer {TOKEN}" for s in registry.seen if s.method == "GET")
    assert outside.unchanged()


def test_a_blob_redirect_to_the_same_host_on_another_port_carries_no_token(sandbox, server, hosts):
    other = hosts(Host(lambda seen: Reply(200, {}, BLOB)))
    registry = hosts(FakeRegistry(auth="basic"))
    # The same host name as the registry, only the port differs: another origin all the same.
    registry.blob_redirect = f"http://127.0.0.1:{other.port}/storage/blob"
    _env(sandbox)
    _locked(sandbox, server)
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and other.seen and _leaks(other) == []


def test_a_credentials_file_entry_with_a_port_is_for_that_origin_only(sandbox, server, hosts):
    other = hosts(Host(lambda seen: Reply(200, {}, b"second model")))
    a_url = server.add("/a.bin", b"first model")
    b_url = f"{other.origin}/b.bin"
    cfg = sandbox.config / "ocrd-modelsync" / "credentials.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'["127.0.0.1:{server.httpd.server_address[1]}"]\ntoken = "{TOKEN}"\n'
                   f'["127.0.0.1"]\nusername = "{USER}"\npassword = "{SECRET}"\n')  # no port: https, 443
    _env(sandbox)
    sandbox.declare(Model("a.bin", a_url), Model("b.bin", b_url), processor=PROC)
    outside = Outside(sandbox)
    r = sandbox.run("sync")
    _clean_exit(r, 0)
    assert [h.get("Authorization") for p, h in server.headers_seen if p == "/a.bin"] == [f"Bearer {TOKEN}"]
    assert other.seen and _leaks(other) == []  # same host, other port: neither the token nor the login
    assert outside.unchanged("project/models.lock")


def test_a_download_over_plain_http_to_a_remote_host_carries_no_credentials(sandbox, server, hosts):
    """Plain HTTP to another machine is readable on the way: a token for that host is not sent there."""
    proxy = hosts(Host(lambda seen: Reply(200, {}, BLOB)))  # stands in for http://auth.registry.test
    _env(sandbox, HTTP_PROXY=proxy.origin, NO_PROXY="127.0.0.1,localhost",
         MODELSYNC_TOKENS=f"{FAR_HOST}={TOKEN} {FAR_HOST}:80={TOKEN}")
    sandbox.declare(Model(NAME, f"http://{FAR_HOST}/m"), processor=PROC)
    outside = Outside(sandbox)
    r = sandbox.run("sync")
    _clean_exit(r, 0)
    assert [s.target for s in proxy.seen] == [f"http://{FAR_HOST}/m"] and _leaks(proxy) == []
    assert _installed(sandbox) == BLOB and outside.unchanged("project/models.lock")


def test_a_malformed_credentials_key_is_a_clear_user_error(sandbox, server):
    cfg = sandbox.config / "ocrd-modelsync" / "credentials.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'["https://example.org/path"]\ntoken = "{TOKEN}"\n')
    _env(sandbox)
    sandbox.declare(Model("a.bin", server.add("/a", b"x")), processor=PROC)
    r = sandbox.run("sync")
    _clean_exit(r, 2)
    assert "credentials.toml" in r.err and "HOST:PORT" in r.err and server.count("/a") == 0


# -- 3b. one URL parser: URLs other parsers read differently never carry credentials ---------------
#
# urllib.parse reads http://EVIL\\@TRUSTED/x as host TRUSTED, urllib3 (which sends the request) as host
# EVIL. Before the fix, credentials were chosen by the first and the request sent by the second.

VICTIM_USER, VICTIM_SECRET = "victim", "ghcr-Victim-Secret-0d1e"
VICTIM_BASIC = base64.b64encode(f"{VICTIM_USER}:{VICTIM_SECRET}".encode()).decode()


def _docker_auths(sandbox, host: str, user: str, password: str) -> None:
    (sandbox.home / ".docker").mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (sandbox.home / ".docker" / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))


def test_a_backslash_realm_never_gets_another_registrys_docker_login(sandbox, server, hosts):
    """A hostile registry names the realm http://EVIL\\@VICTIM/token to be sent the user's login for VICTIM."""
    victim = hosts(Host(lambda seen: Reply(401), bind="127.0.0.2"))  # stands in for ghcr.io
    evil = hosts(FakeRegistry())
    evil.realm = f"http://{evil.host}\\@{victim.host}/token"
    _env(sandbox)
    for var in ("MODELSYNC_REGISTRY_USERNAME", "MODELSYNC_REGISTRY_PASSWORD"):
        sandbox.monkeypatch.delenv(var)
    _locked(sandbox, server)
    _docker_auths(sandbox, victim.host, VICTIM_USER, VICTIM_SECRET)
    outside = Outside(sandbox)
    r = _pull(sandbox, evil)
    _clean_exit(r, 3)
    assert "backslash" in r.err and VICTIM_SECRET not in r.err
    assert _leaks(evil, (VICTIM_SECRET, VICTIM_BASIC)) == [] and victim.seen == []
    assert [s.method for s in evil.seen] == ["HEAD"]  # nothing was sent after the challenge
    assert _installed(sandbox) is None and _no_temp_left(sandbox) and outside.unchanged()


def test_a_backslash_realm_over_https_never_gets_the_users_login_elsewhere(sandbox, server, hosts, tmp_path):
    """The attack as found: registry.evil.test (HTTPS, a trusted certificate) names the realm
    https://registry.evil.test\\@ghcr.test/token to be sent the user's ~/.docker login for ghcr.test."""
    from httpserver import TunnelProxy, make_cert

    evil_cert, ghcr_cert = make_cert(tmp_path, "registry.evil.test"), make_cert(tmp_path, "ghcr.test")
    ghcr = hosts(Host(lambda seen: Reply(401), tls=ghcr_cert))
    evil = hosts(FakeRegistry(tls=evil_cert))
    evil.realm = "https://registry.evil.test\\@ghcr.test/token"
    proxy = TunnelProxy({"registry.evil.test:443": evil.port, "ghcr.test:443": ghcr.port})
    try:
        bundle = tmp_path / "trusted.pem"
        bundle.write_text(open(evil_cert[0]).read() + open(ghcr_cert[0]).read())
        _env(sandbox)
        for var in ("MODELSYNC_REGISTRY_USERNAME", "MODELSYNC_REGISTRY_PASSWORD"):
            sandbox.monkeypatch.delenv(var)
        _locked(sandbox, server)
        _docker_auths(sandbox, "ghcr.test", VICTIM_USER, VICTIM_SECRET)
        sandbox.monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        sandbox.monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        outside = Outside(sandbox)
        r = sandbox.run("sync", "--locked", "--registry", f"registry.evil.test/{REPO_NAME}", "--registry-only")
    finally:
        proxy.stop()
    _clean_exit(r, 3)
    assert "backslash" in r.err and VICTIM_SECRET not in r.err
    assert evil.seen and _leaks(evil, (VICTIM_SECRET, VICTIM_BASIC)) == [] and ghcr.seen == []
    assert all(line.startswith("CONNECT registry.evil.test:443 ") for line in proxy.seen)
    assert _installed(sandbox) is None and outside.unchanged()


def test_a_backslash_token_redirect_never_gets_the_registry_login(sandbox, server, hosts):
    """The registry's own token service (which may have the login) redirects to http://EVIL\\@REGISTRY/..."""
    evil = hosts(Host(lambda seen: Reply(200, {}, json.dumps({"token": "stolen"}).encode())))

    def hook(seen: Seen) -> Reply | None:
        if seen.path == "/token":
            return Reply(307, {"Location": f"http://{evil.host}\\@{registry.host}/token2?x=1"})
        return None

    registry = hosts(FakeRegistry(hook=hook))
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 3)
    assert "backslash" in r.err
    assert evil.seen == []  # not even asked, let alone with the login
    assert [s.path for s in registry.seen] == [f"/v2/{REPO_NAME}/blobs/{DIGEST}", "/token"]
    assert _installed(sandbox) is None and outside.unchanged()


def test_a_backslash_upload_location_never_gets_the_push_password(sandbox, server, hosts):
    """push: the registry answers the upload's POST with Location http://OTHER\\@REGISTRY/... (basic auth: every
    request to the registry's origin carries the password)."""
    other = hosts(Host(lambda seen: Reply(500)))
    registry = hosts(FakeRegistry(auth="basic", bind="127.0.0.2"))
    registry.blobs.clear()
    registry.upload_location = f"http://{other.host}\\@{registry.host}/v2/{REPO_NAME}/blobs/uploads/abc"
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _push(sandbox, registry)
    _clean_exit(r, 3)
    assert "backslash" in r.err and "upload" in r.err
    assert other.seen == [] and not any(s.method == "PUT" for s in registry.seen)
    assert outside.unchanged()


@pytest.mark.parametrize("where", ["realm", "upload"])
def test_user_info_in_a_realm_or_upload_location_is_refused(sandbox, server, hosts, where):
    other = hosts(Host(lambda seen: Reply(401)))
    registry = hosts(FakeRegistry(auth="bearer" if where == "realm" else "basic"))
    if where == "realm":
        registry.realm = f"http://{USER}:{SECRET}@{other.host}/token"
    else:
        registry.blobs.clear()
        registry.upload_location = f"http://{USER}:{SECRET}@{other.host}/upload/u1"
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry) if where == "realm" else _push(sandbox, registry)
    _clean_exit(r, 3)
    assert "user info" in r.err and other.seen == [] and outside.unchanged()


def _proxy_for_everything(seen: Seen) -> Reply:
    """A recording HTTP proxy (a remote machine in real life) that asks registry calls for a login and serves
    anything else."""
    if "/v2/" in seen.target and "authorization" not in seen.headers:
        return Reply(401, {"WWW-Authenticate": 'Basic realm="r"'})
    return Reply(404) if "/v2/" in seen.target else Reply(200, {}, BLOB)


def test_credentials_for_loopback_never_go_through_a_proxy_in_clear(sandbox, server, hosts):
    """Loopback is trusted with plain HTTP because its bytes never leave the machine: through HTTP_PROXY they
    do. The download token and the registry password stay home; the proxy still serves what needs none."""
    proxy = hosts(Host(_proxy_for_everything))
    _env(sandbox, HTTP_PROXY=proxy.origin, MODELSYNC_TOKENS=f"localhost:8080={TOKEN}")
    sandbox.declare(Model(NAME, "http://localhost:8080/m"), processor=PROC)
    outside = Outside(sandbox)
    r = sandbox.run("sync")
    _clean_exit(r, 0)
    assert [s.target for s in proxy.seen] == ["http://localhost:8080/m"]
    _forget(sandbox)
    r = sandbox.run("sync", "--frozen", "--registry", f"127.0.0.1:5000/{REPO_NAME}", "--registry-only")
    _clean_exit(r, 3)
    assert "NO_PROXY" in r.err and "127.0.0.1" in r.err
    assert [s.method for s in proxy.seen] == ["GET", "HEAD"]  # asked for a login, and not given one
    assert _leaks(proxy) == []
    assert _installed(sandbox) is None and outside.unchanged("project/models.lock")


def test_credentials_for_loopback_go_directly_when_no_proxy_names_it(sandbox, server, hosts):
    proxy = hosts(Host(_proxy_for_everything))
    registry = hosts(FakeRegistry(auth="basic"))
    _env(sandbox, HTTP_PROXY=proxy.origin, NO_PROXY="127.0.0.0/8")
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 0)
    assert _installed(sandbox) == BLOB and proxy.seen == [] and outside.unchanged()
    assert any(_basic_user(s.headers.get("authorization")) == (USER, SECRET) for s in registry.seen)


# -- 3c. every registry call is bounded in time ------------------------------------------------------

def _cli(sandbox, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI in a subprocess: a hang fails the test at ``timeout`` (the bound under test is ~10 s)."""
    main = "import sys; from ocrd_models.modelsync.cli import main; sys.argv[0] = 'modelsync'; main()"
    try:
        return subprocess.run([sys.executable, "-c", main, *args], cwd=sandbox.project, env=sandbox.env(),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"modelsync {' '.join(args)} still running after {timeout} s")


def _trickle(data: bytes, delay: float = 0.5):
    for i in range(len(data)):
        yield data[i:i + 1]
        yield delay


@pytest.mark.parametrize("where", ["head", "token-body", "error-body", "chunked-error"])
def test_a_registry_trickling_its_replies_is_cut(sandbox, server, raw, where):
    """connect_timeout = read_timeout = 2 and max_retry_time = 5: every reply is cut after 4 s (each byte
    arrives well within read_timeout: only a bound on the whole reply ends it)."""
    from httpserver import http_head

    def respond(req):
        if where == "head":
            return _trickle(http_head(404, {"X-Pad": "p" * 300, "Content-Length": 0}))
        if req.target.startswith("/token"):
            body = json.dumps({"token": TOKEN, "padding": "p" * 200}).encode()
            return [http_head(200, {"Content-Length": len(body)}), *_trickle(body)]
        if where == "token-body":
            realm = f"http://{registry.base.split('//')[1]}/token"
            return [http_head(401, {"WWW-Authenticate": f'Bearer realm="{realm}"', "Content-Length": 0})]
        if req.method == "HEAD":
            return [http_head(404, {"Content-Length": 0})]
        if where == "error-body":
            return [http_head(400, {"Content-Length": 300}), *_trickle(b"e" * 300)]
        return [http_head(400, {"Transfer-Encoding": "chunked"}), b"1\r\ne\r\n", *_trickle(b"1;" + b"x" * 300)]

    registry = raw(respond)
    _env(sandbox)
    _locked(sandbox, server, network="connect_timeout = 2\nread_timeout = 2\nmax_retry_time = 5")
    for var in ("MODELSYNC_CONNECT_TIMEOUT", "MODELSYNC_READ_TIMEOUT", "MODELSYNC_RETRIES"):
        sandbox.monkeypatch.delenv(var)
    outside = Outside(sandbox)
    host = registry.base.split("//")[1]
    args = (["push", f"{host}/{REPO_NAME}:v1"] if where in ("error-body", "chunked-error") else
            ["sync", "--locked", "--registry", f"{host}/{REPO_NAME}", "--registry-only"])
    proc = _cli(sandbox, *args)
    assert proc.returncode == 3, proc.stderr
    assert "within 4 s" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert _installed(sandbox) is None and outside.unchanged()




# -- 5. bounded replies, in a process whose address space is capped ------------------------------

GIANT = 400 << 20
LIMIT_AS = 512 << 20  # a sync needs ~40 MiB of address space; 400 MiB read twice does not fit


def _giant_json() -> Iterable[bytes]:
    yield b'{"token": "'
    block = b"a" * (1 << 20)
    for _ in range((GIANT >> 20) - 1):
        yield block
    yield b"a" * ((1 << 20) - 13) + b'"}'


ERROR_BLOCK = b"error " * 174_763  # 1 MiB and a bit
ERROR_LENGTH = GIANT // len(ERROR_BLOCK) * len(ERROR_BLOCK)


def _giant_text() -> Iterable[bytes]:
    for _ in range(GIANT // len(ERROR_BLOCK)):
        yield ERROR_BLOCK


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def _run_capped(sandbox, *args: str) -> subprocess.CompletedProcess:
    env = {**sandbox.env(), "MALLOC_ARENA_MAX": "2"}  # glibc's per-thread arenas reserve address space
    main = "import sys; from ocrd_models.modelsync.cli import main; sys.argv[0] = 'modelsync'; main()"
    return subprocess.run([sys.executable, "-c", main, *args], cwd=sandbox.project, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_memory)


@pytest.mark.parametrize("where", ["token-json", "token-error", "upload-error", "manifest-error"])
def test_giant_replies_are_refused_within_bounded_memory(sandbox, server, hosts, where):
    def hook(seen: Seen) -> Reply | None:
        if where == "token-json" and seen.path == "/token":
            return Reply(200, {"Content-Type": "application/json"}, _giant_json, GIANT)
        if where == "token-error" and seen.path == "/token":
            return Reply(503, {}, _giant_text, ERROR_LENGTH)
        if where == "upload-error" and seen.method == "POST":
            return Reply(500, {}, _giant_text, ERROR_LENGTH)
        if where == "manifest-error" and "/manifests/" in seen.path:
            return Reply(400, {}, _giant_text, ERROR_LENGTH)
        return None

    registry = hosts(FakeRegistry(hook=hook))
    registry.blobs.clear()  # push has everything to upload
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    args = (["push", f"{registry.host}/{REPO_NAME}:v1"] if where in ("upload-error", "manifest-error") else
            ["sync", "--locked", "--registry", f"{registry.host}/{REPO_NAME}", "--registry-only"])
    if where == "token-json":
        registry.blobs[DIGEST] = BLOB
    proc = _run_capped(sandbox, *args)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    assert "MemoryError" not in proc.stderr and len(proc.stderr) < 5000
    assert SECRET not in proc.stderr + proc.stdout
    assert _installed(sandbox) is None and outside.unchanged()


# -- 7. malformed token replies: exit 3, never 1 -------------------------------------------------

TOKEN_REPLIES = {
    "json-list": b'["token", "x"]',
    "deep-nesting": b'{"token": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "deep-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "token-number": b'{"token": 12345}',
    "token-object": b'{"token": {"a": "b"}, "access_token": ["c"]}',
    "token-newline": b'{"token": "abc\\r\\nX-Injected: 1"}',
    "token-empty": b'{"token": ""}',
    "not-utf8": b'{"token": "\xff\xfe\xfa"}',
    "utf16-garbage": b"\xff\xfe{\x00\"\x00",
    "nul-bytes": b"\x00" * 1000,
}


@pytest.mark.parametrize("case", sorted(TOKEN_REPLIES))
def test_a_malformed_token_reply_is_a_network_error(sandbox, server, hosts, case):
    body = TOKEN_REPLIES[case]
    registry = hosts(FakeRegistry(hook=lambda seen: Reply(200, {}, body) if seen.path == "/token" else None))
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _pull(sandbox, registry)
    _clean_exit(r, 3)
    assert "token" in r.err and registry.host in r.err
    assert "X-Injected" not in "".join(s.raw.decode("latin-1") for s in registry.seen)
    assert _installed(sandbox) is None and outside.unchanged()


@pytest.mark.parametrize("body", [b"\xff\xfe\x1b[31mred\x00\x9b", "fehler: ä".encode("latin-1"), b"\x80" * 5000])
def test_a_non_utf8_error_body_is_a_network_error(sandbox, server, hosts, body):
    registry = hosts(FakeRegistry(hook=lambda seen: Reply(400, {}, body) if seen.method == "POST" else None))
    registry.blobs.clear()
    _env(sandbox)
    _locked(sandbox, server)
    outside = Outside(sandbox)
    r = _push(sandbox, registry)
    _clean_exit(r, 3)
    assert "HTTP 400" in r.err and "\x1b" not in r.err and "\x00" not in r.err and len(r.err) < 2000
    assert outside.unchanged()


# -- fuzz: random replies from the registry and its token endpoint ---------------------------------

_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60) | \
    st.sampled_from(["\x1b[31m", "a\x00b", "\x7f", ""])
_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["token", "access_token", "expires_in", "x"]) | st.text(max_size=5), inner, max_size=4),
    max_leaves=12)
_bodies = st.one_of(
    st.binary(max_size=2000),
    _json.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.sampled_from(["token", "access_token"]), _json).map(lambda kv: json.dumps(dict([kv])).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"token":' * n),
    st.just(json.dumps({"token": TOKEN}).encode()),
    st.just(BLOB))


def _where(registry: str, other: str):
    """A realm or a Location: mostly usable ones (this registry, another origin, a remote plain-HTTP host)."""
    return st.sampled_from([f"{registry}/token", f"{registry}/token", f"{other}/token", f"{other}/upload",
                            f"http://{FAR_HOST}/token", f"/v2/{REPO_NAME}/blobs/uploads/u2", "ftp://x/token",
                            "http://[::1", "http://127.0.0.1:99999/t", "", f"{other}/t?x=\x1b"]) | _header_text


@st.composite
def _challenges(draw, registry: str, other: str) -> str:
    scheme = draw(st.sampled_from(["Bearer", "Bearer", "Basic", "bearer", "Negotiate", ""]))
    realm = draw(_where(registry, other))
    extra = draw(st.sampled_from(["", ',service="s"', ',scope="repository:x:pull"', ',realm="dup"', ", Basic x"]))
    return draw(st.sampled_from([f'{scheme} realm="{realm}"{extra}', realm]))


@st.composite
def _replies(draw, registry: str, other: str, statuses: list[int]) -> Reply:
    status = draw(st.sampled_from(statuses) | st.integers(100, 599))
    headers = {}
    if status == 401 or draw(st.booleans()):
        headers["WWW-Authenticate"] = draw(_challenges(registry, other))
    if status in (201, 202, 301, 302, 307, 308) or draw(st.booleans()):
        headers["Location"] = draw(_where(registry, other))
    return Reply(status, headers, draw(_bodies))


API_STATUSES = [401, 401, 200, 201, 202, 307, 404, 500]
TOKEN_STATUSES = [200, 200, 200, 401, 302, 500]


def _scripted(api: list[Reply], token: list[Reply]) -> Callable[[Seen], Reply | None]:
    """Answer the first requests from the scripts (token endpoint and API apart); then the registry answers
    as a registry would."""
    api_it, token_it = iter(api), iter(token)
    return lambda seen: next(token_it if seen.path == "/token" else api_it, None)


@pytest.mark.parametrize("command", ["sync", "push"])
def test_random_registry_and_token_replies_never_crash_nor_leak(sandbox, server, hosts, command):
    _env(sandbox, MODELSYNC_READ_TIMEOUT="5")
    proxy = hosts(Host(lambda seen: Reply(200, {}, json.dumps({"token": "far"}).encode())))
    other = hosts(Host(lambda seen: Reply(401)))
    sandbox.monkeypatch.setenv("HTTP_PROXY", proxy.origin)
    sandbox.monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    _locked(sandbox, server)
    registry = hosts(FakeRegistry())
    outside = Outside(sandbox)
    reg, oth = registry.origin, other.origin

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(api=st.lists(_replies(reg, oth, API_STATUSES), min_size=1, max_size=6),
           token=st.lists(_replies(reg, oth, TOKEN_STATUSES), max_size=3),
           other_reply=_replies(reg, oth, TOKEN_STATUSES))
    def run(api, token, other_reply):
        registry.hook = _scripted(api, token)
        registry.blobs = {DIGEST: BLOB} if command == "sync" else {}
        other.answer = lambda seen: other_reply
        other.seen.clear()
        proxy.seen.clear()
        if command == "sync":
            _forget(sandbox)
        r = _pull(sandbox, registry) if command == "sync" else _push(sandbox, registry)
        assert r.code in DOCUMENTED and r.code != 1, r.err
        # An error body the registry sent is quoted (escaped) in the message: the token in it is its own echo.
        echoed = any(isinstance(x.body, bytes) and TOKEN.encode() in x.body for x in [*api, *token, other_reply])
        _clean_exit(r, r.code, echoed=echoed)
        assert _leaks(other) == [] and _leaks(proxy) == []
        assert outside.unchanged() and _no_temp_left(sandbox)
        if command == "sync":
            assert (r.code == 0) == (_installed(sandbox) == BLOB)
            assert _installed(sandbox) in (None, BLOB)

    run()


def test_a_broken_credentials_file_is_named_not_ignored(sandbox):
    """A credentials.toml that is not TOML, not UTF-8, or a parser bomb is the user's to fix: exit 2
    naming it (ignoring it would only fail later at the server, with no hint why; a bomb would hang)."""
    cfg = sandbox.config / "ocrd-modelsync" / "credentials.toml"
    cfg.parent.mkdir(parents=True)
    sandbox.declare(Model("m.bin", "http://127.0.0.1:9/m.bin"))
    for content in (b'["host"\ntoken = 1', b"\xff\xfe not utf-8", b"a" + b".a" * 60_000 + b" = 1\n",
                    b"x = " + b"[" * 500 + b"]" * 500 + b"\n"):
        cfg.write_bytes(content)
        r = sandbox.run("sync")
        assert r.code == 2, (content[:20], r.err)
        assert str(cfg) in r.err and "Traceback" not in r.err, r.err
