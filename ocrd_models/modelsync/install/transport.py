"""Every HTTP request modelsync makes (downloads and the OCI registry API), straight on urllib3.

One network configuration for every request, read from the environment in one place
(:func:`settings`) and applied the same way to downloads and registry calls:

- proxies from ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (lower-case names first; ``user:password@``
  in the proxy URL is sent as ``Proxy-Authorization``), except hosts matched by ``NO_PROXY``: ``*``,
  domain suffixes (``example.org`` and ``.example.org`` both match the domain and every host below it),
  IP addresses and CIDR ranges (``10.0.0.0/8``, ``fd00::/8``), each optionally with ``:port``;
- CA bundles from ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE`` or ``SSL_CERT_FILE`` (a file or a
  directory), else certifi's bundle, else the system's;
- no ``~/.netrc``, cookies or other implicit credentials: every ``Authorization`` header is the
  caller's (:mod:`.credentials`, :mod:`..oci.client`), decided on the origin this module's parser gives;
- kept-alive connections, one pool manager per thread (never shared across threads).

**One URL parser.** :func:`parse` (urllib3's ``parse_url``, the parser that decides where a request
goes) also gives the origin that credentials are chosen for, so the two can never disagree. URLs
other parsers read differently (a backslash, control characters or white space, a host that is
not plain ASCII letters, digits, ``.-_`` or an IP literal) are refused before any request, and so
is user info in a URL a server sent (a realm, a ``Location``): ``http://evil\\@trusted/`` goes
nowhere.

**Time.** A socket timeout bounds each read, not a peer that sends one byte just before it
expires. So a watchdog thread shuts a request's socket down when its deadline passes (the request
then fails with :class:`SlowResponse`, a transient fault):

- the response head (status line and headers) must arrive within ``connect_timeout +
  read_timeout`` of the request being sent (connecting, a proxy's CONNECT and the TLS handshake
  included; name resolution excepted; an upload's body moves the deadline on as it is sent);
- a reply that is not content (``stream=False``: JSON, error text) must also arrive *whole*
  within that time;
- a streamed body (``stream=True``: a download) must make progress: no read of it may take longer
  than ``connect_timeout + read_timeout``, whatever the bytes on the wire are (chunk-size lines,
  chunk extensions and trailers trickled or sent without end included; each socket read is
  bounded by ``read_timeout`` as well). The low-speed floor is the caller's (:func:`fetch.fetch`).

``Accept-Encoding: identity`` is sent so that a server never compresses the bytes whose SHA-256
we check. Redirects and retries stay with the callers.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import urllib3
from urllib3.util import Url, parse_url

from ..errors import UnsupportedProxy

USER_AGENT = "ocrd-modelsync (+https://pypi.org/project/ocrd-modelsync/)"
DEFAULT_PORTS = {"https": 443, "http": 80}
_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
SEND_BLOCK = 64 << 10  # an upload is sent in blocks of this size (each bounded by the socket timeout)

_local = threading.local()


class SlowResponse(urllib3.exceptions.TimeoutError):
    """A reply (or a streamed body) did not arrive within its time bound (a transient fault)."""


# -- the one URL parser ---------------------------------------------------------------------------

_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")  # control characters, white space, backslash
_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")  # a DNS name after IDNA (or an IPv4 address)


@dataclass(frozen=True)
class Target:
    """An http(s) URL as urllib3 reads it: where a request goes and whose credentials it may carry."""

    scheme: str  # http or https
    host: str  # lower case; an IPv6 address without brackets
    port: int  # the scheme's default port filled in
    url: str  # what is requested: normalized, without user info and fragment
    userinfo: str | None = None  # ``user[:password]`` as written in the URL (percent-encoded)

    @property
    def origin(self) -> tuple[str, str, int]:
        """Scheme, host and port: the unit credentials belong to."""
        return self.scheme, self.host, self.port


def parse(url: str, *, from_server: bool = False) -> Target:
    """``url`` as the request to it will be made; raises ValueError (with a reason for a message).

    ``from_server``: the URL came from a server (a redirect, an upload ``Location``, a token
    ``realm``): user info in it is refused as well.
    """
    if not isinstance(url, str):
        raise ValueError("it is not text")
    m = _UNSAFE.search(url)
    if m:
        what = {"\\": "a backslash", " ": "a space"}.get(m.group(), "a control character or white space")
        raise ValueError(f"it contains {what}, which URL parsers read differently")
    try:
        parts = parse_url(url)
    except urllib3.exceptions.LocationParseError as err:
        raise ValueError(f"it cannot be parsed ({_clip(str(err))})") from None
    scheme = (parts.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{scheme or 'a relative'}: URLs cannot be requested")
    host = (parts.host or "").lower()
    if not host:
        raise ValueError("it has no host")
    if host.startswith("["):
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError("its [IPv6] host is not an IPv6 address") from None
        host = ip.compressed
    elif not _HOST.fullmatch(host):
        raise ValueError("its host is not a plain host name or IP address")
    if parts.port == 0:
        raise ValueError("port 0 is not a port")
    if from_server and parts.auth is not None:
        raise ValueError("it carries user info (user@), which is never taken from a server")
    port = parts.port or DEFAULT_PORTS[scheme]
    netloc = f"[{host}]" if ":" in host else host
    request = Url(scheme=scheme, host=netloc, port=None if port == DEFAULT_PORTS[scheme] else port,
                  path=parts.path or "/", query=parts.query).url
    return Target(scheme, host, port, request, parts.auth)


def _clip(text: str, limit: int = 80) -> str:
    return repr(text[:limit])


# -- one network configuration, from the environment -------------------------------------------------

@dataclass(frozen=True)
class _NoProxy:
    """One ``NO_PROXY`` entry."""

    everything: bool = False
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    domain: str | None = None
    port: int | None = None

    def matches(self, host: str, port: int, ip) -> bool:
        if self.everything:
            return True
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        return host == self.domain or host.endswith("." + self.domain)


def _no_proxy_entry(text: str) -> _NoProxy | None:
    """An entry as curl, Go and requests read it; None for one that names nothing."""
    text = text.strip().lower()
    if text == "*":
        return _NoProxy(everything=True)
    port = None
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+):([0-9]{1,5})", text)
    if m:
        text, port = m.group(1), int(m.group(2))
    text = text.strip("[]")
    try:
        return _NoProxy(network=ipaddress.ip_network(text, strict=False), port=port)
    except ValueError:
        pass
    text = text.removeprefix("*").lstrip(".").rstrip(".")
    return _NoProxy(domain=text, port=port) if text else None


@dataclass(frozen=True)
class Settings:
    """The proxies, ``NO_PROXY`` entries and CA bundle every request uses (see the module docstring)."""

    proxies: dict[str, str]  # "http", "https", "all" -> proxy URL
    no_proxy: tuple[_NoProxy, ...]
    ca: str | None  # a file or a directory; None: the system's default store

    def proxy_for(self, scheme: str, host: str, port: int) -> str | None:
        """The proxy URL a request to ``scheme://host:port`` goes through, or None (direct)."""
        proxy = self.proxies.get(scheme) or self.proxies.get("all")
        if not proxy:
            return None
        host = host.lower().strip("[]").rstrip(".")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if any(entry.matches(host, port, ip) for entry in self.no_proxy):
            return None
        if "://" not in proxy:
            proxy = "http://" + proxy
        if not proxy.lower().startswith(("http://", "https://")):
            raise UnsupportedProxy(f"proxy {proxy.split('://')[0]}:// is not supported (use an http:// or "
                                   "https:// proxy in HTTP_PROXY / HTTPS_PROXY)")
        return proxy


