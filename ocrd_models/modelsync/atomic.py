"""Small atomic-write helpers: unique temp name in the target directory, fsync, rename."""

from __future__ import annotations

import errno
import os
import secrets
import signal
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import Closing

TEMP_PREFIX = ".modelsync-tmp-"

# Set on Ctrl-C: from then on no new temp file may appear (the cleanup must have the last word).
closing = threading.Event()


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
        if owner is not None and owner != os.getpid() and not pid_alive(owner):
            p.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str, *, durable: bool = False, before_rename=None,
                      private: bool = False) -> None:
    """Text variant of :func:`write_bytes_atomic` (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable, before_rename=before_rename, private=private)


def remove_path(path: Path) -> None:
    """Delete a file, symbolic link or directory tree if it exists; a link is removed, never followed.

    A tree of any depth goes: the walk is a loop holding one directory open at a time (Python 3.11's
    ``shutil.rmtree`` recursed once per level, and a tree 1 000 directories deep raised RecursionError).
    Only a real directory that we could not empty otherwise is made ``u+rwx`` first, never through a link.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink(path)
        return
    _owner_rwx(path, st)
    fd = _open_dir(path)
    if fd is None:
        return
    try:
        _empty_tree(fd)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


# Directories are opened without following a link at the last component (parents were checked already).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _unlink(name, dir_fd: int | None = None) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _open_dir(name, dir_fd: int | None = None) -> int | None:
    """An fd of the directory ``name`` (never of what a link there points to); None if it is gone."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _owner_rwx(name, st: os.stat_result, dir_fd: int | None = None) -> None:
    """Give the owner rwx on the real directory ``name`` (lstat ``st``) so it can be listed and emptied.

    Only when it lacks them (a read-only directory copied from a ``type = "directory"`` model), and
    never through a symbolic link: chmod would change the link's target, outside of what we own."""
    if not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o700 == 0o700:
        return
    chmod_nofollow(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd)


def chmod_nofollow(name, mode: int, dir_fd: int | None = None) -> bool:
    """Change the mode of ``name`` itself; a symbolic link there is left alone (False), never followed."""
    try:
        os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except NotImplementedError:
        pass  # a link (Linux cannot chmod one), or a C library without AT_SYMLINK_NOFOLLOW for chmod
    # Open the entry itself (O_PATH | O_NOFOLLOW: a link fails with ELOOP) and change the inode the
    # descriptor holds, as glibc does: nothing can swap a link in between.
    try:
        fd = os.open(name, getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return False
        raise
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return False
        os.chmod(f"/proc/self/fd/{fd}", mode)
        return True
    finally:
        os.close(fd)


def _empty_tree(fd: int) -> None:
    """Remove everything inside the directory open as ``fd``, iteratively, one directory fd at a time.

    We go down with ``openat(name, O_NOFOLLOW)`` and back up through ``..``, checked against the
    (device, inode) we came from: the depth is bounded neither by the recursion limit, nor by the
    number of open files, nor by PATH_MAX."""
    top = os.fstat(fd)
    # One frame per level: (device, inode) of the directory, its name in its parent, subdirectories left.
    frames = [((top.st_dev, top.st_ino), "", _clear_files(fd))]
    cur = fd
    try:
        while frames:
            _, name, pending = frames[-1]
            if pending:
                sub = pending.pop()
                child = _enter(cur, sub)
                if child is None:
                    continue
                st = os.fstat(child)
                if cur != fd:
                    os.close(cur)
                cur = child
                frames.append(((st.st_dev, st.st_ino), sub, _clear_files(cur)))
                continue
            frames.pop()
            if not frames:
                return
            parent = os.open("..", _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0), dir_fd=cur)
            pst = os.fstat(parent)
            if (pst.st_dev, pst.st_ino) != frames[-1][0]:
                os.close(parent)
                raise OSError(errno.EBUSY, "a directory was moved while it was being removed", name)
            if cur != fd:
                os.close(cur)
            cur = parent
            try:
                os.rmdir(name, dir_fd=cur)
            except FileNotFoundError:
                pass  # removed by someone else meanwhile
    finally:
        if cur != fd:
            os.close(cur)


def _enter(dir_fd: int, name: str) -> int | None:
    """Open the subdirectory ``name`` to empty it (made u+rwx if need be); None if it is gone.

    Something that is no longer a directory (replaced meanwhile) is unlinked instead."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        _unlink(name, dir_fd)
        return None
    _owner_rwx(name, st, dir_fd)
    try:
        return _open_dir(name, dir_fd)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    _unlink(name, dir_fd)
    return None


def _clear_files(fd: int) -> list[str]:
    """Unlink every entry of the directory ``fd`` that is not a directory; return the subdirectories."""
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                _unlink(entry.name, fd)
    return subdirs


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
                                      or (owner != os.getpid() and pid_alive(owner))):
                continue
            remove_path(Path(entry.path))
            n += 1
    return n


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs (another user's counts; a pid reused by another process counts too,
    which only ever makes us leave something alone)."""
    if pid <= 0:
        return False  # not a process: kill(0) and kill(-n) would signal a process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except (OSError, OverflowError):
        return False  # beyond any pid
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
