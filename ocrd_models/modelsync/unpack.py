"""Safe archive extraction: sniff the format from bytes, refuse members escaping the target.

Supported: zip, tar, tar.gz, tar.bz2, tar.xz (suffix-less URLs included: the format is
read from magic bytes, never from the name). Extraction happens into a fresh temp
directory on the target filesystem; the caller renames the selected member into place.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from dataclasses import dataclass

from . import failpoints
from .digest import CHUNK, FileHasher
from .errors import UnsafeArchive


@dataclass(frozen=True)
class Limits:
    """Bounds against archive bombs; generous for multi-GB eynollah model zips.

    Configurable: ``[settings] max_unpacked_bytes`` / ``max_archive_members``.
    """

    max_bytes: int = 64 * 1024**3
    max_members: int = 200_000

    def exceeded(self, label: str, member: str, members: int, total: int) -> None:
        """Raise UnsafeArchive if either bound is crossed."""
        if members > self.max_members or total > self.max_bytes:
            raise UnsafeArchive(
                f"{label}: refused as a possible archive bomb at member {member!r}: more than "
                f"{self.max_members} members or {self.max_bytes} bytes unpacked (raise max_archive_members / "
                "max_unpacked_bytes in [settings] if the archive is genuine)")


def sniff(path: Path, label: str | None = None) -> str:
    """Return ``zip``, ``tar``, ``tar.gz``, ``tar.bz2``, ``tar.xz`` or raise UnsafeArchive."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if zipfile.is_zipfile(path):  # zip with a prefix (self-extracting) or comment-first
        return "zip"
    raise UnsafeArchive(
        f"{label or path.name} is not an archive of a supported kind (zip, tar, tar.gz, tar.bz2, tar.xz): "
        f"its first bytes are {head[:8].hex(' ')}. If the resource is a single file, declare type = \"file\"."
    )


def _safe_rel(name: str, archive: str) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith("/") or ".." in p.parts or "\x00" in name or (p.parts and ":" in p.parts[0]):
        raise UnsafeArchive(f"{archive}: member {name!r} would be written outside the target directory; refused")
    return p


def _check_tar_member(m: tarfile.TarInfo, label: str, seen: set[str]) -> None:
    rel = str(_safe_rel(m.name, label))
    if rel in seen and not m.isdir():
        raise UnsafeArchive(f"{label}: member {m.name!r} appears twice; refused (which one is the model?)")
    seen.add(rel)
    if m.isdev() or m.isfifo():
        raise UnsafeArchive(f"{label}: member {m.name!r} is a device or FIFO; refused")
    if m.issym() or m.islnk():
        target = PurePosixPath(m.linkname)
        base = PurePosixPath(m.name).parent if m.issym() else PurePosixPath()
        resolved = os.path.normpath(str(base / target))
        if target.is_absolute() or resolved.startswith(".."):
            raise UnsafeArchive(f"{label}: link {m.name!r} -> {m.linkname!r} points outside the archive; refused")


def _write_member(src, out: Path, mode: int, hasher: FileHasher | None) -> int:
    # O_EXCL | O_NOFOLLOW: never write through a link or over anything an earlier member made.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    written = 0
    with open(fd, "wb") as dst:  # buffered: a raw write may write less than asked
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            written += len(chunk)
            if hasher:
                hasher.feed(chunk)
    if hasher:
        hasher.end(out)
    return written


