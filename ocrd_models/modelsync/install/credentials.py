"""Credentials per origin, from three places; never printed, never written to a lock.

Sources, first match wins for an origin:

1. ``$MODELSYNC_TOKENS``: whitespace-separated ``host=token`` or ``host:port=token`` pairs (sent
   as ``Authorization: Bearer``);
2. ``$XDG_CONFIG_HOME/ocrd-modelsync/credentials.toml``::

       ["huggingface.co"]
       token = "hf_..."              # Authorization: Bearer
       ["models.example.org:8443"]
       username = "me"               # HTTP basic auth
       password = "..."

3. ``~/.netrc`` (or ``$NETRC``): ``machine HOST login USER password PASS`` (basic auth; its
   ``default`` entry is ignored: it would name every host).

A key is ``host`` or ``host:port`` (an IPv6 address in brackets). An origin is scheme, host and
port: a key with a port is for that port only; a key without one is for the scheme's default
port (443 for https, 80 for http). Credentials are attached only to requests whose origin is
the credential's: a redirect to another host, or to the same host on another port, never
carries them. Which origin a URL names is decided by the parser that sends the request
(:func:`transport.parse`), and URLs other parsers read differently are refused. Credentials never
travel over plain HTTP, except to hosts the user allowed (``[settings] allow_http``, a proxy on
the way included) and to loopback addresses (127.0.0.0/8, ::1, ``localhost``) reached directly,
whose bytes never leave the machine: when ``HTTP_PROXY``/``ALL_PROXY`` would forward a loopback
request (the host is not in ``NO_PROXY``), the proxy would read it, so no credentials go.
"""

from __future__ import annotations

import base64
import ipaddress
import netrc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import UserInputError
from ..config import Environment

if TYPE_CHECKING:
    from . import transport

Origin = tuple[str, str, int]  # scheme, host (lower case, IPv6 without brackets), port
Key = tuple[str | None, str, int | None]  # an origin; None: any scheme / the scheme's default port
DEFAULT_PORTS = {"https": 443, "http": 80}
T = TypeVar("T")

def origin(url: str) -> Origin | None:
    """Scheme, host and port of an http(s) URL (the default port filled in) as the request to it is made
    (:func:`transport.parse`); None for anything else, and for URLs that parsers read differently."""
    from . import transport  # urllib3: only commands that speak to the network pay for its import

    try:
        return transport.parse(url).origin
    except ValueError:
        return None


def origin_text(o: Origin) -> str:
    """``scheme://host[:port]`` as a person writes it (the default port left out)."""
    scheme, host, port = o
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")


_KEY = re.compile(r"^(?P<host>\[[0-9a-f:.]+\]|[^\[\]:/@?#\s\\]+)(?::(?P<port>\d{1,5}))?$")


def parse_key(key: str) -> Key | None:
    """``host`` or ``host:port`` (IPv6 in brackets) as a :data:`Key` for any scheme; None if it is neither."""
    m = _KEY.match(key.strip().lower())
    if not m:
        return None
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        return None
    return None, m["host"].strip("[]"), port


