"""Secrets in URLs (user info, token parameters) never reach output, records or readable copies."""

from __future__ import annotations

import json
import stat

from conftest import Model


def test_secrets_in_a_manifest_url_are_not_printed_nor_copied_readable(sandbox, server):
    """User info and token parameters in a models.toml URL reach neither --json output nor the install
    records; the parse cache's copy of models.toml is private to the user (0600)."""
    server.add("/m.bin", b"model bytes")
    url = server.url("/m.bin").replace("http://", "http://u:SECRETPW@") + "?X-Amz-Signature=SECRETSIG&token=SECRETTOK"
    sandbox.declare(Model("m.bin", url))
    for command in (("plan", "--json"), ("sync", "--json"), ("status", "--json")):
        r = sandbox.run(*command)
        assert r.code == 0, (command, r.err)
        json.loads(r.out)
        for secret in ("SECRETPW", "SECRETSIG", "SECRETTOK"):
            assert secret not in r.out and secret not in r.err, (command, secret)
    for root in (sandbox.state, sandbox.data, sandbox.project):
        for f in root.rglob("*"):
            if f.is_file() and f.name != "models.toml":
                assert b"SECRET" not in f.read_bytes(), f
    for f in sandbox.cache.rglob("*"):
        if f.is_file() and b"SECRET" in f.read_bytes():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
