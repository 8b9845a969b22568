"""A real OCI registry on 127.0.0.1 for the tests: Debian's ``docker-registry`` (CNCF distribution).

Started with a config in a temp dir, in one of three auth modes:
- ``anonymous``: no auth;
- ``basic``: htpasswd (bcrypt) users;
- ``token``: the bearer-token flow; the registry trusts a certificate of ours and a small token
  server (below) issues RS256 JWTs after checking basic credentials, granting pull (and push for
  users allowed to push; anonymous users may pull when ``anonymous_pull``).
The access log is kept, so tests can count the blob requests the registry served.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from httpserver import POLL

BINARY = shutil.which("docker-registry") or ("/usr/bin/docker-registry"
                                             if os.path.exists("/usr/bin/docker-registry") else None)
SKIP_REASON = ("Debian's docker-registry (the CNCF distribution registry) is not installed: "
               "`apt-get install docker-registry` (.ci/run does this)")
SERVICE = "modelsync-test-registry"
ISSUER = "modelsync-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues registry bearer tokens (JWT, RS256, certificate in ``x5c``) for known users."""

    def __init__(self, work: Path, users: dict[str, str], pushers: set[str], anonymous_pull: bool):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users, self.pushers, self.anonymous_pull = users, pushers, anonymous_pull
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelsync test token issuer")])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.cert_pem = work / "token-cert.pem"
        self.cert_pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._der = self.cert.public_bytes(serialization.Encoding.DER)
        self.requests: list[str] = []
        self.authorizations: list[str | None] = []  # the Authorization header of each request, in order
        self.port = free_port()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                outer.authorizations.append(self.headers.get("Authorization"))
                query = parse_qs(urlsplit(self.path).query)
                user = outer._user(self.headers.get("Authorization"))
                if user is False:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                token = outer._token(user, query.get("scope", [""])[0])
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": POLL}, daemon=True).start()

    @property
    def realm(self) -> str:
        """The token endpoint: another origin than the registry's (as gitlab.com is for registry.gitlab.com)."""
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _user(self, header: str | None):
        """The authenticated user, None for anonymous, False for wrong credentials."""
        if not header:
            return None
        try:
            user, _, pw = base64.b64decode(header.split(" ", 1)[1]).decode().partition(":")
        except (ValueError, IndexError):
            return False
        return user if self.users.get(user) == pw else False

    def _token(self, user: str | None, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        m = re.match(r"^repository:([^:]+):(.*)$", scope)
        if m:
            asked = set(m[2].split(","))
            allowed = {"pull", "push"} if user in self.pushers else ({"pull"} if user or self.anonymous_pull else set())
            access.append({"type": "repository", "name": m[1], "actions": sorted(asked & allowed)})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._der).decode()]}
        claims = {"iss": ISSUER, "sub": user or "", "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64url(sig)}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ResourceIndex:
    """A running docker-registry; ``host`` is ``127.0.0.1:PORT``."""

    def __init__(self, work: Path, mode: str = "anonymous", users: dict[str, str] | None = None,
                 pushers: set[str] | None = None, anonymous_pull: bool = False):
        if BINARY is None:
            raise RuntimeError(SKIP_REASON)
        self.work, self.mode = work, mode
        work.mkdir(parents=True, exist_ok=True)
        self.storage = work / "storage"
        self.port = free_port()
        self.log = work / "registry.log"
        self.token: TokenServer | None = None
        auth = ""
        users = users or {}
        if mode == "basic":
            import bcrypt

            htpasswd = work / "htpasswd"
            htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                                        for u, p in users.items()))
            auth = f"auth:\n  htpasswd:\n    realm: modelsync-test\n    path: {htpasswd}\n"
        elif mode == "token":
            self.token = TokenServer(work, users, pushers if pushers is not None else set(users), anonymous_pull)
            auth = (f"auth:\n  token:\n    realm: {self.token.realm}\n    service: {SERVICE}\n"
                    f"    issuer: {ISSUER}\n    rootcertbundle: {self.token.cert_pem}\n")
        config = work / "config.yml"
        config.write_text(f"""version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {self.storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
  secret: modelsync-test-secret
{auth}""")
        self._log_fh = open(self.log, "wb")
        self.proc = subprocess.Popen([BINARY, "serve", str(config)], stdout=self._log_fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not start:\n{self.log.read_text()[-2000:]}")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def blob_file(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's bytes."""
        hexd = digest.removeprefix("sha256:")
        return self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def access(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request the registry logged."""
        self._log_fh.flush()
        out = []
        for m in re.finditer(rb'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})', self.log.read_bytes()):
            out.append((m[1].decode(), m[2].decode(), int(m[3])))
        return out

    def blob_gets(self) -> list[str]:
        """Digests of blob GETs answered 200."""
        return [p.rsplit("/", 1)[1] for meth, p, st in self.access()
                if meth == "GET" and "/blobs/sha256:" in p and st == 200]

    def blob_uploads(self) -> int:
        """Completed blob uploads (PUT with a digest, answered 201)."""
        return sum(1 for meth, p, st in self.access() if meth == "PUT" and "/blobs/uploads/" in p and st == 201)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log_fh.close()
        if self.token:
            self.token.stop()
