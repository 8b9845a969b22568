"""One run's configuration: every setting resolved once, in one precedence.

For each setting the first of these that gives a value wins:

1. the command-line flag (:class:`Flags`; the Python API passes the same object);
2. the environment variable (read through :class:`~.config.Environment`, the only reader);
3. models.toml's ``[settings]``;
4. the built-in default.

Mirrors are the exception that merges: ``[settings.mirrors]``, then ``$MODELSYNC_MIRRORS``, then
``--mirror``, a later prefix replacing an earlier one. The network configuration (retries,
timeouts, allowed plain-HTTP hosts, credentials) is built here once and shared by downloads and
registry calls. :class:`~.project.Project` receives the resolved :class:`RunConfig` and reads no
variable, flag or setting itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from .config import Environment, parse_mirror_pairs
from .errors import UserInputError
from .install.credentials import Credentials
from .install.fetch import NetConfig
from .install.unpack import Limits
from .spec.manifest import Settings


@dataclass(frozen=True)
class Flags:
    """What the command line (or an API caller) chose; None: not given, so a lower rank decides."""

    mirrors: tuple[str, ...] = ()  # --mirror PREFIX=REPLACEMENT
    parallel: int | None = None
    cache_dir: Path | None = None
    link_mode: str | None = None
    offline: bool | None = None
    frozen: bool = False  # install exactly the lock (no environment variable, no setting)
    convert: bool | None = None  # False: --disable-autoconversion
    registry: str | None = None
    registry_only: bool | None = None


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of one run (see the module docstring for the precedence)."""

    settings: Settings  # models.toml's [settings], kept for what only it can say (locations, convert_pyrnn)
    cache_dir: Path
    mirrors: dict[str, str]
    parallel: int
    link_mode: str
    offline: bool
    frozen: bool
    convert: bool  # False: no pyrnn conversion this run, whatever models.toml says
    registry: str | None
    registry_only: bool
    limits: Limits
    env: Environment = field(repr=False)  # the variables may hold secrets: never in a repr

    @cached_property
    def net(self) -> NetConfig:
        """Retries, timeouts, plain-HTTP hosts and credentials: built on first use (only commands that go
        to the network read credential files), then shared by every download and registry call."""
        allow_http = frozenset(self.settings.allow_http)
        values = {**self.settings.network.model_dump(), **self.env.network_overrides()}
        values["retries"] = int(values["retries"])
        values["segments"] = max(1, min(32, int(values["segments"])))
        return NetConfig(**values, allow_http=allow_http, credentials=Credentials.load(self.env, allow_http))

    @classmethod
    def resolve(cls, flags: Flags, env: Environment, settings: Settings, project_dir: Path) -> "RunConfig":
        """Resolve every setting once. Raises UserInputError for a malformed value (a mirror, a number in
        the environment, --registry-only without a registry)."""
        registry = flags.registry or env.registry or settings.registry
        registry_only = _first(flags.registry_only, env.registry_only, settings.registry_only)
        if registry_only and not registry:
            raise UserInputError("--registry-only needs a registry: --registry HOST/REPOSITORY, "
                                 "$MODELSYNC_REGISTRY or [settings] registry")
        return cls(
            settings=settings,
            cache_dir=resolve_cache_dir(flags.cache_dir, env, lambda: settings, project_dir),
            mirrors={**settings.mirrors, **env.mirrors, **parse_mirror_pairs(list(flags.mirrors))},
            parallel=flags.parallel or settings.parallel,
            link_mode=flags.link_mode or settings.link_mode,
            offline=bool(_first(flags.offline, env.offline, False)),
            frozen=flags.frozen,
            convert=bool(_first(flags.convert, None if env.disable_autoconversion is None
                                else not env.disable_autoconversion, True)),
            registry=registry,
            registry_only=bool(registry_only),
            limits=Limits(settings.max_unpacked_bytes, settings.max_archive_members),
            env=env,
        )


def _first(*values):
    return next((v for v in values if v is not None), None)


def resolve_cache_dir(flag: Path | None, env: Environment, settings: Callable[[], Settings | None],
                      project_dir: Path) -> Path:
    """--cache-dir > $MODELSYNC_CACHE_DIR > [settings] cache_dir (relative to the project) > XDG.
    ``settings`` is called only when the flag and the variable are unset (the ``cache`` commands need no
    valid models.toml otherwise); it may return None (no models.toml)."""
    if flag is not None:
        return flag
    if env.cache_dir_override is not None:
        return env.cache_dir_override
    setting = settings()
    if setting is not None and setting.cache_dir:
        path = Path(setting.cache_dir).expanduser()
        return path if path.is_absolute() else project_dir / path
    return env.cache_dir
