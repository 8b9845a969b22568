"""Locations, lookup order, shadowing and adoption of models put there by others."""

from __future__ import annotations

import os
import stat
import tomllib

from conftest import Model, sha256

BLOB = os.urandom(30_000)


def test_each_location_kind_installs_into_ocrd_directory(sandbox, server):
    url = server.add("/m.mlmodel", BLOB)
    expected = {
        "cwd": sandbox.project / "m.mlmodel",
        "data": sandbox.data / "ocrd-resources" / "ocrd-kraken-recognize" / "m.mlmodel",
        "system": sandbox.system / "ocrd-kraken-recognize" / "m.mlmodel",
        "./custom/dir": sandbox.project / "custom" / "dir" / "m.mlmodel",
    }
    for location, path in expected.items():
        sandbox.lock.unlink(missing_ok=True)
        sandbox.declare(Model("m.mlmodel", url, location=location), processor="ocrd-kraken-recognize")
        r = sandbox.run("sync")
        assert r.code == 0, r.err
        assert path.read_bytes() == BLOB, location
        path.unlink()


def test_default_location_is_data_or_the_tools_first_resource_location(sandbox, server):
    url = server.add("/a", BLOB)
    sandbox.declare(processors={"ocrd-kraken-recognize": [Model("k.mlmodel", url)],
                                "ocrd-tesserocr-recognize": [Model("t.traineddata", url)]})
    assert sandbox.run("sync").code == 0
    assert (sandbox.data_dir("ocrd-kraken-recognize") / "k.mlmodel").exists()
    assert (sandbox.tessdata / "t.traineddata").exists()  # resource_locations = ["module"]


def test_settings_location_and_per_processor_location(sandbox, server):
    url = server.add("/a", BLOB)
    sandbox.declare(settings='location = "system"\n[settings.locations]\nocrd-calamari-recognize = "cwd"',
                    processors={"ocrd-kraken-recognize": [Model("k.mlmodel", url)],
                                "ocrd-calamari-recognize": [Model("c.bin", url)]})
    assert sandbox.run("sync").code == 0
    assert (sandbox.system / "ocrd-kraken-recognize" / "k.mlmodel").exists()
    assert (sandbox.project / "c.bin").exists()


def test_tesserocr_processors_share_recognizes_tessdata(sandbox, server):
    url = server.add("/a", BLOB)
    sandbox.declare(Model("x.traineddata", url), processor="ocrd-tesserocr-segment")
    assert sandbox.run("sync").code == 0
    assert (sandbox.tessdata / "x.traineddata").read_bytes() == BLOB
    entry = tomllib.loads(sandbox.lock.read_text())["resource"][0]
    assert entry["processor"] == "ocrd-tesserocr-recognize"


def test_module_location_without_processor_is_a_clear_error(sandbox, server):
    sandbox.monkeypatch.delenv("TESSDATA_PREFIX")
    sandbox.declare("deu.traineddata", processor="ocrd-tesserocr-recognize")
    r = sandbox.run("plan")
    assert r.code == 2
    assert "TESSDATA_PREFIX" in r.err and "Traceback" not in r.err


