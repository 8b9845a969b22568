"""``push``: every locked artifact to an OCI registry as a blob, plus a manifest listing them, tagged.

The manifest is an OCI image manifest with ``artifactType`` ``application/vnd.ocrd.models.v1``, a
config blob (``application/vnd.ocrd.models.config.v1+json``: the lock's entries) and one layer per
artifact (``application/vnd.ocrd.models.file.v1`` or ``...archive.v1``) annotated with processor,
name and origin URL. Blobs are content-addressed by the lock's SHA-256, so a second push uploads
nothing: every blob is HEADed first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..progress import NullProgress, Progress, TaskMeter
from ..spec.lockfile import LockEntry, Lockfile
from .client import (ANNOTATION_NAME, ANNOTATION_PROCESSOR, ANNOTATION_URL, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE,
                     DEFAULT_CHUNK, LAYER_MEDIA_TYPES, MANIFEST_MEDIA_TYPE, TITLE, RegistryClient)


@dataclass
class PushResult:
    """What ``push`` did."""

    reference: str
    manifest_digest: str = ""
    uploaded: list[str] = field(default_factory=list)  # "processor name" of blobs sent
    present: list[str] = field(default_factory=list)  # already in the registry
    skipped: list[str] = field(default_factory=list)  # not pushable, with the reason
    bytes_uploaded: int = 0


def pushable(e: LockEntry) -> str | None:
    """Why an entry cannot be pushed, or None."""
    if e.undeclared:
        return "no longer declared in models.toml (kept in the lock until `sync --prune`)"
    if e.type == "directory":
        return "a local directory, not a downloaded artifact"
    if not e.sha256:
        return "adopted from an existing install: its download was never seen (run `sync --upgrade-model`)"
    return None


def config_blob(lock: Lockfile) -> bytes:
    """The config blob: the lock's entries as canonical JSON (no machine paths, no credentials)."""
    doc = {"manifest_hash": lock.manifest_hash, "resources": [e.to_toml() for e in lock.entries]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest(lock: Lockfile, config: bytes, entries: list[LockEntry]) -> bytes:
    """The OCI image manifest listing one layer per artifact (deduplicated by digest)."""
    layers, seen = [], set()
    for e in entries:
        if e.sha256 in seen:
            continue
        seen.add(e.sha256)
        layers.append({"mediaType": LAYER_MEDIA_TYPES["archive" if e.type == "archive" else "file"],
                       "digest": f"sha256:{e.sha256}", "size": e.size,
                       "annotations": {TITLE: e.name, ANNOTATION_PROCESSOR: e.processor, ANNOTATION_NAME: e.name,
                                       ANNOTATION_URL: e.url}})
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": ARTIFACT_TYPE,
           "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                      "size": len(config)},
           "layers": layers,
           "annotations": {"org.ocrd.models.manifest_hash": lock.manifest_hash}}
    return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8")


def push(lock: Lockfile, client: RegistryClient, blob_for: Callable[[LockEntry], Path],
         chunk: int = DEFAULT_CHUNK, progress: Progress = NullProgress()) -> PushResult:
    """Upload missing blobs (one progress task each), then the config and the manifest under the
    reference's tag."""
    result = PushResult(str(client.ref))
    entries = []
    for e in lock.entries:
        why = pushable(e)
        if why:
            result.skipped.append(f"{e.processor} {e.name}: {why}")
        else:
            entries.append(e if e.size is not None else replace(e, size=blob_for(e).stat().st_size))
    done: set[str] = set()
    for e in entries:
        what = f"{e.processor} {e.name}"
        digest = f"sha256:{e.sha256}"
        if digest in done or client.has_blob(digest, push=True):
            result.present.append(what)
            done.add(digest)
            continue
        path = blob_for(e)
        size = path.stat().st_size
        progress.start(what, size)
        try:
            client.upload_blob(path, digest, size, chunk=chunk, meter=TaskMeter(progress, what))
        except BaseException as err:
            progress.finish(what, False, str(err))
            raise
        progress.finish(what, True, "uploaded")
        done.add(digest)
        result.uploaded.append(what)
        result.bytes_uploaded += size
    config = config_blob(lock)
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    if not client.has_blob(config_digest, push=True):
        client.upload_blob(None, config_digest, len(config), data=config)
    result.manifest_digest = client.put_manifest(client.ref.tag, manifest(lock, config, entries))
    return result