def _extract_tar(path: Path, dest: Path, fmt: str, label: str, limits: Limits, hasher: FileHasher | None) -> None:
    # Stream mode with 1 MiB reads: decompression runs in C on large buffers (the random-access
    # mode reads through gzip/lzma file objects in 16 KiB steps, several times slower). Members
    # are checked as they come; a refusal part-way leaves only our private temp dir behind.
    mode = {"tar": "r|", "tar.gz": "r|gz", "tar.bz2": "r|bz2", "tar.xz": "r|xz"}[fmt]
    data_filter = getattr(tarfile, "data_filter", None)
    try:
        with tarfile.open(path, mode, bufsize=CHUNK) as tf:
            seen: set[str] = set()
            total = members = 0
            for m in tf:
                _check_tar_member(m, label, seen)
                members += 1
                total += m.size
                limits.exceeded(label, m.name, members, total)
                if m.isreg() and data_filter is not None:
                    # The stdlib "data" filter re-checks the path (through links already on disk).
                    m = data_filter(m, str(dest))
                    out = dest / m.name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tf.extractfile(m) as src:
                        _write_member(src, out, 0o755 if (m.mode or 0) & 0o100 else 0o644, hasher)
                elif data_filter is not None:
                    tf.extract(m, dest, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tf.extract(m, dest)
                failpoints.hit("unpack")
    except getattr(tarfile, "FilterError", ()) as err:
        raise UnsafeArchive(f"{label}: refused: {err}") from None
    except FileExistsError as err:
        raise UnsafeArchive(f"{label}: member {err.filename!r} would replace something an earlier member "
                            "wrote; refused") from None
    except (tarfile.TarError, EOFError, ValueError, gzip.BadGzipFile, lzma.LZMAError, zlib.error) as err:
        raise UnsafeArchive(f"{label}: not a valid {fmt} archive ({err})") from None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):  # a member aimed through a link or file
            raise UnsafeArchive(f"{label}: member {err.filename!r} cannot be written where it points; refused") \
                from None
        raise  # a full disk or a permission problem is not the archive's fault


class _Counted:
    """A reader that reports the running byte count after every read (to stop a zip bomb early)."""

    def __init__(self, src, check) -> None:
        self._src, self._check, self._n = src, check, 0

    def read(self, size: int) -> bytes:
        chunk = self._src.read(size)
        self._n += len(chunk)
        self._check(self._n)
        return chunk


def _extract_zip(path: Path, dest: Path, label: str, limits: Limits, hasher: FileHasher | None) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            limits.exceeded(label, infos[-1].filename if infos else "", len(infos),
                            sum(i.file_size for i in infos))
            seen: set[str] = set()
            written = 0
            for info in infos:
                rel = _safe_rel(info.filename, label)
                if str(rel) in seen and not info.is_dir():
                    raise UnsafeArchive(f"{label}: member {info.filename!r} appears twice; refused")
                seen.add(str(rel))
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchive(f"{label}: member {info.filename!r} is a symbolic link; refused")
                out = dest.joinpath(*rel.parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                if out.is_symlink() or (out.exists() and out.is_dir()):
                    raise UnsafeArchive(f"{label}: member {info.filename!r} would replace a directory or link")
                with zf.open(info) as src:
                    # Count what is really written: a zip's declared sizes can lie.
                    written += _write_member(_Counted(src, lambda n: limits.exceeded(
                        label, info.filename, len(seen), written + n)), out, 0o644, hasher)
                failpoints.hit("unpack")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as err:
        raise UnsafeArchive(f"{label}: not a valid zip archive ({err})") from None


def extract(path: Path, dest: Path, label: str | None = None, limits: Limits | None = None,
            hasher: FileHasher | None = None) -> str:
    """Extract the archive at ``path`` into the empty directory ``dest``; return the format.

    ``label`` names the archive in messages (the URL's file name, not our temp name). With a
    ``hasher``, every regular file written is hashed on the way (its results feed the tree digest).
    """
    label = label or path.name
    limits = limits or Limits()
    fmt = sniff(path, label)
    if fmt == "zip":
        _extract_zip(path, dest, label, limits, hasher)
    else:
        _extract_tar(path, dest, fmt, label, limits, hasher)
    return fmt


def select(extracted: Path, path_in_archive: str, archive_name: str) -> Path:
    """The member OCR-D copies to ``<location>/<name>``: ``.`` is the whole archive."""
    rel = _safe_rel(path_in_archive, archive_name) if path_in_archive not in ("", ".") else PurePosixPath()
    chosen = extracted.joinpath(*rel.parts)
    if not os.path.lexists(chosen):
        top = sorted(p.name for p in extracted.iterdir())[:10]
        raise UnsafeArchive(f"{archive_name}: path_in_archive {path_in_archive!r} is not in the archive "
                            f"(top-level entries: {', '.join(top) or 'none'})")
    if chosen.is_symlink():
        raise UnsafeArchive(f"{archive_name}: path_in_archive {path_in_archive!r} is a symbolic link; refused")
    return chosen
