"""The ``cache`` commands: dir, info, prune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import app, cache_app
from .options import CacheDirOpt, JsonOpt, ManifestOpt, QuietOpt, VerboseOpt, find_manifest

app.add_typer(cache_app, name="cache")


def _cache(cache_dir: Path | None, manifest: Path | None):
    from ..config import Environment
    from ..install.cache import Cache
    from ..runconfig import resolve_cache_dir
    from ..spec.manifest import load_manifest

    path = find_manifest(manifest)
    return Cache(resolve_cache_dir(cache_dir, Environment.from_os(),
                                   lambda: load_manifest(path).settings if path.exists() else None,
                                   path.absolute().parent))


@cache_app.command("dir")
def cache_dir_cmd(cache_dir: CacheDirOpt = None, manifest: ManifestOpt = None, verbose: VerboseOpt = False,
                  quiet: QuietOpt = False) -> None:
    """Print the cache directory.

    \b
    Example: du -sh "$(modelsync cache dir)"
    """
    from . import render

    # Escaped like everything printed: the directory may come from a cloned models.toml.
    render.out.print(str(_cache(cache_dir, manifest).root), markup=False, highlight=False, soft_wrap=True)


@cache_app.command("info")
def cache_info(cache_dir: CacheDirOpt = None, manifest: ManifestOpt = None, json_out: JsonOpt = False,
               verbose: VerboseOpt = False, quiet: QuietOpt = False) -> None:
    """Size and number of entries of the cache.

    \b
    Example: modelsync cache info --json
    """
    from . import render

    stats = _cache(cache_dir, manifest).stats()
    if json_out:
        render.emit_json({"cache": stats})
        return
    render.table(None, ["path", "blobs", "trees", "size", "projects"],
                 [(stats.path, stats.blobs, stats.trees, render.human_size(stats.bytes), stats.projects)], keys=1)


@cache_app.command("prune")
def cache_prune(
    older_than: Annotated[Optional[float], typer.Option(
        "--older-than", metavar="DAYS", min=0, help="Remove entries unused for DAYS days instead, referenced or not.")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    cache_dir: CacheDirOpt = None,
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Remove cache entries that no models.lock on this machine references.

    Locks are known from every `sync`/`lock` run on this machine; installed models stay
    installed (hardlinks keep their bytes), only the cache copies go.

    \b
    Examples:
      modelsync cache prune --dry-run
      modelsync cache prune --older-than 30
    """
    from . import render

    cache = _cache(cache_dir, manifest)
    referenced = cache.referenced() if older_than is None else set()
    removed = cache.prune(referenced, older_than_days=older_than, dry_run=dry_run)
    if json_out:
        render.emit_json({"dry_run": dry_run, "removed": [{"kind": k, "key": key, "bytes": n}
                                                           for k, key, n in removed],
                          "bytes": sum(n for _, _, n in removed)})
        return
    for kind, key, size in removed:
        render.out.print(f"{'would remove' if dry_run else 'removed'} {kind} {key} ({render.human_size(size)})",
                         markup=False, highlight=False)
    render.say(f"{len(removed)} entries, {render.human_size(sum(n for _, _, n in removed))}"
               + (" would be freed" if dry_run else " freed"))
