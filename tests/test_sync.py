"""End to end: models.toml -> sync over real HTTP -> files on disk + models.lock."""

from __future__ import annotations

import os
import tomllib

import pytest
from conftest import Model, make_tar, make_zip, sha256, tree_files

TRAINEDDATA = os.urandom(50_000)


def test_sync_installs_file_in_module_location_and_locks_it(sandbox, server):
    url = server.add("/tess/mine.traineddata", TRAINEDDATA)
    sandbox.declare(Model("mine.traineddata", url), processor="ocrd-tesserocr-recognize")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    installed = sandbox.tessdata / "mine.traineddata"
    assert installed.read_bytes() == TRAINEDDATA
    lock = tomllib.loads(sandbox.lock.read_text())
    (entry,) = lock["resource"]
    assert entry["sha256"] == sha256(TRAINEDDATA)
    assert entry["size"] == len(TRAINEDDATA)
    assert entry["location"] == "module"
    assert entry["url"] == url
    # Nothing left behind but the model itself.
    assert sorted(p.name for p in sandbox.tessdata.iterdir()) == ["mine.traineddata"]


def test_second_sync_downloads_nothing(sandbox, server):
    url = server.add("/m.traineddata", TRAINEDDATA)
    sandbox.declare(Model("mine.traineddata", url), processor="ocrd-tesserocr-recognize")
    assert sandbox.run("sync").code == 0
    before = sandbox.lock.read_bytes()
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert server.count("/m.traineddata") == 1
    assert sandbox.lock.read_bytes() == before


def test_registry_name_resolves_to_its_real_url_through_a_mirror(sandbox, server):
    # deu.traineddata's registry URL is on github.com; the mirror maps it to the test server.
    server.add("/gh/tesseract-ocr/tessdata_best/raw/main/deu.traineddata", TRAINEDDATA)
    sandbox.declare("deu.traineddata", processor="ocrd-tesserocr-recognize")
    r = sandbox.run("sync", "--mirror", f"https://github.com/={server.url('/gh/')}")
    assert r.code == 0, r.err
    assert (sandbox.tessdata / "deu.traineddata").read_bytes() == TRAINEDDATA
    entry = tomllib.loads(sandbox.lock.read_text())["resource"][0]
    # The lock records the origin URL, never the machine-specific mirror.
    assert entry["url"] == "https://github.com/tesseract-ocr/tessdata_best/raw/main/deu.traineddata"
    assert "127.0.0.1" not in sandbox.lock.read_text()


def test_checksum_mismatch_installs_nothing_and_prints_both_hashes(sandbox, server):
    url = server.add("/x.traineddata", TRAINEDDATA)
    wrong = "0" * 64
    sandbox.declare(Model("mine.traineddata", url, sha256=wrong), processor="ocrd-tesserocr-recognize")
    r = sandbox.run("sync")
    assert r.code == 4
    assert wrong in r.err and sha256(TRAINEDDATA) in r.err
    assert list(sandbox.tessdata.iterdir()) == []


def test_failed_update_keeps_the_working_model(sandbox, server):
    url = server.add("/x.traineddata", TRAINEDDATA)
    sandbox.declare(Model("mine.traineddata", url), processor="ocrd-tesserocr-recognize")
    assert sandbox.run("sync").code == 0
    installed = sandbox.tessdata / "mine.traineddata"
    # The origin now serves other bytes: the locked hash refuses them, the old model stays.
    server.add("/x.traineddata", b"tampered" * 100)
    installed.write_bytes(b"locally damaged")
    r = sandbox.run("sync")
    assert r.code == 4, r.err
    assert installed.read_bytes() == b"locally damaged"  # not deleted before a verified replacement
    assert [p.name for p in sandbox.tessdata.iterdir()] == ["mine.traineddata"]


def test_modified_file_is_detected_and_repaired(sandbox, server):
    url = server.add("/x.traineddata", TRAINEDDATA)
    sandbox.declare(Model("mine.traineddata", url), processor="ocrd-tesserocr-recognize")
    assert sandbox.run("sync").code == 0
    installed = sandbox.tessdata / "mine.traineddata"
    installed.write_bytes(TRAINEDDATA[:100])  # truncated by accident
    r = sandbox.run("plan")
    assert "update" in r.out
    assert sandbox.run("sync").code == 0
    assert installed.read_bytes() == TRAINEDDATA