def lookup(table: dict[Key, T], o: Origin) -> T | None:
    """The entry of ``table`` for origin ``o``: exact, then any scheme on that port, then a key without a
    port when ``o`` is on its scheme's default port."""
    scheme, host, port = o
    for key in ((scheme, host, port), (None, host, port)):
        if key in table:
            return table[key]
    return table.get((None, host, None)) if port == DEFAULT_PORTS[scheme] else None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``: bytes sent there never leave the machine."""
    host = host.lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_http_allowed(host: str, port: int, allow_http: frozenset[str]) -> bool:
    """Whether ``host:port`` may be spoken to in plain HTTP with credentials: loopback, or allowed by the user
    (``[settings] allow_http`` names ``host`` or ``host:port``)."""
    return is_loopback(host) or user_allows_http(host, port, allow_http)


def user_allows_http(host: str, port: int, allow_http: frozenset[str]) -> bool:
    """Whether ``[settings] allow_http`` names ``host`` or ``host:port``."""
    names = {host, f"{host}:{port}", f"[{host}]", f"[{host}]:{port}"}
    return any(a.strip().lower() in names for a in allow_http)


def may_carry_credentials(o: Origin, allow_http: frozenset[str]) -> bool:
    """Credentials travel over https; over plain http to hosts in ``allow_http``; and to loopback hosts
    only when no proxy reads the request on the way (see :func:`withheld`)."""
    return withheld(o, allow_http) is None


def withheld(o: Origin, allow_http: frozenset[str]) -> str | None:
    """Why credentials for origin ``o`` may not be sent there (a sentence for a message), or None."""
    scheme, host, port = o
    if scheme == "https" or user_allows_http(host, port, allow_http):
        return None
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(host):
        return (f"credentials are never sent over plain HTTP to another machine ({origin_text(o)}). If you "
                f"trust the network, allow it: [settings] allow_http = [\"{shown}\"] in models.toml.")
    from . import transport

    if transport.proxied_in_clear(transport.Target(scheme, host, port, "")):
        return (f"credentials for {origin_text(o)} are not sent: that plain-HTTP request would go through "
                f"the proxy in HTTP_PROXY/ALL_PROXY, which reads it. Add {shown} to NO_PROXY to reach it "
                f"directly (or allow_http = [\"{shown}\"] in [settings] if you trust the proxy).")
    return None


_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: a header value that cannot split a request


def valid_token(value: object) -> bool:
    """A usable bearer token: a non-empty string of visible ASCII characters."""
    return isinstance(value, str) and bool(_TOKEN_CHARS.match(value))


@dataclass
class Credentials:
    """Authorization headers by origin (see the module docstring for keys and the plain-HTTP rule)."""

    headers: dict[Key, str] = field(default_factory=dict)  # key -> Authorization value
    allow_http: frozenset[str] = frozenset()  # hosts whose plain HTTP may carry credentials

    @classmethod
    def load(cls, env: Environment, allow_http: frozenset[str] = frozenset()) -> "Credentials":
        """Collect credentials from the environment, the settings file and netrc (in that precedence).

        Raises UserInputError for a key of ours that is neither ``host`` nor ``host:port``.
        """
        creds = cls(allow_http=frozenset(allow_http))
        netrc_path = Path(env.get("NETRC") or env.home / ".netrc")
        try:
            parsed = netrc.netrc(str(netrc_path))
            for host, (login, _, password) in parsed.hosts.items():
                key = parse_key(host)
                if key is not None and host != "default":  # netrc is shared with other tools: skip what we cannot use
                    creds._basic(key, login or "", password or "")
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            pass
        cfg = env.xdg_config_home / "ocrd-modelsync" / "credentials.toml"
        data = _read_config(cfg)
        for host, item in data.items():
            if not isinstance(item, dict):
                continue
            key = _our_key(host, str(cfg))
            if item.get("token"):
                creds.headers[key] = _bearer(item["token"], f"the token of [{host!r}] in {cfg}")
            elif item.get("username") is not None:
                creds._basic(key, str(item["username"]), str(item.get("password", "")))
        for host, token in env.tokens:
            creds.headers[_our_key(host, "MODELSYNC_TOKENS")] = _bearer(token, f"the token for {host!r} in "
                                                                               "MODELSYNC_TOKENS")
        return creds

    def _basic(self, key: Key, user: str, password: str) -> None:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers[key] = f"Basic {raw}"

    def with_origin(self, o: Origin, value: str | None, allow_http: frozenset[str] = frozenset()) -> "Credentials":
        """A copy that sends ``value`` (None: nothing) to exactly the origin ``o``, whatever else was configured
        for it, and allows ``allow_http`` too."""
        return Credentials({**self.headers, o: value}, self.allow_http | allow_http)

    def for_url(self, url: "str | transport.Target") -> dict[str, str]:
        """The Authorization header for ``url``'s origin (user info in the URL itself counts too), as
        :func:`transport.parse` reads it: the origin the request really goes to."""
        from . import transport

        try:
            target = url if isinstance(url, transport.Target) else transport.parse(url)
        except ValueError:
            return {}
        value = self.value_for(target)
        if value is None or not may_carry_credentials(target.origin, self.allow_http):
            return {}
        return {"Authorization": value}

    def withheld(self, url: "str | transport.Target") -> str | None:
        """Why the credentials configured for ``url`` were not sent with it (a sentence), or None."""
        from . import transport

        try:
            target = url if isinstance(url, transport.Target) else transport.parse(url)
        except ValueError:
            return None
        return withheld(target.origin, self.allow_http) if self.value_for(target) else None

    def value_for(self, target: "transport.Target") -> str | None:
        """The Authorization value configured for ``target`` (its user info, else its origin's entry), whether
        or not it may be sent there."""
        if target.userinfo is not None:
            from urllib.parse import unquote

            user, _, password = target.userinfo.partition(":")
            raw = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
            return f"Basic {raw}"
        return lookup(self.headers, target.origin)


def _our_key(text: str, where: str) -> Key:
    key = parse_key(text)
    if key is None:
        raise UserInputError(f"{text!r} in {where} is not a credentials key: write HOST or HOST:PORT "
                             "(e.g. huggingface.co or models.example.org:8443; an IPv6 address in brackets). A key "
                             "without a port is for https on port 443.")
    return key


def _bearer(token: object, what: str) -> str:
    if isinstance(token, str) and valid_token(token):
        return f"Bearer {token}"
    raise UserInputError(f"{what} is not a token: it must be a string of visible ASCII characters without spaces")


def _read_config(cfg: Path) -> dict:
    """credentials.toml as data ({} when there is none). A file that is there but unreadable or not
    TOML is the user's to fix (exit 2, naming it): ignoring it would only fail later, at the server,
    with no hint why. Read bounded and pre-scanned like models.toml."""
    from ..errors import UserInputError
    from ..spec.toml import parse_toml, read_toml_text

    try:
        text = read_toml_text(cfg, UserInputError)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise UserInputError(f"cannot read {cfg}: {err}. Fix the file (or remove it) and run the command "
                             "again.") from None
    return parse_toml(text, cfg, UserInputError)
