"""How a plan is shown (tables and the JSON document), shared by ``plan`` and ``sync --check``."""

from __future__ import annotations

from pathlib import Path


def plan_doc(plan) -> dict:
    """The plan as the JSON document of ``plan --json`` (and part of ``sync --json``); URLs without
    their user info and secret parameters, as in the lock (CI logs keep --json output)."""
    from ..urls import redact

    return {
        "changes": len(plan.changes),
        "actions": [{
            "action": a.kind, "processor": a.processor, "name": a.name, "reason": a.reason,
            "path": str(a.target), "location": a.location_label,
            "url": redact(a.wanted.url) if a.wanted else None, "warnings": list(a.warnings),
        } for a in plan.actions],
    }


def location_label(location: str, base: Path) -> str:
    """A location label (``data``, ``dir:/x``, ``path:/x``) with its path shortened."""
    from . import render

    kind, sep, path = location.partition(":")
    return f"{kind}:{render.short_path(path, base)}" if sep and kind in ("dir", "path") else location


def manifest_header(prj) -> None:
    """Which models.toml this is: it may have been found in a parent directory."""
    from . import render

    render.say(f"manifest: {render.short_path(str(prj.manifest_path.absolute()), Path.cwd())}")


def render_plan(prj, plan, verbose: bool = False) -> None:
    from . import render

    base = prj.project_dir
    shown = [a for a in plan.actions if verbose or a.changes or a.adopt or a.warnings]
    rows = [(a.kind, a.processor, a.name, a.location_label if verbose else location_label(a.location_label, base), a.reason)
            for a in shown]
    if rows:
        render.table(None, ["action", "processor", "name", "location", "reason"], rows, keys=3)
    hidden = len(plan.actions) - len(shown)
    if hidden:
        render.say(f"{hidden} resource(s) installed and unchanged (-v lists them)")
    for a in plan.actions:
        for w in a.warnings:
            render.warn(f"{a.processor} {a.name}: {w}")
    counts = {k: plan.count(k) for k in ("install", "update", "keep", "remove", "shadowed")}
    render.say(", ".join(f"{v} to {k}" for k, v in counts.items() if v) or "nothing declared")


def report_check(plan, json_out: bool, verbose: bool = False, prj=None) -> None:
    """Show the plan, then exit 7 if it changes anything (``--check``)."""
    from . import render
    from ..errors import ChangesPending

    if json_out:
        render.emit_json(plan_doc(plan))
    elif prj is not None:
        render_plan(prj, plan, verbose)
    if plan.changes:
        raise ChangesPending(f"{len(plan.changes)} change(s) pending (--check); run `modelsync sync` to apply them")