_settings_cache: dict[tuple, Settings] = {}


def settings() -> Settings:
    """The network configuration now in the environment (cached per distinct value of its variables)."""
    env = os.environ
    key = tuple(env.get(n) for n in _PROXY_VARIABLES) + tuple(env.get(n.upper()) for n in _PROXY_VARIABLES) \
        + tuple(env.get(n) for n in _CA_VARIABLES) + ("REQUEST_METHOD" in env,)
    cached = _settings_cache.get(key)
    if cached is None:
        cached = _settings_cache[key] = _read_settings(env)
    return cached


def _read_settings(env) -> Settings:
    proxies = {}
    for name in ("http", "https", "all"):
        # Lower case first (curl's and Python's rule). Under CGI, HTTP_PROXY may be a request header
        # ("httpoxy"): only the lower-case name counts there.
        value = env.get(f"{name}_proxy")
        if value is None and not (name == "http" and "REQUEST_METHOD" in env):
            value = env.get(f"{name.upper()}_PROXY")
        if value and value.strip():
            proxies[name] = value.strip()
    raw = env.get("no_proxy")
    if raw is None:
        raw = env.get("NO_PROXY", "")
    entries = tuple(e for e in (_no_proxy_entry(t) for t in re.split(r"[,\s]+", raw) if t) if e is not None)
    return Settings(proxies, entries, _ca_bundle(env))


