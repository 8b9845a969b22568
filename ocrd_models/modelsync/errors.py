"""Every error type of the package. Each class carries its exit code; the CLI prints ``str(err)`` and
exits with it, and ``--json`` reports :meth:`ModelsyncError.facts`.

Messages are complete paragraphs: what went wrong, where, and what to do next. Low layers raise with
the facts (URL, HTTP status, expected and actual hash, path); the layer that knows the context (the
manifest, the lock, a registry) adds the advice (:meth:`ModelsyncError.with_hint`). Every class also
subclasses the closest stdlib type, so library users can catch them naturally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# The exit-code table, documented in README.md ("Exit codes"). Keep both in step.
EXIT_FAILURE = 1  # unexpected error, or several failures of different kinds
EXIT_USER_INPUT = 2  # bad models.toml / models.lock / command line / unknown name
EXIT_NETWORK = 3  # a download failed (HTTP error, connection, timeout)
EXIT_CHECKSUM = 4  # bytes differ from the expected SHA-256 (download or verify)
EXIT_LOCK_STALE = 5  # --locked and models.lock is missing or would change
EXIT_OFFLINE_MISSING = 6  # --offline and something must be fetched
EXIT_CHANGES_PENDING = 7  # --check and something would change
EXIT_INSTALL = 8  # filesystem trouble while installing (permissions, disk full, ...)
EXIT_UNSAFE_ARCHIVE = 9  # an archive is malformed or tries to escape its target
EXIT_UNSAFE_MODEL = 10  # a legacy model (pickle or kraken HDF5) is not a plain pyrnn model, or damaged: refused, nothing run
EXIT_MISSING_EXTRA = 11  # the command needs an optional extra (pip install 'ocrd-modelsync[legacy]')
EXIT_INTERRUPTED = 130  # SIGINT, as shells report it


class ModelsyncError(Exception):
    """Base class of every error the tool reports to a user."""

    exit_code = EXIT_FAILURE
    hint: str = ""  # advice added by a layer that knows the context, on its own line after the message

    def with_hint(self, hint: str) -> "ModelsyncError":
        """This error with ``hint`` as its advice (replacing any earlier one); returns itself, to re-raise."""
        self.hint = hint
        return self

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n{self.hint}" if self.hint else text

    def facts(self) -> dict[str, object]:
        """The error's fields (url, status, expected/actual hash, path, ...) for machine-readable output."""
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and k != "hint" and isinstance(v, (str, int, float, bool))}


class UserInputError(ModelsyncError, ValueError):
    """The user's input (file, flag, name) is wrong; nothing was changed."""

    exit_code = EXIT_USER_INPUT


class ManifestError(UserInputError):
    """models.toml cannot be read or does not follow the schema."""


class LockfileError(UserInputError):
    """models.lock cannot be read or does not follow the schema."""


class UnknownNameError(UserInputError, LookupError):
    """A processor or model name that no registry source knows."""


class LocationError(UserInputError):
    """A resource location cannot be resolved on this machine."""


class NetworkError(ModelsyncError, ConnectionError):
    """A download failed after retries. ``url`` (credentials removed) and the HTTP ``status`` when known."""

    exit_code = EXIT_NETWORK

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None):
        super().__init__(message)
        if url is not None:
            self.url = url
        if status is not None:
            self.status = status


class RegistryAuthError(NetworkError):
    """The registry refused our credentials (or wants some we do not have)."""


class ChecksumMismatch(ModelsyncError, ValueError):
    """Bytes differ from the SHA-256 the lock or the manifest expects."""

    exit_code = EXIT_CHECKSUM

    def __init__(self, what: str, expected: str, actual: str, hint: str = "", *, url: str | None = None):
        self.what, self.expected, self.actual = what, expected, actual
        if url is not None:
            self.url = url
        # The hashes on the line that says it failed (a list of failures shows that line); the hint
        # on its own line, which a list of several failures shows once.
        super().__init__(f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}")
        self.hint = hint


class ShadowedModel(ModelsyncError, FileExistsError):
    """Ours is installed as locked, but the processor finds a differing copy first and would load that."""

    exit_code = EXIT_CHECKSUM


class LockStale(ModelsyncError, RuntimeError):
    """`--locked` was given and models.lock is missing or out of date."""

    exit_code = EXIT_LOCK_STALE


class OfflineMissing(ModelsyncError, LookupError):
    """`--offline` was given and something would have to be downloaded."""

    exit_code = EXIT_OFFLINE_MISSING


class NotInRegistry(OfflineMissing):
    """--registry-only, and the registry does not hold the artifact (or it is not locked)."""


class ChangesPending(ModelsyncError, RuntimeError):
    """`--check` was given and the plan is not empty."""

    exit_code = EXIT_CHANGES_PENDING


class InstallError(ModelsyncError, OSError):
    """The filesystem refused an install step (permissions, space, ...); ``path`` and ``reason`` when known."""

    exit_code = EXIT_INSTALL


class NotEnoughSpace(InstallError):
    """A filesystem has less free space than a download (or an unpacking) needs; checked before writing."""

    def __init__(self, what: str, mount: str, needed: int, free: int):
        self.what, self.mount, self.needed, self.free = what, mount, needed, free
        super().__init__(f"not enough space for {what} on the filesystem mounted at {mount}: it needs "
                         f"{_exact_size(needed)} and has {_exact_size(free)} free. Nothing was written. Free "
                         "space there (`modelsync cache prune` frees cache entries no lock uses), or point the cache "
                         "(--cache-dir) or the location at another filesystem, then run the command again.")