@pytest.mark.parametrize("kind", ["tar.gz", "tar.xz", "tar.bz2", "tar", "zip", "suffixless-zip", "suffixless-tar"])
def test_archive_kinds_unpack_whole_archive(sandbox, server, kind):
    members = {"model/checkpoint.json": b'{"a": 1}', "model/weights.h5": os.urandom(4000), "README": b"hi"}
    if "zip" in kind:
        data = make_zip(members)
    else:
        comp = {"tar.gz": "gz", "tar.xz": "xz", "tar.bz2": "bz2", "tar": "", "suffixless-tar": "gz"}[kind]
        data = make_tar(members, comp)
    path = "/dl/model" if kind.startswith("suffixless") else f"/dl/model.{kind}"
    url = server.add(path + ("?dl=1" if kind.startswith("suffixless") else ""), data)
    server.files[path] = data
    sandbox.declare(Model("cal-model", url, type="archive"), processor="ocrd-calamari-recognize")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    target = sandbox.data_dir("ocrd-calamari-recognize") / "cal-model"
    assert tree_files(target) == members
    entry = tomllib.loads(sandbox.lock.read_text())["resource"][0]
    assert entry["sha256"] == sha256(data) and len(entry["installed_sha256"]) == 64
    # Only the model is left in the location: no temp files, no archive.
    assert [p.name for p in target.parent.iterdir()] == ["cal-model"]


def test_path_in_archive_selects_a_member(sandbox, server):
    members = {"pkg/models/a.bin": b"A", "pkg/models/sub/b.bin": b"B", "pkg/other.txt": b"x"}
    url = server.add("/m.tar.gz", make_tar(members))
    sandbox.declare(Model("default", url, type="archive", path_in_archive="pkg/models"), processor="ocrd-sbb-binarize")
    assert sandbox.run("sync").code == 0
    target = sandbox.data_dir("ocrd-sbb-binarize") / "default"
    assert tree_files(target) == {"a.bin": b"A", "sub/b.bin": b"B"}


def test_path_in_archive_missing_is_a_clear_error(sandbox, server):
    url = server.add("/m.zip", make_zip({"x/y": b"1"}))
    sandbox.declare(Model("m", url, type="archive", path_in_archive="nope"), processor="ocrd-sbb-binarize")
    r = sandbox.run("sync")
    assert r.code == 9
    assert "'nope' is not in the archive" in r.err and "x" in r.err
    assert not (sandbox.data_dir("ocrd-sbb-binarize") / "m").exists()


def test_archive_update_replaces_tree_after_verification(sandbox, server):
    url = server.add("/m.tar.gz", make_tar({"a": b"1", "b": b"2"}))
    sandbox.declare(Model("m", url, type="archive"), processor="ocrd-calamari-recognize")
    assert sandbox.run("sync").code == 0
    target = sandbox.data_dir("ocrd-calamari-recognize") / "m"
    (target / "a").write_bytes(b"edited")
    assert sandbox.run("sync").code == 0
    assert tree_files(target) == {"a": b"1", "b": b"2"}


def test_traversal_member_is_refused_and_nothing_written_outside(sandbox, server):
    evil = make_tar({"../../escaped.txt": b"pwned", "ok": b"1"})
    url = server.add("/evil.tar.gz", evil)
    sandbox.declare(Model("m", url, type="archive"), processor="ocrd-calamari-recognize")
    r = sandbox.run("sync")
    assert r.code == 9
    assert "../../escaped.txt" in r.err
    assert not list(sandbox.root.rglob("escaped.txt"))
    assert not (sandbox.data_dir("ocrd-calamari-recognize") / "m").exists()


def test_failures_do_not_stop_other_resources(sandbox, server):
    good = server.add("/good.traineddata", TRAINEDDATA)
    bad = server.url("/missing.traineddata")
    sandbox.declare(Model("bad.traineddata", bad), Model("good.traineddata", good),
                    processor="ocrd-tesserocr-recognize")
    r = sandbox.run("sync")
    assert r.code == 3
    assert "bad.traineddata" in r.err and "404" in r.err
    assert (sandbox.tessdata / "good.traineddata").read_bytes() == TRAINEDDATA
    names = [e["name"] for e in tomllib.loads(sandbox.lock.read_text())["resource"]]
    assert names == ["good.traineddata"]


def test_parallel_downloads_all_land(sandbox, server):
    blobs = {f"m{i}.traineddata": os.urandom(20_000 + i) for i in range(12)}
    sandbox.declare(*(Model(n, server.add("/" + n, b)) for n, b in blobs.items()),
                    processor="ocrd-tesserocr-recognize", settings="parallel = 6")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert {p.name: p.read_bytes() for p in sandbox.tessdata.iterdir()} == blobs


