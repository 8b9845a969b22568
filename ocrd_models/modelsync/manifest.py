"""``models.toml``: the project's declaration of wanted models, validated with pydantic.

Loading never changes anything on disk. Errors name the file and, for TOML syntax,
the line and column; for schema errors, the field path and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from itertools import accumulate
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from .errors import ManifestError

LOCATION_KINDS = ("cwd", "data", "system", "module")
URL_SCHEMES = ("https", "http", "file")
_SHA256 = re.compile(r"[0-9a-f]{64}")  # used with fullmatch: "$" would accept a trailing newline
_EXE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEFAULT_PARALLEL = 4
_CONTROL = re.compile(r"[\x00-\x1f]")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def check_resource_name(name: str) -> str:
    """Refuse names that could escape a location directory (``../x``, ``/x``, NUL, ...)."""
    if not name or name.strip() != name:
        raise ValueError("a resource name must be non-empty and have no leading/trailing spaces")
    if "\x00" in name or "/" in name or "\\" in name:
        raise ValueError(f"resource name {name!r} must not contain '/', '\\' or NUL: it names one entry of a directory")
    if name in (".", ".."):
        raise ValueError(f"resource name {name!r} is not allowed")
    if _CONTROL.search(name):
        raise ValueError(f"resource name {name!r} contains control characters")
    if name.split(".", 1)[0].upper() in _RESERVED:
        raise ValueError(f"resource name {name!r} is a reserved device name on Windows (shared drives break)")
    return name


def check_location(value: str) -> str:
    """A location is a kind (cwd, data, system, module) or a directory path."""
    if value in LOCATION_KINDS:
        return value
    if _CONTROL.search(value):
        raise ValueError(f"location {value!r} contains control characters")
    if "/" in value or value.startswith(("~", ".")):
        return value
    raise ValueError(
        f"unknown location {value!r}; allowed: {', '.join(LOCATION_KINDS)}, "
        "or a directory path (absolute, ./relative or ~/...)"
    )


def check_url(value: str) -> str:
    """An http(s) or file:// URL, or a local path (relative to models.toml)."""
    if not value:
        raise ValueError("url must not be empty")
    if _CONTROL.search(value):
        raise ValueError(f"url {value!r} contains control characters")
    scheme, sep, _ = value.partition("://")
    if sep and scheme.lower() not in URL_SCHEMES:
        raise ValueError(f"url scheme {scheme!r} is not supported; allowed: {', '.join(URL_SCHEMES)}, or a local path")
    if sep and scheme.lower() in ("http", "https"):
        _check_web_url(value)
    return value


def _check_web_url(value: str) -> None:
    """An http(s) URL must name a host and, if any, a port 1-65535 (found now, not at download time)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as err:
        raise ValueError(f"url {value!r} is malformed ({err})") from None
    raw_port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
    if not parts.hostname:
        raise ValueError(f"url {value!r} is malformed (it names no host)")
    if port == 0 or (raw_port and not raw_port.isascii()) or " " in parts.netloc:
        raise ValueError(f"url {value!r} is malformed (an invalid host or port)")


def check_processor_name(exe: str) -> str:
    """A processor executable name: one path component, never ``..`` (it names a directory below a location)."""
    if not _EXE.fullmatch(exe):  # fullmatch: ``$`` alone would accept a trailing newline
        raise ValueError(f"{exe!r} is not a processor executable name (e.g. ocrd-tesserocr-recognize)")
    return exe


def check_path_in_archive(value: str) -> str:
    """A relative path inside an archive: not absolute, no ``..``, no control characters."""
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or _CONTROL.search(value):
        raise ValueError(f"path_in_archive {value!r} must be a relative path inside the archive")
    return value


def _shorthand(value: Any) -> Any:
    # "deu.traineddata" is shorthand for { name = "deu.traineddata" }.
    return {"name": value} if isinstance(value, str) else value


class ModelSpec(BaseModel):
    """One wanted model: a registry name, or an inline entry when ``url`` is given."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str
    url: str | None = None
    sha256: str | None = None
    type: Literal["file", "archive", "directory"] | None = None
    path_in_archive: str | None = None
    location: str | None = None
    description: str | None = None
    convert: bool | None = None  # pyrnn -> kraken HDF5 (None: follow [settings] convert_pyrnn)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return v if v == "*" else check_resource_name(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.lower().removeprefix("sha256:")
        if not _SHA256.fullmatch(v):
            raise ValueError("sha256 must be 64 hexadecimal digits")
        return v

    @field_validator("location")
    @classmethod
    def _loc(cls, v: str | None) -> str | None:
        return None if v is None else check_location(v)

    @field_validator("path_in_archive")
    @classmethod
    def _pia(cls, v: str | None) -> str | None:
        return None if v is None else check_path_in_archive(v)

    @property
    def is_wildcard(self) -> bool:
        """True for ``"*"`` (all known resources of the processor)."""
        return self.name == "*"

    def normalized(self) -> dict[str, Any]:
        """Fields that affect the result, without unset ones (for the manifest hash)."""
        return {k: v for k, v in self.model_dump().items() if v is not None and k != "description"}


