"""What this run prints besides its results: verbosity (-v, -q), JSON mode, and the log handler
that shows the library's notes (retries, fallbacks, skipped work; logger ``ocrd_models.modelsync``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass
class _State:
    verbosity: int = 0  # -1 quiet, 0 normal, 1 verbose
    json: bool = False  # --json: one document on stdout, whatever happens


state = _State()
LOGGER = "ocrd_models.modelsync"


class _RenderHandler(logging.Handler):
    """Log records as lines on stderr, escaped like everything printed (through render)."""

    def emit(self, record: logging.LogRecord) -> None:
        from . import render

        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must not end the run
            return
        if record.levelno >= logging.WARNING:
            render.warn(message)
        else:
            render.note(message)


def setup() -> None:
    """Reset for one run and attach the handler (warnings and above unless -v/-q say otherwise)."""
    from . import render

    state.verbosity, state.json = 0, False
    render.quiet, render.json_emitted = False, False
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(h, _RenderHandler) for h in logger.handlers):
        logger.addHandler(_RenderHandler())
    logger.propagate = False
    logger.setLevel(logging.WARNING)


def set_verbosity(level: int) -> None:
    """-v (1): the library's info notes too; -q (-1): errors only."""
    from . import render

    state.verbosity = level
    render.quiet = level < 0
    logging.getLogger(LOGGER).setLevel(logging.INFO if level > 0 else logging.ERROR if level < 0 else logging.WARNING)


def quiet() -> bool:
    """True with -q."""
    return state.verbosity < 0
