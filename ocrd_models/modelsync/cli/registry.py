"""``push``: share a project's locked models through an OCI registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app
from .options import JsonOpt, ManifestOpt, MirrorOpt, QuietOpt, VerboseOpt, progress_display, project


@app.command()
def push(
    reference: Annotated[str, typer.Argument(
        metavar="HOST/REPOSITORY[:TAG]", help="Where to push, e.g. registry.example.org/ocr/models:2024-06.")],
    manifest: ManifestOpt = None,
    mirror: MirrorOpt = None,
    chunk_mib: Annotated[Optional[int], typer.Option(
        "--chunk-mib", min=1, metavar="MIB", help="Upload blobs larger than this in chunks of this size "
                                                  "(default 64); smaller ones in one request.")] = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Upload every artifact models.lock records to an OCI registry, plus a manifest listing them.

    Blobs are addressed by the lock's SHA-256, so whatever the registry already has is skipped
    (a second push uploads nothing). Artifacts come from the cache, else from their origin
    (verified). Credentials: `docker login HOST` (~/.docker/config.json) or
    MODELSYNC_REGISTRY_USERNAME / MODELSYNC_REGISTRY_PASSWORD; never printed.
    Then, on every host: modelsync sync --registry HOST/REPOSITORY.

    \b
    Example: modelsync push registry.example.org/ocr/models:$(git rev-parse --short HEAD)
    """
    from . import render

    prog, ctx = progress_display(json_out)
    with ctx:
        prj = project(manifest, mirror, None, prog)
        result = prj.push(reference, chunk=chunk_mib << 20 if chunk_mib else None)
    if json_out:
        render.emit_json({"reference": result.reference, "manifest_digest": result.manifest_digest,
                          "uploaded": result.uploaded, "present": result.present, "skipped": result.skipped,
                          "bytes_uploaded": result.bytes_uploaded})
        return
    for s in result.skipped:
        render.warn(f"not pushed: {s}")
    render.say(f"pushed {result.reference} ({result.manifest_digest}): {len(result.uploaded)} uploaded "
               f"({render.human_size(result.bytes_uploaded)}), {len(result.present)} already there")
