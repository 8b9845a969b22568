"""TOML as modelsync reads it: bounded, pre-scanned, parsed with errors that name the file and line.

Every TOML file the tool reads (models.toml, models.lock, credentials.toml) goes through
:func:`read_toml_text` and :func:`parse_toml`; schema errors are worded by
:func:`format_validation_error`.
"""

from __future__ import annotations

import re
import tomllib
from itertools import accumulate
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ManifestError
from . import parsecache

_TOML_POS = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)\s*$")


# tomllib is pure Python and trusts its input's shape: a dotted key of tens of thousands of parts costs
# time and memory quadratic in its length, arrays nested hundreds deep raise RecursionError, and
# millions of table headers take gigabytes.
# Real files are far below these limits: a 10 000-model lock with every field filled is 4.4 MB, and
# models.toml nests 3 deep ([processors] > array > inline table) with keys of at most 3 parts.
MAX_TOML_BYTES = 16 * 1024 * 1024
MAX_TOML_DEPTH = 32  # arrays and inline tables inside each other (a [[header]] counts 2)
MAX_KEY_PARTS = 32  # parts of one dotted key (a.b.c has 3)
MAX_TOML_TABLES = 200_000  # table headers, and dots outside strings (each dotted-key part makes a table)

# One token per match, left to right as TOML reads them: strings and comments. An unterminated string
# runs to the end of its line (or of the file, if multi-line), so a match never fails; the loops are
# unrolled ("normal* (special normal*)*") and possessive: linear in the text whatever it holds.
_STRING_OR_COMMENT = re.compile(
    r'"""[^"\\]*+(?:(?:\\[\s\S]?|"(?!""))[^"\\]*+)*+(?:""""{0,2}|\Z)'  # multi-line basic, 1-2 extra quotes
    r"|'''[^']*+(?:'(?!'')[^']*+)*+(?:''''{0,2}|\Z)"  # multi-line literal
    r'|"[^"\\\n]*+(?:\\[^\n]?[^"\\\n]*+)*+(?:"|(?=\n)|\Z)'  # basic
    r"|'[^'\n]*+(?:'|(?=\n)|\Z)"  # literal
    r"|#[^\n]*"  # comment, up to its newline
)
_BRACKET = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_HEADER = re.compile(r"^[ \t]*\[", re.M)
_TABLE_MARK = re.compile(r"\.|^[ \t]*\[", re.M)
# A key's parts share one line between delimiters (newline = , [ ] { }): MAX_KEY_PARTS dots in one
# such segment make a key too long (a float has one dot). Tried at dots only, each attempt ending
# at its segment's end: at most MAX_KEY_PARTS passes over the text.
_LONG_KEY = re.compile(r"(?:\.[^\n=,\[\]{}.]*+){%d}" % MAX_KEY_PARTS)


def _blank(m: re.Match) -> str:
    # For messages: a string becomes one neutral character and its newlines, so offsets give lines.
    token = m.group()
    return "" if token[0] == "#" else "s" + "\n" * token.count("\n")


def check_toml_limits(text: str, path: Path, error_cls: type[Exception] = ManifestError) -> None:
    """Refuse TOML that would make :mod:`tomllib` hang, exhaust memory or recurse too deep.

    A lexical pre-scan, linear in the text. Outside strings and comments (read as TOML reads them:
    a bracket, dot, quote or ``#`` inside a string or comment never counts) it bounds the size
    (:data:`MAX_TOML_BYTES`), the nesting of arrays and inline tables (:data:`MAX_TOML_DEPTH`), the
    parts of one dotted key (:data:`MAX_KEY_PARTS`) and the tables a file can make
    (:data:`MAX_TOML_TABLES`). Raises ``error_cls`` naming the limit and the line. Meant for every
    TOML file modelsync reads (models.toml, models.lock, credentials.toml) before ``tomllib.loads``.
    """
    if len(text) > MAX_TOML_BYTES:
        size = len(text.encode("utf-8", "surrogatepass"))
        raise error_cls(_limit_message(path, None, f"{size} bytes are more than the {MAX_TOML_BYTES} bytes "
                                                   f"({MAX_TOML_BYTES >> 20} MiB) allowed"))
    # Strings become one neutral character (no dot, no bracket), comments nothing. The constant
    # replacement is the fast path; a refusal blanks again keeping newlines, to name the line.
    bare = _STRING_OR_COMMENT.sub("s", text)
    openers = bare.count("[") + bare.count("{")
    # Depth is not clamped at 0: a stray closer is a syntax error where tomllib stops, before anything
    # after it is parsed, so an unbalanced prefix cannot hide a deeper part from this count.
    if openers > MAX_TOML_DEPTH and max(accumulate(map(_DEPTH_STEP.__getitem__, _BRACKET.findall(bare)))) \
            > MAX_TOML_DEPTH:
        lined = _STRING_OR_COMMENT.sub(_blank, text)
        raise error_cls(_limit_message(path, _line(lined, _too_deep(lined)),
                                       f"arrays and inline tables nest more than {MAX_TOML_DEPTH} deep"))
    dots = bare.count(".")
    if dots >= MAX_KEY_PARTS and _LONG_KEY.search(bare):
        lined = _STRING_OR_COMMENT.sub(_blank, text)
        m = _LONG_KEY.search(lined)
        raise error_cls(_limit_message(path, _line(lined, m.start() if m else 0),
                                       f"a dotted key has more than {MAX_KEY_PARTS} parts"))
    # Every header line holds a "[": count the lines only when the brackets could pass the limit.
    if dots + openers > MAX_TOML_TABLES and dots + len(_HEADER.findall(bare)) > MAX_TOML_TABLES:
        lined = _STRING_OR_COMMENT.sub(_blank, text)
        raise error_cls(_limit_message(path, _line(lined, _too_many_tables(lined)),
                                       f"more than {MAX_TOML_TABLES} table headers and dotted-key parts"))


