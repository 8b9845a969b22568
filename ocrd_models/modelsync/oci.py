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

Credentials stay with their origin (scheme, host, port):

- the registry's login goes to the registry's origin only, and over plain HTTP only to a loopback
  registry or one listed in ``[settings] allow_http``;
- a token endpoint (the challenge's ``realm``) on another origin gets no login, unless the user
  configured one for that origin: a Docker config ``auths`` entry for its host, or its
  ``host[:port]`` in ``$MODELSYNC_REGISTRY_REALMS`` (whitespace-separated), which says "this token
  service belongs to my registry" (GitLab: the registry is registry.gitlab.com, its tokens come
  from gitlab.com);
- a token is sent to the registry's origin only: never to an upload ``Location`` or a redirect on
  another origin, which get no ``Authorization`` header at all;
- ``requests`` never adds ``~/.netrc`` logins by itself (its ``trust_env`` would, by host name
  only): proxies and CA bundles still come from the environment.

Replies that are not content are read with a cap: JSON (token replies, manifests) up to
:data:`JSON_LIMIT` bytes, refused beyond with a NetworkError; error bodies up to
:data:`SNIPPET_LIMIT` bytes, of which a short escaped excerpt goes into the message.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin

from .credentials import (DEFAULT_PORTS, Key, Origin, lookup, may_carry_credentials, origin, origin_text,
                          parse_key, plain_http_allowed, redact, valid_token)
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
JSON_LIMIT = 1 << 20  # token replies and manifests: real ones are a few KiB
SNIPPET_LIMIT = 4 << 10  # bytes of an error body read for its message; the rest is never read
MAX_TOKEN_REDIRECTS = 5
_MISBEHAVING = "The registry or its token service is misbehaving: try again later, or tell its operator."

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
    port = int(ref.host.rsplit(":", 1)[1]) if ref.host.rsplit("]", 1)[-1].count(":") else 80
    return plain_http_allowed(ref.hostname.strip("[]"), port, allow_http)


@dataclass(frozen=True)
class RegistryLogin:
    """A username and password (or identity token) for one registry host."""

    username: str
    password: str


@dataclass(frozen=True)
class Logins:
    """The logins the user configured: the registry's, and those of other origins (token services)."""

    registry: RegistryLogin | None = None
    others: dict[Key, RegistryLogin] = field(default_factory=dict)

    def for_origin(self, o: Origin, registry: Origin) -> RegistryLogin | None:
        """The login for origin ``o``: the registry's on the registry's origin, else what was configured for ``o``."""
        return self.registry if o == registry else lookup(self.others, o)


def load_login(host: str, env) -> Logins:
    """Logins for the registry ``host``: MODELSYNC_REGISTRY_USERNAME/PASSWORD, else the Docker config's
    ``auths``; and for other origins, the Docker config's other ``auths`` entries and, for the token
    services in MODELSYNC_REGISTRY_REALMS, the registry's login."""
    auths = _docker_auths(env)
    user, pw = env.get("MODELSYNC_REGISTRY_USERNAME"), env.get("MODELSYNC_REGISTRY_PASSWORD")
    registry = RegistryLogin(user, pw or "") if user else None
    if registry is None:
        for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"http://{host}/v2/"):
            registry = _auth_entry(auths.get(key))
            if registry is not None:
                break
    others: dict[Key, RegistryLogin] = {}
    for name, item in auths.items():
        key = _auths_key(name)
        login = _auth_entry(item)
        if key is not None and login is not None:
            others.setdefault(key, login)
    for name in (env.get("MODELSYNC_REGISTRY_REALMS") or "").split():
        key = parse_key(name)
        if key is None:
            raise UserInputError(f"{name!r} in MODELSYNC_REGISTRY_REALMS is not HOST or HOST:PORT (the token service "
                                 "a registry names in its challenge, e.g. gitlab.com)")
        if registry is not None:
            others[key] = registry
    return Logins(registry, others)


def _docker_auths(env) -> dict:
    cfg_dir = Path(env.get("DOCKER_CONFIG") or env.home / ".docker")
    try:
        auths = json.loads((cfg_dir / "config.json").read_text(encoding="utf-8")).get("auths", {})
    except (OSError, ValueError, AttributeError, RecursionError):
        return {}
    return auths if isinstance(auths, dict) else {}


def _auths_key(name: str) -> Key | None:
    """An ``auths`` name (``host``, ``host:port``, ``https://host/v2/``) as a credentials key."""
    if "://" in name:
        return origin(name)
    return parse_key(name)


