"""Hostile archives and inputs: refused with a precise message, nothing written outside, nothing changed."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import pytest
from conftest import Model, make_tar, make_zip, tree_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROC = "ocrd-calamari-recognize"


def _member(name: str, kind: str = "file", data: bytes = b"x", link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    if kind == "file":
        info.size = len(data)
    elif kind == "dir":
        info.type = tarfile.DIRTYPE
    elif kind == "sym":
        info.type, info.linkname = tarfile.SYMTYPE, link
    elif kind == "hard":
        info.type, info.linkname = tarfile.LNKTYPE, link
    elif kind == "chr":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    return info, data


def _tar(*members: tuple[tarfile.TarInfo, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buf.getvalue()


def _zip_with_duplicate() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/a.bin", b"first")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zf.writestr("m/a.bin", b"second")
    return buf.getvalue()


HOSTILE = {
    "dotdot": (_tar(_member("../../outside.txt")), "../../outside.txt"),
    "absolute": (_tar(_member("/tmp/modelsync-abs-outside.txt")), "/tmp/modelsync-abs-outside.txt"),
    "symlink-out": (_tar(_member("m/link", "sym", link="/etc"), _member("m/link/passwd")), "m/link"),
    "symlink-up": (_tar(_member("m", "dir"), _member("m/up", "sym", link="../../..")), "m/up"),
    "hardlink-out": (_tar(_member("m/hl", "hard", link="/etc/passwd")), "m/hl"),
    "device": (_tar(_member("m/null", "chr")), "m/null"),
    "fifo": (_tar(_member("m/pipe", "fifo")), "m/pipe"),
    "dir-then-symlink": (_tar(_member("m", "dir"), _member("m", "sym", link="/tmp"), _member("m/x")), "m"),
    "duplicate-tar": (_tar(_member("m/a.bin", data=b"1"), _member("m/a.bin", data=b"2")), "m/a.bin"),
    "duplicate-zip": (_zip_with_duplicate(), "m/a.bin"),
    "zip-dotdot": (make_zip({"../evil.txt": b"x"}), "../evil.txt"),
    "zip-absolute": (make_zip({"/evil.txt": b"x"}), "/evil.txt"),
    "member-bomb": (make_tar({f"m/f{i}": b"" for i in range(60)}), "m/f"),
    "size-bomb-tar": (make_tar({"m/zeros": b"\0" * 3_000_000}, "gz"), "m/zeros"),
    "size-bomb-zip": (make_zip({"m/zeros": b"\0" * 3_000_000}), "m/zeros"),
}


def _snapshot(sandbox) -> dict[str, bytes]:
    # Everything the user could care about; our own cache/state may gain bookkeeping.
    files = {}
    for part in ("home", "data", "config", "system", "tessdata", "project"):
        files.update({f"{part}/{k}": v for k, v in tree_files(sandbox.root / part).items()})
    return files


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_naming_the_member(sandbox, server, case):
    data, member = HOSTILE[case]
    url = server.add(f"/{case}.bin", data)
    sandbox.declare(Model("m", url, type="archive"), processor=PROC,
                    settings="max_archive_members = 50\nmax_unpacked_bytes = 2000000")
    before = _snapshot(sandbox)
    r = sandbox.run("sync")
    assert r.code == 9, r.err
    assert member in r.err, r.err
    assert "Traceback" not in r.err
    after = _snapshot(sandbox)
    assert set(after) - set(before) <= {"project/models.lock"}  # nothing installed, nothing escaped
    assert not os.path.exists("/tmp/modelsync-abs-outside.txt")
    assert not list(sandbox.root.rglob("outside.txt")) and not list(sandbox.root.rglob("evil.txt"))
    assert list(sandbox.root.rglob(".modelsync-tmp-*")) == []


def test_limits_are_configurable(sandbox, server):
    data, _ = HOSTILE["member-bomb"]
    url = server.add("/many.tar.gz", data)
    sandbox.declare(Model("m", url, type="archive"), processor=PROC)
    assert sandbox.run("sync").code == 0  # 60 members are fine with the default limit


# -- malformed models.lock --------------------------------------------------------------------

GOOD_ENTRY = ('[[resource]]\nprocessor = "ocrd-kraken-recognize"\nname = "m.mlmodel"\nurl = "https://x/m"\n'
              'type = "file"\npath_in_archive = "."\nlocation = "data"\nsha256 = "' + "a" * 64 + '"\nsize = 3\n')
HEADER = 'version = 1\nmanifest_hash = "' + "b" * 64 + '"\n'
LOCK_CASES = [
    ("version = 1\nmanifest_hash = \n", "invalid TOML"),
    ("manifest_hash = \"" + "b" * 64 + "\"\n", "version None"),
    ("version = 2\n" + HEADER.split("\n", 1)[1], "version 2"),
    ("version = 1\n", "manifest_hash"),
    ('version = 1\nmanifest_hash = "xyz"\n', "manifest_hash"),
    (HEADER + "extra = 1\n", "unknown top-level"),
    (HEADER + "resource = 3\n", "array of tables"),
    (HEADER + GOOD_ENTRY.replace('name = "m.mlmodel"\n', ""), "'name'"),
    (HEADER + GOOD_ENTRY.replace('processor = "ocrd-kraken-recognize"\n', ""), "'processor'"),
    (HEADER + GOOD_ENTRY.replace('url = "https://x/m"\n', ""), "'url'"),
    (HEADER + GOOD_ENTRY.replace("a" * 64, "A" * 10), "sha256"),
    (HEADER + GOOD_ENTRY.replace('sha256 = "' + "a" * 64 + '"\n', ""), "needs sha256"),
    (HEADER + GOOD_ENTRY.replace('type = "file"', 'type = "tarball"'), "type"),
    (HEADER + GOOD_ENTRY.replace('location = "data"', 'location = "dta"'), "unknown location"),
    (HEADER + GOOD_ENTRY.replace("size = 3", "size = -1"), "size"),
    (HEADER + GOOD_ENTRY.replace("size = 3", 'size = "3"'), "size"),
    (HEADER + GOOD_ENTRY + "colour = 1\n", "unknown field"),
    (HEADER + GOOD_ENTRY.replace('name = "m.mlmodel"', 'name = "../../etc/passwd"'), "must not contain"),
    (HEADER + GOOD_ENTRY.replace('name = "m.mlmodel"', 'name = ""'), "'name'"),
    (HEADER + GOOD_ENTRY.replace('name = "m.mlmodel"', 'name = "CON"'), "reserved"),
    (HEADER + GOOD_ENTRY.replace('name = "m.mlmodel"', 'name = 3'), "'name'"),
    (HEADER + GOOD_ENTRY + GOOD_ENTRY, "locked twice"),
    (HEADER + GOOD_ENTRY.replace('path_in_archive = "."', "path_in_archive = 1"), "path_in_archive"),
    (HEADER + "[[resource]]\n", "'processor'"),
    ("\x00\x01binary", "invalid TOML"),
]


@pytest.mark.parametrize("text,needle", LOCK_CASES, ids=[f"lock{i}" for i in range(len(LOCK_CASES))])
def test_malformed_lock_is_a_precise_error_and_changes_nothing(sandbox, text, needle):
    sandbox.declare(Model("m.mlmodel", "https://x/m"), processor="ocrd-kraken-recognize")
    sandbox.lock.write_text(text)
    before = _snapshot(sandbox)
    for args in (("sync",), ("sync", "--locked"), ("sync", "--frozen"), ("status",), ("verify",)):
        r = sandbox.run(*args)
        assert r.code == 2, (args, r.err)
        assert needle in r.err and "models.lock" in r.err, (args, r.err)
        assert "Traceback" not in r.err
    assert _snapshot(sandbox) == before


# -- resource names that try to escape ---------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "con", "CON.txt", "nul", "lpt1", "", "..", ".",
                                  "a\\u0000b", "a\\\\b", " x", "tab\\tname"])
def test_escaping_resource_names_are_refused(sandbox, server, name):
    url = server.add("/m", b"m")
    sandbox.write_manifest(f'[processors]\nocrd-kraken-recognize = [{{ name = "{name}", url = "{url}" }}]\n')
    before = _snapshot(sandbox)
    r = sandbox.run("sync")
    assert r.code == 2, r.err
    assert "name" in r.err and "Traceback" not in r.err
    assert _snapshot(sandbox) == before
    assert server.requests == []


# -- property-based: mutated manifests and locks -----------------------------------------------

VALID_MANIFEST = (
    '# a comment\n[settings]\nlocation = "data"\nparallel = 2\n[settings.locations]\nocrd-x = "cwd"\n'
    '[processors]\nocrd-kraken-recognize = [\n  { name = "m.mlmodel", url = "http://127.0.0.1:9/m", type = "file" },\n'
    '  "austriannewspapers.mlmodel",\n]\n'
)


def _mutate(text: str, ops: list[tuple[int, int, str]]) -> str:
    for kind, pos, ch in ops:
        pos %= max(1, len(text))
        if kind == 0:
            text = text[:pos] + text[pos + 1:]  # delete
        elif kind == 1:
            text = text[:pos] + ch + text[pos:]  # insert
        else:
            text = text[:pos] + ch + text[pos + 1:]  # replace
    return text


mutation = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000),
                              st.sampled_from(list('"[]{}=,.#\n ab1-_/\\*:\x00') + ["\u017f", "\t"])),
                    min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=mutation)
def test_mutated_manifests_never_crash_and_bad_ones_change_nothing(sandbox, ops):
    sandbox.lock.unlink(missing_ok=True)
    sandbox.write_manifest(_mutate(VALID_MANIFEST, ops))
    before = _snapshot(sandbox)
    r = sandbox.run("plan")
    assert "Traceback" not in r.err and "unexpected" not in r.err, r.err
    assert r.code in (0, 2, 7), r.err
    if r.code == 2:
        assert "models.toml" in r.err or "model" in r.err
    assert _snapshot(sandbox) == before  # plan never writes, valid or not


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=mutation)
def test_mutated_locks_never_crash_and_never_install(sandbox, ops):
    sandbox.declare(Model("m.mlmodel", "https://x/m"), processor="ocrd-kraken-recognize")
    sandbox.lock.write_text(_mutate(HEADER + GOOD_ENTRY, ops))
    before = _snapshot(sandbox)
    r = sandbox.run("sync", "--locked", "--offline")
    assert "Traceback" not in r.err and "unexpected" not in r.err, r.err
    assert r.code in (2, 5, 6), r.err  # malformed, stale, or (valid) nothing in the cache offline
    assert _snapshot(sandbox) == before
