"""The shared content-addressed cache: downloaded blobs by SHA-256, unpacked trees by tree digest.

Layout under the cache dir (``$MODELSYNC_CACHE_DIR``, default ``$XDG_CACHE_HOME/ocrd-modelsync``):

    blobs/sha256/<aa>/<sha256>   a downloaded artifact, read-only, mtime 0
    trees/<aa>/<digest>/         an unpacked archive member (or copied directory), read-only files
    used/<key>                   touched when an entry is reused (for ``cache prune --older-than``; an
                                 entry added since counts from its ctime)
    projects/<key>.json          locks seen on this machine (for ``cache prune``)
    tmp/                         downloads and unpacking in progress
    partial/<key>.<pid>/         an interrupted download (data, state.json), resumed by a later run

Correctness never depends on locks (flock does nothing on NFS): every write goes to a
unique temp name and is renamed into place; two processes adding the same entry both
succeed, as the content is the same by construction. Entries carry mtime 0 as a seal:
a file edited in place (through a hardlink, say) gets a new mtime and is re-hashed
before it is trusted again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..atomic import chmod_nofollow, remove_path, temp_name, write_text_atomic
from ..digest import digest_path, sha256_file, walk_tree

log = logging.getLogger(__name__)
SEAL_NS = 0  # mtime of sealed cache files
LINK_MODES = ("auto", "hardlink", "copy")


def _seal_file(path: Path) -> None:
    # Read-only for everyone; an executable keeps its x bits (hardlinked installs share this mode).
    # Only a regular file is sealed, and never through a symbolic link: a mode or time changed through
    # a link would land on its target, outside of what we own.
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return
    chmod_nofollow(path, 0o555 if st.st_mode & stat.S_IXUSR else 0o444)
    os.utime(path, ns=(SEAL_NS, SEAL_NS), follow_symlinks=False)


def _is_sealed(st: os.stat_result) -> bool:
    return st.st_mtime_ns == SEAL_NS


def blob_link_check(root: Path) -> Callable[[str, str], bool]:
    """A check whether a file is a hardlink of the sealed blob of a SHA-256 in the cache at ``root``
    (same inode, sealed mtime): two stats, cheap enough to run for every model of a plan."""
    blobs = str(root / "blobs" / "sha256")

    def is_verified_link(path: str, sha256: str) -> bool:
        try:
            st = os.stat(path)
            if not _is_sealed(st):
                return False
            blob = os.stat(f"{blobs}/{sha256[:2]}/{sha256}")
        except OSError:
            return False
        return (blob.st_ino, blob.st_dev) == (st.st_ino, st.st_dev)  # the very file the cache verified

    return is_verified_link


@dataclass(frozen=True)
class CacheStats:
    """``cache info``."""

    path: str
    blobs: int
    trees: int
    bytes: int
    projects: int


class Cache:
    """A content-addressed store shared by every project of the user."""

    def __init__(self, root: Path):
        self.root = root

    # -- paths -----------------------------------------------------------------------
    @property
    def tmp(self) -> Path:
        """Where downloads and unpacking happen (same filesystem as the entries)."""
        return self.root / "tmp"

    @property
    def partial_dir(self) -> Path:
        """Interrupted downloads kept for a resume (see :mod:`.partial`)."""
        return self.root / "partial"

    def blob_path(self, sha256: str) -> Path:
        """Where the blob of ``sha256`` lives."""
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def tree_path(self, digest: str) -> Path:
        """Where the unpacked tree with ``digest`` lives."""
        return self.root / "trees" / digest[:2] / digest

    def _touch_used(self, key: str) -> None:
        marker = self.root / "used" / key
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            # Created and touched where it is, never through a link put there.
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.utime(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # bookkeeping for prune only

    # -- blobs -----------------------------------------------------------------------
    def get_blob(self, sha256: str) -> Path | None:
        """The verified blob of ``sha256``, or None. A blob whose seal is broken is re-hashed."""
        path = self.blob_path(sha256)
        try:
            st = path.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):  # never ours (a link, a directory): make room for the real one
            self._discard(path)
            return None
        if not _is_sealed(st):
            if sha256_file(path) != sha256:
                # Installs are hardlinks of the blob: an installed file edited in place is this file.
                log.warning("the cache's copy of %s… was changed (an installed model edited in place through "
                            "its hardlink?): it is fetched again", sha256[:12])
                self._discard(path)
                return None
            _seal_file(path)
        self._touch_used(sha256)
        return path

    def add_blob(self, temp: Path, sha256: str) -> Path:
        """Move a verified temp file into the store (atomic; an existing copy wins)."""
        final = self.blob_path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        _seal_file(temp)
        os.replace(temp, final)  # its ctime says "added now" (see last_used): no marker to create
        return final

    # -- trees -----------------------------------------------------------------------
    def get_tree(self, digest: str) -> Path | None:
        """The cached tree (or single file) with ``digest``, or None; re-digested if a seal is broken."""
        path = self.tree_path(digest)
        try:
            st = path.lstat()
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):  # never ours (a tree is a directory or a file): never followed
            self._discard(path)
            return None
        try:
            sts = [st] if not stat.S_ISDIR(st.st_mode) else [s for _, s, _ in walk_tree(path)]
            sealed = all(_is_sealed(s) for s in sts if stat.S_ISREG(s.st_mode))
        except OSError:
            return None
        if not sealed:
            if digest_path(path)[0] != digest:
                self._discard(path)
                return None
            self._seal_tree(path)
        self._touch_used(digest)
        return path

    def _seal_tree(self, path: Path) -> None:
        if not stat.S_ISDIR(path.lstat().st_mode):
            _seal_file(path)
            return
        for _, st, p in walk_tree(path):
            if stat.S_ISREG(st.st_mode):
                _seal_file(p)

    def add_tree(self, temp: Path, digest: str) -> Path:
        """Move a verified temp tree (or file) into the store; if another process won, keep theirs."""
        final = self.tree_path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._seal_tree(temp)
        try:
            os.rename(temp, final)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
            self._discard(temp)  # the same digest is already there
            self._touch_used(digest)  # theirs is older than this use
        return final

    def _discard(self, path: Path) -> None:
        # remove_path makes a read-only directory of ours writable when it must, never through a link
        # (this used to chmod every entry os.walk listed as a directory: links to directories included,
        # so their targets outside the cache became 0755), and walks any depth without recursion.
        remove_path(path)

    # -- projects (for prune) --------------------------------------------------------------
    def remember_lock(self, lock_path: Path) -> None:
        """Note that a lock on this machine references cache entries."""
        import hashlib

        key = hashlib.sha256(os.fsencode(str(lock_path.absolute()))).hexdigest()[:32]
        target = self.root / "projects" / f"{key}.json"
        if not target.exists():
            write_text_atomic(target, json.dumps({"lock": str(lock_path.absolute())}))

    def known_locks(self) -> list[Path]:
        """Lock files recorded by :meth:`remember_lock` that still exist."""
        out = []
        for f in sorted((self.root / "projects").glob("*.json")):
            try:
                path = Path(json.loads(f.read_text())["lock"])
            except (OSError, ValueError, KeyError):
                continue
            if path.exists():
                out.append(path)
            else:
                f.unlink(missing_ok=True)
        return out

    def referenced(self) -> set[str]:
        """Every sha256 and tree digest that a known lock on this machine names."""
        from ..errors import LockfileError
        from ..spec.lockfile import lock_digests

        keys: set[str] = set()
        for path in self.known_locks():
            try:
                keys |= lock_digests(path)  # leniently: whatever models.toml beside it declares
            except LockfileError:
                continue  # a broken lock protects nothing; it will be rewritten by its project
        return keys

    # -- maintenance -------------------------------------------------------------------
    def entries(self) -> list[tuple[str, str, Path]]:
        """Every entry as (kind, key, path); kind is ``blob`` or ``tree``."""
        out = []
        for kind, base in (("blob", self.root / "blobs" / "sha256"), ("tree", self.root / "trees")):
            if not base.is_dir():
                continue
            for shard in sorted(base.iterdir()):
                # A link in place of a shard is not followed: prune would remove what it points to.
                for entry in sorted(shard.iterdir()) if shard.is_dir() and not shard.is_symlink() else []:
                    out.append((kind, entry.name, entry))
        return out

    def size_of(self, path: Path) -> int:
        """Bytes of an entry (a tree's files added up)."""
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            return st.st_size
        return sum(st.st_size for _, st, _ in walk_tree(path) if stat.S_ISREG(st.st_mode))

    def stats(self) -> CacheStats:
        """Counts and total size."""
        entries = self.entries()
        return CacheStats(str(self.root), sum(1 for k, _, _ in entries if k == "blob"),
                          sum(1 for k, _, _ in entries if k == "tree"),
                          sum(self.size_of(p) for _, _, p in entries), len(self.known_locks()))

    def last_used(self, key: str, path: Path) -> float:
        """When an entry was last used (its marker) or added (its ctime: sealing and the rename into the
        store set it), whichever is later. Adding writes no marker: one file fewer per download."""
        times = [0.0]
        for p in (self.root / "used" / key, path):
            try:
                st = p.lstat()
            except OSError:
                continue
            times.append(st.st_mtime if p != path else st.st_ctime)
        return max(times)

    def prune(self, referenced: set[str], *, older_than_days: float | None = None, dry_run: bool = False
              ) -> list[tuple[str, str, int]]:
        """Remove entries not in ``referenced`` (and, if given, unused for that many days)."""
        now = time.time()
        removed = []
        for kind, key, path in self.entries():
            if older_than_days is None and key in referenced:
                continue
            if older_than_days is not None and now - self.last_used(key, path) < older_than_days * 86400:
                continue
            size = self.size_of(path)
            removed.append((kind, key, size))
            if not dry_run:
                self._discard(path)
                (self.root / "used" / key).unlink(missing_ok=True)
        from .partial import PartialStore

        for path in PartialStore(self.partial_dir).abandoned():  # interrupted downloads no process resumes now
            try:
                size = self.size_of(path)
                if not dry_run:
                    remove_path(path)
            except OSError:
                continue
            removed.append(("partial", path.name.rpartition(".")[0], size))
        if not dry_run:
            try:
                remove_path(self.tmp)  # of any depth; links in it are removed, never followed
            except OSError:
                pass  # what is left is removed by the next prune
        return removed


def place(source: Path, final: Path, link_mode: str, on_fallback=None) -> tuple[Path, str]:
    """Put a copy of a cached file or tree at a temp path beside ``final``; return (temp, mode used).

    ``auto`` hardlinks where the filesystem allows and copies otherwise (calling
    ``on_fallback(reason)`` once); ``hardlink`` fails instead of copying.
    """
    temp = temp_name(final.parent, final.name, suffix=".d" if source.is_dir() else ".part")
    used = "hardlink" if link_mode in ("auto", "hardlink") else "copy"

    def link_or_copy(src: str, dst: str) -> None:
        nonlocal used
        if used == "hardlink":
            try:
                os.link(src, dst, follow_symlinks=False)
                return
            except OSError as err:
                if link_mode == "hardlink":
                    raise
                used = "copy"
                if on_fallback:
                    on_fallback(f"hardlinks not possible from the cache to {final.parent} ({err.strerror}); "
                                "copying instead (--link-mode copy silences this)")
        shutil.copyfile(src, dst)
        chmod_nofollow(dst, 0o755 if os.lstat(src).st_mode & stat.S_IXUSR else 0o644)  # x bits kept

    try:
        if source.is_dir():
            os.mkdir(temp)
            for rel, st, path in walk_tree(source):
                dst = temp / rel
                if stat.S_ISDIR(st.st_mode):
                    dst.mkdir()
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(path), dst)
                else:
                    link_or_copy(str(path), str(dst))
        else:
            link_or_copy(str(source), str(temp))
    except BaseException:
        remove_path(temp)
        raise
    return temp, used


def copy_tree(source: Path, dest: Path, what: str) -> None:
    """Copy the directory ``source`` to the new directory ``dest`` (a ``type = "directory"`` model).

    A loop over :func:`walk_tree`, not recursion (``shutil.copytree`` recursed twice per level: a
    model directory some 500 levels deep raised RecursionError). Symbolic links are copied as links,
    never followed; modes are ours, not the source's: directories 0755, files 0644 (0755 when the
    owner may execute), so no world-writable, sticky or setuid directory reaches the cache. A FIFO,
    socket or device is refused (UserInputError naming it): reading one could block forever.
    """
    from ..errors import UserInputError

    entries = walk_tree(source)
    for rel, st, _ in entries:
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise UserInputError(f"{what}: {rel!r} in the model directory {str(source)!r} is not a file, "
                                 "directory or symbolic link (a FIFO, socket or device); remove it or point url "
                                 "at a directory holding only the model's files")
    os.mkdir(dest, 0o755)
    for rel, st, path in entries:
        dst = dest / rel
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(dst, 0o755)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(path), dst)
        else:
            shutil.copyfile(path, dst)
            chmod_nofollow(dst, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
