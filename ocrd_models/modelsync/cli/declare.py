"""Commands that edit models.toml: init, add, remove, import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import complete
from .app import app
from .options import (JsonOpt, ManifestOpt, MirrorOpt, QuietOpt, ResourceType, VerboseOpt, find_manifest,
                      progress_display, project)


@app.command()
def init(
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", "-m", metavar="FILE", show_default=False,
        help="Where to create it (default: $MODELSYNC_MANIFEST, else models.toml in this directory).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a commented models.toml template.

    \b
    Example: modelsync init && modelsync add ocrd-tesserocr-recognize deu.traineddata
    """
    from ..config import Environment, MANIFEST_NAME
    from ..spec import edit
    from . import render

    manifest = manifest or Environment.from_os().manifest or Path(MANIFEST_NAME)
    edit.init(manifest, force=force)
    render.say(f"wrote {manifest}; declare models with `modelsync add PROCESSOR NAME`")


def _check_processor(processor: str, index, url: str | None) -> None:
    """A processor name must be known, or (with --url) at least not a near-miss of a known one."""
    from ..errors import UserInputError
    from ..resources.index import did_you_mean
    from ..resources.resolve import unknown_processor
    from ..config import TESSEROCR_PREFIX

    if index.knows_processor(processor) and (not processor.startswith(TESSEROCR_PREFIX)
                                             or processor in index.processors()):
        return
    if not url or processor.startswith(TESSEROCR_PREFIX):
        raise unknown_processor(index, processor)
    near = index.suggest_processors(processor)
    if near:
        raise UserInputError(f"unknown processor {processor!r}.{did_you_mean(near)} (A processor we do not "
                             "know is fine with --url, but this looks like a misspelling of a known one.)")


