"""What counts as installed (issue 15): upgrades that upgrade, pins that are checked, shadows that
count, removals that do not orphan, locks only for what happened, one download per URL."""

from __future__ import annotations

import os
import tomllib

from conftest import Model, make_tar, sha256

PROC = "ocrd-x"


def _lock(sandbox) -> dict[str, dict]:
    return {e["name"]: e for e in tomllib.loads(sandbox.lock.read_text()).get("resource", [])}


def test_upgrade_fetches_new_bytes_for_files_and_archives(sandbox, server):
    v1, v2 = b"version one" * 100, b"version two" * 100
    a1, a2 = make_tar({"m/w.bin": v1}), make_tar({"m/w.bin": v2})
    server.add("/f.bin", v1)
    server.add("/a.tar.gz", a1)
    sandbox.declare(Model("f.bin", server.url("/f.bin")),
                    Model("a", server.url("/a.tar.gz"), type="archive", path_in_archive="m"), processor=PROC)
    assert sandbox.run("sync").code == 0
    server.add("/f.bin", v2)
    server.add("/a.tar.gz", a2)
    before = server.count("/f.bin")
    r = sandbox.run("sync")  # no --upgrade: the lock decides, nothing is fetched
    assert r.code == 0 and server.count("/f.bin") == before
    r = sandbox.run("sync", "--upgrade")
    assert r.code == 0, r.err
    assert (sandbox.data_dir(PROC) / "f.bin").read_bytes() == v2
    assert (sandbox.data_dir(PROC) / "a" / "w.bin").read_bytes() == v2
    locked = _lock(sandbox)
    assert locked["f.bin"]["sha256"] == sha256(v2) and locked["f.bin"]["size"] == len(v2)
    assert locked["a"]["sha256"] == sha256(a2) and locked["a"]["size"] == len(a2)  # complete entries
    assert "updated 2" in r.err
    again = sandbox.run("sync", "--upgrade")  # the origin still serves v2: fetched, nothing replaced
    assert again.code == 0 and "kept 2" in again.err, again.err
    assert server.count("/f.bin") == before + 2


def test_upgrade_model_and_lock_upgrade(sandbox, server):
    v1, v2 = b"one" * 100, b"two" * 100
    server.add("/f.bin", v1)
    server.add("/g.bin", v1)
    sandbox.declare(Model("f.bin", server.url("/f.bin")), Model("g.bin", server.url("/g.bin")), processor=PROC)
    assert sandbox.run("sync").code == 0
    server.add("/f.bin", v2)
    server.add("/g.bin", v2)
    r = sandbox.run("lock", "--upgrade-model", "f.bin")
    assert r.code == 0, r.err
    assert _lock(sandbox)["f.bin"]["sha256"] == sha256(v2) and _lock(sandbox)["g.bin"]["sha256"] == sha256(v1)
    assert (sandbox.data_dir(PROC) / "f.bin").read_bytes() == v1  # lock installs nothing
    fetched = server.count("/f.bin")
    r = sandbox.run("sync")  # the locked v2 is in the cache already
    assert r.code == 0 and (sandbox.data_dir(PROC) / "f.bin").read_bytes() == v2
    assert server.count("/f.bin") == fetched


def test_a_failed_upgrade_keeps_the_old_model_and_its_lock(sandbox, server):
    from httpserver import Fault

    v1 = b"one" * 100
    server.add("/f.bin", v1)
    sandbox.declare(Model("f.bin", server.url("/f.bin")), processor=PROC, network="retries = 0")
    assert sandbox.run("sync").code == 0
    lock = sandbox.lock.read_text()
    server.faults["/f.bin"] = Fault(status=500)
    r = sandbox.run("sync", "--upgrade")
    assert r.code == 3
    assert (sandbox.data_dir(PROC) / "f.bin").read_bytes() == v1 and sandbox.lock.read_text() == lock


def test_a_pin_on_an_archive_whose_tree_was_adopted_is_checked(sandbox, server):
    archive = make_tar({"m/w.bin": b"genuine weights"})
    url = server.add("/a.tar.gz", archive)
    installed = sandbox.data_dir(PROC) / "a"
    installed.mkdir(parents=True)
    (installed / "w.bin").write_bytes(b"something else")  # put there by hand, not what the pin names
    sandbox.declare(Model("a", url, type="archive", path_in_archive="m", sha256=sha256(archive)), processor=PROC)
    plan = sandbox.run("plan", "--check")
    assert plan.code == 7 and "pinned" in plan.out, plan.out  # cannot be verified without fetching
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert (installed / "w.bin").read_bytes() == b"genuine weights"
    assert _lock(sandbox)["a"]["sha256"] == sha256(archive)
    assert sandbox.run("verify").code == 0 and sandbox.run("plan", "--check").code == 0