def test_module_dir_comes_from_the_processor_and_is_cached(sandbox, server):
    bindir = sandbox.root / "bin"
    bindir.mkdir()
    moddir = sandbox.root / "site-packages" / "ocrd_kraken"
    moddir.mkdir(parents=True)
    counter = sandbox.root / "calls"
    exe = bindir / "ocrd-kraken-recognize"
    exe.write_text(f"#!/bin/sh\necho x >> {counter}\n"
                   f'if [ "$1" = "--dump-module-dir" ]; then echo {moddir}; exit 0; fi\n'
                   'echo \'{"executable": "ocrd-kraken-recognize", "resources": []}\'\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    sandbox.monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    url = server.add("/a", BLOB)
    sandbox.declare(Model("m.mlmodel", url, location="module"), processor="ocrd-kraken-recognize")
    assert sandbox.run("sync").code == 0
    assert (moddir / "m.mlmodel").read_bytes() == BLOB
    calls = len(counter.read_text().splitlines())
    assert sandbox.run("status").code == 0
    assert len(counter.read_text().splitlines()) == calls  # answers cached until the executable changes
    exe.write_text(exe.read_text() + "\n# changed\n")
    assert sandbox.run("status").code == 0
    assert len(counter.read_text().splitlines()) > calls


def test_existing_model_in_any_lookup_location_is_not_downloaded_again(sandbox, server):
    url = server.add("/m.mlmodel", BLOB)
    # Put there by `ocrd resmgr` or by hand, in the system location.
    (sandbox.system / "ocrd-kraken-recognize").mkdir()
    (sandbox.system / "ocrd-kraken-recognize" / "m.mlmodel").write_bytes(BLOB)
    sandbox.declare(Model("m.mlmodel", url), processor="ocrd-kraken-recognize")
    r = sandbox.run("plan")
    assert "keep" in r.out and "install" not in r.out
    assert sandbox.run("sync").code == 0
    assert server.count("/m.mlmodel") == 0
    entry = tomllib.loads(sandbox.lock.read_text())["resource"][0]
    assert entry["sha256"] == sha256(BLOB)  # adopted and locked by its hash


def test_processor_path_variable_is_in_the_lookup_order(sandbox, server):
    url = server.add("/m.mlmodel", BLOB)
    extra = sandbox.root / "extra"
    extra.mkdir()
    (extra / "m.mlmodel").write_bytes(BLOB)
    sandbox.monkeypatch.setenv("OCRD_KRAKEN_RECOGNIZE_PATH", f"/nonexistent:{extra}")
    sandbox.declare(Model("m.mlmodel", url), processor="ocrd-kraken-recognize")
    r = sandbox.run("status", "--json")
    import json

    (row,) = json.loads(r.out)["resources"]
    assert row["path"] == str(extra / "m.mlmodel")


def test_shadowing_copy_in_an_earlier_location_is_reported(sandbox, server):
    url = server.add("/m.mlmodel", BLOB)
    sandbox.declare(Model("m.mlmodel", url), processor="ocrd-kraken-recognize")
    assert sandbox.run("sync").code == 0
    (sandbox.project / "m.mlmodel").write_bytes(b"an old copy in the working directory")
    # One answer everywhere (issue 15): the processor would load the cwd copy, so nothing says "ok".
    import json

    (row,) = json.loads(sandbox.run("status", "--json").out)["resources"]
    assert row["state"] == "shadowed" and row["path"] == str(sandbox.project / "m.mlmodel")
    assert sandbox.run("plan", "--check").code == 7
    r = sandbox.run("resolve", "ocrd-kraken-recognize", "m.mlmodel")
    assert r.code == 4 and str(sandbox.project / "m.mlmodel") in r.err and r.out == ""
    assert sandbox.run("verify").code == 4
    # sync leaves the differing cwd copy alone (it is somebody's), keeps ours right, and says so.
    r = sandbox.run("sync")
    assert r.code == 4 and "the processor would load" in r.err and str(sandbox.project / "m.mlmodel") in r.err
    assert (sandbox.project / "m.mlmodel").read_bytes().startswith(b"an old copy")
    assert (sandbox.data_dir("ocrd-kraken-recognize") / "m.mlmodel").read_bytes() == BLOB
    assert "sha256" in sandbox.lock.read_text()  # ours stays locked
    (sandbox.project / "m.mlmodel").unlink()
    assert sandbox.run("plan", "--check").code == 0 and sandbox.run("sync").code == 0


def test_explicit_directory_off_the_lookup_path_is_warned_about(sandbox, server):
    url = server.add("/m.mlmodel", BLOB)
    sandbox.declare(Model("m.mlmodel", url, location="/tmp/../" + str(sandbox.root / "elsewhere")),
                    processor="ocrd-kraken-recognize")
    r = sandbox.run("plan")
    assert "OCRD_KRAKEN_RECOGNIZE_PATH" in r.err


def test_a_tesserocr_location_ocrd_never_looks_at_is_refused(sandbox, server):
    """ocrd-tesserocr-* find resources only in the module location (Tesseract's tessdata dir)."""
    url = server.add("/deu.traineddata", BLOB)
    for processor, location in (("ocrd-tesserocr-segment-region", "data"), ("ocrd-tesserocr-recognize", "./models")):
        sandbox.declare(Model("deu.traineddata", url, location=location), processor=processor)
        r = sandbox.run("plan")
        assert r.code == 2 and "only in its module location" in r.err and "TESSDATA_PREFIX" in r.err, r.err
    # The project-wide default location does not apply to a tool that restricts its locations.
    sandbox.declare(Model("deu.traineddata", url), processor="ocrd-tesserocr-recognize", settings='location = "data"')
    assert sandbox.run("sync").code == 0
    assert (sandbox.tessdata / "deu.traineddata").read_bytes() == BLOB
