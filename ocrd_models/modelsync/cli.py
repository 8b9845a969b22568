"""The ``modelsync`` command line: parses, calls the library, renders. No logic of its own."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import EXIT_CHANGES_PENDING, EXIT_CHECKSUM, EXIT_INTERRUPTED, EXIT_USER_INPUT, ModelsyncError
from .settings import MANIFEST_NAME

app = typer.Typer(
    name="modelsync",
    help=(
        "Declarative, lockfile-driven installer for OCR-D processor models.\n\n"
        "Declare models per processor in models.toml, run `modelsync sync`: every model is installed where its "
        "processor looks for it, verified by SHA-256, and models.lock records the exact bytes."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"modelsync {__version__}")
        raise typer.Exit()


@app.callback()
def _global(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Declarative, lockfile-driven installer for OCR-D processor models."""


ManifestOpt = Annotated[Path, typer.Option(
    "--manifest", "-m", envvar="MODELSYNC_MANIFEST", help="models.toml to use; models.lock is written beside it.",
    show_default=True)]
MirrorOpt = Annotated[Optional[list[str]], typer.Option(
    "--mirror", metavar="PREFIX=REPLACEMENT", help="PREFIX=REPLACEMENT: fetch URLs starting with PREFIX from REPLACEMENT instead (repeatable; "
                     "overrides [settings.mirrors] and $MODELSYNC_MIRRORS).")]
ParallelOpt = Annotated[Optional[int], typer.Option(
    "--parallel", "-j", min=1, max=64, metavar="N", help="Parallel downloads (default: settings.parallel, 4).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")]
PruneOpt = Annotated[bool, typer.Option(
    "--prune", help="Also remove resources that models.lock has but models.toml no longer declares "
                    "(only files modelsync installed and nobody changed).")]
UpgradeOpt = Annotated[bool, typer.Option(
    "--upgrade", help="Ignore models.lock and fetch every resource again (accept new bytes at moving URLs).")]
UpgradeModelOpt = Annotated[Optional[list[str]], typer.Option(
    "--upgrade-model", metavar="[PROCESSOR:]NAME", help="Like --upgrade for one model: NAME or PROCESSOR:NAME (repeatable).")]


CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", metavar="DIR", help="The shared download cache (else $MODELSYNC_CACHE_DIR, settings.cache_dir, "
                                       "$XDG_CACHE_HOME/ocrd-modelsync).")]
LinkModeOpt = Annotated[Optional[str], typer.Option(
    "--link-mode", metavar="auto|hardlink|copy",
    help="How installs are made from the cache: hardlink where possible (auto, the default, falls back to copy "
         "with a notice), always hardlink, or always copy.")]
NoConvertOpt = Annotated[bool, typer.Option(
    "--disable-autoconversion", envvar="MODELSYNC_DISABLE_AUTOCONVERSION",
    help="Do not convert pyrnn models to kraken's HDF5 this run (models.toml: convert / convert_pyrnn), "
         "and report the pickles themselves, as kraken's --disable-autoconversion.")]
OfflineOpt = Annotated[bool, typer.Option(
    "--offline", envvar="MODELSYNC_OFFLINE",
    help="No network at all: install from the cache and local files; fail listing every missing resource.")]


def _project(manifest: Path, mirror: list[str] | None = None, parallel: int | None = None, progress=None, **kw):
    from .project import Project
    from .settings import Environment, parse_mirror_pairs

    if progress is not None:
        kw["progress"] = progress
    from .cache import LINK_MODES

    if kw.get("link_mode") not in (None, *LINK_MODES):
        from .errors import UserInputError

        raise UserInputError(f"--link-mode {kw['link_mode']!r}: allowed are {', '.join(LINK_MODES)}")
    return Project(manifest, Environment.from_os(), extra_mirrors=parse_mirror_pairs(mirror or []),
                   parallel=parallel, **kw)


def _progress(json_out: bool):
    """Bars on an interactive terminal, plain lines in CI, pipes and --json runs."""
    from . import render
    from .settings import Environment

    if sys.stderr.isatty() and render.styled(sys.stderr) and not json_out and not Environment.from_os().is_ci:
        bars = render.BarProgress()
        return bars, bars
    return render.PlainProgress(), nullcontext()