def test_remove_then_sync_keeps_the_lock_entry_until_prune_removes_the_files(sandbox, server):
    a, b = b"model a" * 100, b"model b" * 100
    sandbox.declare(Model("a.bin", server.add("/a.bin", a)), Model("b.bin", server.add("/b.bin", b)), processor=PROC)
    assert sandbox.run("sync").code == 0
    assert sandbox.run("remove", PROC, "b.bin").code == 0
    plan = sandbox.run("plan", "-v")
    assert plan.code == 0 and "sync --prune" in plan.out and "b.bin" in plan.out, plan.out
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert (sandbox.data_dir(PROC) / "b.bin").exists()  # not deleted without --prune ...
    assert _lock(sandbox)["b.bin"].get("undeclared") is True  # ... and not forgotten either
    assert sandbox.run("sync", "--locked").code == 0  # an undeclared entry does not make the lock stale
    r = sandbox.run("sync", "--prune")
    assert r.code == 0, r.err
    assert not (sandbox.data_dir(PROC) / "b.bin").exists() and "b.bin" not in _lock(sandbox)
    assert "-0.0s" not in r.err and "0 B in" not in r.err, r.err  # a removal has no size nor duration
    assert (sandbox.data_dir(PROC) / "a.bin").read_bytes() == a


def test_remove_prune_does_both_at_once_and_spares_changed_files(sandbox, server):
    a, b = b"model a" * 100, b"model b" * 100
    sandbox.declare(Model("a.bin", server.add("/a.bin", a)), Model("b.bin", server.add("/b.bin", b)), processor=PROC)
    assert sandbox.run("sync").code == 0
    r = sandbox.run("remove", PROC, "b.bin", "--prune")
    assert r.code == 0, r.err
    assert not (sandbox.data_dir(PROC) / "b.bin").exists() and "b.bin" not in _lock(sandbox)
    assert server.count("/a.bin") == 1  # nothing else fetched or installed
    (sandbox.data_dir(PROC) / "a.bin").write_bytes(b"edited by hand")
    r = sandbox.run("remove", PROC, "a.bin", "--prune")
    assert r.code == 8 and "changed since" in r.err, r.err
    assert (sandbox.data_dir(PROC) / "a.bin").read_bytes() == b"edited by hand"


def test_an_all_failed_first_sync_writes_no_lock(sandbox, server):
    sandbox.declare(Model("x.bin", server.url("/missing")), processor=PROC, network="retries = 0")
    r = sandbox.run("sync")
    assert r.code == 3 and not sandbox.lock.exists()


def test_locked_always_lists_the_difference_it_complains_about(sandbox, server):
    a = b"model a" * 100
    good = Model("a.bin", server.add("/a.bin", a))
    sandbox.declare(good, processor=PROC)
    assert sandbox.run("sync").code == 0
    # add a model whose local file is missing, sync (it fails), take it back
    sandbox.declare(good, Model("m.bin", "./nowhere.bin"), processor=PROC)
    assert sandbox.run("sync").code == 2
    r = sandbox.run("sync", "--locked")
    assert r.code == 5 and "+ ocrd-x m.bin: declared, not locked" in r.err, r.err
    sandbox.write_manifest(sandbox.declare(good, processor=PROC).read_text() + "# a comment\n")
    r = sandbox.run("sync", "--locked")
    assert r.code == 0, r.err  # nothing differs that sync would install: no complaint without a reason
    sandbox.declare(Model("a.bin", server.url("/a2.bin")), processor=PROC)
    r = sandbox.run("sync", "--locked")
    assert r.code == 5 and "url" in r.err and "/a2.bin" in r.err, r.err


def test_one_download_per_url_and_per_digest_in_a_run(sandbox, server):
    big, other = b"a large shared model" * 50_000, b"another shared model" * 50_000
    server.delay = 0.3  # both workers ask while the first download is still under way
    url = server.add("/shared.zip", big)
    sandbox.declare(processors={
        "ocrd-eynollah-segment": [Model("default", url)],
        "ocrd-sbb-binarize": [Model("default", url)],
        "ocrd-a": [Model("p.bin", server.add("/one.bin", other), sha256=sha256(other))],
        "ocrd-b": [Model("p.bin", server.add("/two.bin", other), sha256=sha256(other))],
    })
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert server.count("/shared.zip") == 1  # two processors, one URL: one download
    assert server.count("/one.bin") + server.count("/two.bin") == 1  # two URLs, one pinned digest: one
    for proc in ("ocrd-eynollah-segment", "ocrd-sbb-binarize"):
        assert (sandbox.data_dir(proc) / "default").read_bytes() == big
    for proc in ("ocrd-a", "ocrd-b"):
        assert (sandbox.data_dir(proc) / "p.bin").read_bytes() == other


