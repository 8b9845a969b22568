"""Stage a resource next to its final path, verify it, then move it into place atomically.

Order of an install (the invariant: nothing unverified ever sits at a final path,
and a working model is only replaced once its replacement is verified):

1. download into a temp file in the destination directory, hashing as bytes arrive;
2. verify the SHA-256 (lock or manifest pin); archives: extract into a temp dir
   beside it, pick ``path_in_archive``, verify the tree digest if one is locked;
3. rename into place (a file: one ``os.replace``; a directory: move the old one aside,
   rename the new one in, then delete the old one);
4. write the install record (the completion marker) last.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic import TEMP_PREFIX, fsync_dir, temp_name, temp_owner
from .digest import StatSig, digest_path
from .errors import ChecksumMismatch, InstallError, UserInputError
from .fetch import fetch, fsync_file, local_source
from .unpack import extract, select


@dataclass
class Staged:
    """A verified resource at a temp path beside its destination, ready to be renamed in."""

    path: Path
    is_dir: bool
    sha256: str | None  # of the downloaded artifact
    size: int
    fetched_url: str | None
    installed_digest: str
    sigs: dict[str, StatSig]
    cleanup: list[Path]  # temp paths to delete after the rename (or on failure)

    def discard(self) -> None:
        """Remove every temp path of this staging."""
        for p in [self.path, *self.cleanup]:
            remove_path(p)


def remove_path(path: Path) -> None:
    """Delete a file, symlink or directory tree if it exists."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class StageRequest:
    """What to stage: the resource's declaration and the digests it must match."""

    what: str  # "processor name", for messages
    name: str
    url: str
    type: str
    path_in_archive: str
    expected_sha256: str | None
    expected_installed: str | None


def stage(req: StageRequest, directory: Path, *, mirrors: dict[str, str], base_dir: Path,
          progress: Callable[[int], None] | None = None,
          on_total: Callable[[int | None], None] | None = None) -> Staged:
    """Download/copy, verify and (for archives) unpack ``req`` into temp paths inside ``directory``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InstallError(f"cannot create {directory}: {err.strerror or err}. Check permissions, or choose "
                           "another location in models.toml.") from None
    if req.type == "directory":
        return _stage_directory(req, directory, base_dir, progress)
    fetched = fetch(req.url, directory, mirrors=mirrors, base_dir=base_dir, expected_sha256=req.expected_sha256,
                    progress=progress, on_total=on_total, what=f"{req.what}")
    if req.type == "file":
        try:
            fsync_file(fetched.path)
            sigs = {"": StatSig.of(fetched.path.stat())}
        except OSError as err:
            fetched.path.unlink(missing_ok=True)
            raise InstallError(f"cannot write {directory}: {err.strerror or err}") from None
        staged = Staged(fetched.path, False, fetched.sha256, fetched.size, fetched.fetched_url, fetched.sha256, sigs, [])
        return _verify_installed(staged, req)
    # archive
    unpack_dir = temp_name(directory, req.name, suffix=".d")
    cleanup = [fetched.path, unpack_dir]
    try:
        unpack_dir.mkdir()
        label = req.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or req.name
        extract(fetched.path, unpack_dir, label)
        chosen = select(unpack_dir, req.path_in_archive, label)
        digest, sigs = digest_path(chosen)
    except BaseException:
        for p in cleanup:
            remove_path(p)
        raise
    staged = Staged(chosen, chosen.is_dir(), fetched.sha256, fetched.size, fetched.fetched_url, digest, sigs, cleanup)
    return _verify_installed(staged, req)


def _stage_directory(req: StageRequest, directory: Path, base_dir: Path,
                     progress: Callable[[int], None] | None) -> Staged:
    src = local_source(req.url, base_dir)
    if src is None or not src.is_dir():
        raise UserInputError(f"{req.what}: type = \"directory\" needs a local directory as url; {req.url!r} is not one")
    dest = temp_name(directory, req.name, suffix=".d")
    try:
        shutil.copytree(src, dest, symlinks=True)
        digest, sigs = digest_path(dest, progress)
    except BaseException:
        remove_path(dest)
        raise
    size = sum(s.size for s in sigs.values())
    staged = Staged(dest, True, digest, size, req.url, digest, sigs, [])
    return _verify_installed(staged, req, artifact_is_tree=True)


def _verify_installed(staged: Staged, req: StageRequest, artifact_is_tree: bool = False) -> Staged:
    expected = req.expected_installed or (req.expected_sha256 if artifact_is_tree else None)
    if expected is not None and expected != staged.installed_digest:
        staged.discard()
        raise ChecksumMismatch(f"{req.what} (installed {'tree' if staged.is_dir else 'file'})", expected,
                               staged.installed_digest, "Nothing was installed; the existing copy, if any, is untouched.")
    return staged


def commit(staged: Staged, final: Path) -> dict[str, StatSig]:
    """Move a staged resource to ``final``; the old one is removed only after the new one is in place.

    Returns the stat signatures at the final path (the inode survives a rename, the
    path does not matter to them).
    """
    try:
        if not staged.is_dir and not (final.is_dir() and not final.is_symlink()):
            os.replace(staged.path, final)  # atomic: readers see the old or the new file
        else:
            _swap_in(staged.path, final)
        fsync_dir(final.parent)
    except OSError as err:
        staged.discard()
        raise InstallError(f"cannot move the new {final.name} into {final.parent}: {err.strerror or err}") from None
    for p in staged.cleanup:
        remove_path(p)
    return staged.sigs


def _swap_in(new: Path, final: Path) -> None:
    # A directory cannot be replaced in one rename: move the old one aside first, and move it
    # back if the second rename fails, so a working model is never lost.
    old = None
    if os.path.lexists(final):
        old = temp_name(final.parent, final.name, suffix=".old")
        os.rename(final, old)
    try:
        os.rename(new, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        remove_path(old)


def clean_temp(directory: Path) -> int:
    """Remove temp leftovers of interrupted runs of ours in ``directory``; return how many."""
    n = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX):
            # Leave temp files of processes that are still running (a concurrent sync).
            owner = temp_owner(entry.name)
            if owner is not None and (owner == os.getpid() or _alive(owner)):
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
