"""Options shared by several commands, and the helpers every command uses to build a Project,
show progress and find models.toml. Command modules import from here; this imports no command."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import MANIFEST_NAME
from . import output


def _json_mode(value: bool) -> bool:
    if value:
        output.state.json = True
    return value


def _verbose(value: bool) -> bool:
    if value:
        output.set_verbosity(1)
    return value


def _quiet(value: bool) -> bool:
    if value:
        output.set_verbosity(-1)
    return value


ManifestOpt = Annotated[Optional[Path], typer.Option(
    "--manifest", "-m", metavar="FILE", show_default=False,
    help="models.toml to use (models.lock is written beside it); default: $MODELSYNC_MANIFEST, else the "
         "nearest models.toml in this directory or a parent.")]
MirrorOpt = Annotated[Optional[list[str]], typer.Option(
    "--mirror", metavar="PREFIX=REPLACEMENT",
    help="Fetch URLs starting with PREFIX from REPLACEMENT instead (repeatable; overrides [settings.mirrors] and "
         "$MODELSYNC_MIRRORS).")]
ParallelOpt = Annotated[Optional[int], typer.Option(
    "--parallel", "-j", min=1, max=64, metavar="N", help="Parallel downloads (default: settings.parallel, 4).")]
JsonOpt = Annotated[bool, typer.Option("--json", callback=_json_mode,
                                       help="Print one JSON document on stdout instead of tables (also on failure).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", callback=_verbose,
                                          help="More detail: full paths and hashes, and every retry and fallback.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", callback=_quiet,
                                        help="Only errors: no progress, no summary, no warnings.")]
PruneOpt = Annotated[bool, typer.Option(
    "--prune", help="Also remove resources that models.lock has but models.toml no longer declares "
                    "(only files modelsync installed and nobody changed).")]
UpgradeOpt = Annotated[bool, typer.Option(
    "--upgrade", help="Ignore models.lock and fetch every resource again (accept new bytes at moving URLs).")]
UpgradeModelOpt = Annotated[Optional[list[str]], typer.Option(
    "--upgrade-model", metavar="[PROCESSOR:]NAME",
    help="Like --upgrade for one model: NAME or PROCESSOR:NAME (repeatable).")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", metavar="DIR", help="The shared download cache (else $MODELSYNC_CACHE_DIR, settings.cache_dir, "
                                       "$XDG_CACHE_HOME/ocrd-modelsync).")]


class LinkMode(str, Enum):
    """How installs are made from the cache."""

    auto = "auto"
    hardlink = "hardlink"
    copy = "copy"


class ResourceType(str, Enum):
    """A resource's ``type`` in models.toml."""

    file = "file"
    archive = "archive"
    directory = "directory"


LinkModeOpt = Annotated[Optional[LinkMode], typer.Option(
    "--link-mode", case_sensitive=False,
    help="How installs are made from the cache: hardlink where possible (auto, the default, falls back to copy "
         "with a notice), always hardlink, or always copy.")]
NoConvertOpt = Annotated[bool, typer.Option(
    "--disable-autoconversion",
    help="Do not convert pyrnn models to kraken's HDF5 this run (models.toml: convert / convert_pyrnn), "
         "and report the pickles themselves, as kraken's --disable-autoconversion "
         "(also $MODELSYNC_DISABLE_AUTOCONVERSION=1).")]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline",
    help="No network at all: install from the cache and local files; fail listing every missing resource "
         "(also $MODELSYNC_OFFLINE=1).")]


def find_manifest(given: Path | None) -> Path:
    """``--manifest``, else ``$MODELSYNC_MANIFEST``, as given; else the nearest models.toml in the current
    directory or a parent, as uv and cargo find theirs (shown relative to here); else models.toml here
    (where `init` creates it and where an error says it is missing)."""
    from ..config import Environment

    given = given or Environment.from_os().manifest
    if given is not None:
        return given
    from ..project import find_manifest as nearest

    found = nearest()
    return Path(os.path.relpath(found, Path.cwd())) if found is not None else Path(MANIFEST_NAME)


def project(manifest: Path | None, mirror: list[str] | None = None, parallel: int | None = None, progress=None,
            *, cache_dir: Path | None = None, link_mode: Enum | None = None, offline: bool = False,
            frozen: bool = False, no_convert: bool = False, registry: str | None = None,
            registry_only: bool = False):
    """The Project of this command line (the manifest found as :func:`find_manifest` says). A flag that
    was not given is passed on as None, so the environment and [settings] decide."""
    from ..project import open_project
    from ..runconfig import Flags

    flags = Flags(mirrors=tuple(mirror or ()), parallel=parallel, cache_dir=cache_dir,
                  link_mode=link_mode.value if link_mode is not None else None, offline=offline or None,
                  frozen=frozen, convert=False if no_convert else None, registry=registry,
                  registry_only=registry_only or None)
    return open_project(find_manifest(manifest), flags=flags, progress=progress)


def progress_display(json_out: bool):
    """Bars on an interactive terminal, plain lines in CI, pipes and --json runs, nothing with -q."""
    from . import render
    from ..progress import NullProgress
    from ..config import Environment

    if output.state.verbosity < 0:
        return NullProgress(), nullcontext()
    if sys.stderr.isatty() and render.styled(sys.stderr) and not json_out and not Environment.from_os().is_ci:
        bars = render.BarProgress()
        return bars, bars
    return render.PlainProgress(), nullcontext()


def upgrade_keys(prj, upgrade: bool, models: list[str] | None):
    """``--upgrade`` (True), or the (processor, name) keys ``--upgrade-model`` names."""
    if upgrade:
        return True
    if not models:
        return False
    keys = set()
    wanted = prj.wanted()
    for spec in models:
        proc, sep, name = spec.rpartition(":")
        match = {w.key for w in wanted if w.name == name and (not sep or w.processor == proc)}
        if not match:
            from ..errors import UserInputError

            raise UserInputError(f"--upgrade-model {spec!r} matches no declared model")
        keys |= match
    return keys
