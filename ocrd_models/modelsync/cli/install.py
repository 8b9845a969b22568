"""Commands that install or lock: lock, sync."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import EXIT_CHANGES_PENDING
from .app import app
from .options import (CacheDirOpt, JsonOpt, LinkModeOpt, ManifestOpt, MirrorOpt, NoConvertOpt, OfflineOpt,
                      ParallelOpt, PruneOpt, QuietOpt, UpgradeModelOpt, UpgradeOpt, VerboseOpt, progress_display,
                      project, upgrade_keys)
from .views import plan_doc, report_check


@app.command()
def lock(
    manifest: ManifestOpt = None,
    mirror: MirrorOpt = None,
    parallel: ParallelOpt = None,
    upgrade: UpgradeOpt = False,
    upgrade_model: UpgradeModelOpt = None,
    cache_dir: CacheDirOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write models.lock without installing anything.

    Checksums come from the existing lock, from copies already installed, or from a
    download that is verified and kept in the cache (so a later sync fetches nothing).

    \b
    Example: modelsync lock && git add models.toml models.lock
    """
    from . import render

    prog, ctx = progress_display(False)
    with ctx:
        prj = project(manifest, mirror, parallel, prog, cache_dir=cache_dir)
        result = prj.lock(upgrade=upgrade_keys(prj, upgrade, upgrade_model))
    render.say(f"{result.lock_path}: {len(result.lock.entries)} resources "
               f"({'written' if result.lock_written else 'unchanged'})")


@app.command()
def sync(
    manifest: ManifestOpt = None,
    mirror: MirrorOpt = None,
    parallel: ParallelOpt = None,
    prune: PruneOpt = False,
    upgrade: UpgradeOpt = False,
    upgrade_model: UpgradeModelOpt = None,
    json_out: JsonOpt = False,
    locked: Annotated[bool, typer.Option(
        "--locked", help="Fail (exit 5, installing nothing) if models.lock is missing or would change; "
                         "never rewrite it. For CI.")] = False,
    frozen: Annotated[bool, typer.Option(
        "--frozen", help="Install exactly what models.lock says; resolve no names (no registry, no processors, "
                         "only [settings] of models.toml). For Docker builds.")] = False,
    offline: OfflineOpt = False,
    check: Annotated[bool, typer.Option(
        "--check", help=f"Change nothing; exit {EXIT_CHANGES_PENDING} if anything would change.")] = False,
    cache_dir: CacheDirOpt = None,
    link_mode: LinkModeOpt = None,
    no_convert: NoConvertOpt = False,
    registry: Annotated[Optional[str], typer.Option(
        "--registry", metavar="HOST/REPOSITORY",
        help="Fetch locked artifacts by digest from this OCI registry first, the origin URL only when it lacks "
             "one (else $MODELSYNC_REGISTRY, else [settings] registry). See `modelsync push`.")] = None,
    registry_only: Annotated[bool, typer.Option(
        "--registry-only", help="Never use origin URLs: whatever the registry lacks fails (exit 6).")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Install every declared model where its processor finds it, verified, and update models.lock.

    Downloads run in parallel into temp files beside their destination, are verified
    against the lock (or the sha256 pinned in models.toml), and renamed into place; an
    existing model is only replaced after its replacement is verified. Models already
    present (installed by modelsync, `ocrd resmgr` or by hand) are not fetched again.

    \b
    Examples:
      modelsync sync
      modelsync sync --locked            # CI: the committed lock must be up to date
      modelsync sync --frozen --offline  # Docker: exactly the lock, from the cache only
      modelsync sync --mirror https://github.com/=https://proxy.example.org/github/
    """
    from . import render
    from ..errors import SyncFailed

    prog, ctx = progress_display(json_out)
    with ctx:
        prj = project(manifest, mirror, parallel, prog, cache_dir=cache_dir, link_mode=link_mode,
                      offline=offline, frozen=frozen, no_convert=no_convert, registry=registry,
                      registry_only=registry_only)
        if locked:
            prj.check_locked()  # before planning: a stale lock must not cost any hashing
        plan = prj.plan(prune=prune, upgrade=upgrade_keys(prj, upgrade, upgrade_model))
        if check:
            report_check(plan, json_out, prj=prj)
            return
        try:
            result = prj.sync(plan=plan, locked=locked)
        except SyncFailed as err:
            if json_out:
                render.emit_json({"ok": False, **plan_doc(plan), **err.facts()})
            raise
    if json_out:
        render.emit_json({"ok": True, **plan_doc(plan), "lock_written": result.lock_written,
                          "lock": str(prj.lock_path)})
        return
    for a in plan.actions:
        for w in a.warnings:
            render.warn(f"{a.processor} {a.name}: {w}")
    for o in result.outcomes:
        if o.converted is not None:
            render.say(f"converted {o.action.processor} {o.action.name} to kraken's HDF5: "
                       f"{render.short_path(o.converted, prj.project_dir)}")
    source = prj.registry_source  # already opened by the sync (None without a registry)
    if source is not None and (source.missing or source.unreachable):
        render.warn(f"registry {source.client.ref.host}/{source.client.ref.repository}: fetched from the origin "
                    f"instead: {len(source.missing)} it lacks (`modelsync push` adds them), "
                    f"{len(source.unreachable)} it failed to serve")
    done = {k: plan.count(k) for k in ("install", "update", "keep", "remove")}
    for o in result.outcomes:  # fetched again (--upgrade), and the installed bytes were right
        if o.unchanged:
            done[o.action.kind] -= 1
            done["keep"] += 1
    render.say(f"installed {done['install']}, updated {done['update']}, kept {done['keep']}"
               + (f", removed {done['remove']}" if done["remove"] else "")
               + f"; {prj.lock_path.name} {'written' if result.lock_written else 'unchanged'}")
