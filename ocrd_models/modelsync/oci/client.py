"""Locked models in an OCI registry (Harbor, GitLab, GHCR, Zot, the CNCF distribution registry).

Push: every locked artifact (the downloaded file or archive) becomes a blob, addressed by the
SHA-256 the lock records; an OCI image manifest with our own media types lists them, each layer
annotated with processor and name, and is tagged. Blobs the registry already has are skipped
(HEAD first). Pull: ``sync`` fetches each blob by digest from the registry and verifies it.

Spoken over plain HTTP(S) through :mod:`transport`, the urllib3 stack downloads use (the same
proxies, ``NO_PROXY``, CA bundles, time bounds and URL parser), per the OCI distribution spec:
anonymous, basic, and the bearer-token flow (a ``WWW-Authenticate: Bearer
realm=...,service=...,scope=...`` challenge answered by the token endpoint). Credentials come from
``MODELSYNC_REGISTRY_USERNAME`` / ``MODELSYNC_REGISTRY_PASSWORD``, else the Docker config file
(``~/.docker/config.json``, or ``$DOCKER_CONFIG``): a credential helper (``credHelpers`` for the
host, else ``credsStore``), else the ``auths`` entry. They are never printed and never written to
the lock.

Credentials stay with their origin (scheme, host, port), as :func:`transport.parse` reads it (a
realm or ``Location`` other parsers would read differently is refused, exit 3):

- the registry's login goes to the registry's origin only, and over plain HTTP only to a loopback
  registry reached without a proxy or one listed in ``[settings] allow_http``;
- a token endpoint (the challenge's ``realm``) on another origin gets no login, unless the user
  configured one for that origin: a Docker config ``auths`` or ``credHelpers`` entry for its host,
  or its ``host[:port]`` in ``$MODELSYNC_REGISTRY_REALMS`` (whitespace-separated), which says "this
  token service belongs to my registry" (GitLab: the registry is registry.gitlab.com, its tokens
  come from gitlab.com);
- a token is sent to the registry's origin only: never to an upload ``Location`` or a redirect on
  another origin, which get no ``Authorization`` header at all;
- nothing else adds credentials: no ``~/.netrc``, no cookies.

Every API call (HEAD, GET, POST, PUT, PATCH, the token request) is retried like a download on
connection errors, 408/425/429/5xx (``Retry-After`` honoured) within ``retries`` and
``max_retry_time``; a name that does not resolve is asked twice. Each reply must arrive whole
within ``connect_timeout + read_timeout`` of its request being sent. Replies that are not content
are read with a cap: JSON (token replies, manifests) up to :data:`JSON_LIMIT` bytes, refused
beyond with a NetworkError; error bodies up to :data:`SNIPPET_LIMIT` bytes, of which a short
escaped excerpt goes into the message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlencode, urljoin

from ..errors import NetworkError, RegistryAuthError, UnsupportedProxy, UserInputError
from ..progress import Meter
from ..install.credentials import (DEFAULT_PORTS, Key, Origin, lookup, may_carry_credentials, origin, origin_text,
                                   parse_key, plain_http_allowed, valid_token, withheld)
from ..install.retry import (DNS_ATTEMPTS, RETRY_STATUS, Attempts, NetConfig, Transient, reason_text, retry_after,
                             status_text)
from ..urls import redact

log = logging.getLogger(__name__)

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
HELPER_TIMEOUT = 30.0  # seconds a Docker credential helper may take (it may ask for a passphrase)
REDIRECTS = (301, 302, 303, 307, 308)
_MISBEHAVING = "The registry or its token service is misbehaving: try again later, or tell its operator."

_REF = re.compile(r"^(?:oci://)?(?P<host>[A-Za-z0-9.-]+(?::\d+)?|\[[0-9a-fA-F:]+\](?::\d+)?)/"
                  r"(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9._-]{0,127}))?$")


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
    """A username and password (or access token) for one registry host."""

    username: str
    password: str


@dataclass(frozen=True)
class _Helper:
    """A login kept by a Docker credential helper, asked for only when it is needed (a registry that never
    asks for credentials never runs a helper, which may prompt for a passphrase)."""

    helper: str  # NAME of docker-credential-NAME
    server: str  # what ``docker login`` stored it under: the host, as the config names it
    fallback: RegistryLogin | None = None  # the config's ``auths`` entry, if the helper has nothing


@dataclass
class Logins:
    """The logins the user configured: the registry's, and those of other origins (token services)."""

    registry: RegistryLogin | _Helper | None = None
    others: dict[Key, RegistryLogin | _Helper | None] = field(default_factory=dict)
    note: str = ""  # why a configured login could not be had (a credential helper that failed)
    env: Any = None  # the Environment credential helpers run in
    _asked: dict[_Helper, RegistryLogin | None] = field(default_factory=dict)  # helpers' answers

    def registry_login(self) -> RegistryLogin | None:
        """The registry's login (a credential helper is asked once, when first needed)."""
        return self._resolved(self.registry)

    def for_origin(self, o: Origin, registry: Origin) -> RegistryLogin | None:
        """The login for origin ``o``: the registry's on the registry's origin, else what was configured for
        ``o`` (a credential helper is asked once, when first needed)."""
        if o == registry:
            return self.registry_login()
        return self._resolved(lookup(self.others, o))

    def _resolved(self, found: RegistryLogin | _Helper | None) -> RegistryLogin | None:
        if not isinstance(found, _Helper):
            return found
        with _helpers_lock:  # one helper at a time: two passphrase prompts at once help no one
            if found not in self._asked:
                login, problem = run_helper(found.helper, found.server, self.env)
                if login is None:
                    login = found.fallback
                if login is None and problem:
                    self.note = problem
                self._asked[found] = login
            return self._asked[found]


