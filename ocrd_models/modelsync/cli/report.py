"""Commands that report and change nothing: plan, status, resolve, verify."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import EXIT_CHANGES_PENDING, EXIT_CHECKSUM
from . import complete
from .app import app
from .options import (CacheDirOpt, JsonOpt, ManifestOpt, MirrorOpt, NoConvertOpt, PruneOpt, QuietOpt, VerboseOpt,
                      project)
from .views import location_label, manifest_header, plan_doc, render_plan, report_check


@app.command()
def plan(
    manifest: ManifestOpt = None,
    prune: PruneOpt = False,
    json_out: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help=f"Exit {EXIT_CHANGES_PENDING} if anything would change.")]
    = False,
    mirror: MirrorOpt = None,
    cache_dir: CacheDirOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what `sync` would do, with a reason per resource; change nothing.

    -v also lists the resources that stay as they are.

    \b
    Example: modelsync plan
    """
    prj = project(manifest, mirror, None, cache_dir=cache_dir)
    p = prj.plan(prune=prune)
    if not json_out:
        manifest_header(prj)
    if check:
        report_check(p, json_out, verbose, prj)
    elif json_out:
        from . import render

        render.emit_json(plan_doc(p))
    else:
        render_plan(prj, p, verbose)


@app.command()
def status(
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    no_convert: NoConvertOpt = False,
    mirror: MirrorOpt = None,
    cache_dir: CacheDirOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Declared vs locked vs installed, per resource.

    States: ok (installed, matches the lock), missing, modified (differs from the lock),
    unlocked (installed but not yet locked), undeclared (locked, no longer declared).
    -v adds each resource's path.

    \b
    Example: modelsync status
    """
    from . import render

    prj = project(manifest, mirror, None, cache_dir=cache_dir, no_convert=no_convert)
    rows = prj.status()
    if json_out:
        render.emit_json({"resources": rows})
        return
    manifest_header(prj)
    base = prj.project_dir
    # The path follows from location, processor and name: it is shown with -v (and in --json).
    columns = ["processor", "name", "location", "locked", "state"] + (["path"] if verbose else [])
    converted = any(r.converted for r in rows)
    render.table(None, columns + (["converted (used instead)"] if converted else []),
                 [(r.processor, r.name, r.location if verbose else location_label(r.location, base), r.locked, r.state)
                  + ((r.path or "",) if verbose else ())
                  + ((r.converted if verbose else render.short_path(r.converted, base),) if converted else ())
                  for r in rows])
    for r in rows:
        for w in r.warnings:
            render.warn(f"{r.processor} {r.name}: {w}")


@app.command()
def resolve(
    processor: Annotated[str, typer.Argument(metavar="PROCESSOR", autocompletion=complete.processors,
                                             help="Processor executable, e.g. ocrd-cis-ocropy-recognize.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Model name as declared.")],
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    no_convert: NoConvertOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Print the path to use for a declared model: its converted HDF5 if it has one, else where it is installed.

    Exits 2 if the model is not declared, 1 if it is not installed.

    \b
    Example: kraken -i line.png out.txt ocr -m "$(modelsync resolve ocrd-cis-ocropy-recognize fraktur-jze.pyrnn.gz)"
    """
    from . import render

    found = project(manifest, None, None, no_convert=no_convert).resolve_model(processor, name)
    if json_out:
        render.emit_json(found)
        return
    render.out.print(found["path"], markup=False, highlight=False, soft_wrap=True)


@app.command()
def verify(
    manifest: ManifestOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Re-hash every locked resource where its processor finds it (ignores cached stat info).

    Exits 4 if any resource is missing or differs from models.lock. Hashes are shortened to
    12 digits; -v (and --json) shows them in full, and where each was checked.

    \b
    Example: modelsync verify
    """
    from . import render

    prj = project(manifest, None, None)
    rows = prj.verify()
    bad = [r for r in rows if not r.ok]
    if json_out:
        render.emit_json({"ok": not bad, "resources": rows})
    elif not rows:
        render.say(f"nothing to verify: {render.short_path(prj.lock_path, prj.project_dir)} "
                   + ("locks no resource" if prj.lockfile is not None else
                      "does not exist (`modelsync lock` or `modelsync sync` writes it)"))
    else:
        render.table(None, ["processor", "name", "result", "detail"] + (["path"] if verbose else []),
                     [(r.processor, r.name, "ok" if r.ok else "FAILED",
                       r.detail if verbose else render.short_hashes(r.detail)) + ((r.path or "",) if verbose else ())
                      for r in rows])
    if bad:
        raise typer.Exit(EXIT_CHECKSUM)