@app.command()
def add(
    processor: Annotated[str, typer.Argument(metavar="PROCESSOR", autocompletion=complete.processors,
                                             help="Processor executable, e.g. ocrd-tesserocr-recognize.")],
    names: Annotated[list[str], typer.Argument(metavar="NAME", autocompletion=complete.model_names,
                                               help="Model names (known names, or '*' for all known).")],
    url: Annotated[Optional[str], typer.Option(metavar="URL",
                                               help="Your own model: http(s) URL, file:// URL or local path.")] = None,
    sha256: Annotated[Optional[str], typer.Option(metavar="HEX", help="Pin the SHA-256 of the download.")] = None,
    type: Annotated[Optional[ResourceType], typer.Option("--type", case_sensitive=False,
                                                         help="How the download is installed.")] = None,
    path_in_archive: Annotated[Optional[str], typer.Option(
        metavar="PATH", help="Archive member to install ('.' = all).")] = None,
    location: Annotated[Optional[str], typer.Option(
        metavar="cwd|data|system|module|DIR", help="Where to install it (default: the processor's own).")] = None,
    manifest: ManifestOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Declare models in models.toml (comments and layout are kept).

    Names are checked against the known resources (with "did you mean"); with --url the
    name is yours to choose (a local path must exist).

    \b
    Examples:
      modelsync add ocrd-tesserocr-recognize deu.traineddata frk.traineddata
      modelsync add ocrd-calamari-recognize mine --url ./out/model.tar.gz --type archive
    """
    from ..spec import edit
    from ..resources import processors
    from . import render
    from ..errors import UserInputError
    from ..install.fetch import local_source
    from ..spec.manifest import check_location
    from ..resources.index import ResourceIndex
    from ..resources.resolve import unknown_name
    from ..config import Environment

    path = find_manifest(manifest)
    if url and len(names) != 1:
        raise UserInputError("--url declares one model: give exactly one name")
    if location is not None:
        try:
            check_location(location)
        except ValueError as err:
            raise UserInputError(f"--location: {err}") from None
    env = Environment.from_os()
    reg = ResourceIndex.load(env)
    if url:
        source = local_source(url, path.absolute().parent)
        if source is not None and not source.exists():
            raise UserInputError(f"--url {url!r}: {source} does not exist (a local path is relative to "
                                 f"{path.absolute().parent}, where models.toml is)")
    else:
        reg.add_processor_answers(processors.dump_many([processor], env))
    _check_processor(processor, reg, url)
    if not url:
        for n in names:
            if n != "*" and reg.lookup(processor, n) is None:
                raise unknown_name(reg, processor, n)
    specs = [{"name": n, "url": url, "sha256": sha256, "type": type.value if type else None,
              "path_in_archive": path_in_archive, "location": location} for n in names]
    added = edit.add(path, processor, specs)
    render.say(f"{path}: {processor}: added {', '.join(added) or 'nothing new (updated)'}; "
               "run `modelsync sync` to install")


@app.command()
def remove(
    processor: Annotated[str, typer.Argument(metavar="PROCESSOR", autocompletion=complete.processors,
                                             help="Processor executable.")],
    names: Annotated[Optional[list[str]], typer.Argument(
        metavar="NAME", help="Models to remove; none = the whole processor.")] = None,
    manifest: ManifestOpt = None,
    prune: Annotated[bool, typer.Option(
        "--prune", help="Also delete their installed files now (only those modelsync installed and nobody "
                        "changed), and update models.lock.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Remove models from models.toml (comments and layout are kept).

    Installed files stay, and stay in models.lock (marked undeclared) until `modelsync sync --prune`
    deletes the ones modelsync installed; --prune does that at once.

    \b
    Example: modelsync remove ocrd-tesserocr-recognize frk.traineddata --prune
    """
    from ..spec import edit
    from . import render

    path = find_manifest(manifest)
    removed = edit.remove(path, processor, names or [])
    render.say(f"{path}: {processor}: removed {', '.join(removed)}")
    if prune:
        prog, ctx = progress_display(False)
        with ctx:
            result = project(path, progress=prog).prune()
        gone = [o.action.name for o in result.outcomes if o.error is None]
        render.say(f"deleted {len(gone)} installed resource(s)" + (f": {', '.join(gone)}" if gone else "")
                   + f"; {result.lock_path.name} {'written' if result.lock_written else 'unchanged'}")


def render_row(row) -> dict:
    """An installed row as the JSON document's dict."""
    from dataclasses import asdict

    return asdict(row)


@app.command("import")
def import_(
    manifest: ManifestOpt = None,
    mirror: MirrorOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Adopt models already installed (by `ocrd resmgr download` or by hand).

    Scans OCR-D's data, system and module locations, declares every file or directory
    whose name the resource index knows for its processor in models.toml (created if missing;
    comments kept), and locks them by hashing each once. Unknown files are listed, not
    guessed: declare them yourself with `modelsync add PROC NAME --url ...`.

    \b
    Example: modelsync import && git add models.toml models.lock
    """
    from ..plan import adopt
    from . import render
    from ..config import Environment

    path = find_manifest(manifest)
    env = Environment.from_os()
    found = adopt.scan(env, path.absolute().parent)
    if found.declared:
        adopt.declare(path, env, found)
        prog, ctx = progress_display(json_out)
        with ctx:
            result = project(path, mirror, None, prog).lock()
        lock_written = result.lock_written
    else:
        lock_written = False
    if json_out:
        render.emit_json({"declared": found.declared, "unknown": found.unknown, "shadowed": found.shadowed,
                          "refused": [{**render_row(r), "reason": why} for r, why in found.refused],
                          "lock_written": lock_written})
        return
    if found.declared:
        render.table("imported", ["processor", "name", "location", "size", "path"],
                     [(r.processor, r.name, r.location, render.human_size(r.size), r.path) for r in found.declared])
    for r in found.shadowed:
        render.warn(f"{r.path} is shadowed by an earlier copy of {r.name} ({r.processor}); not declared")
    for r in found.unknown:
        render.warn(f"unknown to the registry, not declared: {r.path} ({r.processor})")
    for r, why in found.refused:
        render.warn(f"not adopted, it cannot be the model ({why}): {r.path} ({r.processor}); "
                    f"`modelsync add {r.processor} {r.name}` declares it to be fetched")
    render.say(f"{len(found.declared)} declared in {path}, {len(found.unknown)} unknown"
               + (f"; {path.parent / 'models.lock'} written" if lock_written else ""))
