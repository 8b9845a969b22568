"""Locked models in an OCI registry (Harbor, GitLab, GHCR, Zot, the CNCF distribution registry).

Push: every locked artifact (the downloaded file or archive) becomes a blob, addressed by the
SHA-256 the lock records; an OCI image manifest with our own media types lists them, each layer
annotated with processor and name, and is tagged. Blobs the registry already has are skipped
(HEAD first). Pull: ``sync`` fetches each blob by digest from the registry and verifies it.

Spoken over plain HTTP(S) with ``requests``, per the OCI distribution spec: anonymous, basic,
and the bearer-token flow (a ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``
challenge answered by the token endpoint). Credentials come from the Docker config file
(``~/.docker/config.json`` ``auths``, or ``$DOCKER_CONFIG``) or ``MODELSYNC_REGISTRY_USERNAME`` /
``MODELSYNC_REGISTRY_PASSWORD``; they are never printed and never written to the lock.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import NetworkError, UserInputError

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.ocrd.models.v1"
CONFIG_MEDIA_TYPE = "application/vnd.ocrd.models.config.v1+json"
LAYER_MEDIA_TYPES = {"file": "application/vnd.ocrd.models.file.v1",
                     "archive": "application/vnd.ocrd.models.archive.v1"}
ANNOTATION_PROCESSOR = "org.ocrd.models.processor"
ANNOTATION_NAME = "org.ocrd.models.name"
ANNOTATION_URL = "org.ocrd.models.url"
TITLE = "org.opencontainers.image.title"
DEFAULT_CHUNK = 64 << 20  # larger blobs are uploaded in PATCH chunks of this size

_REF = re.compile(r"^(?:oci://)?(?P<host>[A-Za-z0-9.-]+(?::\d+)?|\[[0-9a-fA-F:]+\](?::\d+)?)/"
                  r"(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?$")


class RegistryAuthError(NetworkError):
    """The registry refused our credentials (or wants some we do not have)."""


@dataclass(frozen=True)
class Reference:
    """``host[:port]/repository[:tag]`` (an ``oci://`` prefix is allowed)."""

    host: str
    repository: str
    tag: str = "latest"

    @classmethod
    def parse(cls, text: str) -> "Reference":
        """Parse or raise UserInputError with an example."""
        m = _REF.match(text.strip())
        if not m:
            raise UserInputError(f"{text!r} is not a registry reference; expected HOST[:PORT]/REPOSITORY[:TAG], "
                                 "e.g. registry.example.org/ocr/models:2024-06 or ghcr.io/my-org/ocrd-models")
        return cls(m["host"].lower(), m["repo"], m["tag"] or "latest")

    @property
    def hostname(self) -> str:
        """The host without the port."""
        return self.host.rsplit(":", 1)[0] if not self.host.startswith("[") else self.host.split("]")[0] + "]"

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}:{self.tag}"


def _plain_http(ref: Reference, allow_http: frozenset[str]) -> bool:
    # Loopback registries speak plain HTTP (as docker treats them); others only when allowed explicitly.
    return ref.hostname in ("localhost", "127.0.0.1", "[::1]") or ref.hostname in allow_http


@dataclass(frozen=True)
class RegistryLogin:
    """A username and password (or identity token) for one registry host."""

    username: str
    password: str