def _upgrade_keys(project, upgrade: bool, models: list[str] | None):
    if upgrade:
        return True
    if not models:
        return False
    keys = set()
    wanted = project.wanted()
    for spec in models:
        proc, sep, name = spec.rpartition(":")
        match = {w.key for w in wanted if w.name == name and (not sep or w.processor == proc)}
        if not match:
            from .errors import UserInputError

            raise UserInputError(f"--upgrade-model {spec!r} matches no declared model")
        keys |= match
    return keys


def _plan_doc(plan) -> dict:
    return {
        "changes": len(plan.changes),
        "actions": [{
            "action": a.kind, "processor": a.processor, "name": a.name, "reason": a.reason,
            "path": str(a.target), "location": a.location_label,
            "url": a.wanted.url if a.wanted else None, "warnings": list(a.warnings),
        } for a in plan.actions],
    }


def _render_plan(plan, title: str, verbose: bool = False) -> None:
    from . import render

    shown = [a for a in plan.actions if verbose or a.changes or a.adopt or a.warnings]
    rows = [(a.kind, a.processor, a.name, a.location_label, a.reason) for a in shown]
    if rows:
        render.table(title, ["action", "processor", "name", "location", "reason"], rows, keys=3)
    hidden = len(plan.actions) - len(shown)
    if hidden:
        render.err.print(f"{hidden} resource(s) installed and unchanged (-v lists them)", markup=False)
    for a in plan.actions:
        for w in a.warnings:
            render.warn(f"{a.processor} {a.name}: {w}")
    counts = {k: plan.count(k) for k in ("install", "update", "keep", "remove")}
    render.err.print(", ".join(f"{v} to {k}" for k, v in counts.items() if v) or "nothing declared",
                     markup=False, highlight=False)


def _report_check(plan, json_out: bool, verbose: bool = False) -> None:
    """Show the plan, then exit 7 if it changes anything (``--check``)."""
    from . import render
    from .errors import ChangesPending

    if json_out:
        render.emit_json(_plan_doc(plan))
    else:
        _render_plan(plan, "plan", verbose)
    if plan.changes:
        raise ChangesPending(f"{len(plan.changes)} change(s) pending (--check); run `modelsync sync` to apply them")