def _auth_entry(item) -> RegistryLogin | None:
    if not isinstance(item, dict):
        return None
    if item.get("auth"):
        try:
            user, _, pw = base64.b64decode(str(item["auth"])).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
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

        s = requests.Session()  # trust_env: proxies and CA bundles (REQUESTS_CA_BUNDLE) as usual
        s.headers["User-Agent"] = USER_AGENT
        s.headers["Accept-Encoding"] = "identity"  # what we read is what the registry stores; no inflating
        # With no auth of its own, requests would add a ~/.netrc login for the host name (any port, any
        # redirect): a session auth that adds nothing keeps every Authorization header ours.
        s.auth = _no_netrc
        _sessions.session = s
    return s


def _no_netrc(request):
    """A requests auth that leaves the request alone (see :func:`session`)."""
    return request


def _printable(data: bytes | str, limit: int = 200) -> str:
    """A short excerpt of text from outside, as a quoted Python literal: control characters escaped."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(" ".join(text.split())[:limit])


def _key_text(o: Origin) -> str:
    """The credentials key that names origin ``o`` (``host``, or ``host:port`` off the default port)."""
    host = f"[{o[1]}]" if ":" in o[1] else o[1]
    return host if o[2] == DEFAULT_PORTS[o[0]] else f"{host}:{o[2]}"


def _close(resp) -> None:
    """Let go of a response whose body we do not read (its connection is closed, not reused)."""
    resp.close()


@dataclass
class RegistryClient:
    """One repository on one registry; thread-safe (a ``requests`` session per thread, shared tokens)."""

    ref: Reference
    login: Logins | RegistryLogin | None = None
    allow_http: frozenset[str] = frozenset()
    timeout: tuple[float, float] = (15.0, 60.0)
    _auth: dict[str, str] = field(default_factory=dict)  # scope -> Authorization value, for our origin only
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _note: str = ""  # why credentials were withheld from a token service, for the refusal message

    def __post_init__(self) -> None:
        if not isinstance(self.login, Logins):
            self.login = Logins(self.login)

    @property
    def base(self) -> str:
        """``http(s)://host/v2/repository``."""
        scheme = "http" if _plain_http(self.ref, self.allow_http) else "https"
        return f"{scheme}://{self.ref.host}/v2/{self.ref.repository}"

    @property
    def origin(self) -> Origin:
        """The registry's origin: its credentials and tokens are sent here and nowhere else."""
        o = origin(self.base)
        assert o is not None  # Reference.parse admits host names and ports only
        return o

    def _scope(self, push: bool) -> str:
        return f"repository:{self.ref.repository}:{'pull,push' if push else 'pull'}"

    def auth_header(self, push: bool = False) -> dict[str, str]:
        """The Authorization header known for this scope (empty until a challenge was answered); for
        requests to :attr:`origin` only."""
        value = self._auth.get(self._scope(push))
        return {"Authorization": value} if value else {}

    def request(self, method: str, url: str, *, push: bool = False, **kw: Any):
        """Send (body unread: read it with :meth:`read_json` or :meth:`excerpt`, or close it); on a 401 from
        the registry answer the challenge (basic or bearer) once and send again. A URL on another origin
        (an upload Location) is sent without our Authorization, and its 401 is not answered."""
        headers = dict(kw.pop("headers", {}))
        body = kw.get("data")
        ours = origin(url) == self.origin
        for attempt in (0, 1):
            if hasattr(body, "seek"):
                body.seek(0)
            resp = self._send(method, url, {**headers, **(self.auth_header(push) if ours else {})}, **kw)
            if resp.status_code != 401 or attempt:
                break
            challenge = resp.headers.get("WWW-Authenticate", "")
            _close(resp)
            if not ours:
                raise NetworkError(f"registry {self.ref.host}: {redact(url)}, where it sent us, asks for credentials; "
                                   "the registry's are never sent to another origin. Ask the registry's operator.")
            self._answer(challenge, push)
        if resp.status_code == 401:
            _close(resp)
            raise RegistryAuthError(self._refused())
        return resp

    def _send(self, method: str, url: str, headers: dict[str, str], auth=None, **kw: Any):
        import requests

        try:
            return session().request(method, url, headers=headers, auth=auth, timeout=self.timeout,
                                     allow_redirects=False, stream=True, **kw)
        except (requests.RequestException, ValueError) as err:  # ValueError: a URL or header requests refused
            raise NetworkError(f"registry {self.ref.host}: {method} {redact(url)} failed: "
                               f"{_printable(str(err), 300)}") from None

    def read_json(self, resp, what: str) -> Any:
        """The JSON body of ``resp``, read up to :data:`JSON_LIMIT` bytes; NetworkError if larger or not JSON."""
        data = self._read(resp, JSON_LIMIT, what, strict=True)
        try:
            return json.loads(data)
        except RecursionError:  # json's parser recurses per nesting level
            why = "is JSON nested too deeply to read"
        except ValueError:  # UnicodeDecodeError is one too
            why = "is not JSON"
        raise NetworkError(f"registry {self.ref.host}: {what} {why} ({len(data)} bytes, starting "
                           f"{_printable(data[:40], 40)}). {_MISBEHAVING}")

    def excerpt(self, resp) -> str:
        """A short escaped excerpt of an error body (at most :data:`SNIPPET_LIMIT` bytes are read)."""
        try:
            data = self._read(resp, SNIPPET_LIMIT, "error body", strict=False)
        except NetworkError:
            return "''"
        return _printable(data)

    def _read(self, resp, limit: int, what: str, strict: bool) -> bytes:
        """At most ``limit`` bytes of the body, within the read timeout in total; then the response is closed.

        ``strict``: a longer body is a NetworkError (else it is cut)."""
        import requests

        deadline = time.monotonic() + self.timeout[1]
        chunks, size = [], 0
        try:
            for chunk in resp.iter_content(16 << 10):
                size += len(chunk)
                if size > limit:
                    if strict:
                        raise NetworkError(f"registry {self.ref.host}: {what} is larger than {limit} bytes; refused "
                                           f"(a real one is a few KiB). {_MISBEHAVING}")
                    chunks.append(chunk[: limit - (size - len(chunk))])
                    break
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise NetworkError(f"registry {self.ref.host}: {what} took longer than {self.timeout[1]:.0f} s "
                                       "to arrive")
        except requests.RequestException as err:
            raise NetworkError(f"registry {self.ref.host}: reading {what} failed: {_printable(str(err), 300)}") \
                from None
        finally:
            _close(resp)
        return b"".join(chunks)

    def _refused(self) -> str:
        if self._note:  # we withheld the credentials: that, not the account, is what to fix
            return f"registry {self.ref.host} refused access to {self.ref.repository}: {self._note}"
        where = ("MODELSYNC_REGISTRY_USERNAME/PASSWORD or ~/.docker/config.json" if self.login.registry
                 else "no credentials were found")
        return (f"registry {self.ref.host} refused access to {self.ref.repository} ({where}). Log in with "
                f"`docker login {self.ref.host}` (or set MODELSYNC_REGISTRY_USERNAME and "
                "MODELSYNC_REGISTRY_PASSWORD) with an account that may read (and for push, write) it.")

    def _answer(self, header: str, push: bool) -> None:
        scheme, params = _challenge(header)
        scope = self._scope(push)
        if scheme == "basic":  # the registry's own challenge: its login goes back to its origin only
            if self.login.registry is None:
                raise RegistryAuthError(self._refused())
            login = self.login.registry
            raw = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
            with self._lock:
                self._auth[scope] = f"Basic {raw}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise RegistryAuthError(f"registry {self.ref.host} asks for an authentication scheme we do not "
                                    f"speak ({_printable(header, 80)})")
        token = self._token(params["realm"], {"service": params.get("service", ""), "scope": scope})
        with self._lock:
            self._auth[scope] = f"Bearer {token}"

    def _token(self, realm: str, query: dict[str, str] | None) -> str:
        """Ask the token service at ``realm`` (following its redirects ourselves) for a bearer token."""
        url = realm
        for _ in range(MAX_TOKEN_REDIRECTS + 1):
            o = origin(url)
            if o is None:
                raise NetworkError(f"registry {self.ref.host} names a token service we cannot use: "
                                   f"{_printable(url, 100)} (an http or https URL is expected)")
            login = self._login_for(o)
            resp = self._send("GET", url, {}, params=query, auth=(login.username, login.password) if login else None)
            if resp.status_code not in (301, 302, 303, 307, 308):
                break
            location = resp.headers.get("Location", "")
            _close(resp)
            try:
                url, query = urljoin(url, location), None
            except ValueError:
                url = location  # unusable: refused as such on the next round
        else:
            _close(resp)
            raise NetworkError(f"registry {self.ref.host}: its token service redirects more than "
                               f"{MAX_TOKEN_REDIRECTS} times")
        if resp.status_code in (401, 403):
            _close(resp)
            raise RegistryAuthError(self._refused())
        if resp.status_code != 200:
            raise NetworkError(f"registry {self.ref.host}: token endpoint answered HTTP {resp.status_code} "
                               f"{self.excerpt(resp)}. {_MISBEHAVING}")
        doc = self.read_json(resp, "the token endpoint's answer")
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not valid_token(token):
            raise NetworkError(f"registry {self.ref.host}: the token endpoint sent no usable token (a JSON object "
                               "with a \"token\" or \"access_token\" string of visible ASCII characters is "
                               f"expected). {_MISBEHAVING}")
        return token

    def _login_for(self, o: Origin):
        """The login the token service at origin ``o`` may have (None when it may have none); notes why
        a login was withheld, for the refusal message."""
        login = self.login.for_origin(o, self.origin)
        if login is None and self.login.registry is not None:
            self._note = (f"its token service {origin_text(o)} is another origin, so the registry's credentials "
                          "were not sent there. If that service belongs to the registry (as gitlab.com does to "
                          f"registry.gitlab.com), say so: MODELSYNC_REGISTRY_REALMS={_key_text(o)}; or log in to it "
                          "(an ~/.docker/config.json auths entry for its host).")
        if login is not None and not may_carry_credentials(o, self.allow_http):
            self._note = (f"its token service {origin_text(o)} speaks plain HTTP, and credentials are never sent "
                          "over plain HTTP to another machine. If you trust the network, allow it: "
                          f"[settings] allow_http = [\"{o[1]}\"] in models.toml.")
            return None
        return login

    # -- blobs ---------------------------------------------------------------------------
    def has_blob(self, digest: str, push: bool = False) -> bool:
        """HEAD the blob: True if the registry has it."""
        resp = self.request("HEAD", self.blob_url(digest), push=push)
        _close(resp)
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
                               f"{self.excerpt(resp)}")
        _close(resp)
        if progress and not chunked:
            progress(size)

    def _location(self, resp, what: str) -> str:
        """Where the upload goes on: the ``Location`` of a 201/202 (relative to the registry), checked."""
        if resp.status_code not in (201, 202) or "Location" not in resp.headers:
            if resp.status_code == 403:
                _close(resp)
                raise RegistryAuthError(self._refused())
            raise NetworkError(f"registry {self.ref.host}: could not {what}: HTTP {resp.status_code} "
                               f"{self.excerpt(resp)}")
        location = resp.headers["Location"]
        _close(resp)
        try:
            url = urljoin(self.base + "/", location)
        except ValueError:
            url = ""
        o = origin(url)
        if o is None:
            raise NetworkError(f"registry {self.ref.host}: could not {what}: it named an unusable upload location "
                               f"{_printable(location, 100)}")
        if o[0] == "http" and not plain_http_allowed(o[1], o[2], self.allow_http):
            raise NetworkError(f"registry {self.ref.host}: could not {what}: it sends the upload to "
                               f"{origin_text(o)} over plain HTTP, which is refused for a host that is not this "
                               f"machine. If you trust the network, allow it: [settings] allow_http = [\"{o[1]}\"] "
                               "in models.toml.")
        return url

    # -- manifests -----------------------------------------------------------------------
    def put_manifest(self, tag: str, body: bytes) -> str:
        """Upload the manifest under ``tag``; return its digest."""
        import hashlib

        resp = self.request("PUT", f"{self.base}/manifests/{tag}", push=True, data=body,
                            headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        if resp.status_code != 201:
            raise NetworkError(f"registry {self.ref.host}: manifest upload answered HTTP {resp.status_code} "
                               f"{self.excerpt(resp)}")
        _close(resp)
        # Our own digest of the bytes we sent: the registry's Docker-Content-Digest is text from outside.
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def get_manifest(self, reference: str) -> dict:
        """The manifest at a tag or digest."""
        resp = self.request("GET", f"{self.base}/manifests/{reference}", headers={"Accept": MANIFEST_MEDIA_TYPE})
        if resp.status_code == 404:
            _close(resp)
            raise UserInputError(f"registry {self.ref.host} has no {self.ref.repository}:{reference}")
        if resp.status_code != 200:
            raise NetworkError(f"registry {self.ref.host}: manifest answered HTTP {resp.status_code} "
                               f"{self.excerpt(resp)}")
        doc = self.read_json(resp, "the manifest")
        if not isinstance(doc, dict):
            raise NetworkError(f"registry {self.ref.host}: the manifest of {reference} is not a JSON object")
        return doc
