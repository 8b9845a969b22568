"""Commands that list what is known and what is installed: available, list-installed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import complete
from .app import app
from .options import JsonOpt, QuietOpt, VerboseOpt


@app.command()
def available(
    processor: Annotated[Optional[str], typer.Argument(metavar="PROCESSOR", autocompletion=complete.processors,
                                                       help="Only this processor.")] = None,
    json_out: JsonOpt = False,
    no_processors: Annotated[bool, typer.Option(
        "--no-processors", help="Do not ask installed processors (--dump-json); bundled index and user db only.")]
    = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """List known resources, sorted, with size (as declared: a hint) and source; -v adds the URL.

    \b
    Example: modelsync available ocrd-calamari-recognize
    """
    from . import render
    from ..resources.catalog import available as list_available
    from ..resources.resolve import unknown_processor
    from ..config import Environment

    reg, entries = list_available(Environment.from_os(), processor, ask_processors=not no_processors)
    if processor and not reg.knows_processor(processor):
        raise unknown_processor(reg, processor)
    entries = sorted(entries, key=lambda e: (e.processor, e.name))
    if json_out:
        render.emit_json({"resources": entries})
        return
    render.table(None, ["processor", "name", "type", "size", "source"] + (["url"] if verbose else []),
                 [(e.processor, e.name, e.type, render.human_size(e.size), e.source) + ((e.url,) if verbose else ())
                  for e in entries])


@app.command("list-installed")
def list_installed(json_out: JsonOpt = False, verbose: VerboseOpt = False, quiet: QuietOpt = False) -> None:
    """List resources present in OCR-D's data, system and module locations.

    "ours" marks files modelsync installed (verified = unchanged since).

    \b
    Example: modelsync list-installed
    """
    from . import render
    from ..plan.installed import list_installed as scan
    from ..config import Environment

    rows = scan(Environment.from_os(), Path.cwd())
    if json_out:
        render.emit_json({"resources": rows})
        return
    render.table(None, ["processor", "name", "location", "size", "known", "ours", "path"],
                 [(r.processor, r.name, r.location, render.human_size(r.size), "yes" if r.known else "no",
                   r.recorded or "-", r.path if verbose else render.short_path(r.path)) for r in rows])