def _limit_message(path: Path, line: int | None, what: str) -> str:
    where = f"{path}:{line}" if line else str(path)
    return (f"{where}: {what}: a limit that keeps the TOML parser from hanging or running out of memory "
            "(real files stay far below it). Fix the file and run the command again.")


def _line(bare: str, offset: int) -> int:
    return bare.count("\n", 0, offset) + 1


def _too_deep(bare: str) -> int:
    """Offset of the first bracket beyond the nesting limit (called only when there is one)."""
    depth = 0
    for m in _BRACKET.finditer(bare):
        depth += _DEPTH_STEP[m.group()]
        if depth > MAX_TOML_DEPTH:
            return m.start()
    return 0


def _too_many_tables(bare: str) -> int:
    """Offset where the tables counted by :func:`check_toml_limits` pass the limit."""
    for count, m in enumerate(_TABLE_MARK.finditer(bare), 1):
        if count > MAX_TOML_TABLES:
            return m.start()
    return 0


def read_toml_text(path: Path, error_cls: type[Exception] = ManifestError) -> str:
    """A TOML file's text, never reading more than :data:`MAX_TOML_BYTES` (a larger file raises
    ``error_cls``). Newlines are translated as ``Path.read_text`` does. Reading errors
    (FileNotFoundError, other OSError, UnicodeDecodeError) propagate for the caller to word."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_TOML_BYTES + 1)
    if len(data) > MAX_TOML_BYTES:
        raise error_cls(_limit_message(path, None, f"the file has more than the {MAX_TOML_BYTES} bytes "
                                                   f"({MAX_TOML_BYTES >> 20} MiB) allowed"))
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def parse_toml(text: str, path: Path, error_cls: type[Exception] = ManifestError) -> dict[str, Any]:
    """Parse TOML, turning a syntax error into ``path:line:column: message``.

    :func:`check_toml_limits` runs before the parser (a text found in the parse cache was parsed on
    this machine before: it is loaded from JSON, which no shape of it makes slow).
    """
    cache = parsecache.parsed_path(text)
    if cache is not None:
        data = parsecache.load(cache)
        if data is not None:
            return data
    check_toml_limits(text, path, error_cls)
    try:
        data = tomllib.loads(text)
        if cache is not None:
            parsecache.remember(cache, data)  # stored when the command succeeds: a failure writes nothing
        return data
    except (RecursionError, MemoryError) as err:  # a safety net behind check_toml_limits
        what = "stack" if isinstance(err, RecursionError) else "memory"
        raise error_cls(f"{path}: the TOML parser ran out of {what} reading this file; modelsync neither writes "
                        "nor expects such a file. Fix the file and run the command again.") from None
    except tomllib.TOMLDecodeError as err:
        text_err = str(err)
        m = _TOML_POS.match(text_err)
        if m:
            where, msg = f"{path}:{m['line']}:{m['col']}", m["msg"]
        elif text_err.endswith("(at end of document)"):
            lines = text.split("\n")
            where = f"{path}:{len(lines)}:{len(lines[-1]) + 1}"
            msg = text_err.removesuffix("(at end of document)").strip() + " at the end of the file"
        else:
            where, msg = str(path), text_err
        raise error_cls(f"{where}: invalid TOML: {msg}. Fix the file and run the command again.") from None


def format_loc(loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location as ``processors.ocrd-x[1].type``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-before[_shorthand(), ModelSpec]",):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    # Best effort: the line of the deepest string key of the location, or the processor name.
    # Each part of the pattern stays on one line: with \s (newlines too) many blank lines make it quadratic.
    for part in reversed(loc):
        if isinstance(part, str):
            pattern = re.compile(rf'^[ \t]*("?){re.escape(part)}\1[ \t]*=|^[ \t]*\[+[^\]\n]*\b{re.escape(part)}\b', re.M)
            m = pattern.search(text)
            if m:
                return text.count("\n", 0, m.start()) + 1
    return None


MAX_REPORTED_ERRORS = 20


def format_validation_error(err: ValidationError, path: Path, text: str, what: str) -> str:
    """One readable paragraph per schema problem: ``file:line: field.path: message``."""
    lines = [f"{path}: {what} does not follow the schema:"]
    errors = err.errors()
    for e in errors[:MAX_REPORTED_ERRORS]:  # each costs a search of the text: a bounded number
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        line = _line_of(text, loc)
        where = f"line {line}: " if line else ""
        lines.append(f"  {where}{format_loc(loc) or '(top level)'}: {msg}")
    if len(errors) > MAX_REPORTED_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_REPORTED_ERRORS} more problem(s)")
    return "\n".join(lines)
