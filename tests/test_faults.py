"""Network faults from a fault-injecting server on 127.0.0.1, and credentials handling."""

from __future__ import annotations

import os
import subprocess
import tomllib

import pytest
from conftest import Model, sha256
from httpserver import Fault, FileServer

BLOB = os.urandom(300_000)
NAME = "m.mlmodel"
PROC = "ocrd-kraken-recognize"


@pytest.fixture(autouse=True)
def fast_retries(sandbox, monkeypatch):
    # Real backoff, just small: the tests exercise the same code paths in milliseconds. After the
    # sandbox, which clears the shell's MODELSYNC_* variables.
    monkeypatch.setenv("MODELSYNC_BACKOFF", "0.05")
    monkeypatch.setenv("MODELSYNC_READ_TIMEOUT", "1")


def _installed(sandbox) -> bytes | None:
    p = sandbox.data_dir(PROC) / NAME
    return p.read_bytes() if p.exists() else None


def _assert_no_partial(sandbox) -> None:
    leftovers = [p for p in sandbox.root.rglob(".modelsync-tmp-*")]
    assert leftovers == [], leftovers


@pytest.mark.parametrize("fault", [
    Fault(truncate_at=1000, times=1),
    Fault(reset_at=150_000, times=1),
    Fault(stall_at=1000, stall_for=3, times=1),
    Fault(status=500, times=2),
    Fault(status=502, times=1),
    Fault(status=503, times=3),
    Fault(status=429, headers={"Retry-After": "1"}, times=1),
], ids=["truncated", "reset", "stall", "500", "502", "503", "429"])
def test_transient_faults_are_retried_and_the_result_is_exact(sandbox, server, fault):
    url = server.add("/m", BLOB)
    server.faults["/m"] = fault
    sandbox.declare(Model(NAME, url), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == BLOB
    _assert_no_partial(sandbox)


def test_resume_uses_range_after_a_broken_connection(sandbox, server):
    url = server.add("/m", BLOB)
    server.faults["/m"] = Fault(reset_at=200_000, times=1)
    sandbox.declare(Model(NAME, url), processor=PROC)
    assert sandbox.run("sync").code == 0
    ranges = [h.get("Range") for p, h in server.headers_seen if p == "/m"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:].rstrip("-")) > 0
    if_range = [h.get("If-Range") for p, h in server.headers_seen if p == "/m"][1]
    assert if_range and if_range.startswith('"')
    assert _installed(sandbox) == BLOB