def _ca_bundle(env) -> str | None:
    for name in _CA_VARIABLES:
        value = env.get(name)
        if value:
            return value
    try:
        import certifi  # a dependency (it came with requests); without it, the system store

        return certifi.where()
    except ImportError:
        return None


def proxied_in_clear(target: Target) -> bool:
    """Whether a request to ``target`` is read by a proxy on the way (plain http through HTTP_PROXY/ALL_PROXY):
    then loopback is no reason to trust plain HTTP with credentials."""
    if target.scheme != "http":
        return False  # https through a proxy is a CONNECT tunnel: the proxy sees only TLS
    try:
        return settings().proxy_for("http", target.host, target.port) is not None
    except UnsupportedProxy:
        return True  # the request fails anyway; never reason that it stays local


# -- the watchdog --------------------------------------------------------------------------------------

class _Watch:
    """One request's deadline and the sockets (duplicated descriptors) it may cut.

    ``deadline`` may be moved later by its request without the lock (a progressing download does so
    after every read); the watchdog thread finds the new value when the old one is due.
    """

    __slots__ = ("deadline", "socks", "fired", "done")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.socks: list[socket.socket] = []
        self.fired = False
        self.done = False


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a read blocked on this connection returns at once
    except OSError:
        pass


class _Watchdog:
    """Cuts the connection of each request whose deadline passed before it was disarmed.

    One thread for the process, sleeping until the earliest deadline; arming and disarming cost a
    heap push and a descriptor ``dup`` (a thread per request would cost more than the request).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._seq = 0
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> _Watch:
        """Start watching: the sockets attached to the returned watch are cut after ``seconds``."""
        watch = _Watch(time.monotonic() + seconds)
        self._push(watch)
        return watch

    def _push(self, watch: _Watch) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (watch.deadline, self._seq, watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="modelsync-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:
                self._cond.notify()

    def attach(self, watch: _Watch, sock: socket.socket) -> None:
        """Let ``watch`` cut ``sock`` (through a duplicate: the original may be wrapped in TLS later)."""
        try:
            dup = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return
        with self._cond:
            if not watch.done:
                watch.socks.append(dup)
                if watch.fired:
                    _cut(dup)
                return
        dup.close()

    def disarm(self, watch: _Watch) -> None:
        """Stop watching (the reply arrived, or the request failed). Idempotent."""
        with self._cond:
            if watch.done:
                return
            watch.done = True
            socks, watch.socks = watch.socks, []
            while self._heap and self._heap[0][2].done:
                heapq.heappop(self._heap)
        for dup in socks:
            dup.close()  # the duplicate only: the connection itself stays open for its response

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    due, _, watch = heapq.heappop(self._heap)
                    if watch.done or watch.fired:
                        continue
                    if watch.deadline > now:  # moved on by progress since it was pushed: wait for it
                        if watch.deadline > due:
                            self._seq += 1
                            heapq.heappush(self._heap, (watch.deadline, self._seq, watch))
                        continue
                    watch.fired = True
                    for dup in watch.socks:
                        _cut(dup)
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_watchdog = _Watchdog()


def _attach(sock: socket.socket | None) -> None:
    watch = getattr(_local, "watch", None)
    if watch is not None and sock is not None:
        _watchdog.attach(watch, sock)


class _Watched:
    """Connections whose sockets this thread's request in progress may cut (new ones and kept-alive)."""

    def _new_conn(self):
        sock = super()._new_conn()
        _attach(sock)
        return sock

    def request(self, *args, **kwargs):
        _attach(self.sock)
        return super().request(*args, **kwargs)


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


