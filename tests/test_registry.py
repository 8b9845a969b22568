"""The registry against every real ocrd-tool.json, its generator, and the precedence rule."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import yaml
from conftest import OCRD_TOOL_DIR, REPO, Model

from ocrd_models.modelsync.resources.index import ResourceIndex, bundled_index
from ocrd_models.modelsync.resources.entry import ResourceEntry
from ocrd_models.modelsync.config import Environment

TOOL_FILES = sorted(OCRD_TOOL_DIR.glob("*.json"))


def _origins_by_file() -> dict[str, str]:
    index = bundled_index()
    return {s["file"]: f"{s['repo']}@{(s.get('commit') or s.get('version') or s['file'])[:12]}"
            for s in index["sources"]}


def _rank(origin: str) -> int:
    origins = list(_origins_by_file().values())
    return origins.index(origin)


def test_shared_data_is_there():
    assert len(TOOL_FILES) == 48, "../shared/ocrd-tool must hold the 48 real ocrd-tool.json files"


@pytest.mark.parametrize("path", TOOL_FILES, ids=lambda p: p.stem)
def test_every_real_entry_is_in_the_registry_or_superseded_by_a_newer_source(path):
    reg = ResourceIndex.load(Environment({}), user_database=False)
    origin = _origins_by_file()[path.name]
    data = json.loads(path.read_text())
    for exe, tool in data.get("tools", {}).items():
        assert reg.knows_processor(exe)
        if tool.get("resource_locations"):
            assert reg.resource_locations(exe) == tool["resource_locations"]
        for raw in tool.get("resources", []):
            expected = ResourceEntry.from_ocrd(exe, raw, "bundled")
            got = reg.lookup(exe, raw["name"])
            assert got is not None, f"{exe} {raw['name']} missing"
            if got == expected:
                continue
            # Only a newer source may replace an entry, and then for the same (processor, name).
            winner = next(e for e in bundled_index()["processors"][exe]["resources"] if e["name"] == raw["name"])
            assert _rank(winner["origin"]) > _rank(origin), f"{exe} {raw['name']}: replaced by an older source"


def test_counts_match_the_real_files():
    total, procs = 0, set()
    for path in TOOL_FILES:
        for exe, tool in json.loads(path.read_text()).get("tools", {}).items():
            if tool.get("resources"):
                procs.add(exe)
                total += len(tool["resources"])
    assert (total, len(procs)) == (246, 15)
    reg = ResourceIndex.load(Environment({}), user_database=False)
    # Every real processor with resources is there, plus those only the historical core lists name.
    assert procs <= set(reg.processors_with_resources())


def test_historical_core_lists_are_included_and_tarball_means_archive():
    reg = ResourceIndex.load(Environment({}), user_database=False)
    configs = reg.lookup("ocrd-tesserocr-recognize", "configs")
    assert configs is not None and configs.type == "archive"
    assert configs.path_in_archive == "tesseract-main/tessdata/configs"
    # Listed only in the old core lists:
    assert reg.lookup("ocrd-cis-ocropy-recognize", "LatinHist.pyrnn.gz") is not None


def test_index_file_is_exactly_what_the_generator_writes(tmp_path):
    out = tmp_path / "registry.json"
    subprocess.run([sys.executable, str(REPO / "tools" / "build_registry.py"), str(OCRD_TOOL_DIR), "-o", str(out)],
                   check=True, capture_output=True)
    committed = REPO / "ocrd_models" / "modelsync" / "data" / "registry.json"
    assert out.read_bytes() == committed.read_bytes()


def _fake_processor(bindir, exe: str, resources: list[dict], counter) -> None:
    bindir.mkdir(exist_ok=True)
    script = bindir / exe
    answer = json.dumps({"executable": exe, "description": "fake", "resources": resources})
    script.write_text(f"#!/bin/sh\necho call >> {counter}\ncat <<'EOF'\n{answer}\nEOF\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_precedence_manifest_over_user_db_over_processor_over_bundled(sandbox, server):
    name = "austriannewspapers.mlmodel"  # a real bundled name of ocrd-kraken-recognize
    db_url = server.add("/db.mlmodel", b"from-user-database")
    proc_url = server.add("/proc.mlmodel", b"from-processor")
    counter = sandbox.root / "calls"
    _fake_processor(sandbox.root / "bin", "ocrd-kraken-recognize",
                    [{"name": name, "url": proc_url, "description": "d", "size": 1},
                     {"name": "only-proc.mlmodel", "url": proc_url, "description": "d", "size": 1}], counter)
    sandbox.monkeypatch.setenv("PATH", f"{sandbox.root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    sandbox.declare(name, "only-proc.mlmodel", processor="ocrd-kraken-recognize")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    target = sandbox.data_dir("ocrd-kraken-recognize") / name
    assert target.read_bytes() == b"from-processor"  # processor beats bundled
    # The user database beats the processor.
    (sandbox.config / "ocrd").mkdir()
    (sandbox.config / "ocrd" / "resources.yml").write_text(yaml.safe_dump(
        {"ocrd-kraken-recognize": [{"name": name, "url": db_url, "description": "mine", "size": 1}]}))
    sandbox.lock.unlink()
    target.unlink()
    assert sandbox.run("sync").code == 0
    assert target.read_bytes() == b"from-user-database"
    # An inline entry beats everything.
    inline = server.add("/inline.mlmodel", b"inline")
    sandbox.declare(Model(name, inline), processor="ocrd-kraken-recognize")
    assert sandbox.run("sync").code == 0
    assert target.read_bytes() == b"inline"
    r = sandbox.run("available", "ocrd-kraken-recognize", "--json")
    sources = {e["name"]: e["source"] for e in json.loads(r.out)["resources"]}
    assert sources[name] == "user-database" and sources["only-proc.mlmodel"] == "processor"
    assert sources["digitue.mlmodel"] == "bundled"


def test_user_database_is_only_read(sandbox, server):
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir()
    text = yaml.safe_dump({"ocrd-foo": [{"name": "a", "url": server.add("/a", b"A"), "description": "d",
                                         "size": 1}]})
    db.write_text(text)
    before = db.stat().st_mtime_ns
    time.sleep(0.01)
    sandbox.declare("a", processor="ocrd-foo")
    assert sandbox.run("sync").code == 0
    assert (sandbox.data_dir("ocrd-foo") / "a").read_bytes() == b"A"
    assert db.read_text() == text and db.stat().st_mtime_ns == before


def test_broken_user_database_is_a_warning_not_a_crash(sandbox):
    db = sandbox.config / "ocrd" / "resources.yml"
    db.parent.mkdir()
    db.write_text("ocrd-foo: [ {name: a")
    reg = ResourceIndex.load(Environment.from_os())
    assert reg.lookup("ocrd-tesserocr-recognize", "deu.traineddata") is not None
    assert any("not valid YAML" in w for w in reg.warnings)


def test_available_lists_all_known_resources_with_size_and_source(sandbox):
    r = sandbox.run("available", "--json")
    assert r.code == 0
    entries = json.loads(r.out)["resources"]
    assert len(entries) == 253
    names = {(e["processor"], e["name"]) for e in entries}
    assert ("ocrd-calamari-recognize", "qurator-gt4histocr-1.0") in names
    r = sandbox.run("available", "ocrd-calamari-recognize")
    assert "qurator-gt4histocr-1.0" in r.out and "MiB" in r.out and "bundled" in r.out


def test_available_unknown_processor_suggests(sandbox):
    r = sandbox.run("available", "ocrd-calamari-recognise")
    assert r.code == 2
    assert "Did you mean 'ocrd-calamari-recognize'" in r.err
