"""Safe archive extraction: sniff the format from bytes, refuse members escaping the target.

Supported: zip, tar, tar.gz, tar.bz2, tar.xz (suffix-less URLs included: the format is
read from magic bytes, never from the name). Extraction happens into a fresh temp
directory on the target filesystem; the caller renames the selected member into place.
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .errors import UnsafeArchive

from dataclasses import dataclass

from . import failpoints


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


def _extract_tar(path: Path, dest: Path, fmt: str, label: str, limits: Limits) -> None:
    mode = {"tar": "r:", "tar.gz": "r:gz", "tar.bz2": "r:bz2", "tar.xz": "r:xz"}[fmt]
    try:
        with tarfile.open(path, mode) as tf:
            members = []
            seen: set[str] = set()
            total = 0
            for m in tf:
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
                        raise UnsafeArchive(f"{label}: link {m.name!r} -> {m.linkname!r} points outside "
                                            "the archive; refused")
                total += m.size
                members.append(m)
                limits.exceeded(label, m.name, len(members), total)
            # The stdlib "data" filter re-checks everything above and strips unsafe modes.
            for m in members:
                if hasattr(tarfile, "data_filter"):
                    tf.extract(m, dest, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tf.extract(m, dest)
                failpoints.hit("unpack")
    except getattr(tarfile, "FilterError", ()) as err:
        raise UnsafeArchive(f"{label}: refused: {err}") from None
    except (tarfile.TarError, EOFError, ValueError, gzip.BadGzipFile, lzma.LZMAError, zlib.error) as err:
        raise UnsafeArchive(f"{label}: not a valid {fmt} archive ({err})") from None


def _extract_zip(path: Path, dest: Path, label: str, limits: Limits) -> None:
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
                with zf.open(info) as src, open(out, "wb") as dst:
                    # Count what is really written: a zip's declared sizes can lie.
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        limits.exceeded(label, info.filename, len(seen), written)
                        dst.write(chunk)
                failpoints.hit("unpack")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as err:
        raise UnsafeArchive(f"{label}: not a valid zip archive ({err})") from None


def extract(path: Path, dest: Path, label: str | None = None, limits: Limits | None = None) -> str:
    """Extract the archive at ``path`` into the empty directory ``dest``; return the format.

    ``label`` names the archive in messages (the URL's file name, not our temp name).
    """
    label = label or path.name
    limits = limits or Limits()
    fmt = sniff(path, label)
    if fmt == "zip":
        _extract_zip(path, dest, label, limits)
    else:
        _extract_tar(path, dest, fmt, label, limits)
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