@app.command()
def init(
    manifest: ManifestOpt = Path(MANIFEST_NAME),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Create a commented models.toml template.

    \b
    Example: modelsync init && modelsync add ocrd-tesserocr-recognize deu.traineddata
    """
    from . import edit, render

    edit.init(manifest, force=force)
    render.err.print(f"wrote {manifest}; declare models with `modelsync add PROCESSOR NAME`", markup=False)


@app.command()
def add(
    processor: Annotated[str, typer.Argument(help="Processor executable, e.g. ocrd-tesserocr-recognize.")],
    names: Annotated[list[str], typer.Argument(help="Model names (registry names, or '*' for all known).")],
    url: Annotated[Optional[str], typer.Option(help="Your own model: http(s) URL, file:// URL or local path.")] = None,
    sha256: Annotated[Optional[str], typer.Option(help="Pin the SHA-256 of the download.")] = None,
    type: Annotated[Optional[str], typer.Option("--type", help="file | archive | directory.")] = None,
    path_in_archive: Annotated[Optional[str], typer.Option(help="Archive member to install ('.' = all).")] = None,
    location: Annotated[Optional[str], typer.Option(help="cwd | data | system | module | a directory.")] = None,
    manifest: ManifestOpt = Path(MANIFEST_NAME),
) -> None:
    """Declare models in models.toml (comments and layout are kept).

    Names are checked against the known resources (with "did you mean"); with --url the
    name is yours to choose.

    \b
    Examples:
      modelsync add ocrd-tesserocr-recognize deu.traineddata frk.traineddata
      modelsync add ocrd-calamari-recognize mine --url ./out/model.tar.gz --type archive
    """
    from . import edit, render
    from .errors import UserInputError
    from .registry import Registry
    from .resolve import unknown_name, unknown_processor
    from .settings import Environment

    if url and len(names) != 1:
        raise UserInputError("--url declares one model: give exactly one name")
    if not url:
        reg = Registry.load(Environment.from_os())
        from . import processors

        reg.add_processor_answers(processors.dump_many([processor], Environment.from_os()))
        for n in names:
            if n == "*":
                if not reg.knows_processor(processor):
                    raise unknown_processor(reg, processor)
            elif reg.lookup(processor, n) is None:
                raise (unknown_processor(reg, processor) if not reg.knows_processor(processor)
                       else unknown_name(reg, processor, n))
    specs = [{"name": n, "url": url, "sha256": sha256, "type": type, "path_in_archive": path_in_archive,
              "location": location} for n in names]
    added = edit.add(manifest, processor, specs)
    render.err.print(f"{manifest}: {processor}: added {', '.join(added) or 'nothing new (updated)'}; "
                     "run `modelsync sync` to install", markup=False)


@app.command()
def remove(
    processor: Annotated[str, typer.Argument(help="Processor executable.")],
    names: Annotated[Optional[list[str]], typer.Argument(help="Models to remove; none = the whole processor.")] = None,
    manifest: ManifestOpt = Path(MANIFEST_NAME),
) -> None:
    """Remove models from models.toml (comments and layout are kept).

    Installed files stay; `modelsync sync --prune` deletes the ones modelsync installed.

    \b
    Example: modelsync remove ocrd-tesserocr-recognize frk.traineddata
    """
    from . import edit, render

    removed = edit.remove(manifest, processor, names or [])
    render.err.print(f"{manifest}: {processor}: removed {', '.join(removed)}", markup=False)


@app.command()
def lock(
    manifest: ManifestOpt = Path(MANIFEST_NAME),
    mirror: MirrorOpt = None,
    parallel: ParallelOpt = None,
    upgrade: UpgradeOpt = False,
    upgrade_model: UpgradeModelOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Write models.lock without installing anything.

    Checksums come from the existing lock, from copies already installed, or from a
    download that is verified and kept in the cache (so a later sync fetches nothing).

    \b
    Example: modelsync lock && git add models.toml models.lock
    """
    from . import render

    prog, ctx = _progress(False)
    with ctx:
        project = _project(manifest, mirror, parallel, prog, cache_dir=cache_dir)
        result = project.lock(upgrade=_upgrade_keys(project, upgrade, upgrade_model))
    render.err.print(f"{result.lock_path}: {len(result.lock.entries)} resources "
                     f"({'written' if result.lock_written else 'unchanged'})", markup=False)


@app.command()
def sync(
    manifest: ManifestOpt = Path(MANIFEST_NAME),
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
        "--registry", metavar="HOST/REPOSITORY", envvar="MODELSYNC_REGISTRY",
        help="Fetch locked artifacts by digest from this OCI registry first, the origin URL only when it lacks "
             "one (else [settings] registry). See `modelsync push`.")] = None,
    registry_only: Annotated[bool, typer.Option(
        "--registry-only", help="Never use origin URLs: whatever the registry lacks fails (exit 6).")] = False,
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
    from .errors import SyncFailed

    prog, ctx = _progress(json_out)
    with ctx:
        project = _project(manifest, mirror, parallel, prog, cache_dir=cache_dir, link_mode=link_mode,
                           offline=offline, frozen=frozen, convert=not no_convert, oci_registry=registry,
                           registry_only=True if registry_only else None)
        if locked:
            project.check_locked()  # before planning: a stale lock must not cost any hashing
        plan = project.plan(prune=prune, upgrade=_upgrade_keys(project, upgrade, upgrade_model))
        if check:
            _report_check(plan, json_out)
            return
        try:
            lock_written = project.sync(plan=plan, locked=locked).lock_written
        except SyncFailed as err:
            if json_out:
                render.emit_json({"ok": False, **_plan_doc(plan),
                                  "failures": [{"processor": f.processor, "name": f.name, "error": str(f.error),
                                                "exit_code": f.error.exit_code} for f in err.failures]})
            raise
    if json_out:
        render.emit_json({"ok": True, **_plan_doc(plan), "lock_written": lock_written,
                          "lock": str(project.lock_path)})
        return
    for a in plan.actions:
        for w in a.warnings:
            render.warn(f"{a.processor} {a.name}: {w}")
    source = project.registry_source  # already opened by the sync (None without a registry)
    if source is not None and (source.missing or source.unreachable):
        render.warn(f"registry {source.client.ref.host}/{source.client.ref.repository}: fetched from the origin "
                    f"instead: {len(source.missing)} it lacks (`modelsync push` adds them), "
                    f"{len(source.unreachable)} it failed to serve")
    done = {k: plan.count(k) for k in ("install", "update", "keep", "remove")}
    render.err.print(f"installed {done['install']}, updated {done['update']}, kept {done['keep']}"
                     + (f", removed {done['remove']}" if done["remove"] else "")
                     + f"; {project.lock_path.name} {'written' if lock_written else 'unchanged'}",
                     markup=False, highlight=False)


