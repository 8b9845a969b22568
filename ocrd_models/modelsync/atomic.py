"""Small atomic-write helpers: unique temp name in the target directory, fsync, rename."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TEMP_PREFIX = ".modelsync-tmp-"


def temp_owner(name: str) -> int | None:
    """The pid that created a temp name of ours, or None if ``name`` is not one."""
    if not name.startswith(TEMP_PREFIX):
        return None
    head = name[len(TEMP_PREFIX):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def temp_name(directory: Path, hint: str = "", suffix: str = ".part") -> Path:
    """A unique, hidden temp path inside ``directory`` (same filesystem as the final path)."""
    # Names stay short and safe whatever ``hint`` holds.
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in hint)[:40]
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


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = False, before_rename=None) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path.parent, path.name)
    try:
        with open(tmp, "wb") as fh:
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
    if durable:
        fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str, *, durable: bool = False, before_rename=None) -> None:
    """Text variant of :func:`write_bytes_atomic` (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"), durable=durable, before_rename=before_rename)
