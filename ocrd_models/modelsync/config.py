"""Every environment variable and default path the tool reads, parsed in one place.

Nothing else in the package reads ``os.environ`` for its own settings, and no other module names a
``MODELSYNC_*`` variable except in messages: functions take an :class:`Environment` (a snapshot)
so tests and library users can pass their own. How a variable ranks against a command-line flag
and ``[settings]`` is decided once per run by :mod:`.runconfig`. (Proxy and CA variables are read
where connections are made, by :mod:`.install.transport`, as every HTTP client reads them.)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

MANIFEST_NAME = "models.toml"
LOCK_NAME = "models.lock"

# OCR-D's system location is fixed in OCR-D core; MODELSYNC_SYSTEM_DIR only exists so
# tests and chroot builds can point it elsewhere. Documented in README.
OCRD_SYSTEM_DIR = "/usr/local/share/ocrd-resources"
# The processor whose module dir is Tesseract's tessdata dir (shared by ocrd-tesserocr-*).
TESSEROCR_RECOGNIZE = "ocrd-tesserocr-recognize"
TESSEROCR_PREFIX = "ocrd-tesserocr-"


# [settings.network] fields and the variables that override them.
NETWORK_VARIABLES = {"retries": "MODELSYNC_RETRIES", "backoff": "MODELSYNC_BACKOFF",
                     "max_retry_time": "MODELSYNC_RETRY_MAX_TIME", "connect_timeout": "MODELSYNC_CONNECT_TIMEOUT",
                     "read_timeout": "MODELSYNC_READ_TIMEOUT", "segments": "MODELSYNC_SEGMENTS"}

log = logging.getLogger(__name__)
_reported: set[str] = set()


def report_once(logger: logging.Logger, message: str) -> None:
    """Log a warning the first time this process meets it (several registries or lookups may meet
    the same problem in one command; it is told once). The CLI renders the logger's warnings."""
    if message not in _reported:
        _reported.add(message)
        logger.warning("%s", message)


def _dir(env: dict[str, str], var: str, default: Path) -> Path:
    value = env.get(var, "")
    # The XDG spec says relative values are invalid and must be ignored (our own directories).
    return Path(value) if value and os.path.isabs(value) else default


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the current directory was removed: resolved again when a relative value needs it
        return None


