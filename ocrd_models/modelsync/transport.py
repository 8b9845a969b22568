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
"""

from __future__ import annotations

import os
import threading
from urllib.request import getproxies_environment, proxy_bypass_environment

import urllib3

USER_AGENT = "ocrd-modelsync (+https://pypi.org/project/ocrd-modelsync/)"
_CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")

_local = threading.local()


class UnsupportedProxy(ValueError):
    """A proxy URL of a scheme urllib3 cannot speak (socks needs an extra we do not install)."""


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
        managers[key] = manager
    return manager


def get(url: str, scheme: str, host: str, headers: dict[str, str], connect_timeout: float,
        read_timeout: float) -> urllib3.BaseHTTPResponse:
    """Send a GET for ``url`` and return the response with its body unread (stream it with ``read1``).

    Nothing is retried or redirected here; urllib3's exceptions (all ``urllib3.exceptions.HTTPError``)
    reach the caller. Call ``release_conn()`` after reading the body to the end (the connection is
    reused), ``close()`` otherwise.
    """
    sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
    proxy = _proxy_for(scheme, host)
    if proxy and scheme == "http":
        sent.update(_proxy_login(proxy))  # forwarded through the proxy: it reads our request's headers
    manager = _manager(proxy, _ca_bundle() if scheme == "https" else None)
    return manager.request("GET", url, headers=sent, preload_content=False, decode_content=False,
                           redirect=False, retries=False,
                           timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout))
