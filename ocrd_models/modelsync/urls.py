"""URLs as they may be shown or written: without user info and without secret query parameters.

A base module: it imports nothing from the package, so every layer can redact a URL before it
reaches a message, a log line or the lock.
"""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameters that carry secrets in signed or tokenized URLs (S3, GCS, Azure, generic).
SECRET_PARAMS = {
    "token", "access_token", "api_key", "apikey", "key", "sig", "signature", "auth", "password", "secret",
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "x-goog-signature", "x-goog-credential",
    "se", "sp", "sv", "sr", "skoid", "sktid",
}


@lru_cache(maxsize=65536)  # called per resource and comparison: 10 000-model plans call it often
def redact(url: str) -> str:
    """``url`` without user info and secret query parameters (for messages and the lock)."""
    head = url[:8].lower()
    if not head.startswith(("http://", "https://")):
        return url  # file URLs and local paths carry no credentials
    if _plain_http_url(url):
        return url  # already what the slow path below would produce: skip urlsplit (runs per resource)
    try:
        parts = urlsplit(url)
    except ValueError:  # a broken [IPv6] host: no request goes there; never show its user info
        return strip_userinfo(url.split("?", 1)[0])
    if parts.scheme not in ("http", "https"):
        return url
    try:
        port = parts.port
    except ValueError:  # not a port (such a URL is refused before any request): keep it as written
        port = parts.netloc.rpartition("@")[2].rpartition(":")[2]
    netloc = parts.hostname or ""
    if port:
        netloc += f":{port}"
    if ":" in (parts.hostname or ""):  # IPv6 literal
        netloc = f"[{parts.hostname}]" + (f":{port}" if port else "")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in SECRET_PARAMS]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="/:"), parts.fragment))


def _plain_http_url(url: str) -> bool:
    """True for a lower-case ``http(s)://host[:port]/path`` with no user info, query, fragment or IPv6."""
    if not url.startswith(("http://", "https://")) or any(c in url for c in "@?#[%"):
        return False
    host = url.split("//", 1)[1].split("/", 1)[0]
    name, colon, port = host.partition(":")
    if colon and not (re.fullmatch("[1-9][0-9]{0,4}", port) and int(port) < 65536):
        return False
    return bool(name) and host == host.lower()


_USERINFO = re.compile(r"(https?://)[^/@\s]+@")


def strip_userinfo(text: str) -> str:
    """Remove ``user:pass@`` from every URL inside a free text."""
    return _USERINFO.sub(r"\1", text)