@dataclass(frozen=True)
class Environment:
    """A snapshot of the environment variables and directories the tool depends on."""

    vars: dict[str, str] = field(default_factory=dict)
    # The directory a relative $XDG_DATA_HOME/$XDG_CONFIG_HOME is taken against, as OCR-D does
    # (None: the process's current directory when it is needed).
    cwd: str | None = None

    @classmethod
    def from_os(cls) -> "Environment":
        """Snapshot ``os.environ`` and the current directory now."""
        return cls(dict(os.environ), _getcwd())

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the raw value of an environment variable."""
        return self.vars.get(name, default)

    @property
    def home(self) -> Path:
        """The user's home directory (``$HOME``)."""
        return Path(self.vars.get("HOME") or os.path.expanduser("~"))

    @property
    def xdg_data_home(self) -> Path:
        """``$XDG_DATA_HOME`` per the XDG spec, for our own files (converted models); default
        ``~/.local/share``. OCR-D's ``data`` location uses :attr:`ocrd_xdg_data_home`."""
        return _dir(self.vars, "XDG_DATA_HOME", self.home / ".local" / "share")

    @property
    def xdg_config_home(self) -> Path:
        """``$XDG_CONFIG_HOME`` per the XDG spec, for our own files (credentials.toml); default
        ``~/.config``. OCR-D's user database uses :attr:`ocrd_xdg_config_home`."""
        return _dir(self.vars, "XDG_CONFIG_HOME", self.home / ".config")

    @cached_property  # computed (and warned about) once per snapshot
    def ocrd_xdg_data_home(self) -> Path:
        """``$XDG_DATA_HOME`` as OCR-D core reads it (``ocrd_utils.config``): see :meth:`_ocrd_dir`."""
        return self._ocrd_dir("XDG_DATA_HOME", ".local/share")

    @cached_property
    def ocrd_xdg_config_home(self) -> Path:
        """``$XDG_CONFIG_HOME`` as OCR-D core reads it (``ocrd_utils.config``): see :meth:`_ocrd_dir`."""
        return self._ocrd_dir("XDG_CONFIG_HOME", ".config")

    def _ocrd_dir(self, var: str, default: str) -> Path:
        """OCR-D core's reading (ocrd_utils/config.py): any value that is set is ``Path(value)``:
        relative to the current directory, an empty value *is* the current directory, ``~`` is a
        directory name (never expanded). Unset: ``Path($HOME, default)``, where $HOME is also taken
        as given (unset: the account's home). Relative results are made absolute here (against the
        directory `ocrd` run next to us would use) and warned about, because a processor takes them
        against the directory *it* runs in."""
        if var in self.vars:
            value, shown = self.vars[var], var
            path = Path(value)
        else:
            value, shown = self.vars.get("HOME"), "HOME"
            if value is None:
                home = Path(os.path.expanduser("~"))
            else:
                home = Path(value)
                if not (Path(self._here()) / home).is_dir():  # OCR-D's validator, before it builds the default
                    report_once(log, f"$HOME={value!r} is not a directory: OCR-D core refuses to start while "
                                     f"${var} is unset (\"'HOME' set to invalid value\"). Set ${var} or $HOME")
            path = home / default
        if path.is_absolute():
            return path
        here = self._here()
        absolute = Path(here) / path
        what = "empty" if not value else "a relative path" + ("; OCR-D does not expand ~" if "~" in value else "")
        report_once(log, f"${shown}={value!r} is {what}: OCR-D core takes it against the directory each OCR-D "
                         f"command runs in, so it finds what modelsync puts in {absolute} only when run in "
                         f"{here}. Set ${shown} to an absolute path")
        return absolute

    def _here(self) -> str:
        """The directory relative OCR-D paths are taken against (the snapshot's, else the process's)."""
        return self.cwd or os.getcwd()

    @property
    def xdg_cache_home(self) -> Path:
        """``$XDG_CACHE_HOME``, default ``~/.cache``."""
        return _dir(self.vars, "XDG_CACHE_HOME", self.home / ".cache")

    @property
    def xdg_state_home(self) -> Path:
        """``$XDG_STATE_HOME``, default ``~/.local/state``."""
        return _dir(self.vars, "XDG_STATE_HOME", self.home / ".local" / "state")

    @property
    def ocrd_system_dir(self) -> Path:
        """OCR-D's ``system`` location root (``/usr/local/share/ocrd-resources``)."""
        return Path(self.vars.get("MODELSYNC_SYSTEM_DIR") or OCRD_SYSTEM_DIR)

    @property
    def ocrd_data_dir(self) -> Path:
        """OCR-D's ``data`` location root: ``$XDG_DATA_HOME/ocrd-resources``, as OCR-D reads it."""
        return self.ocrd_xdg_data_home / "ocrd-resources"

    @property
    def ocrd_user_database(self) -> Path:
        """OCR-D's user resource list ``$XDG_CONFIG_HOME/ocrd/resources.yml`` (read only), as OCR-D
        reads the variable."""
        return self.ocrd_xdg_config_home / "ocrd" / "resources.yml"

    @property
    def tessdata_prefix(self) -> Path | None:
        """``$TESSDATA_PREFIX``: where Tesseract (and so ocrd-tesserocr-*) reads models."""
        value = self.vars.get("TESSDATA_PREFIX")
        return Path(value) if value else None

    @property
    def converted_dir(self) -> Path:
        """Our converted legacy models: ``$XDG_DATA_HOME/ocrd-modelsync/converted``."""
        return self.xdg_data_home / "ocrd-modelsync" / "converted"

    @property
    def cache_dir(self) -> Path:
        """Our cache: processor answers, staged downloads (``$MODELSYNC_CACHE_DIR``, else XDG)."""
        return self.cache_dir_override or self.xdg_cache_home / "ocrd-modelsync"

    @property
    def state_dir(self) -> Path:
        """Where install records live (``$MODELSYNC_STATE_DIR``, default XDG state)."""
        value = self.vars.get("MODELSYNC_STATE_DIR")
        return Path(value) if value else self.xdg_state_home / "ocrd-modelsync"

    @property
    def path(self) -> str:
        """``$PATH``, to find processor executables."""
        return self.vars.get("PATH", os.defpath)

    @property
    def mirrors(self) -> dict[str, str]:
        """``$MODELSYNC_MIRRORS``: ``PREFIX=REPLACEMENT`` pairs separated by whitespace."""
        return parse_mirror_pairs((self.vars.get("MODELSYNC_MIRRORS") or "").split())

    @property
    def cache_dir_override(self) -> Path | None:
        """``$MODELSYNC_CACHE_DIR`` if set (it ranks above ``[settings] cache_dir``)."""
        value = self.vars.get("MODELSYNC_CACHE_DIR")
        return Path(value) if value else None

    @property
    def manifest(self) -> Path | None:
        """``$MODELSYNC_MANIFEST``: models.toml to use when ``--manifest`` is not given."""
        value = self.vars.get("MODELSYNC_MANIFEST")
        return Path(value) if value else None

    @property
    def tokens(self) -> list[tuple[str, str]]:
        """``$MODELSYNC_TOKENS``: (``host[:port]``, token) pairs; words without ``=`` are skipped."""
        pairs = []
        for pair in (self.vars.get("MODELSYNC_TOKENS") or "").split():
            host, sep, token = pair.partition("=")
            if sep and host and token:
                pairs.append((host, token))
        return pairs

    @property
    def registry(self) -> str | None:
        """``$MODELSYNC_REGISTRY``: the OCI registry (``HOST/REPOSITORY``) locked artifacts come from first."""
        return self.vars.get("MODELSYNC_REGISTRY") or None

    @property
    def registry_login(self) -> tuple[str, str] | None:
        """``$MODELSYNC_REGISTRY_USERNAME`` / ``_PASSWORD`` (None without a user name)."""
        user = self.vars.get("MODELSYNC_REGISTRY_USERNAME")
        return (user, self.vars.get("MODELSYNC_REGISTRY_PASSWORD") or "") if user else None

    @property
    def registry_realms(self) -> list[str]:
        """``$MODELSYNC_REGISTRY_REALMS``: token services (``host[:port]``) that get the registry's login."""
        return (self.vars.get("MODELSYNC_REGISTRY_REALMS") or "").split()

    def flag(self, name: str) -> bool | None:
        """A boolean variable (``1``/``true``/``yes``/``on`` and ``0``/``false``/``no``/``off``, any case); None
        when unset or empty. Anything else is a user error, not a silent no."""
        value = (self.vars.get(name) or "").strip().lower()
        if not value:
            return None
        if value in ("1", "true", "yes", "on", "y", "t"):
            return True
        if value in ("0", "false", "no", "off", "n", "f"):
            return False
        from .errors import UserInputError

        raise UserInputError(f"${name}={self.vars[name]!r} is not a yes/no value: use 1 or 0 (true/false)")

    @property
    def registry_only(self) -> bool | None:
        """``$MODELSYNC_REGISTRY_ONLY``: never fetch from origins (None: unset)."""
        return self.flag("MODELSYNC_REGISTRY_ONLY")

    @property
    def offline(self) -> bool | None:
        """``$MODELSYNC_OFFLINE``: no network at all (None: unset)."""
        return self.flag("MODELSYNC_OFFLINE")

    @property
    def disable_autoconversion(self) -> bool | None:
        """``$MODELSYNC_DISABLE_AUTOCONVERSION``: no pyrnn conversion this run (None: unset)."""
        return self.flag("MODELSYNC_DISABLE_AUTOCONVERSION")

    @property
    def debug(self) -> bool:
        """``$MODELSYNC_DEBUG``: show the traceback of an unexpected error."""
        return bool(self.vars.get("MODELSYNC_DEBUG"))

    def network_overrides(self) -> dict[str, float]:
        """``$MODELSYNC_RETRIES``, ``_BACKOFF``, ``_RETRY_MAX_TIME``, ``_CONNECT_TIMEOUT``, ``_READ_TIMEOUT``,
        ``_SEGMENTS`` that are set, by the name of the ``[settings.network]`` field they override."""
        out = {}
        for field_name, var in NETWORK_VARIABLES.items():
            value = self.number(var)
            if value is not None:
                out[field_name] = value
        return out

    @property
    def is_ci(self) -> bool:
        """True on CI runners (``CI`` set to anything but empty/false/0)."""
        return (self.vars.get("CI") or "").lower() not in ("", "0", "false", "no")

    def number(self, name: str) -> float | None:
        """A numeric environment variable, or None if unset; garbage is a user error."""
        value = self.vars.get(name)
        if value is None or value == "":
            return None
        try:
            return float(value)
        except ValueError:
            from .errors import UserInputError

            raise UserInputError(f"${name}={value!r} is not a number") from None

    def processor_path_var(self, processor: str) -> list[Path]:
        """Directories of ``$OCRD_FOO_PATH`` for processor ``ocrd-foo`` (OCR-D's naming rule)."""
        var = processor.upper().replace("-", "_") + "_PATH"
        return [Path(p) for p in (self.vars.get(var) or "").split(":") if p]


def parse_mirror_pairs(pairs: list[str]) -> dict[str, str]:
    """Parse ``PREFIX=REPLACEMENT`` strings (flag or env form) into a mapping."""
    from .errors import UserInputError

    result: dict[str, str] = {}
    for pair in pairs:
        prefix, sep, replacement = pair.partition("=")
        if not sep or not prefix or not replacement:
            raise UserInputError(
                f"mirror {pair!r} is not of the form PREFIX=REPLACEMENT, "
                "e.g. https://github.com/=https://proxy.example.org/github/"
            )
        result[prefix] = replacement
    return result


def failpoint_spec() -> str:
    """``$MODELSYNC_FAILPOINTS`` of this process (crash tests only; see :mod:`.failpoints`)."""
    return os.environ.get("MODELSYNC_FAILPOINTS") or ""
