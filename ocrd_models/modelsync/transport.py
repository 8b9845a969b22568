"""Streaming HTTP GETs for downloads, straight on urllib3.

``requests`` spends about 1.5 ms of CPU per request on work a download does not need (cookies,
hooks, merging settings, preparing a request object); for 200 small models that was a third of
the sync. Downloads therefore talk to urllib3 (the library under requests) directly, keeping
what users rely on from requests:

- proxies from ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` (with ``user:password@`` sent as
  ``Proxy-Authorization``), excepting ``NO_PROXY`` hosts;
- CA bundles from ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE`` or ``SSL_CERT_FILE`` (a file or a
  directory), else certifi's bundle, else the system's;
- kept-alive connections, one pool manager per thread (never shared across threads).

Redirects, retries and credentials stay with the caller (:mod:`fetch`). ``Accept-Encoding:
identity`` is sent so that a server never compresses the bytes whose SHA-256 we check.

A socket timeout bounds each read, not a server that sends one byte just before it expires: a
status line and headers trickled that way would hold a request for hours. So each request must
have its response head within ``connect_timeout + read_timeout`` seconds of being started
(connecting, a proxy's CONNECT and the TLS handshake included; name resolution excepted): one
watchdog thread shuts the socket down when that time is up (the request fails with
:class:`SlowResponse`). Bodies are bounded by the caller's low-speed rule (:func:`fetch.fetch`).
"""

from __future__ import annotations

import heapq
import os
import socket
import threading
import time
from urllib.request import getproxies_environment, proxy_bypass_environment

import urllib3

USER_AGENT = "ocrd-modelsync (+https://pypi.org/project/ocrd-modelsync/)"
_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")

_local = threading.local()


class UnsupportedProxy(ValueError):
    """A proxy URL of a scheme urllib3 cannot speak (socks needs an extra we do not install)."""


class SlowResponse(urllib3.exceptions.TimeoutError):
    """The response head did not arrive within ``connect_timeout + read_timeout`` (a transient fault)."""


class _Watch:
    """One request's deadline and the sockets (duplicated descriptors) it may cut."""

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
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (watch.deadline, self._seq, watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="modelsync-watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:
                self._cond.notify()
        return watch

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
        """Stop watching (the response head arrived, or the request failed)."""
        with self._cond:
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
                    watch = heapq.heappop(self._heap)[2]
                    if not watch.done:
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


def _ca_bundle() -> str | None:
    for name in _CA_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    try:
        import certifi  # installed with requests

        return certifi.where()
    except ImportError:
        return None  # the system's default store


def _proxy_for(scheme: str, host: str) -> str | None:
    proxies = getproxies_environment()
    if not proxies or proxy_bypass_environment(host, proxies):
        return None
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and "://" not in proxy:
        proxy = "http://" + proxy
    if proxy and not proxy.startswith(("http://", "https://")):
        raise UnsupportedProxy(f"proxy {proxy.split('://')[0]}:// is not supported (use an http:// or "
                               "https:// proxy in HTTP_PROXY / HTTPS_PROXY)")
    return proxy


def _proxy_login(proxy: str) -> dict[str, str]:
    """``Proxy-Authorization`` from user info in the proxy URL (urllib3 does not apply it by itself: we
    add it to the CONNECT of https downloads and to the forwarded request of http ones)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return urllib3.make_headers(proxy_basic_auth=login)


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


def get(url: str, scheme: str, host: str, headers: dict[str, str], connect_timeout: float,
        read_timeout: float) -> urllib3.BaseHTTPResponse:
    """Send a GET for ``url`` and return the response with its body unread (stream it with ``read1``).

    Nothing is retried or redirected here; urllib3's exceptions (all ``urllib3.exceptions.HTTPError``)
    reach the caller, and :class:`SlowResponse` when the head took longer than ``connect_timeout +
    read_timeout``. Call ``release_conn()`` after reading the body to the end (the connection is
    reused), ``close()`` otherwise.
    """
    sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
    proxy = _proxy_for(scheme, host)
    if proxy and scheme == "http":
        sent.update(_proxy_login(proxy))  # forwarded through the proxy: it reads our request's headers
    manager = _manager(proxy, _ca_bundle() if scheme == "https" else None)
    limit = connect_timeout + read_timeout
    watch = _local.watch = _watchdog.arm(limit)
    resp = None
    try:
        resp = manager.request("GET", url, headers=sent, preload_content=False, decode_content=False,
                               redirect=False, retries=False,
                               timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout))
    except urllib3.exceptions.HTTPError:
        if not watch.fired:
            raise
    finally:
        _local.watch = None
        _watchdog.disarm(watch)
    if watch.fired:
        # Also when a response came back: a head cut short by the shutdown parses as a complete one
        # (http.client ends the headers at EOF), so nothing of it can be trusted.
        if resp is not None:
            resp.close()
            resp.release_conn()
        raise SlowResponse(f"no complete response head within {limit:g} s (connect_timeout + read_timeout): "
                           "the server answers too slowly")
    return resp