ModelItem = Annotated[ModelSpec, BeforeValidator(_shorthand)]


class NetworkSettings(BaseModel):
    """``[settings.network]``: retries and timeouts (environment variables override them)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    retries: int = Field(default=4, ge=0, le=100)
    backoff: float = Field(default=0.5, ge=0, le=600)
    max_retry_time: float = Field(default=300.0, ge=0)
    connect_timeout: float = Field(default=15.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)


class Settings(BaseModel):
    """``[settings]``: where and how to install."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    location: str | None = None
    locations: dict[str, str] = Field(default_factory=dict)
    parallel: int = Field(default=DEFAULT_PARALLEL, ge=1, le=64)
    mirrors: dict[str, str] = Field(default_factory=dict)
    cache_dir: str | None = None
    link_mode: Literal["auto", "hardlink", "copy"] = "auto"
    allow_http: list[str] = Field(default_factory=list)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    max_unpacked_bytes: int = Field(default=64 * 1024**3, ge=1)
    max_archive_members: int = Field(default=200_000, ge=1)
    convert_pyrnn: bool = False  # convert *.pyrnn[.gz|.bz2] models to kraken's HDF5 during sync
    registry: str | None = None  # OCI registry (host/repository) to fetch locked artifacts from first
    registry_only: bool = False  # never fall back to the origin URLs

    @field_validator("location")
    @classmethod
    def _loc(cls, v: str | None) -> str | None:
        return None if v is None else check_location(v)

    @field_validator("locations")
    @classmethod
    def _locs(cls, v: dict[str, str]) -> dict[str, str]:
        for exe, loc in v.items():
            try:
                check_location(loc)
            except ValueError as err:
                raise ValueError(f"{exe}: {err}") from None
        return v