@app.command()
def plan(
    manifest: ManifestOpt = Path(MANIFEST_NAME),
    prune: PruneOpt = False,
    json_out: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help=f"Exit {EXIT_CHANGES_PENDING} if anything would change.")]
    = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list resources that stay as they are.")]
    = False,
) -> None:
    """Show what `sync` would do, with a reason per resource; change nothing.

    \b
    Example: modelsync plan
    """
    p = _project(manifest, None, None).plan(prune=prune)
    if check:
        _report_check(p, json_out, verbose)
    elif json_out:
        from . import render

        render.emit_json(_plan_doc(p))
    else:
        _render_plan(p, "plan", verbose)


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Full paths and hashes.")]


def _label(location: str, base: Path) -> str:
    """A location label (``data``, ``dir:/x``, ``path:/x``) with its path shortened."""
    from . import render

    kind, sep, path = location.partition(":")
    return f"{kind}:{render.short_path(path, base)}" if sep and kind in ("dir", "path") else location


@app.command()
def status(manifest: ManifestOpt = Path(MANIFEST_NAME), json_out: JsonOpt = False,
           no_convert: NoConvertOpt = False, verbose: VerboseOpt = False) -> None:
    """Declared vs locked vs installed, per resource.

    States: ok (installed, matches the lock), missing, modified (differs from the lock),
    unlocked (installed but not yet locked), undeclared (locked, no longer declared).
    -v adds each resource's path.

    \b
    Example: modelsync status
    """
    from . import render

    project = _project(manifest, None, None, convert=not no_convert)
    rows = project.status()
    if json_out:
        render.emit_json({"resources": rows})
        return
    base = project.project_dir
    # The path follows from location, processor and name: it is shown with -v (and in --json).
    columns = ["processor", "name", "location", "locked", "state"] + (["path"] if verbose else [])
    converted = any(r.converted for r in rows)
    render.table(None, columns + (["converted (used instead)"] if converted else []),
                 [(r.processor, r.name, r.location if verbose else _label(r.location, base), r.locked, r.state)
                  + ((r.path or "",) if verbose else ())
                  + ((r.converted if verbose else render.short_path(r.converted, base),) if converted else ())
                  for r in rows])
    for r in rows:
        for w in r.warnings:
            render.warn(f"{r.processor} {r.name}: {w}")


@app.command()
def resolve(
    processor: Annotated[str, typer.Argument(help="Processor executable, e.g. ocrd-cis-ocropy-recognize.")],
    name: Annotated[str, typer.Argument(help="Model name as declared.")],
    manifest: ManifestOpt = Path(MANIFEST_NAME),
    json_out: JsonOpt = False,
    no_convert: NoConvertOpt = False,
) -> None:
    """Print the path to use for a declared model: its converted HDF5 if it has one, else where it is installed.

    Exits 2 if the model is not declared, 1 if it is not installed.

    \b
    Example: kraken -i line.png out.txt ocr -m "$(modelsync resolve ocrd-cis-ocropy-recognize fraktur-jze.pyrnn.gz)"
    """
    from . import render

    found = _project(manifest, None, None, convert=not no_convert).resolve_model(processor, name)
    if json_out:
        render.emit_json(found)
        return
    render.out.print(found["path"], markup=False, highlight=False, soft_wrap=True)


