"""The CLI as a person runs it: on a real pseudo-terminal, with progress bars, colours and Ctrl-C.

Ctrl-C is SIGINT to the terminal's foreground process group, as a keyboard sends it; the points
"while the install records are written" and "while the lock is written" are reached with a failpoint
that sends SIGINT to the process at exactly that step. After every interrupt: exit 130, no temp files
anywhere, every installed model intact, and models.lock naming exactly what is installed.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from conftest import Model, sha256
from ptyrun import run_on_pty

PROC = "ocrd-x"
SMALL = os.urandom(50_000)
BIG = os.urandom(3_000_000)


def _manifest(sandbox, server, names=("a-small.bin", "z-big.bin")) -> None:
    server.add("/a-small.bin", SMALL)
    server.add("/z-big.bin", BIG)
    sandbox.declare(*(Model(n, server.url("/" + n)) for n in names), processor=PROC, settings="parallel = 1")


def _temp_files(sandbox) -> list[Path]:
    return [p for p in sandbox.root.rglob(".modelsync-tmp-*")]


def _locked(sandbox) -> dict[str, str]:
    if not sandbox.lock.exists():
        return {}
    return {e["name"]: e["sha256"] for e in tomllib.loads(sandbox.lock.read_text()).get("resource", [])}


def _installed(sandbox) -> dict[str, str]:
    d = sandbox.data_dir(PROC)
    return {p.name: sha256(p.read_bytes()) for p in d.iterdir()} if d.is_dir() else {}


def _assert_consistent_after_interrupt(sandbox, r) -> None:
    assert r.code == 130, r.text
    assert "interrupted" in r.text and "Traceback" not in r.text and "unexpected" not in r.text, r.text
    assert _temp_files(sandbox) == []
    installed = _installed(sandbox)
    assert installed == {k: v for k, v in {"a-small.bin": sha256(SMALL), "z-big.bin": sha256(BIG)}.items()
                         if k in installed}, "an installed model is not exactly its bytes"
    assert _locked(sandbox) == installed, "models.lock must name exactly what is installed"
    assert r.raw.rfind(b"\x1b[?25h") >= r.raw.rfind(b"\x1b[?25l"), "the cursor was left hidden"


@pytest.fixture
def slow_server(server):
    server.rate = 400_000  # bytes per second per response: the big model takes several seconds
    return server


def test_sync_on_a_terminal_draws_bars_and_restores_the_cursor(sandbox, slow_server):
    _manifest(sandbox, slow_server)
    r = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env(), columns=80)
    assert r.code == 0, r.text
    assert "━" in r.text and "MB" in r.text or "MiB" in r.text, r.text  # a bar with a byte count was drawn
    assert "Traceback" not in r.text and "unexpected" not in r.text
    assert r.raw.rfind(b"\x1b[?25h") > r.raw.rfind(b"\x1b[?25l"), "the cursor was left hidden"
    assert _locked(sandbox) == _installed(sandbox) == {"a-small.bin": sha256(SMALL), "z-big.bin": sha256(BIG)}


def test_ctrl_c_before_any_download_finishes(sandbox, slow_server):
    _manifest(sandbox, slow_server, names=("z-big.bin",))
    r = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env(), columns=80, interrupt_after=1.0)
    _assert_consistent_after_interrupt(sandbox, r)
    assert _installed(sandbox) == {} and not sandbox.lock.exists()
    # Bars stop two columns short of the width: the "^C" a terminal echoes never wraps a line, which
    # made the display's last redraw land one line lower and leave a stale bar on the screen.
    bars = [line for line in _screen_lines(r.raw) if "━" in line]
    assert bars and all(len(line) <= 78 for line in bars), bars


def test_ctrl_c_after_one_model_finished_locks_that_one(sandbox, slow_server):
    _manifest(sandbox, slow_server)
    # parallel = 1 and plan order: a-small.bin is done while z-big.bin is still coming.
    r = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env(), interrupt_after=2.0)
    _assert_consistent_after_interrupt(sandbox, r)
    assert "a-small.bin" in _installed(sandbox) and "z-big.bin" not in _installed(sandbox)
    again = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env())
    assert again.code == 0, again.text
    assert slow_server.count("/a-small.bin") == 1  # not fetched twice


@pytest.mark.parametrize("point", ["index=1:int", "lock=1:int"])
def test_ctrl_c_while_records_or_the_lock_are_written(sandbox, server, point):
    _manifest(sandbox, server)
    env = {**sandbox.env(), "MODELSYNC_FAILPOINTS": point}
    r = run_on_pty(["sync"], cwd=sandbox.project, env=env)
    _assert_consistent_after_interrupt(sandbox, r)
    assert set(_installed(sandbox)) == {"a-small.bin", "z-big.bin"}
    again = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env())
    assert again.code == 0 and "kept 2" in again.text, again.text
    assert server.count("/z-big.bin") == 1


def test_ctrl_c_during_an_update_keeps_the_old_model_and_its_lock(sandbox, slow_server):
    _manifest(sandbox, slow_server, names=("z-big.bin",))
    assert run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env()).code == 0
    new = os.urandom(3_000_000)
    slow_server.add("/z-big2.bin", new)
    sandbox.declare(Model("z-big.bin", slow_server.url("/z-big2.bin")), processor=PROC, settings="parallel = 1")
    r = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env(), interrupt_after=1.0)
    assert r.code == 130, r.text
    assert _installed(sandbox) == {"z-big.bin": sha256(BIG)} == _locked(sandbox)
    assert _temp_files(sandbox) == []


def test_plain_commands_on_a_terminal(sandbox, server):
    _manifest(sandbox, server)
    for args in (["sync"], ["lock"], ["sync", "--locked"], ["status"], ["plan"], ["verify"]):
        for columns in (80, 120):
            r = run_on_pty(args, cwd=sandbox.project, env=sandbox.env(), columns=columns)
            assert r.code == 0, (args, r.text)
            assert "Traceback" not in r.text and "unexpected" not in r.text, (args, r.text)
            assert r.raw.rfind(b"\x1b[?25h") >= r.raw.rfind(b"\x1b[?25l"), (args, "cursor left hidden")


SGR = re.compile(rb"\x1b\[[0-9;]*m")  # colour, bold, dim: Select Graphic Rendition


def test_no_color_means_no_styling_at_all(sandbox, slow_server):
    _manifest(sandbox, slow_server)
    env = {**sandbox.env(), "NO_COLOR": "1"}
    for args in (["sync"], ["status"], ["plan", "-v"], ["add", "ocrd-x", "nonexistent-model"]):
        r = run_on_pty(args, cwd=sandbox.project, env=env, columns=100)
        assert r.code in (0, 2), (args, r.text)
        assert not SGR.search(r.raw), (args, r.raw[:400])


def test_force_color_colours_a_pipe(sandbox):
    import subprocess

    from ptyrun import CLI

    sandbox.declare(Model("m.bin", "./missing.bin"))
    plain = subprocess.run([CLI, "sync"], cwd=sandbox.project, env=sandbox.env(), capture_output=True)
    forced = subprocess.run([CLI, "sync"], cwd=sandbox.project, env={**sandbox.env(), "FORCE_COLOR": "1"},
                            capture_output=True)
    assert plain.returncode == forced.returncode == 2
    assert not SGR.search(plain.stderr) and SGR.search(forced.stderr), forced.stderr


def _screen_lines(raw: bytes) -> list[str]:
    """What stays on screen, roughly: escape sequences removed, carriage returns as line starts."""
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", raw.decode("utf-8", "replace"))
    return [part for line in text.split("\n") for part in line.split("\r") if part.strip()]


def test_output_fits_80_columns_without_breaking_words(sandbox, slow_server):
    server = slow_server
    server.add("/a-small.bin", SMALL)
    long = "ocrd-tesserocr-recognize"
    sandbox.declare(processors={
        long: [Model("a-model-with-a-long-name.traineddata", server.url("/a-small.bin")),
               Model("z-big.bin", server.url("/z-big.bin"))],
        "ocrd-x": [Model("missing.bin", server.url("/nope"))],
    })
    server.add("/z-big.bin", BIG)
    env = {**sandbox.env(), "MODELSYNC_RETRIES": "0"}
    r = run_on_pty(["sync"], cwd=sandbox.project, env=env, columns=80)
    assert r.code == 3, r.text
    lines = _screen_lines(r.raw)
    bars = [line for line in lines if "━" in line]
    assert bars and all(len(line) <= 80 for line in bars), bars  # one line per model, never wrapped
    assert any("MiB" in line for line in bars) and not any(" MB" in line for line in bars)
    assert r.text.count("HTTP 404") == 1, r.text  # each failure told once
    for args in (["status"], ["verify"], ["plan", "-v"]):
        out = run_on_pty(args, cwd=sandbox.project, env=env, columns=80)
        shown = _screen_lines(out.raw)
        assert all(len(line) <= 80 for line in shown), (args, shown)
        assert any(long in line for line in shown), (args, shown)  # the name whole, not folded
        assert any("a-model-with-a-long-name.traineddata" in line for line in shown), (args, shown)


def test_import_push_and_convert_on_a_terminal(sandbox, server, tmp_path):
    """The commands that once crashed on a terminal before doing anything: each on a real pty."""
    import shutil

    from conftest import FIXTURES
    from oci_registry import BINARY, ResourceIndex

    # import: a model put where OCR-D looks by `ocrd resmgr` (or by hand)
    tess = sandbox.tessdata
    from conftest import make_traineddata

    (tess / "deu.traineddata").write_bytes(make_traineddata(b"w" * 8_628_000))  # as large as the entry says
    r = run_on_pty(["import"], cwd=sandbox.project, env=sandbox.env(), columns=80)
    assert r.code == 0, r.text
    assert "Traceback" not in r.text and "unexpected" not in r.text
    assert sandbox.manifest.exists() and sandbox.lock.exists()
    # convert: a real legacy model, converted on the terminal
    model = tmp_path / "toy.pyrnn.gz"
    shutil.copyfile(FIXTURES / "pyrnn" / "kraken-toy.pyrnn.gz", model)
    r = run_on_pty(["convert", str(model), "-o", str(tmp_path / "toy.hdf5"), "--codec", "", "--codec", "b"],
                   cwd=sandbox.project, env=sandbox.env(), columns=80)
    assert r.code == 0 and (tmp_path / "toy.hdf5").is_file(), r.text
    if BINARY is None:
        pytest.skip("docker-registry is not installed: push is tested on a terminal in CI")
    # push: to a real registry (Debian's docker-registry on 127.0.0.1)
    _manifest(sandbox, server, names=("a-small.bin",))
    assert run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env()).code == 0
    registry = ResourceIndex(tmp_path / "registry")
    try:
        r = run_on_pty(["push", f"{registry.host}/ocr/models:t1"], cwd=sandbox.project, env=sandbox.env(), columns=80)
        assert r.code == 0, r.text
        assert "pushed" in r.text and "Traceback" not in r.text
        assert r.raw.rfind(b"\x1b[?25h") >= r.raw.rfind(b"\x1b[?25l"), "the cursor was left hidden"
    finally:
        registry.stop()


def test_debug_shows_the_traceback_of_a_failure_inside_the_live_display(sandbox, slow_server, tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    # A bug injected at interpreter start (sitecustomize on PYTHONPATH): writing the lock raises.
    (hook / "sitecustomize.py").write_text(
        "import ocrd_models.modelsync.project as p\n"
        "def boom(*a, **k):\n    raise RuntimeError('injected bug')\n"
        "p.Project._finish = boom\n")
    _manifest(sandbox, slow_server, names=("a-small.bin",))
    env = {**sandbox.env(), "PYTHONPATH": str(hook)}
    plain = run_on_pty(["sync"], cwd=sandbox.project, env=env, columns=100)
    assert plain.code == 1 and "This is a bug" in plain.text and "Traceback" not in plain.text, plain.text
    debug = run_on_pty(["sync"], cwd=sandbox.project, env={**env, "MODELSYNC_DEBUG": "1"}, columns=100)
    assert debug.code == 1, debug.text
    assert "Traceback (most recent call last)" in debug.text and "RuntimeError: injected bug" in debug.text
    assert "lost sys.stderr" not in debug.text
    assert debug.raw.rfind(b"\x1b[?25h") >= debug.raw.rfind(b"\x1b[?25l"), "the cursor was left hidden"


def test_ctrl_c_during_a_segmented_download_stops_every_connection_at_once(sandbox, server):
    import time

    blob = os.urandom(16 * 1024 * 1024)
    server.add("/seg.bin", blob)
    server.rate = 1024 * 1024  # per connection: about 4 s over four connections
    sandbox.declare(Model("seg.bin", server.url("/seg.bin")), processor=PROC,
                    network="segments = 4\nsegment_from_mib = 1")
    t0 = time.monotonic()
    r = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env(), interrupt_after=1.5)
    took = time.monotonic() - t0
    assert r.code == 130, r.text
    assert took < 1.5 + 2.0, f"the connections were waited for: {took:.1f} s"
    assert "interrupted" in r.text and "Traceback" not in r.text
    assert _temp_files(sandbox) == [] and _installed(sandbox) == {}
    partial = sandbox.cache / "ocrd-modelsync" / "partial"
    assert len(list(partial.iterdir())) == 1  # what arrived is kept for the next run
    server.rate = None
    again = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env())
    assert again.code == 0, again.text
    assert _installed(sandbox) == {"seg.bin": sha256(blob)}


def test_ctrl_c_while_every_connection_waits_for_its_answer(sandbox, server):
    import time

    from httpserver import Fault

    blob = os.urandom(16 * 1024 * 1024)
    server.add("/seg.bin", blob)
    server.rate = 1024 * 1024
    server.faults["/seg.bin"] = Fault(head_delay=30, only_ranges=True)  # range requests get no answer
    sandbox.declare(Model("seg.bin", server.url("/seg.bin")), processor=PROC,
                    network="segments = 4\nsegment_from_mib = 1")
    t0 = time.monotonic()
    r = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env(), interrupt_after=1.5)
    assert r.code == 130, r.text
    assert time.monotonic() - t0 < 1.5 + 1.5, "Ctrl-C was not seen while no bytes came"
    assert _temp_files(sandbox) == [] and _installed(sandbox) == {}