# -- requests --------------------------------------------------------------------------------------------

def _proxy_login(proxy: str) -> dict[str, str]:
    """``Proxy-Authorization`` from user info in the proxy URL (urllib3 does not apply it by itself: we
    add it to the CONNECT of https requests and to the forwarded request of http ones)."""
    from urllib.parse import unquote

    auth = parse_url(proxy).auth
    if auth is None:
        return {}
    user, _, password = auth.partition(":")
    return urllib3.make_headers(proxy_basic_auth=f"{unquote(user)}:{unquote(password)}")


def _manager(proxy: str | None, ca: str | None) -> urllib3.PoolManager:
    """This thread's pool manager for one proxy and CA setting (kept: connections stay alive)."""
    managers = getattr(_local, "managers", None)
    if managers is None:
        managers = _local.managers = {}
    key = (proxy, ca)
    manager = managers.get(key)
    if manager is None:
        tls = {}
        if ca:
            tls = {"ca_cert_dir": ca} if os.path.isdir(ca) else {"ca_certs": ca}
        options = dict(num_pools=16, maxsize=1, cert_reqs="CERT_REQUIRED", **tls)
        if proxy:
            manager = urllib3.ProxyManager(proxy, proxy_headers=_proxy_login(proxy), **options)
        else:
            manager = urllib3.PoolManager(**options)
        manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        managers[key] = manager
    return manager


Body = bytes | Callable[[], Iterable[bytes]]


