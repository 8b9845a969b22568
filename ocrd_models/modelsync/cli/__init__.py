"""The ``modelsync`` command line: parses, calls the library, renders. No logic of its own.

Above everything else: it may import any part of the library, and nothing imports it. Layout:
:mod:`.app` holds the Typer objects; :mod:`.options` the options and helpers every command
shares; one module per group of commands registers them on the app (imported here, in the order
``--help`` lists them); :mod:`.main` is the console entry point. Command modules import only
:mod:`.app`, :mod:`.options`, :mod:`.output`, :mod:`.complete`, :mod:`.views`, :mod:`.render` and
the library, never each other. :mod:`.render` is the only place that knows the terminal.
"""

from . import declare, report, install, catalog, cache, legacy, registry  # noqa: F401  (register the commands)
from .app import app
from .main import main

__all__ = ["app", "main"]
