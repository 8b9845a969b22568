"""Segmented downloads: one large file over several connections, end to end through a real server on
127.0.0.1 and real processes. The bytes installed are the server's, byte for byte, whatever the server
does with ranges; a killed download resumes in the next process asking only for what is missing; a
tar archive unpacks while it downloads and counts only when the download verified."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import tarfile
import threading
import time
import tomllib
from pathlib import Path

import pytest
from conftest import Model, sha256, tmpfs
from httpserver import Fault

MiB = 1 << 20
PROC = "ocrd-kraken-recognize"
NAME = "big.mlmodel"
MODELSYNC = str(Path(os.sys.executable).parent / "modelsync")
SEGMENTED = "segments = 4\nsegment_from_mib = 1"
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


@pytest.fixture(autouse=True)
def fast_retries(sandbox, monkeypatch):
    monkeypatch.setenv("MODELSYNC_BACKOFF", "0.05")
    monkeypatch.setenv("MODELSYNC_READ_TIMEOUT", "2")


def _installed(sandbox, name: str = NAME) -> bytes | None:
    path = sandbox.data_dir(PROC) / name
    return path.read_bytes() if path.exists() else None


def _requests(server, path: str) -> list[dict[str, str]]:
    return [h for p, h in server.headers_seen if p == path]


def _asked(server, path: str) -> list[tuple[int, int]]:
    """The [start, end) ranges of the bounded range requests that reached ``path``."""
    out = []
    for h in _requests(server, path):
        m = _RANGE.fullmatch(h.get("Range") or "")
        if m:
            out.append((int(m.group(1)), int(m.group(2)) + 1))
    return out


def _lock_sha(sandbox) -> str:
    return tomllib.loads((sandbox.project / "models.lock").read_text())["resource"][0]["sha256"]


def _partials(sandbox) -> list[Path]:
    root = sandbox.cache / "ocrd-modelsync" / "partial"
    return sorted(root.iterdir()) if root.is_dir() else []


def _sync_while(sandbox, delay: float, action):
    """``sandbox.run("sync")`` with ``action`` done ``delay`` seconds into it (a file swapped, a disk filled)."""
    timer = threading.Timer(delay, action)
    timer.start()
    try:
        return sandbox.run("sync")
    finally:
        timer.cancel()
        timer.join()


def _killed(sandbox, failpoint: str) -> subprocess.CompletedProcess:
    """``modelsync sync`` in a new process, SIGKILLed at ``failpoint`` (MODELSYNC_FAILPOINTS)."""
    env = {**sandbox.env(), "MODELSYNC_FAILPOINTS": failpoint}
    return subprocess.run([MODELSYNC, "sync"], cwd=sandbox.project, env=env, capture_output=True, text=True,
                          timeout=120)


def _sync_big(sandbox, server, mib: int, *, fault: Fault | None = None, rate: int | None = None,
              pin: bool = False, network: str = SEGMENTED) -> tuple[bytes, object]:
    """Serve ``mib`` MiB of random bytes at /big (with ``fault``, at ``rate`` per response), declare them
    (pinned if ``pin``) and sync: (the bytes, the run's result)."""
    blob = os.urandom(mib * MiB)
    url = server.add("/big", blob)
    server.rate = rate
    if fault is not None:
        server.faults["/big"] = fault
    sandbox.declare(Model(NAME, url, sha256=sha256(blob) if pin else None), processor=PROC, network=network)
    return blob, sandbox.run("sync")


def test_a_large_file_comes_over_several_connections_byte_for_byte(sandbox, server):
    # 8 MiB/s per response: several connections at once are faster than one
    blob, r = _sync_big(sandbox, server, 24, rate=8 * MiB, pin=True)
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob
    assert server.max_inflight >= 2  # the connections overlapped
    asked = _asked(server, "/big")
    assert len(asked) >= 2
    etag = '"' + sha256(blob)[:16] + '"'
    assert all(h.get("If-Range") == etag for h in _requests(server, "/big") if h.get("Range"))
    assert all(0 < start < end <= len(blob) for start, end in asked)
    assert list(sandbox.root.rglob(".modelsync-tmp-*")) == [] and _partials(sandbox) == []


def test_segmented_and_single_stream_install_the_same_bytes(sandbox, server, tmp_path):
    blob = os.urandom(9 * MiB + 12345)  # not a multiple of any chunk size
    url = server.add("/big", blob)
    sandbox.declare(Model(NAME, url), processor=PROC, network=SEGMENTED)
    assert sandbox.run("sync").code == 0
    segmented = _installed(sandbox)
    assert len(_asked(server, "/big")) >= 1
    sandbox.declare(Model("single.mlmodel", url), processor=PROC, network="segments = 1")
    server.headers_seen.clear()
    assert sandbox.run("sync").code == 0
    assert _asked(server, "/big") == []  # one connection, no ranges
    assert segmented == _installed(sandbox, "single.mlmodel") == blob


def test_files_below_the_threshold_use_one_connection(sandbox, server):
    blob = os.urandom(3 * MiB)
    url = server.add("/big", blob)
    sandbox.declare(Model(NAME, url), processor=PROC, network="segments = 4\nsegment_from_mib = 8")
    assert sandbox.run("sync").code == 0
    assert _installed(sandbox) == blob and _asked(server, "/big") == []  # below the threshold


def test_a_server_that_answers_a_range_with_the_whole_file_gets_one_connection(sandbox, server):
    blob = os.urandom(12 * MiB)
    url = server.add("/big", blob)
    server.ignore_range.add("/big")  # says Accept-Ranges: bytes, then answers 200 to every range
    server.rate = 16 * MiB
    sandbox.declare(Model(NAME, url, sha256=sha256(blob)), processor=PROC, network=SEGMENTED)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob
    last = _requests(server, "/big")[-1]
    assert "Range" not in last  # started over on one connection, from byte 0


def test_a_file_that_changes_during_a_segmented_download_is_never_mixed(sandbox, server):
    old, new = os.urandom(16 * MiB), os.urandom(16 * MiB)
    url = server.add("/big", old)
    server.rate = 4 * MiB  # about a second per connection: the change lands mid-download
    sandbox.declare(Model(NAME, url), processor=PROC, network=SEGMENTED)
    r = _sync_while(sandbox, 0.6, lambda: server.files.__setitem__("/big", new))
    assert r.code == 0, r.err
    got = _installed(sandbox)
    assert got in (old, new)  # never old bytes beside new ones
    assert _lock_sha(sandbox) == sha256(got)


def test_connections_that_drop_at_random_still_give_the_right_bytes(sandbox, server):
    # The first six requests break mid-body.
    blob, r = _sync_big(sandbox, server, 16, fault=Fault(reset_at=700_000, times=6), pin=True)
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob


def test_a_stalled_connection_is_replaced_not_waited_for(sandbox, server, monkeypatch):
    blob = os.urandom(16 * MiB)
    url = server.add("/big", blob)
    # The first response goes silent after 1 MiB for far longer than read_timeout (2 s): its range is
    # re-queued to another connection, and the run does not wait the stall out.
    server.faults["/big"] = Fault(stall_at=MiB, stall_for=30, times=1)
    sandbox.declare(Model(NAME, url, sha256=sha256(blob)), processor=PROC, network=SEGMENTED)
    t0 = time.monotonic()
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob
    assert time.monotonic() - t0 < 15


def _resume_asking(sandbox, server, blob: bytes, kept) -> list[tuple[int, int]]:
    """Sync again at full speed: the kept download is resumed into ``blob``, and none of the ranges the
    server was asked for overlaps one of ``kept`` (on disk already). Returns the ranges asked for."""
    server.rate = None
    server.headers_seen.clear()
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob
    asked = _asked(server, "/big")
    assert asked
    for start, end in asked:
        assert all(end <= s or start >= e for s, e in kept), (start, end, kept)
    return asked


def test_a_killed_segmented_download_resumes_asking_only_for_the_missing_ranges(sandbox, server):
    blob = os.urandom(24 * MiB)
    url = server.add("/big", blob)
    server.rate = 2 * MiB  # per connection: about 3 s for the whole file over 4
    sandbox.declare(Model(NAME, url, sha256=sha256(blob)), processor=PROC, network=SEGMENTED)
    first = _killed(sandbox, "download=40")  # at the 40th read of a connection: a few MiB in
    assert first.returncode == -signal.SIGKILL, first.stderr
    [kept] = _partials(sandbox)
    state = json.loads((kept / "state.json").read_text())
    done = [tuple(r) for r in state["ranges"]] or [(0, state["size"])]
    have = sum(e - s for s, e in done)
    assert 0 < have < len(blob) and state["total"] == len(blob)

    asked = _resume_asking(sandbox, server, blob, done)
    assert all("Range" in h for h in _requests(server, "/big"))  # no request from byte 0
    assert _union(asked) == _union(_gaps(done, len(blob)))  # and everything else was
    assert _partials(sandbox) == []


def _union(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [tuple(r) for r in out]


def _gaps(done, total: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    for start, end in sorted(done):
        if start > pos:
            out.append((pos, start))
        pos = end
    return out + ([(pos, total)] if pos < total else [])


def _kept_after_a_kill(sandbox, server, mib: int) -> tuple[bytes, Path, dict]:
    """A segmented download of ``mib`` MiB SIGKILLed a few MiB in: (the bytes, its partial, its record)."""
    blob = os.urandom(mib * MiB)
    url = server.add("/big", blob)
    server.rate = 2 * MiB
    sandbox.declare(Model(NAME, url), processor=PROC, network=SEGMENTED)
    assert _killed(sandbox, "download=40").returncode == -signal.SIGKILL
    [kept] = _partials(sandbox)
    return blob, kept, json.loads((kept / "state.json").read_text())


def test_a_tampered_range_record_is_not_trusted(sandbox, server):
    blob, kept, state = _kept_after_a_kill(sandbox, server, 12)
    state["ranges"] = [[0, len(blob)]]  # claims every byte (holes of zeros would be installed)
    state["size"] = len(blob)
    (kept / "state.json").write_text(json.dumps(state))
    server.rate = None
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob  # the record's claim was refused (data shorter than it says)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_tar_archive_unpacks_while_it_downloads(sandbox, server):
    members = {f"model/part{i}.bin": os.urandom(2 * MiB) for i in range(4)}
    archive = _tar_gz(members)
    url = server.add("/model.tar.gz", archive)
    server.rate = 2 * MiB  # about 4 s: the first member is written long before the last byte arrives
    sandbox.declare(Model("model", url, type="archive", path_in_archive="model"), processor=PROC)
    first = _killed(sandbox, "unpack=1")  # when the first member is written
    assert first.returncode == -signal.SIGKILL, first.stderr
    # The download was still under way: no verified blob in the cache, its bytes still arriving.
    blobs = sandbox.cache / "ocrd-modelsync" / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))
    assert not (sandbox.data_dir(PROC) / "model").exists()

    server.rate = None
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    got = {p.name: p.read_bytes() for p in (sandbox.data_dir(PROC) / "model").iterdir()}
    assert got == {k.split("/")[1]: v for k, v in members.items()}


def test_an_archive_that_changes_while_it_unpacks_installs_only_the_verified_tree(sandbox, server):
    old = _tar_gz({"model/a.bin": os.urandom(3 * MiB), "model/b.bin": os.urandom(3 * MiB)})
    new_members = {"model/a.bin": os.urandom(3 * MiB), "model/c.bin": os.urandom(3 * MiB)}
    new = _tar_gz(new_members)
    url = server.add("/model.tar.gz", old)
    server.rate = 4 * MiB
    sandbox.declare(Model("model", url, type="archive", path_in_archive="model"), processor=PROC,
                    network=SEGMENTED)
    r = _sync_while(sandbox, 0.5, lambda: server.files.__setitem__("/model.tar.gz", new))
    assert r.code == 0, r.err
    got = {p.name: p.read_bytes() for p in (sandbox.data_dir(PROC) / "model").iterdir()}
    expected_new = {k.split("/")[1]: v for k, v in new_members.items()}
    if got != expected_new:  # the swap came after the download: then the old tree, whole
        with tarfile.open(fileobj=io.BytesIO(old)) as tf:
            assert got == {m.name.split("/")[1]: tf.extractfile(m).read() for m in tf.getmembers()}


def test_a_pinned_archive_that_does_not_verify_installs_nothing_it_unpacked(sandbox, server):
    archive = _tar_gz({"model/a.bin": os.urandom(2 * MiB)})
    url = server.add("/model.tar.gz", archive)
    sandbox.declare(Model("model", url, type="archive", path_in_archive="model", sha256="0" * 64),
                    processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 4, r.err  # a checksum mismatch (README: exit codes)
    assert not (sandbox.data_dir(PROC) / "model").exists()
    assert list(sandbox.root.rglob(".modelsync-tmp-*")) == []


def test_connections_to_one_host_stay_within_the_cap(sandbox, server):
    blobs = {f"/m{i}": os.urandom(8 * MiB) for i in range(3)}
    models = [Model(f"m{i}.bin", server.add(path, data)) for i, (path, data) in enumerate(blobs.items())]
    server.rate = 8 * MiB
    sandbox.declare(*models, processor=PROC, settings="parallel = 3",
                    network="segments = 4\nsegment_from_mib = 1\nconnections_per_host = 3")
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert 2 <= server.max_inflight <= 3
    for i, data in enumerate(blobs.values()):
        assert _installed(sandbox, f"m{i}.bin") == data


def test_the_range_book_splits_merges_and_never_hands_a_byte_out_twice():
    from ocrd_models.modelsync.install.ranges import RangeBook

    book = RangeBook(100, done=[(10, 20), (20, 30), (50, 60)], split_min=5)
    assert book.done() == [(10, 30), (50, 60)]
    assert book.gaps() == [(0, 10), (30, 50), (60, 100)]
    jobs = [book.take() for _ in range(3)]
    assert [(j.pos, j.end) for j in jobs] == [(0, 10), (30, 50), (60, 100)]
    thief = book.take()  # nothing waits: half of the largest range left (60-100)
    assert (thief.pos, thief.end, jobs[2].end) == (80, 100, 80)
    assert book.claim(jobs[2], 30) == 20  # the victim keeps only what is still its own
    book.wrote(60, 20)
    book.give_back(jobs[0])
    assert book.take().pos == 0  # a range given back waits for the next idle connection
    assert book.prefix() == 0 and book.have() == 50


def test_a_resume_record_with_impossible_ranges_is_refused():
    from ocrd_models.modelsync.install.partial import _state

    good = {"url": "u", "size": 10, "total": 100, "etag": '"e"', "last_modified": None, "date_validator": False,
            "boot": "", "durable": True, "ranges": [[0, 10], [20, 30]]}
    assert _state(good) is not None
    for ranges, size in ([[[0, 10], [5, 30]], 10], [[[0, 10], [20, 300]], 10], [[[20, 10]], 0],
                         [[[0, 10], [10, 20]], 10], [[[0, 10]], 5], [[[1, 10]], 10], [[["0", 10]], 10]):
        assert _state({**good, "ranges": ranges, "size": size}) is None, ranges


@pytest.fixture
def small_disk(sandbox):
    """A 16 MiB tmpfs as the cache (root only)."""
    with tmpfs(sandbox.root / "small", "16m") as mnt:
        yield mnt


def test_a_segmented_download_larger_than_the_free_space_fails_before_writing(sandbox, server, small_disk):
    blob = os.urandom(20 * MiB)
    url = server.add("/big", blob)
    sandbox.declare(Model(NAME, url), processor=PROC, settings=f'cache_dir = "{small_disk}"', network=SEGMENTED)
    r = sandbox.run("sync")
    assert r.code == 8, r.err
    assert f"mounted at {small_disk}" in r.err and "needs" in r.err
    assert _asked(server, "/big") == []  # no second connection was opened
    assert sum(p.stat().st_size for p in small_disk.rglob("*") if p.is_file()) < 64 * 1024


def test_a_disk_that_fills_during_a_segmented_download_keeps_nothing_and_converges(sandbox, server, small_disk):
    blob = os.urandom(12 * MiB)
    url = server.add("/big", blob)
    server.rate = 4 * MiB  # per connection: the filler below lands mid-download
    sandbox.declare(Model(NAME, url), processor=PROC, settings=f'cache_dir = "{small_disk}"', network=SEGMENTED)
    filler = small_disk / "filler"
    r = _sync_while(sandbox, 0.3, lambda: filler.write_bytes(b"x" * (8 * MiB)))
    assert r.code == 8, r.err
    assert "full" in r.err and str(small_disk) in r.err and "Traceback" not in r.err
    assert _installed(sandbox) is None
    left = [p for p in small_disk.rglob("*") if p.is_file() and p != filler]
    assert sum(p.stat().st_size for p in left) < 64 * 1024  # temp file and partial gone: the space is free
    filler.unlink()
    server.rate = None
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob


# -- found by an attack from outside -----------------------------------------------------------------

def test_a_server_refusing_a_second_connection_still_gives_the_file(sandbox, server):
    # One connection works, every further one gets 503: the extra connections give up, their ranges
    # wait, and the one that works fetches them after its own.
    blob, r = _sync_big(sandbox, server, 16, fault=Fault(status=503, beyond_inflight=1), rate=8 * MiB)
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob


def test_range_requests_that_always_fail_end_the_run_within_its_retry_time(sandbox, server, monkeypatch):
    # The plain GET works, every range request gets 503: connections that used up their retries are not
    # replaced by fresh ones forever (they were, four times a second).
    blob = os.urandom(16 * MiB)
    url = server.add("/big", blob)
    server.rate = 4 * MiB
    server.faults["/big"] = Fault(status=503, only_ranges=True)
    monkeypatch.setenv("MODELSYNC_RETRY_MAX_TIME", "3")
    sandbox.declare(Model(NAME, url), processor=PROC, network=SEGMENTED)
    t0 = time.monotonic()
    r = sandbox.run("sync")
    assert r.code == 3, r.err
    assert time.monotonic() - t0 < 30
    assert "segments = 1" in r.err and "Traceback" not in r.err
    assert _installed(sandbox) is None


def test_a_record_claiming_ranges_the_file_has_holes_in_is_not_trusted(sandbox, server):
    blob, kept, state = _kept_after_a_kill(sandbox, server, 16)
    assert len(state["ranges"]) > 1  # segments were written apart: the file has holes between them
    length = (kept / "data").stat().st_size
    state["ranges"], state["size"] = [[0, length]], length  # within the file's length, over its holes
    (kept / "state.json").write_text(json.dumps(state))
    server.rate = None
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob  # never zeros from a hole


def test_a_connection_trickling_above_the_speed_floor_hands_its_range_over(sandbox, server):
    # One range request trickles at 1500 B/s, above min_speed: never cut.
    t0 = time.monotonic()
    blob, r = _sync_big(sandbox, server, 16, fault=Fault(rate=1500, only_ranges=True, times=1), pin=True)
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob
    assert time.monotonic() - t0 < 15  # its megabytes would take an hour at 1500 B/s


def test_a_download_without_length_that_was_kept_for_a_resume_still_installs(sandbox, server):
    blob = os.urandom(3 * MiB)
    url = server.add("/big", blob)
    server.rate = MiB  # three seconds: long enough to be moved into the partials meanwhile
    server.faults["/big"] = Fault(no_length=True)
    sandbox.declare(Model(NAME, url), processor=PROC)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob


def test_a_server_slow_to_answer_ranges_does_not_make_connections_churn(sandbox, server):
    # Each range request waits 1.5 s for its first byte (TLS far away, a CDN): a connection is judged by
    # its rate from its first byte, so none is handed over before it answers (16 hand-overs, 3-12x
    # slower, before).
    # The plain GET at 8 MiB/s: the range requests arrive while it is under way.
    blob, r = _sync_big(sandbox, server, 24, fault=Fault(head_delay=1.5, only_ranges=True), rate=8 * MiB,
                        pin=True)
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob
    assert server.count("/big") <= 8, server.count("/big")  # 1 GET + 3 ranges, and a few steals at most


def test_a_server_without_a_validator_gets_one_connection(sandbox, raw):
    # Accept-Ranges and a length, but neither ETag nor Last-Modified: nothing could guard a range, so
    # the file comes over the one plain GET.
    blob = os.urandom(3 * MiB)
    server = raw(lambda request: [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nAccept-Ranges: bytes\r\n\r\n"
                                  % len(blob), blob])
    sandbox.declare(Model(NAME, server.url("/big")), processor=PROC, network=SEGMENTED)
    r = sandbox.run("sync")
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob
    assert len(server.requests) == 1 and "range" not in {k.lower() for k in server.requests[0].headers}


def test_a_record_whose_first_range_is_not_at_byte_0_resumes(sandbox, server):
    # A connection far into the file may have written before the one at byte 0 did: the record then
    # holds ranges but no gap-free start (claiming less than is on disk is always safe to resume).
    blob, kept, state = _kept_after_a_kill(sandbox, server, 16)
    later = [r for r in state["ranges"] if r[0] > 0]
    assert later
    state["ranges"], state["size"] = later, 0
    (kept / "state.json").write_text(json.dumps(state))
    _resume_asking(sandbox, server, blob, later)


def test_modelsync_segments_1_overrides_the_setting(sandbox, server, monkeypatch):
    monkeypatch.setenv("MODELSYNC_SEGMENTS", "1")
    blob, r = _sync_big(sandbox, server, 8)
    assert r.code == 0, r.err
    assert _installed(sandbox) == blob and _asked(server, "/big") == []