_helpers_lock = threading.Lock()


def load_login(host: str, env) -> Logins:
    """Logins for the registry ``host``: MODELSYNC_REGISTRY_USERNAME/PASSWORD, else the Docker config (a
    credential helper for the host, else ``credsStore``, else its ``auths`` entry); and for other origins,
    the Docker config's other entries and, for the token services in MODELSYNC_REGISTRY_REALMS, the
    registry's login. No helper runs here: each is asked when its login is first needed."""
    config = _docker_config(env)
    auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
    helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
    store = config.get("credsStore") if isinstance(config.get("credsStore"), str) else ""
    given = env.registry_login
    registry: RegistryLogin | _Helper | None = RegistryLogin(*given) if given else None
    if registry is None:
        registry = _docker_login(host, auths, helpers, store)
    others: dict[Key, RegistryLogin | _Helper | None] = {}
    for name, item in auths.items():
        key = _auths_key(name)
        if key is None:
            continue
        login = _auth_entry(item)
        if store and isinstance(item, dict):
            login = _Helper(store, name, login)  # with a store, docker login leaves the entry (nearly) empty
        if login is not None:
            others.setdefault(key, login)
    for name, helper in helpers.items():
        key = _auths_key(name)
        if key is not None and isinstance(helper, str):
            # A helper for a host wins over its auths entry, as in docker.
            others[key] = _Helper(helper, name, _auth_entry(auths.get(name)))
    for name in env.registry_realms:
        key = parse_key(name)
        if key is None:
            raise UserInputError(f"{name!r} in MODELSYNC_REGISTRY_REALMS is not HOST or HOST:PORT (the token service "
                                 "a registry names in its challenge, e.g. gitlab.com)")
        if registry is not None:
            others[key] = registry
    return Logins(registry, others, "", env)


def _docker_login(host: str, auths: dict, helpers: dict, store: str) -> RegistryLogin | _Helper | None:
    """The registry's login in the Docker config: a helper for the host, else the store (either with the
    ``auths`` entry as its fallback), else the ``auths`` entry."""
    names = (host, f"https://{host}", f"http://{host}", f"https://{host}/v2/", f"http://{host}/v2/")
    entry = next((login for login in (_auth_entry(auths.get(n)) for n in names) if login is not None), None)
    helper = next((helpers[n] for n in names if isinstance(helpers.get(n), str)), None) or store
    return _Helper(helper, host, entry) if helper else entry


