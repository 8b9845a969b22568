"""Free space, checked before a download writes anything large.

A download whose length is known is checked against the free space of every filesystem it will
write to: the cache's (the download, and for an archive its unpacked tree) and the location's
when the install is a copy (another filesystem, or ``link_mode = "copy"``). An archive's unpacked
size is not known before it is downloaded: it is estimated as :data:`ARCHIVE_ESTIMATE` times its
own size; a zip is checked again, exactly, from its directory of members before it is unpacked.
A disk that fills anyway fails the write with the same kind of error (exit 8), and the temp files
are removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import NotEnoughSpace, mount_point

ARCHIVE_ESTIMATE = 2  # an archive unpacks to about this many times its size (an estimate, see above)


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest parent that exists (what a directory about to be created will be on)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def same_filesystem(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` (or, if missing, the parents they will be created in) share a filesystem."""
    try:
        return os.stat(existing_ancestor(a)).st_dev == os.stat(existing_ancestor(b)).st_dev
    except OSError:
        return False


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged write may still use on the filesystem of ``path``; None if unknown."""
    try:
        st = os.statvfs(existing_ancestor(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_space(needs: list[tuple[Path, int]], what: str) -> None:
    """Raise :class:`NotEnoughSpace` when the bytes of ``needs`` (directory, bytes to write there), added
    up per filesystem, exceed what is free there."""
    per_fs: dict[int, tuple[Path, int]] = {}
    for directory, nbytes in needs:
        if nbytes <= 0:
            continue
        here = existing_ancestor(directory)
        try:
            dev = os.stat(here).st_dev
        except OSError:
            continue  # the write itself reports what is wrong with the directory
        seen, total = per_fs.get(dev, (here, 0))
        per_fs[dev] = (seen, total + nbytes)
    for here, nbytes in per_fs.values():
        free = free_bytes(here)
        if free is not None and nbytes > free:
            raise NotEnoughSpace(what, mount_point(here), nbytes, free)
