"""Every environment variable and default path the tool reads, parsed in one place.

Nothing else in the package reads ``os.environ`` directly: functions take an
:class:`Environment` so tests (and library users) can pass their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_NAME = "models.toml"
LOCK_NAME = "models.lock"

# OCR-D's system location is fixed in OCR-D core; MODELSYNC_SYSTEM_DIR only exists so
# tests and chroot builds can point it elsewhere. Documented in README.
OCRD_SYSTEM_DIR = "/usr/local/share/ocrd-resources"
# The processor whose module dir is Tesseract's tessdata dir (shared by ocrd-tesserocr-*).
TESSEROCR_RECOGNIZE = "ocrd-tesserocr-recognize"
TESSEROCR_PREFIX = "ocrd-tesserocr-"


def _dir(env: dict[str, str], var: str, default: Path) -> Path:
    value = env.get(var, "")
    # The XDG spec says relative values are invalid and must be ignored.
    return Path(value) if value and os.path.isabs(value) else default


@dataclass(frozen=True)
class Environment:
    """A snapshot of the environment variables and directories the tool depends on."""

    vars: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_os(cls) -> "Environment":
        """Snapshot ``os.environ`` now."""
        return cls(dict(os.environ))

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the raw value of an environment variable."""
        return self.vars.get(name, default)

    @property
    def home(self) -> Path:
        """The user's home directory (``$HOME``)."""
        return Path(self.vars.get("HOME") or os.path.expanduser("~"))

    @property
    def xdg_data_home(self) -> Path:
        """``$XDG_DATA_HOME``, default ``~/.local/share`` (the Docker images set /usr/local/share)."""
        return _dir(self.vars, "XDG_DATA_HOME", self.home / ".local" / "share")

    @property
    def xdg_config_home(self) -> Path:
        """``$XDG_CONFIG_HOME``, default ``~/.config``."""
        return _dir(self.vars, "XDG_CONFIG_HOME", self.home / ".config")

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
        """OCR-D's ``data`` location root: ``$XDG_DATA_HOME/ocrd-resources``."""
        return self.xdg_data_home / "ocrd-resources"

    @property
    def ocrd_user_database(self) -> Path:
        """OCR-D's user resource list ``$XDG_CONFIG_HOME/ocrd/resources.yml`` (read only)."""
        return self.xdg_config_home / "ocrd" / "resources.yml"

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
        """Our cache: processor answers, staged downloads (``$MODELSYNC_CACHE_DIR``)."""
        value = self.vars.get("MODELSYNC_CACHE_DIR")
        return Path(value) if value else self.xdg_cache_home / "ocrd-modelsync"

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