def run_helper(name: str, server: str, env) -> tuple[RegistryLogin | None, str]:
    """Ask ``docker-credential-NAME get`` for the login stored for ``server``: (login, "") or (None, why not).

    The helper's answer "credentials not found" is no problem (None, ""). A helper that is missing, fails,
    answers something else or takes longer than :data:`HELPER_TIMEOUT` seconds gives (None, a sentence
    naming it); the caller goes on without credentials (a registry that then refuses us gets that
    sentence in its message), so a public registry still works with a broken helper configured.
    """
    program = f"docker-credential-{name}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        return None, _helper_problem(f"the Docker config names a credential helper {name!r}, which is not a "
                                     "program name")
    path = env.get("PATH") if env is not None else os.environ.get("PATH")
    exe = shutil.which(program, path=path)
    if exe is None:
        return None, _helper_problem(f"the Docker config names the credential helper {program}, which is not on "
                                     "PATH")
    try:
        proc = subprocess.Popen([exe, "get"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(env.vars) if env is not None and getattr(env, "vars", None) else None,
                                start_new_session=True)  # its own process group: a timeout ends all of it
    except OSError as err:
        return None, _helper_problem(f"the credential helper {program} could not be started ({err.strerror})")
    try:
        out, err = proc.communicate(server.encode(), timeout=HELPER_TIMEOUT)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return None, _helper_problem(f"the credential helper {program} did not answer within {HELPER_TIMEOUT:g} s "
                                     "and was stopped")
    if proc.returncode != 0:
        said = (out + err).decode("utf-8", "replace")
        if "credentials not found" in said.lower():
            return None, ""
        return None, _helper_problem(f"the credential helper {program} failed (exit {proc.returncode}: "
                                     f"{_printable(said, 100)})")
    try:
        doc = json.loads(out[: 1 << 20])
    except (ValueError, RecursionError):
        doc = None
    user, secret = (doc.get("Username"), doc.get("Secret")) if isinstance(doc, dict) else (None, None)
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None, _helper_problem(f"the credential helper {program} answered no usable login (a JSON object with "
                                     "string Username and Secret is expected)")
    if user == "<token>":
        return None, _helper_problem(f"the credential helper {program} holds an identity token for {server}, which "
                                     "modelsync cannot use: log in with a password or an access token instead")
    return RegistryLogin(user, secret), ""


def _helper_problem(text: str) -> str:
    log.warning("%s; going on without those credentials", text)
    return text + "."


def _docker_config(env) -> dict:
    cfg_dir = Path(env.get("DOCKER_CONFIG") or env.home / ".docker")
    try:
        config = json.loads((cfg_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return config if isinstance(config, dict) else {}


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


def _printable(data: bytes | str, limit: int = 200) -> str:
    """A short excerpt of text from outside, as a quoted Python literal: control characters escaped."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(" ".join(text.split())[:limit])


def _key_text(o: Origin) -> str:
    """The credentials key that names origin ``o`` (``host``, or ``host:port`` off the default port)."""
    host = f"[{o[1]}]" if ":" in o[1] else o[1]
    return host if o[2] == DEFAULT_PORTS[o[0]] else f"{host}:{o[2]}"


def _basic(login: RegistryLogin) -> str:
    return "Basic " + base64.b64encode(f"{login.username}:{login.password}".encode()).decode()


@dataclass(frozen=True)
class Reply:
    """A registry's reply, read whole (within :data:`JSON_LIMIT` or :data:`SNIPPET_LIMIT` bytes)."""

    status: int
    headers: Any  # case-insensitive (urllib3's HTTPHeaderDict)
    body: bytes
    note: str = ""  # for a status still failing after retries: how many, and why no more

    @property
    def said(self) -> str:
        """``HTTP 503`` and, after retries, how many were made (for messages)."""
        return f"HTTP {self.status}{self.note}"


def _file_body(path: Path) -> Callable[[], Iterator[bytes]]:
    """An upload body read from ``path`` in blocks, again for each attempt."""
    def blocks() -> Iterator[bytes]:
        with open(path, "rb") as fh:
            while True:
                block = fh.read(1 << 20)
                if not block:
                    return
                yield block
    return blocks


@dataclass
class RegistryClient:
    """One repository on one registry; thread-safe (connections per thread, shared tokens).

    ``timeout``: the :class:`fetch.NetConfig` whose timeouts and retries every call uses; a
    ``(connect, read)`` pair instead means those timeouts and no retries.
    """

    ref: Reference
    login: Logins | RegistryLogin | None = None
    allow_http: frozenset[str] = frozenset()
    timeout: tuple[float, float] | NetConfig = (15.0, 60.0)
    _auth: dict[str, str] = field(default_factory=dict)  # scope -> Authorization value, for our origin only
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _note: str = ""  # why credentials were withheld from a token service, for the refusal message

    def __post_init__(self) -> None:
        if not isinstance(self.login, Logins):
            self.login = Logins(self.login)
        if isinstance(self.timeout, NetConfig):
            self.net = self.timeout
            self.timeout = (self.net.connect_timeout, self.net.read_timeout)
        else:
            self.net = NetConfig(retries=0, connect_timeout=self.timeout[0], read_timeout=self.timeout[1])

    @property
    def base(self) -> str:
        """``http(s)://host/v2/repository``."""
        scheme = "http" if _plain_http(self.ref, self.allow_http) else "https"
        return f"{scheme}://{self.ref.host}/v2/{self.ref.repository}"

    @property
    def origin(self) -> Origin:
        """The registry's origin: its credentials and tokens are sent here and nowhere else."""
        o = origin(self.base)
        if o is None:  # Reference.parse admits host names and ports only, but the URL parser is stricter
            raise UserInputError(f"{self.ref.host!r} is not a registry host name this tool can reach; check the "
                                 "registry reference")
        return o

    def _scope(self, push: bool) -> str:
        return f"repository:{self.ref.repository}:{'pull,push' if push else 'pull'}"

    def auth_header(self, push: bool = False) -> dict[str, str]:
        """The Authorization header known for this scope (empty until a challenge was answered); for
        requests to :attr:`origin` only."""
        value = self._auth.get(self._scope(push))
        return {"Authorization": value} if value else {}

    def request(self, method: str, url: str, *, push: bool = False, headers: dict[str, str] | None = None,
                body: bytes | Callable[[], Iterator[bytes]] | None = None, json_reply: str = "") -> Reply:
        """Send and read the reply (see :meth:`_exchange`); on a 401 from the registry answer the challenge
        (basic or bearer) once and send again. A URL on another origin (an upload Location) is sent without
        our Authorization, and its 401 is not answered. ``json_reply``: what a 200's JSON body is (for
        messages); empty when no JSON is expected."""
        target = self._target(url, "request")
        ours = target.origin == self.origin
        for attempt in (0, 1):
            sent = {**(headers or {}), **(self.auth_header(push) if ours else {})}
            reply = self._exchange(method, target, sent, body, json_reply)
            if reply.status != 401 or attempt:
                break
            if not ours:
                raise NetworkError(f"registry {self.ref.host}: {redact(target.url)}, where it sent us, asks for "
                                   "credentials; the registry's are never sent to another origin. Ask the registry's "
                                   "operator.")
            self._answer(reply.headers.get("WWW-Authenticate", ""), push)
        if reply.status == 401:
            raise RegistryAuthError(self._refused())
        return reply

    def _target(self, url: str, what: str, from_server: bool = False):
        from ..install import transport

        try:
            return transport.parse(url, from_server=from_server)
        except ValueError as err:
            raise NetworkError(f"registry {self.ref.host}: could not {what}: {_printable(url, 100)} is not a URL it "
                               f"can be sent to ({err}). {_MISBEHAVING}") from None

    def _exchange(self, method: str, target, headers: dict[str, str], body=None, json_reply: str = "") -> Reply:
        """One API call with retries (connection errors, 408/425/429/5xx; ``Retry-After``), each reply read
        whole: up to :data:`JSON_LIMIT` bytes when ``json_reply`` (what it is) and the status is 200 (a
        larger body is a NetworkError), else up to :data:`SNIPPET_LIMIT` bytes (the rest is never read). The last reply is
        returned even when it is a retryable status; connection errors after the last attempt raise."""
        import urllib3

        from ..install import transport

        attempts = Attempts(self.net, f"registry {self.ref.host}: {method} {redact(target.url)}")
        last: Transient | None = None
        final: Reply | None = None
        while attempts.next(last):
            final = None
            try:
                resp = transport.request(method, target, headers, body=body, connect_timeout=self.net.connect_timeout,
                                         read_timeout=self.net.read_timeout)
                reply = self._read(resp, json_reply if resp.status == 200 and method != "HEAD" else "")
            except UnsupportedProxy as err:
                raise NetworkError(f"registry {self.ref.host}: {err}") from None
            except urllib3.exceptions.LocationValueError as err:  # a bad proxy URL: retrying cannot help
                raise NetworkError(f"registry {self.ref.host}: {method} {redact(target.url)} failed: "
                                   f"{reason_text(err)}") from None
            except urllib3.exceptions.SSLError as err:
                if "CERTIFICATE_VERIFY_FAILED" in str(err):
                    raise NetworkError(
                        f"registry {self.ref.host}: its TLS certificate is not trusted ({reason_text(err)}). For a "
                        "private CA, point REQUESTS_CA_BUNDLE (or SSL_CERT_FILE) at its bundle.") from None
                last = Transient(reason_text(err))
                continue
            except urllib3.exceptions.NameResolutionError as err:
                last = Transient(reason_text(err), attempts=DNS_ATTEMPTS)  # a wrong name stays wrong
                continue
            except urllib3.exceptions.HTTPError as err:
                last = Transient(reason_text(err))
                continue
            if reply.status not in RETRY_STATUS:
                return reply
            final = reply
            last = Transient(status_text(reply.status), retry_after(reply))
        if final is not None:  # the caller says what the last status means
            return Reply(final.status, final.headers, final.body,
                         f" (after {attempts.made} attempt(s){attempts.why})" if attempts.made > 1 or attempts.why
                         else "")
        raise NetworkError(f"registry {self.ref.host}: {method} {redact(target.url)} failed after {attempts.made} "
                           f"attempt(s): {last}{attempts.why}. Check the network and run the command again; "
                           "retries and timeouts are set in [settings.network].")

    def _read(self, resp, json_body: str) -> Reply:
        limit = JSON_LIMIT if json_body else SNIPPET_LIMIT
        data, whole = resp.read(limit)
        if json_body and not whole:
            raise NetworkError(f"registry {self.ref.host}: {json_body} is larger than {limit} bytes; refused (a real "
                               f"one is a few KiB). {_MISBEHAVING}")
        return Reply(resp.status, resp.headers, data)

    def read_json(self, reply: Reply, what: str) -> Any:
        """The JSON body of ``reply`` (read up to :data:`JSON_LIMIT` bytes); NetworkError if it is not JSON."""
        data = reply.body
        try:
            return json.loads(data)
        except RecursionError:  # json's parser recurses per nesting level
            why = "is JSON nested too deeply to read"
        except ValueError:  # UnicodeDecodeError is one too
            why = "is not JSON"
        raise NetworkError(f"registry {self.ref.host}: {what} {why} ({len(data)} bytes, starting "
                           f"{_printable(data[:40], 40)}). {_MISBEHAVING}")

    def excerpt(self, reply: Reply) -> str:
        """A short escaped excerpt of an error body (at most :data:`SNIPPET_LIMIT` bytes were read)."""
        return _printable(reply.body)

    def _refused(self) -> str:
        if self._note:  # we withheld the credentials: that, not the account, is what to fix
            return f"registry {self.ref.host} refused access to {self.ref.repository}: {self._note}"
        if self.login.note:  # a credential helper failed: that is why we had nothing to send
            return f"registry {self.ref.host} refused access to {self.ref.repository}: {self.login.note}"
        where = ("MODELSYNC_REGISTRY_USERNAME/PASSWORD or ~/.docker/config.json" if self.login.registry_login()
                 else "no credentials were found")
        return (f"registry {self.ref.host} refused access to {self.ref.repository} ({where}). Log in with "
                f"`docker login {self.ref.host}` (or set MODELSYNC_REGISTRY_USERNAME and "
                "MODELSYNC_REGISTRY_PASSWORD) with an account that may read (and for push, write) it.")

    def _answer(self, header: str, push: bool) -> None:
        why = withheld(self.origin, self.allow_http)
        if why:  # whatever we obtained would go back to the registry where others can read it
            self._note = why
            raise RegistryAuthError(self._refused())
        scheme, params = _challenge(header)
        scope = self._scope(push)
        if scheme == "basic":  # the registry's own challenge: its login goes back to its origin only
            login = self.login.registry_login()
            if login is None:
                raise RegistryAuthError(self._refused())
            with self._lock:
                self._auth[scope] = _basic(login)
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
            target = self._token_target(url, query)
            login = self._login_for(target.origin)
            reply = self._exchange("GET", target, {"Authorization": _basic(login)} if login else {},
                                   json_reply="the token endpoint's answer")
            if reply.status not in REDIRECTS:
                break
            location = reply.headers.get("Location", "")
            try:
                url, query = urljoin(target.url, location), None
            except ValueError:
                url = location  # unusable: refused as such on the next round
        else:
            raise NetworkError(f"registry {self.ref.host}: its token service redirects more than "
                               f"{MAX_TOKEN_REDIRECTS} times")
        if reply.status in (401, 403):
            raise RegistryAuthError(self._refused())
        if reply.status != 200:
            raise NetworkError(f"registry {self.ref.host}: token endpoint answered {reply.said} "
                               f"{self.excerpt(reply)}. {_MISBEHAVING}")
        doc = self.read_json(reply, "the token endpoint's answer")
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not valid_token(token):
            raise NetworkError(f"registry {self.ref.host}: the token endpoint sent no usable token (a JSON object "
                               "with a \"token\" or \"access_token\" string of visible ASCII characters is "
                               f"expected). {_MISBEHAVING}")
        return token

    def _token_target(self, url: str, query: dict[str, str] | None):
        """The token request's target: the realm (or a redirect) as the request goes, refused when parsers
        would disagree on its origin or it carries user info (it came from a server)."""
        from ..install import transport

        try:
            target = transport.parse(url, from_server=True)
            if query:
                sep = "&" if "?" in target.url else "?"
                target = transport.parse(target.url + sep + urlencode(query), from_server=True)
        except ValueError as err:
            raise NetworkError(f"registry {self.ref.host} names a token service we cannot use: "
                               f"{_printable(url, 100)} ({err}; an http or https URL is expected). "
                               f"{_MISBEHAVING}") from None
        return target

    def _login_for(self, o: Origin):
        """The login the token service at origin ``o`` may have (None when it may have none); notes why
        a login was withheld, for the refusal message."""
        login = self.login.for_origin(o, self.origin)
        if login is None and self.login.registry is not None:  # configured (a helper not asked yet counts)
            self._note = (f"its token service {origin_text(o)} is another origin, so the registry's credentials "
                          "were not sent there. If that service belongs to the registry (as gitlab.com does to "
                          f"registry.gitlab.com), say so: MODELSYNC_REGISTRY_REALMS={_key_text(o)}; or log in to it "
                          "(an ~/.docker/config.json auths entry for its host).")
        if login is not None and not may_carry_credentials(o, self.allow_http):
            why = withheld(o, self.allow_http) or ""
            self._note = (f"its token service {origin_text(o)} speaks plain HTTP, and {why[0].lower() + why[1:]}"
                          if why else f"its token service {origin_text(o)} may not be sent credentials.")
            return None
        return login

    # -- blobs ---------------------------------------------------------------------------
    def has_blob(self, digest: str, push: bool = False) -> bool:
        """HEAD the blob: True if the registry has it."""
        reply = self.request("HEAD", self.blob_url(digest), push=push)
        if reply.status in (200, 307):
            return True
        if reply.status == 404:
            return False
        if reply.status == 403:
            raise RegistryAuthError(self._refused())
        raise NetworkError(f"registry {self.ref.host}: HEAD blob answered {reply.said}")

    def blob_url(self, digest: str) -> str:
        """Where the blob is fetched (the registry may redirect to its storage)."""
        return f"{self.base}/blobs/{digest}"

    def upload_blob(self, path: Path | None, digest: str, size: int, data: bytes | None = None,
                    chunk: int = DEFAULT_CHUNK, meter: Meter | None = None) -> None:
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
                    reply = self.request("PATCH", location, push=True, body=part, headers={
                        "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end}",
                        "Content-Length": str(len(part))})
                    location = self._location(reply, "upload a chunk")
                    start = end + 1
                    if meter:
                        meter.advance(len(part))
        body: Any = b"" if chunked else (data if data is not None else _file_body(path))
        length = len(body) if isinstance(body, bytes) else size
        sep = "&" if "?" in location else "?"
        reply = self.request("PUT", f"{location}{sep}digest={digest}", push=True, body=body,
                             headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)})
        if reply.status != 201:
            raise NetworkError(f"registry {self.ref.host}: upload of {digest} answered {reply.said} "
                               f"{self.excerpt(reply)}")
        if meter and not chunked:
            meter.advance(size)

    def _location(self, reply: Reply, what: str) -> str:
        """Where the upload goes on: the ``Location`` of a 201/202 (relative to the registry), checked."""
        if reply.status not in (201, 202) or "Location" not in reply.headers:
            if reply.status == 403:
                raise RegistryAuthError(self._refused())
            raise NetworkError(f"registry {self.ref.host}: could not {what}: {reply.said} "
                               f"{self.excerpt(reply)}")
        location = reply.headers["Location"]
        try:
            url = urljoin(self.base + "/", location)
        except ValueError:
            url = location
        target = self._target(url, what, from_server=True)
        o = target.origin
        if o[0] == "http" and not plain_http_allowed(o[1], o[2], self.allow_http):
            raise NetworkError(f"registry {self.ref.host}: could not {what}: it sends the upload to "
                               f"{origin_text(o)} over plain HTTP, which is refused for a host that is not this "
                               f"machine. If you trust the network, allow it: [settings] allow_http = [\"{o[1]}\"] "
                               "in models.toml.")
        return target.url

    # -- manifests -----------------------------------------------------------------------
    def put_manifest(self, tag: str, body: bytes) -> str:
        """Upload the manifest under ``tag``; return its digest."""
        import hashlib

        reply = self.request("PUT", f"{self.base}/manifests/{tag}", push=True, body=body,
                             headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        if reply.status != 201:
            raise NetworkError(f"registry {self.ref.host}: manifest upload answered {reply.said} "
                               f"{self.excerpt(reply)}")
        # Our own digest of the bytes we sent: the registry's Docker-Content-Digest is text from outside.
        return "sha256:" + hashlib.sha256(body).hexdigest()


def connect(reference: str, env, net: NetConfig) -> RegistryClient:
    """A client for the repository ``reference`` names (``HOST/REPOSITORY[:TAG]``), logged in from the
    environment or the Docker config, with the run's network configuration (timeouts, retries, plain-HTTP
    hosts)."""
    ref = Reference.parse(reference)
    return RegistryClient(ref, load_login(ref.host, env), net.allow_http, net)