class Manifest(BaseModel):
    """The whole ``models.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    settings: Settings = Field(default_factory=Settings)
    processors: dict[str, list[ModelItem]] = Field(default_factory=dict)

    @field_validator("processors")
    @classmethod
    def _procs(cls, v: dict[str, list[ModelSpec]]) -> dict[str, list[ModelSpec]]:
        for exe, models in v.items():
            check_processor_name(exe)
            seen: set[str] = set()
            for m in models:
                if m.name in seen:
                    raise ValueError(f"{exe}: model {m.name!r} is declared twice")
                seen.add(m.name)
                if m.is_wildcard and (m.url or m.sha256 or m.type or m.path_in_archive):
                    raise ValueError(f"{exe}: '*' stands for all known resources and takes no url, sha256, type or path_in_archive")
        return v

    def declared_locations(self) -> frozenset[str]:
        """Every location models.toml names (models' ``location``, ``[settings] location`` and
        ``[settings.locations]``): the only machine paths a lock may install into."""
        s = self.settings
        found = {m.location for models in self.processors.values() for m in models if m.location}
        found.update(s.locations.values())
        if s.location:
            found.add(s.location)
        return frozenset(found)

    def normalized_hash(self) -> str:
        """SHA-256 of the normalized declaration: what it asks for, not how it is written.

        Order of models, comments, formatting, ``parallel`` and ``mirrors`` do not count;
        processor names, model specs and locations do.
        """
        norm = {
            "processors": {
                exe: sorted((m.normalized() for m in models), key=lambda d: json.dumps(d, sort_keys=True))
                for exe, models in sorted(self.processors.items())
            },
            "location": self.settings.location,
            "locations": dict(sorted(self.settings.locations.items())),
        }
        if self.settings.convert_pyrnn:  # only when set: locks written before the setting existed stay valid
            norm["convert_pyrnn"] = True
        blob = json.dumps(norm, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


_TOML_POS = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)\s*$")


# Parsed TOML, cached as JSON keyed by the text's SHA-256 (set by the CLI; None = no cache).
# tomllib is pure Python: a 10 000-model manifest and its lock take seconds to parse, JSON milliseconds.
PARSE_CACHE_DIR: Path | None = None
_PARSE_CACHE_MIN = 64 * 1024  # small files parse faster than a cache lookup


# -- limits checked before the TOML parser sees a file ------------------------------------------
# tomllib is pure Python and trusts its input's shape: a dotted key of 60 000 parts took 21 GB and
# 83 s (quadratic), arrays nested 500 deep raised RecursionError, 2 million table headers 1.8 GB.
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
    cache = None
    if PARSE_CACHE_DIR is not None and len(text) >= _PARSE_CACHE_MIN:
        key = hashlib.sha256(text.encode("utf-8")).hexdigest()
        cache = PARSE_CACHE_DIR / "parsed" / f"{key}.json"
        try:
            return json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    check_toml_limits(text, path, error_cls)
    try:
        data = tomllib.loads(text)
        if cache is not None:
            remember_validated(cache, data)  # stored when the command succeeds: a failure writes nothing
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


def _store_parsed(cache: Path, data: dict[str, Any]) -> None:
    from .atomic import write_text_atomic

    try:
        # Only JSON-exact data is cached (TOML dates would not round-trip): compare after a trip.
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if json.loads(text) == data:
            write_text_atomic(cache, text, private=True)  # a copy of models.toml: URLs may carry tokens
    except (OSError, TypeError, ValueError):
        pass


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
    # Each part of the pattern stays on one line: with \s (newlines too) 40 000 blank lines took 44 s.
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


def load_manifest(path: Path) -> Manifest:
    """Read and validate ``models.toml``; raise :class:`ManifestError` with locations."""
    try:
        text = read_toml_text(path, ManifestError)
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist. Create one with `modelsync init`, "
                            "or pass the manifest with --manifest.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"cannot read {path}: {err}") from None
    return parse_manifest(text, path)


def parse_manifest(text: str, path: Path) -> Manifest:
    """Validate manifest text (``path`` is used in messages only).

    A text validated before (same bytes, same schema code) is rebuilt from its cached normalized
    form without running the validators: building pydantic's validators costs more than the rest
    of a no-op `sync`.
    """
    cached = validated_marker(text, (__file__,))
    if cached is not None:
        try:
            return _construct(json.loads(cached.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    data = parse_toml(text, path)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError(format_validation_error(err, path, text, "models.toml")) from None
    if cached is not None:
        remember_validated(cached, manifest.model_dump(mode="json"))
    return manifest


_PENDING: dict[Path, dict[str, Any]] = {}


def discard_validated() -> None:
    """Forget the notes of :func:`remember_validated` (a command failed: nothing of it is stored)."""
    _PENDING.clear()


def flush_validated() -> None:
    """Store what a command that succeeded parsed (large TOML texts) and validated (manifests, locks)."""
    while _PENDING:
        path, data = _PENDING.popitem()
        _store_parsed(path, data)


def remember_validated(marker: Path, data: dict[str, Any]) -> None:
    """Note that a text passed validation; written only once the command succeeds (flush_validated),
    so a failing command changes nothing on disk."""
    _PENDING[marker] = data


def validated_marker(text: str, checkers: tuple[str, ...], min_size: int = 0) -> Path | None:
    """Where the cache notes that ``text`` passed the checks of the modules at ``checkers`` (None: no
    cache, or a text below ``min_size``, checked faster than looked up). The checking code is part of
    the key: a changed schema never trusts a stale verdict."""
    if PARSE_CACHE_DIR is None or len(text) < min_size:
        return None
    h = hashlib.sha256()
    for checker in checkers:
        h.update(Path(checker).read_bytes())
    h.update(text.encode("utf-8"))
    return PARSE_CACHE_DIR / "validated" / f"{h.hexdigest()}.json"


def _rebuild(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """``cls.model_construct(**values)`` for ``values`` that hold exactly the model's fields (its own
    ``model_dump``): what model_construct ends with, without its per-field alias and default handling,
    which took most of a 10 000-model plan's manifest load."""
    if values.keys() != cls.__pydantic_fields__.keys() or cls.__pydantic_post_init__:
        return cls.model_construct(**values)
    m = cls.__new__(cls)
    object.__setattr__(m, "__dict__", values)
    object.__setattr__(m, "__pydantic_fields_set__", set(values))
    object.__setattr__(m, "__pydantic_extra__", None)
    object.__setattr__(m, "__pydantic_private__", None)
    return m


def _construct(d: dict[str, Any]) -> Manifest:
    """A Manifest from its own ``model_dump`` (already valid: no validators run)."""
    s = dict(d["settings"])
    s["network"] = NetworkSettings.model_construct(**s["network"])
    processors = {exe: [_rebuild(ModelSpec, spec) for spec in specs] for exe, specs in d["processors"].items()}
    return Manifest.model_construct(settings=Settings.model_construct(**s), processors=processors)