def test_local_path_and_file_url_for_self_trained_models(sandbox):
    (sandbox.project / "train").mkdir()
    model = sandbox.project / "train" / "my.pyrnn.gz"
    model.write_bytes(b"\x1f\x8b pretend")
    other = sandbox.root / "other.mlmodel"
    other.write_bytes(b"kraken")
    sandbox.declare(processors={"ocrd-cis-ocropy-recognize": [Model("my.pyrnn.gz", "./train/my.pyrnn.gz")],
                                "ocrd-kraken-recognize": [Model("other.mlmodel", f"file://{other}")]})
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert (sandbox.data_dir("ocrd-cis-ocropy-recognize") / "my.pyrnn.gz").read_bytes() == b"\x1f\x8b pretend"
    assert (sandbox.data_dir("ocrd-kraken-recognize") / "other.mlmodel").read_bytes() == b"kraken"
    lock = sandbox.lock.read_text()
    assert "./train/my.pyrnn.gz" in lock  # relative, portable


def test_directory_type_copies_a_local_tree(sandbox):
    # Not directly in the project dir: that is the cwd location, where "ckpt" would count as installed.
    src = sandbox.project / "train" / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"123")
    sandbox.declare(Model("ckpt", "./train/ckpt", type="directory", location="./models"),
                    processor="ocrd-calamari-recognize")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert tree_files(sandbox.project / "models" / "ckpt") == {"a.json": b"{}", "sub/w.bin": b"123"}


def test_plain_gzip_pickle_is_not_unpacked(sandbox):
    data = (sandbox.root.parent / "x").name.encode()  # any bytes
    fixture = sandbox.project / "fraktur.pyrnn.gz"
    import gzip

    fixture.write_bytes(gzip.compress(data))
    sandbox.declare(Model("f.pyrnn.gz", "./fraktur.pyrnn.gz"), processor="ocrd-cis-ocropy-recognize")
    assert sandbox.run("sync").code == 0
    assert (sandbox.data_dir("ocrd-cis-ocropy-recognize") / "f.pyrnn.gz").read_bytes() == fixture.read_bytes()


def test_downloads_overlap_up_to_the_parallel_setting(sandbox, server):
    server.delay = 0.3
    sandbox.declare(*(Model(f"p{i}", server.add(f"/p{i}", b"x" * i)) for i in range(6)),
                    processor="ocrd-kraken-recognize", settings="parallel = 3")
    assert sandbox.run("sync").code == 0
    assert server.max_inflight == 3
    server.max_inflight = 0
    import shutil

    shutil.rmtree(sandbox.cache)
    for i in range(6):
        (sandbox.data_dir("ocrd-kraken-recognize") / f"p{i}").unlink()
    assert sandbox.run("sync", "-j", "1").code == 0
    assert server.max_inflight == 1


def test_redirect_target_is_recorded_as_fetched_url(sandbox, server):
    from httpserver import Fault

    final = server.add("/releases/v2/m.mlmodel", TRAINEDDATA)
    server.faults["/latest/m.mlmodel"] = Fault(redirect_to=final)
    sandbox.declare(Model("m.mlmodel", server.url("/latest/m.mlmodel")), processor="ocrd-kraken-recognize")
    assert sandbox.run("sync").code == 0
    entry = tomllib.loads(sandbox.lock.read_text())["resource"][0]
    assert entry["url"] == server.url("/latest/m.mlmodel")
    assert entry["fetched_url"] == final


def test_transient_server_errors_are_retried(sandbox, server):
    from httpserver import Fault

    url = server.add("/flaky.mlmodel", TRAINEDDATA)
    server.faults["/flaky.mlmodel"] = Fault(status=503, times=2)
    sandbox.declare(Model("f.mlmodel", url), processor="ocrd-kraken-recognize")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert server.count("/flaky.mlmodel") == 3
    assert (sandbox.data_dir("ocrd-kraken-recognize") / "f.mlmodel").read_bytes() == TRAINEDDATA


def test_truncated_body_is_retried_never_installed(sandbox, server):
    from httpserver import Fault

    url = server.add("/t.mlmodel", TRAINEDDATA)
    server.faults["/t.mlmodel"] = Fault(truncate_at=1000, times=1)
    sandbox.declare(Model("t.mlmodel", url), processor="ocrd-kraken-recognize")
    assert sandbox.run("sync").code == 0
    assert (sandbox.data_dir("ocrd-kraken-recognize") / "t.mlmodel").read_bytes() == TRAINEDDATA
    assert server.count("/t.mlmodel") == 2