@app.command()
def verify(manifest: ManifestOpt = Path(MANIFEST_NAME), json_out: JsonOpt = False,
           verbose: VerboseOpt = False) -> None:
    """Re-hash every locked resource where its processor finds it (ignores cached stat info).

    Exits 4 if any resource is missing or differs from models.lock. Hashes are shortened to
    12 digits; -v (and --json) shows them in full.

    \b
    Example: modelsync verify
    """
    from . import render

    project = _project(manifest, None, None)
    rows = project.verify()
    bad = [r for r in rows if not r.ok]
    if json_out:
        render.emit_json({"ok": not bad, "resources": rows})
    else:
        # Where each was checked: with -v (the path OCR-D finds first; --json always has it).
        render.table(None, ["processor", "name", "result", "detail"] + (["path"] if verbose else []),
                     [(r.processor, r.name, "ok" if r.ok else "FAILED",
                       r.detail if verbose else render.short_hashes(r.detail)) + ((r.path or "",) if verbose else ())
                      for r in rows])
    if bad:
        raise typer.Exit(EXIT_CHECKSUM)


@app.command()
def available(
    processor: Annotated[Optional[str], typer.Argument(help="Only this processor.")] = None,
    json_out: JsonOpt = False,
    no_processors: Annotated[bool, typer.Option(
        "--no-processors", help="Do not ask installed processors (--dump-json); bundled index and user db only.")]
    = False,
) -> None:
    """List known resources with size (as declared: a hint) and source.

    \b
    Example: modelsync available ocrd-calamari-recognize
    """
    from . import render
    from .catalog import available as list_available
    from .resolve import unknown_processor
    from .settings import Environment

    reg, entries = list_available(Environment.from_os(), processor, ask_processors=not no_processors)
    if processor and not reg.knows_processor(processor):
        raise unknown_processor(reg, processor)
    if json_out:
        render.emit_json({"resources": entries})
        return
    render.table(None, ["processor", "name", "type", "size", "source", "url"],
                 [(e.processor, e.name, e.type, render.human_size(e.size), e.source, e.url) for e in entries])


@app.command("list-installed")
def list_installed(json_out: JsonOpt = False) -> None:
    """List resources present in OCR-D's data, system and module locations.

    "ours" marks files modelsync installed (verified = unchanged since).

    \b
    Example: modelsync list-installed
    """
    from . import render
    from .catalog import list_installed as scan
    from .settings import Environment

    rows = scan(Environment.from_os(), Path.cwd())
    if json_out:
        render.emit_json({"resources": rows})
        return
    render.table(None, ["processor", "name", "location", "size", "known", "ours", "path"],
                 [(r.processor, r.name, r.location, render.human_size(r.size), "yes" if r.known else "no",
                   r.recorded or "-", r.path) for r in rows])


