"""The Typer application objects (the command modules register on them) and the global options."""

from __future__ import annotations

from typing import Annotated

import typer
import typer.core

# Typer's help lists each argument with its Python type ("NAME <list[str]>"): noise for a person at
# a shell, who reads the metavar and the help text. Options keep theirs (choices are useful there).
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]

app = typer.Typer(
    name="modelsync",
    help=(
        "Declarative, lockfile-driven installer for OCR-D processor models.\n\n"
        "Declare models per processor in models.toml, run `modelsync sync`: every model is installed where its "
        "processor looks for it, verified by SHA-256, and models.lock records the exact bytes."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

cache_app = typer.Typer(help="The shared download cache: where it is, what it holds, pruning it.",
                        no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"modelsync {__version__}")
        raise typer.Exit()


@app.callback()
def _global(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Declarative, lockfile-driven installer for OCR-D processor models."""
