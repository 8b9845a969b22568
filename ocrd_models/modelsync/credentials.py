"""Credentials per host, from three places; never printed, never written to a lock.

Sources, first match wins for a host:

1. ``$MODELSYNC_TOKENS``: whitespace-separated ``host=token`` pairs (sent as ``Authorization: Bearer``);
2. ``$XDG_CONFIG_HOME/ocrd-modelsync/credentials.toml``::

       ["huggingface.co"]
       token = "hf_..."              # Authorization: Bearer
       ["models.example.org"]
       username = "me"               # HTTP basic auth
       password = "..."

3. ``~/.netrc`` (or ``$NETRC``): ``machine HOST login USER password PASS`` (basic auth).

Credentials are attached only to requests whose host is the credential's host: a redirect
to another host never carries them.
"""

from __future__ import annotations

import base64
import netrc
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .settings import Environment

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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if ":" in (parts.hostname or ""):  # IPv6 literal
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in SECRET_PARAMS]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="/:"), parts.fragment))


def _plain_http_url(url: str) -> bool:
    """True for a lower-case ``http(s)://host[:port]/path`` with no user info, query, fragment or IPv6."""
    if not url.startswith(("http://", "https://")) or any(c in url for c in "@?#[%"):
        return False
    host = url.split("//", 1)[1].split("/", 1)[0]
    name, colon, port = host.partition(":")
    if colon and not (port.isdigit() and str(int(port)) == port and 0 < int(port) < 65536):
        return False
    return bool(name) and host == host.lower()


@dataclass
class Credentials:
    """Authorization headers by host."""

    headers: dict[str, str] = field(default_factory=dict)  # host -> Authorization value

    @classmethod
    def load(cls, env: Environment) -> "Credentials":
        """Collect credentials from the environment, the settings file and netrc (in that precedence)."""
        creds = cls()
        netrc_path = Path(env.get("NETRC") or env.home / ".netrc")
        try:
            parsed = netrc.netrc(str(netrc_path))
            for host, (login, _, password) in parsed.hosts.items():
                creds._basic(host, login or "", password or "")
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            pass
        cfg = env.xdg_config_home / "ocrd-modelsync" / "credentials.toml"
        try:
            data = tomllib.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            data = {}
        for host, item in data.items():
            if isinstance(item, dict) and item.get("token"):
                creds.headers[host.lower()] = f"Bearer {item['token']}"
            elif isinstance(item, dict) and item.get("username") is not None:
                creds._basic(host, str(item["username"]), str(item.get("password", "")))
        for pair in (env.get("MODELSYNC_TOKENS") or "").split():
            host, sep, token = pair.partition("=")
            if sep and host and token:
                creds.headers[host.lower()] = f"Bearer {token}"
        return creds

    def _basic(self, host: str, user: str, password: str) -> None:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers[host.lower()] = f"Basic {raw}"

    def for_url(self, url: str) -> dict[str, str]:
        """The Authorization header for ``url``'s host (user info in the URL itself counts too)."""
        parts = urlsplit(url)
        if parts.username is not None:
            from urllib.parse import unquote

            raw = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        value = self.headers.get((parts.hostname or "").lower())
        return {"Authorization": value} if value else {}


_USERINFO = re.compile(r"(https?://)[^/@\s]+@")


def strip_userinfo(text: str) -> str:
    """Remove ``user:pass@`` from every URL inside a free text."""
    return _USERINFO.sub(r"\1", text)
