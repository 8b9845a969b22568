"""Shell completion of processor and model names (from the bundled index and OCR-D's user database;
completion never runs a processor: it must answer at once)."""

from __future__ import annotations

import typer


def _index():
    import logging

    from ..resources.index import ResourceIndex
    from ..config import Environment

    # A warning about OCR-D's user database would be typed into the user's command line.
    logging.getLogger("ocrd_models.modelsync").setLevel(logging.CRITICAL)
    return ResourceIndex.load(Environment.from_os())


def processors(incomplete: str) -> list[str]:
    """Known processor names starting with what was typed."""
    try:
        return [p for p in _index().processors() if p.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
        return []


def model_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Known model names of the processor given before, starting with what was typed."""
    processor = ctx.params.get("processor")
    if not processor:
        return []
    try:
        given = set(ctx.params.get("names") or [])
        return [e.name for e in _index().resources(processor)
                if e.name.startswith(incomplete) and e.name not in given]
    except Exception:  # noqa: BLE001
        return []