def test_server_ignoring_range_restarts_cleanly(sandbox, server):
    url = server.add("/m", BLOB)
    server.faults["/m"] = Fault(reset_at=120_000, times=1)
    server.ignore_range.add("/m")  # the retry's Range request gets 200 and the whole body
    sandbox.declare(Model(NAME, url), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == BLOB  # not the first 120 kB followed by the whole file
    ranges = [h.get("Range") for p, h in server.headers_seen if p == "/m"]
    assert ranges[0] is None and ranges[1] is not None


def test_truncation_without_content_length_never_installs_partial_bytes(sandbox, server):
    url = server.add("/m", BLOB)
    sandbox.declare(Model(NAME, url, sha256=sha256(BLOB)), processor=PROC)
    server.faults["/m"] = Fault(no_length=True, truncate_at=5000, times=2)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == BLOB
    assert server.count("/m") == 3


def test_persistent_truncation_without_length_fails_with_mismatch_and_installs_nothing(sandbox, server):
    url = server.add("/m", BLOB)
    sandbox.declare(Model(NAME, url, sha256=sha256(BLOB)), processor=PROC)
    server.faults["/m"] = Fault(no_length=True, truncate_at=5000)
    r = sandbox.run("sync")
    assert r.code in (3, 4) and _installed(sandbox) is None
    _assert_no_partial(sandbox)


def test_content_that_changes_between_requests_restarts_via_if_range(sandbox, server):
    new = os.urandom(len(BLOB))
    url = server.add("/m", BLOB)
    sandbox.declare(Model(NAME, url, sha256=sha256(new)), processor=PROC)
    # The first response is cut and the origin then serves new bytes: a resume must not splice them.
    server.faults["/m"] = Fault(reset_at=100_000, times=1, then_serve=new)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == new


def test_bytes_differing_from_the_lock_are_refused(sandbox, server):
    url = server.add("/m", BLOB)
    sandbox.declare(Model(NAME, url), processor=PROC)
    assert sandbox.run("lock").code == 0
    import shutil

    shutil.rmtree(sandbox.cache)
    server.files["/m"] = b"x" * len(BLOB)
    r = sandbox.run("sync")
    assert r.code == 4 and sha256(BLOB) in r.err and _installed(sandbox) is None


@pytest.mark.parametrize("status,needle", [(404, "HTTP 404"), (403, "credentials may be needed"),
                                           (401, "credentials may be needed")])
def test_permanent_http_errors_fail_fast_with_a_reason(sandbox, server, status, needle):
    url = server.add("/m", BLOB)
    server.faults["/m"] = Fault(status=status)
    sandbox.declare(Model(NAME, url), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 3 and needle in r.err and "Traceback" not in r.err
    assert server.count("/m") == 1  # no pointless retries


def test_redirect_loop_is_a_clear_error(sandbox, server):
    server.faults["/a"] = Fault(redirect_to=server.url("/b"))
    server.faults["/b"] = Fault(redirect_to=server.url("/a"))
    sandbox.declare(Model(NAME, server.url("/a")), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 3 and "redirect loop" in r.err


def test_retries_are_bounded_in_count(sandbox, server, monkeypatch):
    monkeypatch.setenv("MODELSYNC_RETRIES", "2")
    url = server.add("/m", BLOB)
    server.faults["/m"] = Fault(status=503)
    sandbox.declare(Model(NAME, url), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 3 and "3 attempt(s)" in r.err
    assert server.count("/m") == 3


def test_retries_are_bounded_in_time(sandbox, server):
    url = server.add("/m", BLOB)
    server.faults["/m"] = Fault(status=503)
    sandbox.declare(Model(NAME, url), processor=PROC, network="retries = 50\nbackoff = 0.2\nmax_retry_time = 1")
    sandbox.monkeypatch.delenv("MODELSYNC_BACKOFF")
    r = sandbox.run("sync")
    assert r.code == 3
    assert server.count("/m") < 6


def test_many_resources_some_fail_summary_lists_each(sandbox, server):
    models = [Model(f"r{i}", server.add(f"/r{i}", os.urandom(1000 + i))) for i in range(6)]
    server.faults["/r1"] = Fault(status=404)
    server.faults["/r4"] = Fault(status=403)
    sandbox.declare(*models, processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 3
    assert "2 resource(s) failed" in r.err and "r1: " in r.err and "r4: " in r.err
    assert sorted(p.name for p in sandbox.data_dir(PROC).iterdir()) == ["r0", "r2", "r3", "r5"]


# -- TLS: downgrade refused ---------------------------------------------------------------------

@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    s = FileServer(tls=(str(cert), str(key))).start()
    yield s
    s.stop()


def test_https_to_http_redirect_is_refused_unless_allowed(sandbox, server, tls_server):
    plain = server.add("/m", BLOB)
    tls_server.faults["/m"] = Fault(redirect_to=plain)
    sandbox.declare(Model(NAME, tls_server.url("/m")), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 3 and "https to plain http" in r.err and 'allow_http = ["127.0.0.1"]' in r.err
    assert server.count("/m") == 0 and _installed(sandbox) is None
    sandbox.declare(Model(NAME, tls_server.url("/m")), processor=PROC, settings='allow_http = ["127.0.0.1"]')
    r = sandbox.run("sync")
    assert r.code == 0 and _installed(sandbox) == BLOB


def test_https_download_verifies_the_certificate(sandbox, tls_server):
    url = tls_server.add("/m", BLOB)
    sandbox.declare(Model(NAME, url), processor=PROC)
    assert sandbox.run("sync").code == 0
    sandbox.monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    sandbox.monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    (sandbox.data_dir(PROC) / NAME).unlink()
    import shutil

    shutil.rmtree(sandbox.cache)
    r = sandbox.run("sync")
    assert r.code == 3 and "Traceback" not in r.err
    # Said once, with the way out; an untrusted certificate is not a fault worth retrying.
    assert "TLS certificate is not trusted" in r.err and "REQUESTS_CA_BUNDLE" in r.err
    assert tls_server.count("/m") == 1


# -- proxies and encodings ------------------------------------------------------------------------

def test_downloads_go_through_the_environments_proxy_except_no_proxy_hosts(sandbox, server):
    origin = FileServer().start()
    try:
        url = origin.add("/m", BLOB)
        server.add("/m", BLOB)  # the proxy answers absolute-form requests for the same path
        for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
            sandbox.monkeypatch.delenv(var, raising=False)
        sandbox.monkeypatch.setenv("HTTP_PROXY", server.url("").replace("http://", "http://alice:s%40cret@"))
        sandbox.declare(Model(NAME, url), processor=PROC)
        r = sandbox.run("sync")
        assert r.code == 0, r.err
        assert _installed(sandbox) == BLOB
        assert [p for m, p in server.requests] == [url]  # absolute form: the proxy was asked for the origin's URL
        assert origin.count("/m") == 0
        import base64

        seen = {k.lower(): v for k, v in server.headers_seen[0][1].items()}  # header names have no case
        assert seen.get("proxy-authorization") == "Basic " + base64.b64encode(b"alice:s@cret").decode()
        assert "s@cret" not in r.out + r.err and "s%40cret" not in sandbox.lock.read_text()

        sandbox.monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        (sandbox.data_dir(PROC) / NAME).unlink()
        import shutil

        shutil.rmtree(sandbox.cache)
        r = sandbox.run("sync")
        assert r.code == 0, r.err
        assert origin.count("/m") == 1 and len(server.requests) == 1  # direct this time
    finally:
        origin.stop()


def test_socks_proxies_are_refused_with_a_clear_message(sandbox, server):
    url = server.add("/m", BLOB)
    sandbox.monkeypatch.delenv("NO_PROXY", raising=False)
    sandbox.monkeypatch.delenv("no_proxy", raising=False)
    sandbox.monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:9")
    sandbox.declare(Model(NAME, url), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 3 and "socks5:// is not supported" in r.err and "Traceback" not in r.err
    assert server.count("/m") == 0 and _installed(sandbox) is None


def test_downloads_ask_for_the_stored_bytes_uncompressed(sandbox, server):
    url = server.add("/m", BLOB)
    sandbox.declare(Model(NAME, url), processor=PROC)
    assert sandbox.run("sync").code == 0
    assert [h.get("Accept-Encoding") for p, h in server.headers_seen if p == "/m"] == ["identity"]


# -- credentials ---------------------------------------------------------------------------------

TOKEN = "hf_secret_token_1234567890"


def _auth_headers(server, path: str) -> list[str | None]:
    return [h.get("Authorization") for p, h in server.headers_seen if p.split("?")[0] == path]


def test_token_from_env_is_sent_to_its_origin_only_and_never_printed_or_locked(sandbox, server):
    other = FileServer().start()
    try:
        # The same host on another port is another origin: the redirect there must not carry the token.
        target = other.add("/final", BLOB)
        server.faults["/m"] = Fault(redirect_to=target)
        sandbox.monkeypatch.setenv("MODELSYNC_TOKENS", f"127.0.0.1:{server.httpd.server_address[1]}={TOKEN}")
        sandbox.declare(Model(NAME, server.url("/m")), processor=PROC)
        r = sandbox.run("sync", "-j", "1")
        assert r.code == 0, r.err
        assert _auth_headers(server, "/m") == [f"Bearer {TOKEN}"]
        assert _auth_headers(other, "/final") == [None]  # not sent to another origin after a redirect
        assert TOKEN not in r.out + r.err
        assert TOKEN not in sandbox.lock.read_text()
    finally:
        other.stop()


def test_credentials_file_and_netrc(sandbox, server):
    url = server.add("/m", BLOB)
    cfg = sandbox.config / "ocrd-modelsync" / "credentials.toml"
    cfg.parent.mkdir(parents=True)
    port = server.httpd.server_address[1]
    cfg.write_text(f'["127.0.0.1:{port}"]\ntoken = "{TOKEN}"\n')  # keys name the origin: host and port
    sandbox.declare(Model(NAME, url), processor=PROC)
    assert sandbox.run("sync").code == 0
    assert _auth_headers(server, "/m") == [f"Bearer {TOKEN}"]
    cfg.unlink()
    (sandbox.home / ".netrc").write_text(f"machine 127.0.0.1:{port} login alice password s3cret-pass\n")
    os.chmod(sandbox.home / ".netrc", 0o600)
    (sandbox.data_dir(PROC) / NAME).unlink()
    import shutil

    shutil.rmtree(sandbox.cache)
    server.headers_seen.clear()
    assert sandbox.run("sync").code == 0
    (header,) = _auth_headers(server, "/m")
    import base64

    assert base64.b64decode(header.split()[1]).decode() == "alice:s3cret-pass"


def test_userinfo_and_token_parameters_never_reach_the_lock_or_messages(sandbox, server):
    server.add("/m", BLOB)
    url = server.url("/m").replace("http://", "http://bob:hunter22@") + "?token=abcdef123456&x=1"
    sandbox.declare(Model(NAME, url), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert "hunter22" not in sandbox.lock.read_text() and "abcdef123456" not in sandbox.lock.read_text()
    entry = tomllib.loads(sandbox.lock.read_text())["resource"][0]
    assert entry["url"] == server.url("/m") + "?x=1"
    (header,) = _auth_headers(server, "/m")
    assert header.startswith("Basic ")
    assert sandbox.run("sync", "--locked").code == 0  # the redacted lock still matches the declaration
    server.faults["/m"] = Fault(status=404)
    (sandbox.data_dir(PROC) / NAME).unlink()
    import shutil

    shutil.rmtree(sandbox.cache)
    r = sandbox.run("sync")
    assert r.code == 3 and "hunter22" not in r.err and "abcdef123456" not in r.err
