"""Archive safety: sniffing by bytes, and members that would escape are refused by name."""

from __future__ import annotations

import io
import tarfile
import zipfile

import pytest
from conftest import make_tar, make_zip

from ocrd_models.modelsync.errors import UnsafeArchive
from ocrd_models.modelsync.install.unpack import extract, select, sniff


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.addfile(member, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _write(tmp_path, data: bytes):
    p = tmp_path / "archive.bin"  # no telling suffix: the format comes from the bytes
    p.write_bytes(data)
    dest = tmp_path / "out"
    dest.mkdir()
    return p, dest


@pytest.mark.parametrize("fmt,data", [
    ("tar.gz", make_tar({"a": b"1"}, "gz")), ("tar.xz", make_tar({"a": b"1"}, "xz")),
    ("tar.bz2", make_tar({"a": b"1"}, "bz2")), ("tar", make_tar({"a": b"1"}, "")), ("zip", make_zip({"a": b"1"})),
])
def test_sniff_by_magic_bytes(tmp_path, fmt, data):
    p, dest = _write(tmp_path, data)
    assert sniff(p) == fmt
    extract(p, dest)
    assert (dest / "a").read_bytes() == b"1"


def test_not_an_archive(tmp_path):
    p, dest = _write(tmp_path, b"just some model bytes")
    with pytest.raises(UnsafeArchive, match='declare type = "file"'):
        extract(p, dest, "model.bin")


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


@pytest.mark.parametrize("data,member", [
    (make_tar({"../evil": b"x"}), "../evil"),
    (make_tar({"/etc/evil": b"x"}), "/etc/evil"),
    (_tar_with(_symlink("link", "/etc/passwd")), "link"),
    (_tar_with(_symlink("link", "../../outside")), "link"),
    (_tar_with(_hardlink("hl", "/etc/passwd")), "hl"),
    (_tar_with(_device("null")), "null"),
    (make_zip({"../evil": b"x"}), "../evil"),
    (make_zip({"/abs/evil": b"x"}), "/abs/evil"),
])
def test_escaping_members_are_refused_by_name(tmp_path, data, member):
    p, dest = _write(tmp_path, data)
    with pytest.raises(UnsafeArchive) as exc:
        extract(p, dest, "model.tar.gz")
    assert repr(member) in str(exc.value) or member in str(exc.value)
    assert not list((tmp_path.parent).glob("**/evil"))


def test_zip_symlink_member_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    p, dest = _write(tmp_path, buf.getvalue())
    with pytest.raises(UnsafeArchive, match="'link' is a symbolic link"):
        extract(p, dest)


def test_truncated_archive_is_invalid_not_a_crash(tmp_path):
    data = make_tar({"a": b"1" * 100_000}, "gz")
    p, dest = _write(tmp_path, data[: len(data) // 2])
    with pytest.raises(UnsafeArchive, match="not a valid"):
        extract(p, dest)


def test_select_refuses_escaping_path_in_archive(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(UnsafeArchive):
        select(tmp_path / "x", "../", "a.zip")