class Response:
    """A reply whose head arrived; its body is read through :meth:`read1` or :meth:`read`.

    Call :meth:`release_conn` after reading the body to its end (the connection is reused),
    :meth:`close` otherwise. urllib3's exceptions (``urllib3.exceptions.HTTPError``) reach the caller,
    :class:`SlowResponse` when a time bound was cut.
    """

    __slots__ = ("_resp", "_watch", "_window", "_limit", "status", "reason", "headers")

    def __init__(self, resp: urllib3.BaseHTTPResponse, watch: _Watch, window: float | None, limit: float):
        self._resp, self._watch, self._window, self._limit = resp, watch, window, limit
        self.status: int = resp.status
        self.reason: str | None = resp.reason
        self.headers = resp.headers

    def _slow(self) -> SlowResponse:
        if self._window is not None:
            return SlowResponse(f"the body made no progress for {self._window:g} s (connect_timeout + "
                                "read_timeout): the server stalls")
        return SlowResponse(f"the reply did not arrive whole within {self._limit:g} s (connect_timeout + "
                            "read_timeout): the server answers too slowly")

    def read1(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body as they arrive; b"" at its end."""
        try:
            data = self._resp.read1(n)
        except (urllib3.exceptions.HTTPError, OSError):
            if self._watch.fired:
                raise self._slow() from None
            raise
        if self._watch.fired:
            # Also when bytes came back: after the cut, an end of the body is no end at all.
            raise self._slow()
        if self._window is not None:
            self._watch.deadline = time.monotonic() + self._window  # progress: the watchdog finds it
        return data

    def read(self, limit: int) -> tuple[bytes, bool]:
        """At most ``limit`` bytes of the body and whether that was all of it (then the connection is
        kept), under this reply's time bound; the connection is let go either way."""
        chunks, size = [], 0
        try:
            while size <= limit:
                chunk = self.read1(min(64 << 10, limit + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except BaseException:
            self.close()
            raise
        data = b"".join(chunks)
        if size > limit:
            self.close()
            return data[:limit], False
        self.release_conn()
        return data, True

    def close(self) -> None:
        """Let go of a reply whose body we do not want or could not finish: its connection is closed."""
        _watchdog.disarm(self._watch)
        self._resp.close()
        self._resp.release_conn()

    def abort(self) -> None:
        """Cut the connection from another thread: a read blocked on it returns (with an error) at once.
        Call :meth:`close` afterwards, from the reading thread."""
        with _watchdog._cond:
            socks = list(self._watch.socks)
        for dup in socks:
            _cut(dup)

    def release_conn(self) -> None:
        """Give a fully read reply's connection back for reuse."""
        _watchdog.disarm(self._watch)
        self._resp.release_conn()


def _blocks(body: Body, watch: _Watch, limit: float) -> Iterator[bytes]:
    """The body in blocks; each block sent moves the deadline on (a slow but moving upload is not cut)."""
    source = (body,) if isinstance(body, (bytes, bytearray, memoryview)) else body()
    for piece in source:
        view = memoryview(piece)
        for i in range(0, len(view), SEND_BLOCK):
            watch.deadline = time.monotonic() + limit
            yield view[i:i + SEND_BLOCK]
    watch.deadline = time.monotonic() + limit  # all sent: the head is due within the limit from now


def request(method: str, target: Target, headers: dict[str, str], *, connect_timeout: float, read_timeout: float,
            body: Body | None = None, stream: bool = False) -> Response:
    """Send one request to ``target`` and return the reply with its body unread.

    ``headers`` are sent as given (with our User-Agent and ``Accept-Encoding: identity``); nothing is
    added from the environment but proxies and CA bundles (:func:`settings`). ``body``: bytes, or a
    function returning an iterable of bytes (called once; send ``Content-Length`` with it).
    ``stream``: the body is content read as it arrives (each read within ``read_timeout``); else the
    whole reply must arrive within ``connect_timeout + read_timeout`` of the request being sent.
    Nothing is retried or redirected here.
    """
    sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
    if isinstance(body, (bytes, bytearray)) and not any(k.lower() == "content-length" for k in sent):
        sent["Content-Length"] = str(len(body))  # sent in blocks: urllib3 would choose chunked framing
    net = settings()
    proxy = net.proxy_for(target.scheme, target.host, target.port)
    if proxy and target.scheme == "http":
        sent.update(_proxy_login(proxy))  # forwarded through the proxy: it reads our request's headers
    manager = _manager(proxy, net.ca if target.scheme == "https" else None)
    limit = connect_timeout + read_timeout
    watch = _local.watch = _watchdog.arm(limit)
    resp = None
    try:
        resp = manager.request(method, target.url, headers=sent, preload_content=False, decode_content=False,
                               body=None if body is None else _blocks(body, watch, limit),
                               redirect=False, retries=False,
                               timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout))
    except urllib3.exceptions.HTTPError:
        if not watch.fired:
            _watchdog.disarm(watch)
            raise
    except BaseException:
        _watchdog.disarm(watch)
        raise
    finally:
        _local.watch = None
    if watch.fired:
        # Also when a response came back: a head cut short by the shutdown parses as a complete one
        # (http.client ends the headers at EOF), so nothing of it can be trusted.
        _watchdog.disarm(watch)
        if resp is not None:
            resp.close()
            resp.release_conn()
        raise SlowResponse(f"no complete response head within {limit:g} s (connect_timeout + read_timeout): "
                           "the server answers too slowly")
    if stream:
        # From now on: each read within the same limit, counted from the last one. The deadline only
        # moves later, so the watchdog finds it when the old one is due (no wake-up per download).
        watch.deadline = time.monotonic() + limit
    return Response(resp, watch, limit if stream else None, limit)


def get(url: str | Target, headers: dict[str, str], connect_timeout: float, read_timeout: float) -> Response:
    """A streamed GET (a download): :func:`request` with ``stream=True``."""
    target = url if isinstance(url, Target) else parse(url)
    return request("GET", target, headers, connect_timeout=connect_timeout, read_timeout=read_timeout, stream=True)