def test_junk_in_place_is_not_adopted_but_fetched(sandbox, server):
    """OCR-D/core#1201: an empty file, an empty directory or junk named like a model is no model."""
    from conftest import make_traineddata

    good = make_traineddata(b"weights" * 1000)
    url = server.add("/deu.traineddata", good)
    archive = server.add("/a.tar.gz", make_tar({"m/w.bin": b"weights"}))
    sandbox.declare(processors={"ocrd-tesserocr-recognize": [Model("deu.traineddata", url)],
                                PROC: [Model("a", archive, type="archive", path_in_archive="m")]})
    for junk in (b"", b"0123456789abcdef"):
        (sandbox.tessdata / "deu.traineddata").write_bytes(junk)
        (sandbox.data_dir(PROC) / "a").mkdir(parents=True, exist_ok=True)
        r = sandbox.run("plan")
        assert "cannot be the model" in r.out, r.out
        r = sandbox.run("sync")
        assert r.code == 0, r.err
        assert (sandbox.tessdata / "deu.traineddata").read_bytes() == good
        assert (sandbox.data_dir(PROC) / "a" / "w.bin").read_bytes() == b"weights"
        assert _lock(sandbox)["deu.traineddata"]["sha256"] == sha256(good)
        sandbox.lock.unlink()
        import shutil

        shutil.rmtree(sandbox.data_dir(PROC) / "a")
    # a plausible copy put there by hand is adopted as before (no download)
    (sandbox.tessdata / "deu.traineddata").write_bytes(make_traineddata(b"hand-made" * 100))
    before = server.count("/deu.traineddata")
    assert sandbox.run("sync").code == 0 and server.count("/deu.traineddata") == before


def test_import_refuses_what_cannot_be_a_model_and_says_why(sandbox):
    (sandbox.tessdata / "deu.traineddata").write_bytes(b"")
    # as large as the known entry says (a size far below the declared one is a check too)
    (sandbox.tessdata / "frk.traineddata").write_bytes(__import__("conftest").make_traineddata(b"w" * 7_000_000))
    r = sandbox.run("import")
    assert r.code == 0, r.err
    assert "not adopted" in r.err and "deu.traineddata" in r.err and "0 bytes" in r.err, r.err
    declared = tomllib.loads(sandbox.manifest.read_text())["processors"]["ocrd-tesserocr-recognize"]
    assert declared == ["frk.traineddata"]


def test_copy_mode_keeps_executable_bits(sandbox, server):
    import io
    import os
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, mode, data in (("m/run.sh", 0o755, b"#!/bin/sh\n"), ("m/w.bin", 0o644, b"weights")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    url = server.add("/a.tar.gz", buf.getvalue())
    sandbox.declare(Model("a", url, type="archive", path_in_archive="m"), processor=PROC, settings='link_mode = "copy"')
    assert sandbox.run("sync").code == 0
    target = sandbox.data_dir(PROC) / "a"
    assert os.stat(target / "run.sh").st_mode & 0o111 == 0o111 and os.stat(target / "w.bin").st_mode & 0o111 == 0


def test_an_edit_through_a_hardlink_is_caught_and_said_and_fetched_again(sandbox, server):
    data = b"model bytes" * 1000
    url = server.add("/m.bin", data)
    sandbox.declare(Model("m.bin", url), processor=PROC)
    assert sandbox.run("sync").code == 0
    installed = sandbox.data_dir(PROC) / "m.bin"
    installed.chmod(0o644)
    with open(installed, "ab") as fh:  # in place: the cache's hardlinked blob is this very file
        fh.write(b"appended")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert "cache's copy" in r.err and "fetched again" in r.err, r.err
    assert installed.read_bytes() == data and server.count("/m.bin") == 2
    # a deleted file is repaired from the intact cache: no download
    installed.unlink()
    assert sandbox.run("sync").code == 0 and installed.read_bytes() == data and server.count("/m.bin") == 2


def test_a_first_download_cut_short_without_content_length_is_not_installed(sandbox, server):
    """No lock, no pin, no Content-Length: a connection cut short looks like the end of the body."""
    import gzip

    from httpserver import Fault

    model = gzip.compress(os.urandom(200_000))
    url = server.add("/m.pyrnn.gz", model)
    server.faults["/m.pyrnn.gz"] = Fault(no_length=True, truncate_at=len(model) // 2)
    sandbox.declare(Model("m.pyrnn.gz", url), processor=PROC, network="retries = 1\nbackoff = 0.01")
    r = sandbox.run("sync")
    assert r.code == 3 and "without a Content-Length" in r.err and "gzip" in r.err, r.err
    assert not (sandbox.data_dir(PROC) / "m.pyrnn.gz").exists() and not sandbox.lock.exists()
    del server.faults["/m.pyrnn.gz"]  # the server recovers: the whole body arrives and is installed
    assert sandbox.run("sync").code == 0
    assert (sandbox.data_dir(PROC) / "m.pyrnn.gz").read_bytes() == model


def test_committing_a_hardlink_over_the_same_file_leaves_no_temp_name(tmp_path):
    """Two syncs placing one cache blob: the second rename finds both names linked to one file, where
    rename(2) does nothing. Nothing may be left behind (a race once seen in a concurrent-sync test)."""
    from ocrd_models.modelsync.install.obtain import commit

    blob = tmp_path / "blob"
    blob.write_bytes(b"model")
    final, temp = tmp_path / "m.bin", tmp_path / ".modelsync-tmp-1.x.m.bin.part"
    os.link(blob, final)
    os.link(blob, temp)
    commit(temp, final)
    assert final.read_bytes() == b"model" and not temp.exists()
