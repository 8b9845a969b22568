"""Install records: one index per directory, written once per sync, safe with concurrent writers."""

from __future__ import annotations

import json
import os
import threading

import pytest
from conftest import Model, sha256

from ocrd_models.modelsync.digest import StatSig
from ocrd_models.modelsync.plan.records import InstallRecord, RecordStore

PROC = "ocrd-kraken-recognize"


def _rec(path, name: str, digest: str = "d" * 64) -> InstallRecord:
    return InstallRecord(str(path), PROC, name, digest, False, {"": StatSig(1, 2, 3)})


def test_a_sync_writes_one_record_index_per_directory(sandbox, server):
    blobs = {f"m{i}.mlmodel": os.urandom(1000 + i) for i in range(12)}
    sandbox.declare(*(Model(n, server.add("/" + n, b)) for n, b in blobs.items()), processor=PROC)
    assert sandbox.run("sync", "--link-mode", "copy").code == 0  # copies: only records vouch for them
    root = sandbox.state / "ocrd-modelsync" / "records"
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    indexes = [f for f in files if f.endswith(".json")]
    assert len(indexes) == 1 and indexes[0].startswith("dirs/"), files
    doc = json.loads((root / indexes[0]).read_text())
    assert doc["dir"] == str(sandbox.data_dir(PROC))
    assert {n: r["digest"] for n, r in doc["records"].items()} == {n: sha256(b) for n, b in blobs.items()}
    # The records vouch for the files: the next plan trusts them without hashing, and notices a change.
    from ocrd_models.modelsync.plan import observe as state

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed although a record vouches")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state, "digest_path", no_hashing)
        plan = sandbox.run("plan")
    assert plan.code == 0 and "12 to keep" in plan.err, plan.err
    (sandbox.data_dir(PROC) / "m3.mlmodel").write_bytes(b"changed")
    plan = sandbox.run("plan")
    assert "m3.mlmodel" in plan.out + plan.err and "11 to keep" in plan.err, plan.out + plan.err


def test_concurrent_batches_into_one_directory_keep_every_record(tmp_path):
    folder = tmp_path / "models"
    stores = [RecordStore(tmp_path / "state") for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def write(k: int) -> None:
        with stores[k].batch():
            for i in range(25):
                stores[k].put(_rec(folder / f"s{k}-{i}", f"s{k}-{i}"))
            barrier.wait()  # all four flush at the same moment

    threads = [threading.Thread(target=write, args=(k,)) for k in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fresh = RecordStore(tmp_path / "state")
    assert sorted(r.name for r in fresh.all()) == sorted(f"s{k}-{i}" for k in range(4) for i in range(25))
    assert fresh.get(folder / "s2-7").name == "s2-7"


def test_inside_a_batch_reads_see_pending_changes_and_nothing_is_written_before_the_end(tmp_path):
    store = RecordStore(tmp_path / "state")
    path = tmp_path / "models" / "a"
    store.put(_rec(path, "a"))
    with store.batch():
        store.put(_rec(path, "a", "e" * 64))
        store.delete(tmp_path / "models" / "gone")
        assert store.get(path).digest == "e" * 64
        assert RecordStore(tmp_path / "state").get(path).digest == "d" * 64  # not yet on disk
    assert RecordStore(tmp_path / "state").get(path).digest == "e" * 64
    store.delete(path)
    assert store.get(path) is None and RecordStore(tmp_path / "state").all() == []


def test_records_of_older_versions_are_read_and_deleted(tmp_path):
    import hashlib

    store = RecordStore(tmp_path / "state")
    path = str(tmp_path / "models" / "old.mlmodel")
    key = hashlib.sha256(os.fsencode(path)).hexdigest()
    legacy = tmp_path / "state" / "records" / key[:2] / f"{key}.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(_rec(path, "old.mlmodel").to_json())
    assert store.get(path).digest == "d" * 64
    assert [r.path for r in store.all()] == [path]
    store.delete(path)
    assert not legacy.exists() and store.get(path) is None


def test_a_damaged_index_counts_as_no_records(tmp_path):
    store = RecordStore(tmp_path / "state")
    folder = tmp_path / "models"
    store.put(_rec(folder / "a", "a"))
    store.put(_rec(folder / "c", "c"))
    index = next((tmp_path / "state" / "records" / "dirs").glob("*.json"))
    doc = json.loads(index.read_text())
    doc["records"]["a"] = "not a record"
    index.write_text(json.dumps(doc))
    assert RecordStore(tmp_path / "state").get(folder / "a") is None
    assert [r.name for r in RecordStore(tmp_path / "state").all()] == ["c"]  # the others still count
    index.write_text("{ truncated")
    assert RecordStore(tmp_path / "state").get(folder / "a") is None
    store.put(_rec(folder / "b", "b"))  # a damaged index is replaced by the next write
    assert RecordStore(tmp_path / "state").get(folder / "b").name == "b"
