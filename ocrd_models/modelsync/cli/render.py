"""Rendering for people (rich) and machines (JSON). Only the CLI imports this module."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import asdict, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Iterable

# Characters that make a terminal do something rather than show a glyph: C0 controls (ESC starts
# colour, title and hyperlink sequences; BEL, BS and CR rewrite what is shown), DEL, C1 controls (CSI
# 0x9b is an ESC [ on some terminals), and the bidirectional overrides that reorder a line. Text from
# outside (server reason phrases, model codecs, names and keys in a file) is printed with them escaped.
_CONTROL_IN_LINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_IN_CELLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # C0: json.dumps escapes it


def _escape_char(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, newlines: bool = True) -> str:
    """``text`` with every control character shown as a ``\\x1b``-style escape (newlines kept unless
    ``newlines`` is False: a table cell is one line)."""
    pattern = _CONTROL_IN_LINES if newlines else _CONTROL_IN_CELLS
    return pattern.sub(_escape_char, text) if pattern.search(text) else text


def styled(stream) -> bool:
    """Whether ``stream`` gets rich output (tables, colour, bars): a terminal, or any stream when
    ``FORCE_COLOR`` is set (https://force-color.org); ``TERM=dumb`` gets plain text."""
    import os

    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def _no_color() -> bool:
    import os

    return bool(os.environ.get("NO_COLOR"))  # https://no-color.org: any non-empty value


class _LazyConsole:
    """A rich Console made on first use; plain lines off a terminal skip rich altogether.

    Importing rich.console costs a tenth of a second, a good part of a no-op `sync` in CI.
    """

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console = None

    @property
    def _stream(self):
        return sys.stderr if self._stderr else sys.stdout

    def _rich(self):
        if self._console is None:
            from rich.console import Console

            # Off a terminal (pipes, CI logs, tests) tables must not be folded at 80 columns. NO_COLOR
            # means no escape sequences at all (rich's own no_color keeps bold and dim).
            tty = self._stream.isatty()
            self._console = Console(stderr=self._stderr, soft_wrap=True, highlight=False,
                                    width=None if tty else 1000, force_terminal=styled(self._stream) or None,
                                    **({"color_system": None} if _no_color() else {}))
        return self._console

    def print(self, *objects: Any, **kw: Any) -> None:
        """Like Console.print, with control characters in text escaped; an unstyled line of text off a
        terminal is written as is."""
        objects = tuple(escape_controls(o) if isinstance(o, str) else o for o in objects)
        if kw.get("markup") is False and all(isinstance(o, str) for o in objects) and not styled(self._stream) \
                and set(kw) <= {"markup", "highlight", "soft_wrap"}:
            self._stream.write(" ".join(objects) + "\n")
            self._stream.flush()
            return
        self._rich().print(*objects, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rich(), name)


out = _LazyConsole(stderr=False)
err = _LazyConsole(stderr=True)


quiet = False  # -q: only errors (and results on stdout) are printed
json_emitted = False  # a --json document went to stdout already


def say(message: str) -> None:
    """A line of information on stderr (a summary, a hint); nothing with -q."""
    if not quiet:
        err.print(message, markup=False, highlight=False)


def note(message: str) -> None:
    """A note from the library (a retry, a fallback) on stderr, dim on a terminal; nothing with -q."""
    if quiet:
        return
    if not styled(sys.stderr) or _no_color():
        err.print(f"note: {message}", markup=False, highlight=False)
        return
    err.print("[dim]note:[/dim] ", end="", markup=True)
    err.print(message, markup=False, highlight=False, style="dim")


def human_size(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '?'."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in asdict(obj).items()}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


JSON_SCHEMA_VERSION = 1  # bump on any incompatible change of a --json document (README, "Machine-readable")


def emit_json(doc: dict[str, Any]) -> None:
    """Print one JSON document on stdout (the only thing printed there with --json)."""
    global json_emitted
    json_emitted = True
    doc = {"schema_version": JSON_SCHEMA_VERSION, **doc}
    text = json.dumps(_plain(doc), indent=2, ensure_ascii=False, sort_keys=False)
    # json.dumps escapes C0 controls itself; DEL, C1 and bidi overrides are valid JSON as \\u escapes too.
    text = _CONTROL_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


PLAIN_ABOVE = 300  # rows: beyond this, even a terminal gets plain text (rich tables are slow per row)


def _plain_table(columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    sys.stdout.write("\n".join(lines) + "\n")


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]], *, keys: int = 2) -> None:
    """A table on stdout: rich on a terminal, plain aligned columns in pipes, logs and for long lists.

    On a terminal too narrow for the table, each row becomes a block instead: its first ``keys``
    cells as a heading, the others as ``label  value`` lines (never a cell folded mid-word).
    """
    columns = list(columns)
    rows = [["" if v is None else escape_controls(str(v), newlines=False) for v in r] for r in rows]
    title = None if title is None else escape_controls(title, newlines=False)  # a file's name, say
    if not styled(sys.stdout) or len(rows) > PLAIN_ABOVE:
        _plain_table(columns, rows)
        return
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    widths = [max([cell_len(c), *(cell_len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    if sum(widths) + 3 * (len(columns) - 1) > out.width:
        _blocks(title, columns, rows, keys)
        return
    t = Table(title=None if title is None else Text(title), show_edge=False, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c, no_wrap=True)
    for r in rows:
        t.add_row(*(Text(v) for v in r))  # Text: a cell is never read as rich markup
    out.print(t)


def _blocks(title: str | None, columns: list[str], rows: list[list[str]], keys: int) -> None:
    from rich.text import Text

    labels = columns[keys:]
    pad = max((len(c) for c in labels), default=0)
    if title:
        out.print(Text(title, style="bold"))
    for r in rows:
        out.print(Text(" ".join(v for v in r[:keys] if v), style="bold"))
        for label, value in zip(labels, r[keys:]):
            if value:
                out.print(Text(f"  {label.ljust(pad)}  {value}"))


_HASH = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}\b")


def short_hashes(text: str) -> str:
    """Every SHA-256 in ``text`` cut to its first 12 digits and an ellipsis (full ones: -v, --json)."""
    return _HASH.sub(r"\1…", text)


def short_path(path: str | Path | None, base: Path | None = None) -> str:
    """``path`` relative to ``base`` (the project) when inside it, else with ``~`` for the home dir."""
    if path is None or path == "":
        return ""
    import os

    text = str(path)
    if base is not None:
        try:
            rel = Path(text).relative_to(base)
            return str(rel) if str(rel) != "." else "."
        except ValueError:
            pass
    home = os.path.expanduser("~")
    if home not in ("", "/") and (text == home or text.startswith(home + os.sep)):
        return "~" + text[len(home):]
    return text


def warn(message: str) -> None:
    """A warning line on stderr (coloured on a terminal); nothing with -q."""
    if quiet:
        return
    if not styled(sys.stderr) or _no_color():
        err.print(f"warning: {message}", markup=False, highlight=False)
        return
    err.print("[yellow]warning:[/yellow] ", end="", markup=True)
    err.print(message, markup=False, highlight=False)


def error(message: str) -> None:
    """An error paragraph on stderr (coloured on a terminal)."""
    if not styled(sys.stderr) or _no_color():
        err.print(f"error: {message}", markup=False, highlight=False)
        return
    err.print("[bold red]error:[/bold red] ", end="", markup=True)
    err.print(message, markup=False, highlight=False)


class PlainProgress:
    """One line per finished resource: for CI logs and pipes (no bars, no carriage returns)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t0: dict[str, float] = {}
        self._bytes: dict[str, int] = {}

    def start(self, task: str, total: int | None) -> None:  # noqa: D102
        with self._lock:
            self._t0[task] = time.monotonic()
            self._bytes[task] = 0
        err.print(f"fetching {task}", markup=False, highlight=False)

    def update_total(self, task: str, total: int | None) -> None:  # noqa: D102
        pass

    def advance(self, task: str, nbytes: int) -> None:  # noqa: D102
        with self._lock:
            self._bytes[task] = self._bytes.get(task, 0) + nbytes

    def finish(self, task: str, ok: bool, message: str) -> None:  # noqa: D102
        now = time.monotonic()
        with self._lock:
            secs = now - self._t0.get(task, now)
            n = self._bytes.get(task, 0)
        if ok and task not in self._t0:  # nothing was fetched (a removal): no size, no time
            err.print(f"done {task}: {message}", markup=False, highlight=False)
        elif ok:
            err.print(f"done {task}: {message}, {human_size(n)} in {secs:.1f}s", markup=False, highlight=False)
        else:  # the reason is in the summary at the end: each failure is told once
            err.print(f"FAILED {task} (the reason follows at the end)", markup=False, highlight=False)

    def note(self, message: str) -> None:  # noqa: D102
        err.print(message, markup=False, highlight=False)


def _speed_column_class():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        """Transfer speed in MiB/s (rich's own column counts in decimal MB)."""

        def render(self, task) -> Text:  # noqa: D102
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{human_size(int(speed))}/s", style="progress.data.speed")

    return SpeedColumn


def _SpeedColumn(**kw: Any):  # noqa: N802 - a class made on first use (rich is imported lazily)
    return _speed_column_class()(**kw)


@cache
def _narrow_progress_class() -> type:
    """rich's Progress, its lines kept two columns short of the terminal's width. A line that fills the
    width leaves the terminal waiting to wrap: the ``^C`` a terminal echoes on Ctrl-C then wraps onto a
    new line, the display's last redraw lands one line lower, and a stale bar stays on the screen."""
    from rich.constrain import Constrain
    from rich.progress import Progress

    class NarrowProgress(Progress):
        def get_renderable(self):  # noqa: D102
            live = getattr(self, "live", None)  # rich asks once before the display exists
            return Constrain(super().get_renderable(), max(20, live.console.width - 2) if live else None)

    return NarrowProgress


class BarProgress:
    """rich progress bars on a terminal, one per resource being fetched."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Column

        # One line per model at any width: the name is cut with an ellipsis, the numbers never wrap
        # (MiB, as everywhere). The real Console (a Live display enters it as a context manager);
        # descriptions are escaped below, so the column may read the ✓/✗ marks as markup.
        fixed = dict(no_wrap=True, overflow="crop")
        self._p = _narrow_progress_class()(
            TextColumn("{task.description}", table_column=Column(ratio=1, min_width=12, no_wrap=True,
                                                                 overflow="ellipsis")),
            BarColumn(bar_width=16), DownloadColumn(binary_units=True, table_column=Column(**fixed)),
            _SpeedColumn(table_column=Column(**fixed)),
            TimeRemainingColumn(compact=True, table_column=Column(**fixed)),
            console=err._rich(), transient=False, expand=True)
        self._ids: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> "BarProgress":
        self._p.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._p.stop()

    @staticmethod
    def _label(task: str) -> str:
        """``name  processor`` (the processor dim): cut at the end, the model's name stays in view."""
        from rich.markup import escape

        processor, _, name = task.partition(" ")
        if not name:
            return escape(escape_controls(task, newlines=False))
        return f"{escape(escape_controls(name, newlines=False))} [dim]{escape(escape_controls(processor, newlines=False))}[/dim]"

    def start(self, task: str, total: int | None) -> None:  # noqa: D102
        with self._lock:
            self._ids[task] = self._p.add_task(self._label(task), total=total)

    def update_total(self, task: str, total: int | None) -> None:  # noqa: D102
        if total is not None:
            self._p.update(self._ids[task], total=total)

    def advance(self, task: str, nbytes: int) -> None:  # noqa: D102
        self._p.advance(self._ids[task], nbytes)

    def finish(self, task: str, ok: bool, message: str) -> None:  # noqa: D102
        tid = self._ids.get(task)
        if tid is None:
            return
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        t = self._p.tasks[[x.id for x in self._p.tasks].index(tid)]
        self._p.update(tid, description=f"{mark} {self._label(task)}", total=t.completed if ok else t.total)

    def note(self, message: str) -> None:  # noqa: D102
        self._p.console.print(escape_controls(message), markup=False, highlight=False)
