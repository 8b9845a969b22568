"""Small atomic-write helpers: unique temp name in the target directory, fsync, rename."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".modelsync-tmp-"

# Set on Ctrl-C: from then on no new temp file may appear (the cleanup must have the last word).
closing = threading.Event()


class Closing(Exception):
    """Raised instead of creating a temp file once the process is shutting down."""


def temp_owner(name: str) -> int | None:
    """The pid that created a temp name of ours, or None if ``name`` is not one."""
    if not name.startswith(TEMP_PREFIX):
        return None
    head = name[len(TEMP_PREFIX):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _safe(hint: str) -> str:
    # Names stay short and safe whatever ``hint`` holds.
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in hint)[:40]


def temp_name(directory: Path, hint: str = "", suffix: str = ".part", *, while_closing: bool = False) -> Path:
    """A unique, hidden temp path inside ``directory`` (same filesystem as the final path).

    Once Ctrl-C was seen (``closing``) only ``while_closing`` callers get one: the small bookkeeping
    writes (records, lock) that remove their own temp file whatever happens."""
    if closing.is_set() and not while_closing:
        raise Closing()
    safe = _safe(hint)
    # The pid comes first so a later run can tell whether the owner is still alive.
    return directory / f"{TEMP_PREFIX}{os.getpid()}.{secrets.token_hex(6)}.{safe}{suffix}"


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry so a rename survives a power loss (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = False, before_rename=None,
                       private: bool = False) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix.

    ``private``: readable by the owner only (0600), for copies of what may hold secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path.parent, path.name, while_closing=True)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        with open(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sweep(path)
    if durable:
        fsync_dir(path.parent)


def _sweep(path: Path) -> None:
    # Temp files for this same target left by killed writers (dead owners only).
    suffix = "." + _safe(path.name) + ".part"
    try:
        with os.scandir(path.parent) as it:
            stale = [Path(e.path) for e in it if e.name.startswith(TEMP_PREFIX) and e.name.endswith(suffix)]
    except OSError:
        return
    for p in stale:
        owner = temp_owner(p.name)
        if owner is not None and owner != os.getpid() and not _alive(owner):
            p.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str, *, durable: bool = False, before_rename=None,
                      private: bool = False) -> None:
    """Text variant of :func:`write_bytes_atomic` (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable, before_rename=before_rename, private=private)


def remove_path(path: Path) -> None:
    """Delete a file, symlink or directory tree if it exists."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def clean_temp(directory: Path, include_own: bool = False) -> int:
    """Remove temp leftovers of interrupted runs of ours in ``directory``; return how many.

    Temp files of live processes are left alone, this one's too unless ``include_own``.
    """
    n = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX):
            # Leave temp files of processes that are still running (a concurrent sync).
            owner = temp_owner(entry.name)
            if owner is not None and ((owner == os.getpid() and not include_own)
                                      or (owner != os.getpid() and _alive(owner))):
                continue
            remove_path(Path(entry.path))
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable(directory: Path) -> None:
    """Raise the InstallError of :func:`errors.filesystem_error` unless we could create files in
    ``directory`` (or, when it does not exist yet, in the nearest ancestor that does, where it would be
    made). Nothing is written: a read-only filesystem (statvfs) and missing permission (access) are
    what this tells apart before a run starts; a full disk is found on the way."""
    import errno

    from .errors import filesystem_error

    probe = Path(os.path.abspath(directory))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise filesystem_error(OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), probe, "create files in")
    try:
        read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise filesystem_error(OSError(errno.EROFS, os.strerror(errno.EROFS)), directory, "write to")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise filesystem_error(OSError(errno.EACCES, os.strerror(errno.EACCES)), directory, "write to")


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block has finished, then raise it.

    For the few milliseconds of bookkeeping that must not be cut in half (the install records and the
    lock of what was installed). Only on the main thread (where Python delivers signals), and only when
    SIGINT is handled by Python; an exception leaving the block keeps its precedence.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    except BaseException:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt
