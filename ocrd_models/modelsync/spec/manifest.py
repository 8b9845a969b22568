"""``models.toml``: the project's declaration of wanted models, validated with pydantic.

Loading never changes anything on disk. Errors name the file and, for TOML syntax,
the line and column; for schema errors, the field path and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from ..errors import ManifestError
from . import parsecache
from .toml import format_validation_error, parse_toml, read_toml_text

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
    keep_partial_days: float = Field(default=7.0, ge=0)  # how long an interrupted download is resumed
    segments: int = Field(default=8, ge=1, le=32)  # connections one large file is fetched over at once
    segment_from_mib: float = Field(default=64.0, gt=0)  # files at least this large are fetched in segments
    connections_per_host: int = Field(default=8, ge=1, le=64)  # to one host, across all downloads of a run
    min_speed: int = Field(default=1024, ge=0)  # bytes/s over read_timeout: a slower connection is replaced


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
    cached = parsecache.marker(text, (__file__,))
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
        parsecache.remember(cached, manifest.model_dump(mode="json"))
    return manifest


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
