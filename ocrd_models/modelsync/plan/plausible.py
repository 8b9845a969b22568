"""Whether bytes found (or fetched) where a model belongs can be that model at all.

Used where nothing else vouches for them: a file or tree found in place with no lock and no pin
(adopted only if plausible: an empty or half-written file must never count as installed, as it does for `ocrd resmgr`),
and a first download without ``Content-Length`` or pin (a connection cut short looks like the end).
The checks read the bytes' own structure, never their name alone:

- nothing at all: a 0-byte file, a directory without a single non-empty file;
- much smaller than the size the resource's entry declares (a hint: only a quarter or less counts);
- a Tesseract ``.traineddata`` whose header (entry count, offset table) does not fit the file;
- gzip or bzip2 that does not decompress to its end with a good checksum;
- a zip without its central directory (a truncated download);
- an HDF5 file without its signature.

Each check is linear in the file at most, and reads nothing into memory beyond 1 MiB at a time.
"""

from __future__ import annotations

import bz2
import gzip
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAX_TESSDATA_ENTRIES = 64  # Tesseract 5 has 24 component types; a larger count is no traineddata
_CHUNK = 1 << 20
TOO_SMALL = 4  # a size below declared/TOO_SMALL is implausible (declared sizes are hints, often off)


def implausible(path: Path, *, declared_size: int | None = None) -> str | None:
    """Why what sits at ``path`` cannot be a model (a short phrase), or None when it may well be."""
    try:
        st = path.stat()
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if stat.S_ISDIR(st.st_mode):
        return None if _has_content(path) else "an empty directory"
    if st.st_size == 0:
        return "an empty file (0 bytes)"
    if declared_size and st.st_size * TOO_SMALL <= declared_size:
        return f"{st.st_size} bytes where about {declared_size} are expected"
    try:
        return _format_problem(path, st.st_size)
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"


def _has_content(root: Path) -> bool:
    """True when any file below ``root`` holds a byte (walked without recursion, links not followed)."""
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size:
                        return True
        except OSError:
            continue
    return False


def _format_problem(path: Path, size: int) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(16)
    name = path.name.lower()
    if head.startswith(b"\x1f\x8b"):
        return _stream_problem(gzip.open, path, "gzip")
    if head.startswith(b"BZh"):
        return _stream_problem(bz2.open, path, "bzip2")
    if head.startswith(b"PK\x03\x04") or name.endswith(".zip"):
        try:
            with zipfile.ZipFile(path):
                return None
        except (zipfile.BadZipFile, OSError, ValueError):
            return "a zip without its central directory (cut short?)"
    if name.endswith((".h5", ".hdf5")) and not head.startswith(_HDF5_MAGIC):
        return "no HDF5 signature"
    if name.endswith(".traineddata"):
        return _traineddata_problem(path, size)
    return None


def _stream_problem(opener, path: Path, kind: str) -> str | None:
    """Decompress to the end: a truncated stream or a bad checksum raises on the way."""
    try:
        with opener(path, "rb") as fh:
            while fh.read(_CHUNK):
                pass
    except (OSError, EOFError, zlib.error, ValueError):
        return f"a {kind} stream that ends early or fails its checksum (cut short?)"
    return None


def _traineddata_problem(path: Path, size: int) -> str | None:
    """Tesseract's container: an int32 entry count, then that many int64 offsets (-1: no such entry),
    each inside the file and in ascending order (TessdataManager's layout, either byte order)."""
    with open(path, "rb") as fh:
        raw = fh.read(4 + 8 * _MAX_TESSDATA_ENTRIES)
    if len(raw) < 4:
        return "too short for a Tesseract traineddata header"
    for order in ("<", ">"):
        (count,) = struct.unpack(f"{order}i", raw[:4])
        if not 0 < count <= _MAX_TESSDATA_ENTRIES:
            continue
        header = 4 + 8 * count
        if len(raw) < header or header > size:
            continue
        offsets = [o for o in struct.unpack(f"{order}{count}q", raw[4:header]) if o != -1]
        if offsets and all(header <= o <= size for o in offsets) and offsets == sorted(offsets):
            return None
    return "not a Tesseract traineddata (its header does not fit the file)"