@app.command("import")
def import_(
    manifest: ManifestOpt = Path(MANIFEST_NAME),
    mirror: MirrorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Adopt models already installed (by `ocrd resmgr download` or by hand).

    Scans OCR-D's data, system and module locations, declares every file or directory
    whose name the registry knows for its processor in models.toml (created if missing;
    comments kept), and locks them by hashing each once. Unknown files are listed, not
    guessed: declare them yourself with `modelsync add PROC NAME --url ...`.

    \b
    Example: modelsync import && git add models.toml models.lock
    """
    from . import adopt, render
    from .settings import Environment

    env = Environment.from_os()
    found = adopt.scan(env, manifest.absolute().parent)
    if found.declared:
        adopt.declare(manifest, env, found)
        prog, ctx = _progress(json_out)
        with ctx:
            result = _project(manifest, mirror, None, prog).lock()
        lock_written = result.lock_written
    else:
        lock_written = False
    if json_out:
        render.emit_json({"declared": found.declared, "unknown": found.unknown, "shadowed": found.shadowed,
                          "lock_written": lock_written})
        return
    if found.declared:
        render.table("imported", ["processor", "name", "location", "size", "path"],
                     [(r.processor, r.name, r.location, render.human_size(r.size), r.path) for r in found.declared])
    for r in found.shadowed:
        render.warn(f"{r.path} is shadowed by an earlier copy of {r.name} ({r.processor}); not declared")
    for r in found.unknown:
        render.warn(f"unknown to the registry, not declared: {r.path} ({r.processor})")
    render.err.print(f"{len(found.declared)} declared in {manifest}, {len(found.unknown)} unknown"
                     + (f"; {manifest.parent / 'models.lock'} written" if lock_written else ""), markup=False)


cache_app = typer.Typer(help="The shared download cache: where it is, what it holds, pruning it.",
                        no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _cache(cache_dir: Path | None, manifest: Path):
    from .cache import Cache
    from .settings import Environment

    if cache_dir is not None:
        return Cache(cache_dir)
    env = Environment.from_os()
    if manifest.exists() and not env.get("MODELSYNC_CACHE_DIR"):
        return _project(manifest).cache  # honours settings.cache_dir of this project
    return Cache(env.cache_dir)


@cache_app.command("dir")
def cache_dir_cmd(cache_dir: CacheDirOpt = None, manifest: ManifestOpt = Path(MANIFEST_NAME)) -> None:
    """Print the cache directory.

    \b
    Example: du -sh "$(modelsync cache dir)"
    """
    typer.echo(str(_cache(cache_dir, manifest).root))


@cache_app.command("info")
def cache_info(cache_dir: CacheDirOpt = None, manifest: ManifestOpt = Path(MANIFEST_NAME),
               json_out: JsonOpt = False) -> None:
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
                 [(stats.path, stats.blobs, stats.trees, render.human_size(stats.bytes), stats.projects)])


@cache_app.command("prune")
def cache_prune(
    older_than: Annotated[Optional[float], typer.Option(
        "--older-than", metavar="DAYS", min=0, help="Remove entries unused for DAYS days instead, referenced or not.")]
    = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    cache_dir: CacheDirOpt = None,
    manifest: ManifestOpt = Path(MANIFEST_NAME),
    json_out: JsonOpt = False,
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
    render.err.print(f"{len(removed)} entries, {render.human_size(sum(n for _, _, n in removed))}"
                     + (" would be freed" if dry_run else " freed"), markup=False)


def main() -> None:
    """Console entry point: one message and one documented exit code per error."""
    from . import manifest as manifest_module
    from .settings import Environment

    manifest_module.PARSE_CACHE_DIR = Environment.from_os().cache_dir
    manifest_module.discard_validated()  # notes of an earlier run in this process (library use, tests)
    try:
        code = app(standalone_mode=False)
    except ModelsyncError as err:
        from . import render
        from .credentials import strip_userinfo

        render.error(strip_userinfo(str(err)))  # a safety net: messages already redact URLs
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except Exception as err:
        # Usage errors: click's ClickException (typer >= 0.20 vendors click, so match by shape).
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            sys.exit(EXIT_USER_INPUT if err.exit_code == 2 else err.exit_code)
        if os.environ.get("MODELSYNC_DEBUG"):
            raise
        known = _machine_fault(err)
        if known is not None:  # the machine's fault, not ours: its own message and exit code
            from . import render

            render.error(str(known))
            sys.exit(known.exit_code)
        from . import render

        render.error(f"unexpected {type(err).__name__}: {err}\nThis is a bug in modelsync; please report it with "
                     "the output of the same command run with MODELSYNC_DEBUG=1 (which shows the traceback).")
        sys.exit(1)
    if code == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into a return value of 130
        _interrupted()
    if not code:
        manifest_module.flush_validated()
    sys.exit(code if isinstance(code, int) else 0)


def _machine_fault(err: Exception) -> ModelsyncError | None:
    """A safety net for OS errors no layer below turned into a typed error: the filesystem's (exit 8,
    naming it) or the network's (exit 3); None for anything else, which is a bug."""
    import socket

    from .errors import NetworkError, filesystem_error

    if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror)) or \
            type(err).__module__.split(".")[0] in ("requests", "urllib3"):
        return NetworkError(f"a network operation failed: {err}. Check the network and run the command again.")
    if isinstance(err, OSError):
        return filesystem_error(err, err.filename2 or err.filename or os.getcwd(), "access")
    return None


def _interrupted() -> None:
    sys.stderr.write("interrupted; temporary files were removed, nothing half-written remains\n")
    sys.stderr.flush()
    # Exit now: a download thread stuck in a socket read must not delay Ctrl-C (its temp file is gone).
    os._exit(EXIT_INTERRUPTED)


from . import cli_legacy, cli_registry  # noqa: E402  (register inspect, convert and push on the same app)

assert cli_legacy.app is app and cli_registry.app is app

if __name__ == "__main__":
    main()
