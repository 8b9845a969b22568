"""A registry as a source of locked artifacts during ``sync``: fetch by digest, verify, fall back.

Configured by ``[settings] registry`` / ``--registry`` / ``$MODELSYNC_REGISTRY`` (a reference
``host/repository``; the tag does not matter, blobs are addressed by digest). With
``registry_only`` (``--registry-only``, ``$MODELSYNC_REGISTRY_ONLY``) the origin URL is never used.
"""

from __future__ import annotations

import logging

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ChecksumMismatch, NetworkError, NotInRegistry, RegistryAuthError
from ..install.fetch import Fetched, NetConfig, fetch
from ..progress import Meter
from .client import RegistryClient


log = logging.getLogger(__name__)

@dataclass
class RegistrySource:
    """Fetches blobs by digest from one repository; notes what it could not serve."""

    client: RegistryClient
    only: bool = False
    missing: list[str] = field(default_factory=list)  # the registry lacks them: fetched from the origin
    unreachable: list[str] = field(default_factory=list)  # the registry failed: fetched from the origin

    def fetch(self, sha256: str, directory: Path, net: NetConfig, what: str,
              meter: Meter | None = None) -> Fetched | None:
        """The verified blob in a temp file, or None when the registry lacks it (fall back to the origin)."""
        digest = f"sha256:{sha256}"
        try:
            if not self.client.has_blob(digest):
                self.missing.append(what)
                log.info("registry %s lacks %s: fetching it from its origin", self.client.ref.host, what)
                return None
            # The token (if any) goes to the registry's origin only: a redirect to its storage, even on the
            # same host name and another port, never carries it. Plain HTTP to the registry carries it only
            # where the client speaks plain HTTP at all (loopback reached directly, or allowed by the user).
            # The registry's origin gets the registry's authorization and nothing else (no netrc, no
            # MODELSYNC_TOKENS entry): every request to it carries the same, API calls and blobs alike.
            header = self.client.auth_header().get("Authorization")
            creds = net.credentials.with_origin(self.client.origin, header, net.allow_http | self.client.allow_http)
            got = fetch(self.client.blob_url(digest), directory, expected_sha256=sha256, meter=meter, what=f"{what} (from registry {self.client.ref.host})",
                        net=replace(net, credentials=creds))
        except ChecksumMismatch as err:
            # The lock's digest is right (the origin's bytes had it); the registry serves other bytes under it.
            raise err.with_hint(
                f"Nothing was installed. The registry {self.client.ref.host}/{self.client.ref.repository} serves "
                "other bytes under this digest: its copy is damaged or was tampered with. Push the lock again "
                "(`modelsync push`) to replace it, or sync without --registry to fetch from the origin.") from None
        except RegistryAuthError:
            raise  # a misconfiguration: say so rather than quietly using the origin
        except NetworkError:
            if self.only:
                raise
            self.unreachable.append(what)  # a registry outage must not stop a sync the origin can serve
            log.info("registry %s failed to serve %s: fetching it from its origin", self.client.ref.host, what)
            return None
        return got

    def refuse(self, what: str, url: str, sha256: str | None) -> NotInRegistry:
        """The error for a resource --registry-only cannot get from the registry."""
        why = ("it is not locked, so there is no digest to ask for: run `modelsync lock` where the origin is "
               "reachable" if not sha256 else f"{self.client.ref.host}/{self.client.ref.repository} does not "
               "have it: push the lock there first (`modelsync push`)")
        return NotInRegistry(f"{what}: --registry-only forbids its origin {url}, and {why}")


def open_source(reference: str, only: bool, env, net: NetConfig) -> RegistrySource:
    """A RegistrySource for ``reference`` with credentials from the environment or Docker config."""
    from .client import connect

    return RegistrySource(connect(reference, env, net), only)  # net: timeouts and retries too
