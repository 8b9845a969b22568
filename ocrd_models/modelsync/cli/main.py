"""The console entry point: runs the app, maps every error to one message and one documented exit
code, and keeps ``--json`` runs to one JSON document on stdout, failures included."""

from __future__ import annotations

import os
import sys

import typer

from ..errors import EXIT_INTERRUPTED, EXIT_USER_INPUT, ModelsyncError
from . import output
from .app import app


def main() -> None:
    """Console entry point: one message and one documented exit code per error."""
    from ..spec import parsecache
    from ..config import Environment

    parsecache.enable(Environment.from_os().cache_dir)
    output.setup()
    try:
        code = app(standalone_mode=False, prog_name="modelsync")
    except ModelsyncError as err:
        from ..urls import strip_userinfo

        _fail(strip_userinfo(str(err)), err.exit_code, type(err).__name__, err.facts())  # a safety net: URLs are redacted
    except (KeyboardInterrupt, typer.Abort):
        _interrupted()
    except Exception as err:
        # Usage errors: click's ClickException (typer >= 0.20 vendors click, so match by shape).
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            code = EXIT_USER_INPUT if err.exit_code == 2 else err.exit_code
            if _json_wanted():
                _fail(err.format_message() if hasattr(err, "format_message") else str(err), code, "UsageError")
            err.show()
            sys.exit(code)
        if Environment.from_os().debug:
            # Printed on the real stderr: a live display may have been on when it happened.
            import traceback

            traceback.print_exception(err, file=sys.__stderr__)
            sys.exit(1)
        known = _machine_fault(err)
        if known is not None:  # the machine's fault, not ours: its own message and exit code
            _fail(str(known), known.exit_code, type(known).__name__)
        _fail(f"unexpected {type(err).__name__}: {err}\nThis is a bug in modelsync; please report it with the "
              "output of the same command run with MODELSYNC_DEBUG=1 (which shows the traceback).", 1, "Bug")
    if code == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into a return value of 130
        _interrupted()
    if not code:
        parsecache.flush()
    elif isinstance(code, int) and _json_wanted():
        _fail(f"exit {code}", code, "Exit")  # e.g. verify's mismatches: its document is out already
    sys.exit(code if isinstance(code, int) else 0)


def _json_wanted() -> bool:
    # The option's callback sets the state; a usage error may come before it ran.
    return output.state.json or "--json" in sys.argv[1:]


def _fail(message: str, code: int, kind: str, facts: dict | None = None) -> None:
    """Print the error (and, for --json, its document, with the error's fields, unless the command wrote
    one) and exit."""
    from . import render

    if _json_wanted() and not render.json_emitted:
        render.emit_json({"error": {**(facts or {}), "kind": kind, "message": message, "exit_code": code}})
    render.error(message)
    sys.exit(code)


def _machine_fault(err: Exception) -> ModelsyncError | None:
    """A safety net for OS errors no layer below turned into a typed error: the filesystem's (exit 8,
    naming it) or the network's (exit 3); None for anything else, which is a bug."""
    import socket

    from ..errors import NetworkError, filesystem_error

    if isinstance(err, (ConnectionError, TimeoutError, socket.gaierror)) or \
            type(err).__module__.split(".")[0] in ("requests", "urllib3"):
        return NetworkError(f"a network operation failed: {err}. Check the network and run the command again.")
    if isinstance(err, OSError):
        return filesystem_error(err, err.filename2 or err.filename or os.getcwd(), "access")
    return None


def _interrupted() -> None:
    sys.stderr.write("interrupted; temporary files were removed, nothing half-written is where models go "
                     "(an unfinished download stays in the cache: the next sync resumes it)\n")
    sys.stderr.flush()
    # Exit now: a download thread stuck in a socket read must not delay Ctrl-C (its temp file is gone).
    os._exit(EXIT_INTERRUPTED)