def load_login(host: str, env) -> RegistryLogin | None:
    """Credentials for ``host``: MODELSYNC_REGISTRY_USERNAME/PASSWORD, else the Docker config's ``auths``."""
    user, pw = env.get("MODELSYNC_REGISTRY_USERNAME"), env.get("MODELSYNC_REGISTRY_PASSWORD")
    if user:
        return RegistryLogin(user, pw or "")
    cfg_dir = Path(env.get("DOCKER_CONFIG") or env.home / ".docker")
    try:
        auths = json.loads((cfg_dir / "config.json").read_text(encoding="utf-8")).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"http://{host}/v2/"):
        item = auths.get(key) if isinstance(auths, dict) else None
        if not isinstance(item, dict):
            continue
        if item.get("auth"):
            try:
                user, _, pw = base64.b64decode(item["auth"]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            return RegistryLogin(user, pw)
        if item.get("username"):
            return RegistryLogin(str(item["username"]), str(item.get("password", "")))
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


_sessions = threading.local()


def session():
    """One ``requests.Session`` per thread for the registry API (kept alive, never shared across threads)."""
    s = getattr(_sessions, "session", None)
    if s is None:
        import requests

        from .transport import USER_AGENT

        s = requests.Session()  # trust_env: proxies, CA bundles (REQUESTS_CA_BUNDLE) and netrc as usual
        s.headers["User-Agent"] = USER_AGENT
        _sessions.session = s
    return s


@dataclass
class RegistryClient:
    """One repository on one registry; thread-safe (a ``requests`` session per thread, shared tokens)."""

    ref: Reference
    login: RegistryLogin | None = None
    allow_http: frozenset[str] = frozenset()
    timeout: tuple[float, float] = (15.0, 60.0)
    _auth: dict[str, str] = field(default_factory=dict)  # scope -> Authorization header value
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        """``http(s)://host/v2/repository``."""
        scheme = "http" if _plain_http(self.ref, self.allow_http) else "https"
        return f"{scheme}://{self.ref.host}/v2/{self.ref.repository}"

    def _scope(self, push: bool) -> str:
        return f"repository:{self.ref.repository}:{'pull,push' if push else 'pull'}"

    def auth_header(self, push: bool = False) -> dict[str, str]:
        """The Authorization header known for this scope (empty until a challenge was answered)."""
        value = self._auth.get(self._scope(push))
        return {"Authorization": value} if value else {}

    def request(self, method: str, url: str, *, push: bool = False, **kw: Any):
        """Send; on a 401 answer the challenge (basic or bearer) once and send again."""
        import requests

        headers = dict(kw.pop("headers", {}))
        body = kw.get("data")
        for attempt in (0, 1):
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                resp = session().request(method, url, headers={**headers, **self.auth_header(push)},
                                         timeout=self.timeout, allow_redirects=False, **kw)
            except requests.RequestException as err:
                raise NetworkError(f"registry {self.ref.host}: {method} failed: {err}") from None
            if resp.status_code != 401 or attempt:
                break
            self._answer(resp.headers.get("WWW-Authenticate", ""), push)
        if resp.status_code == 401:
            raise RegistryAuthError(self._refused())
        return resp

    def _refused(self) -> str:
        where = ("MODELSYNC_REGISTRY_USERNAME/PASSWORD or ~/.docker/config.json" if self.login
                 else "no credentials were found")
        return (f"registry {self.ref.host} refused access to {self.ref.repository} ({where}). Log in with "
                f"`docker login {self.ref.host}` (or set MODELSYNC_REGISTRY_USERNAME and "
                "MODELSYNC_REGISTRY_PASSWORD) with an account that may read (and for push, write) it.")

    def _answer(self, header: str, push: bool) -> None:
        scheme, params = _challenge(header)
        scope = self._scope(push)
        if scheme == "basic":
            if self.login is None:
                raise RegistryAuthError(self._refused())
            raw = base64.b64encode(f"{self.login.username}:{self.login.password}".encode()).decode()
            with self._lock:
                self._auth[scope] = f"Basic {raw}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryAuthError(f"registry {self.ref.host} asks for an authentication scheme we do not "
                                    f"speak ({header[:80]!r})")
        import requests

        query = {"service": params.get("service", ""), "scope": scope}
        auth = (self.login.username, self.login.password) if self.login else None
        try:
            resp = session().get(params["realm"], params=query, auth=auth, timeout=self.timeout)
        except requests.RequestException as err:
            raise NetworkError(f"registry {self.ref.host}: token endpoint failed: {err}") from None
        if resp.status_code in (401, 403):
            raise RegistryAuthError(self._refused())
        if resp.status_code != 200:
            raise NetworkError(f"registry {self.ref.host}: token endpoint answered HTTP {resp.status_code}")
        try:
            doc = resp.json()
            token = doc.get("token") or doc.get("access_token")
        except ValueError:
            token = None
        if not token:
            raise NetworkError(f"registry {self.ref.host}: the token endpoint sent no token")
        with self._lock:
            self._auth[scope] = f"Bearer {token}"

    # -- blobs ---------------------------------------------------------------------------
    def has_blob(self, digest: str, push: bool = False) -> bool:
        """HEAD the blob: True if the registry has it."""
        resp = self.request("HEAD", self.blob_url(digest), push=push)
        resp.close()
        if resp.status_code in (200, 307):
            return True
        if resp.status_code == 404:
            return False
        if resp.status_code == 403:
            raise RegistryAuthError(self._refused())
        raise NetworkError(f"registry {self.ref.host}: HEAD blob answered HTTP {resp.status_code}")

    def blob_url(self, digest: str) -> str:
        """Where the blob is fetched (the registry may redirect to its storage)."""
        return f"{self.base}/blobs/{digest}"

    def upload_blob(self, path: Path | None, digest: str, size: int, data: bytes | None = None,
                    chunk: int = DEFAULT_CHUNK, progress: Callable[[int], None] | None = None) -> None:
        """Upload a blob (the file at ``path``, or ``data``): one PUT up to ``chunk`` bytes, PATCH chunks beyond."""
        location = self._location(self.request("POST", f"{self.base}/blobs/uploads/", push=True), "start an upload")
        chunked = path is not None and size > chunk
        if chunked:
            with open(path, "rb") as fh:
                start = 0
                while start < size:
                    part = fh.read(chunk)
                    if not part:
                        raise NetworkError(f"{path} shrank while it was being uploaded")
                    end = start + len(part) - 1
                    resp = self.request("PATCH", location, push=True, data=part, headers={
                        "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end}",
                        "Content-Length": str(len(part))})
                    location = self._location(resp, "upload a chunk")
                    start = end + 1
                    if progress:
                        progress(len(part))
        body: Any = b"" if chunked else (data if data is not None else open(path, "rb"))  # noqa: SIM115
        sep = "&" if "?" in location else "?"
        try:
            resp = self.request("PUT", f"{location}{sep}digest={digest}", push=True, data=body,
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Length": str(len(body) if isinstance(body, bytes) else size)})
        finally:
            if hasattr(body, "close"):
                body.close()
        if resp.status_code != 201:
            raise NetworkError(f"registry {self.ref.host}: upload of {digest} answered HTTP {resp.status_code} "
                               f"{resp.text[:200]}")
        if progress and not chunked:
            progress(size)

    def _location(self, resp, what: str) -> str:
        from urllib.parse import urljoin

        if resp.status_code not in (201, 202) or "Location" not in resp.headers:
            if resp.status_code == 403:
                raise RegistryAuthError(self._refused())
            raise NetworkError(f"registry {self.ref.host}: could not {what}: HTTP {resp.status_code} "
                               f"{resp.text[:200]}")
        return urljoin(self.base + "/", resp.headers["Location"])

    # -- manifests -----------------------------------------------------------------------
    def put_manifest(self, tag: str, body: bytes) -> str:
        """Upload the manifest under ``tag``; return its digest."""
        import hashlib

        resp = self.request("PUT", f"{self.base}/manifests/{tag}", push=True, data=body,
                            headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        if resp.status_code != 201:
            raise NetworkError(f"registry {self.ref.host}: manifest upload answered HTTP {resp.status_code} "
                               f"{resp.text[:300]}")
        return resp.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()

    def get_manifest(self, reference: str) -> dict:
        """The manifest at a tag or digest."""
        resp = self.request("GET", f"{self.base}/manifests/{reference}", headers={"Accept": MANIFEST_MEDIA_TYPE})
        if resp.status_code == 404:
            raise UserInputError(f"registry {self.ref.host} has no {self.ref.repository}:{reference}")
        if resp.status_code != 200:
            raise NetworkError(f"registry {self.ref.host}: manifest answered HTTP {resp.status_code}")
        return resp.json()