def filesystem_error(err: OSError, path: "str | os.PathLike[str]", doing: str) -> InstallError:
    """An :class:`InstallError` for an OS error while ``doing`` something to ``path``.

    A full disk names the filesystem (its mount point and free bytes), not the temp file that
    happened to hit it; a read-only filesystem and a permission problem say so, with the next step.
    """
    import errno

    where = mount_point(path)
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(where)
        hint = (f"the filesystem mounted at {where} is full ({_size(free)} free). Free space there "
                "(`modelsync cache prune` frees cache entries no lock uses), or point the cache or the "
                "location at another filesystem, then run the command again.")
    elif err.errno == errno.EROFS:
        hint = (f"the filesystem mounted at {where} is read-only. Choose a writable location in models.toml, "
                "or set MODELSYNC_CACHE_DIR / MODELSYNC_STATE_DIR to a writable place.")
    elif err.errno in (errno.EACCES, errno.EPERM):
        hint = (f"permission denied for user {_user()}. Make {_parent_dir(path)} writable for that user, or "
                "choose another location (models.toml) or cache (--cache-dir).")
    else:
        hint = "check the filesystem and run the command again."
    error = InstallError(f"cannot {doing} {path}: {reason}; {hint}")
    error.path, error.reason = os.fspath(path), reason
    error.errno = err.errno  # callers tell a full disk from other trouble by it
    return error


def mount_point(path: "str | os.PathLike[str]") -> str:
    """The mount point of the filesystem ``path`` (or its nearest existing parent) is on."""
    p = os.path.abspath(os.fspath(path))
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def _parent_dir(path: "str | os.PathLike[str]") -> str:
    p = os.path.abspath(os.fspath(path))
    return p if os.path.isdir(p) else os.path.dirname(p)


def _free_bytes(mount: str) -> int | None:
    try:
        st = os.statvfs(mount)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _size(n: int | None) -> str:
    if n is None:
        return "? bytes"
    if n < 1024**2:
        return f"{n} bytes"
    return f"{n / 1024**2:.1f} MiB" if n < 1024**3 else f"{n / 1024**3:.1f} GiB"


def _exact_size(n: int) -> str:
    """A size for a person, with the exact byte count beside it when it was rounded."""
    shown = _size(n)
    return shown if shown.endswith(" bytes") else f"{shown} ({n} bytes)"


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid()) if hasattr(os, "geteuid") else "?"


class UnsafeArchive(ModelsyncError, ValueError):
    """An archive is malformed, of an unknown format, or has a member escaping its target."""

    exit_code = EXIT_UNSAFE_ARCHIVE


class UnsafeModel(ModelsyncError, ValueError):
    """A legacy model (a pickle, or kraken's HDF5) holds something other than a pyrnn network's data, or is
    damaged; a pickle is never executed, an HDF5 file is read in a limited child process."""

    exit_code = EXIT_UNSAFE_MODEL


class MissingExtra(ModelsyncError, ImportError):
    """An optional dependency group is not installed."""

    exit_code = EXIT_MISSING_EXTRA


@dataclass(frozen=True)
class Failure:
    """One resource that failed during a multi-resource operation."""

    processor: str
    name: str
    error: ModelsyncError


class SyncFailed(ModelsyncError, RuntimeError):
    """Some resources failed; all others were installed. Carries every failure."""

    def __init__(self, failures: list[Failure]):
        self.failures = failures
        codes = {f.error.exit_code for f in failures}
        # One kind of failure keeps its specific code; a mix is reported as 1.
        self.exit_code = codes.pop() if len(codes) == 1 else EXIT_FAILURE
        lines = [f"{len(failures)} resource(s) failed; everything else succeeded:"]
        hints: list[str] = []  # the same advice for several failures is given once, after the list
        for f in failures:
            first, *rest = str(f.error).splitlines() or [type(f.error).__name__]
            if isinstance(f.error, ChecksumMismatch):  # the line names the resource already
                what = f.error.what
                extra = what[len(f"{f.processor} {f.name}"):] if what.startswith(f"{f.processor} {f.name}") \
                    else f" ({what})"
                first = f"checksum mismatch{extra}: expected sha256 {f.error.expected}, got {f.error.actual}"
            lines.append(f"  {f.processor} {f.name}: {first}")
            advice = "\n".join(rest)
            if advice and advice not in hints:
                hints.append(advice)
        lines.extend(hints)
        lines.append("Fix the cause and run the command again; finished resources are not fetched twice.")
        super().__init__("\n".join(lines))

    def facts(self) -> dict[str, object]:
        """Every failure's resource, message, exit code and fields."""
        return {"failures": [{"processor": f.processor, "name": f.name, "error": str(f.error),
                              "exit_code": f.error.exit_code, "kind": type(f.error).__name__, **f.error.facts()}
                             for f in self.failures]}


class UnsupportedProxy(ValueError):
    """A proxy URL of a scheme urllib3 cannot speak (socks needs an extra we do not install)."""


class Cancelled(Exception):
    """Raised inside workers once the user interrupted the run (never reaches a user)."""


class Closing(Exception):
    """Raised instead of creating a temp file once the process is shutting down (never reaches a user)."""
