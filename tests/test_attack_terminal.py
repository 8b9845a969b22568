"""Terminal injection: text from outside (server replies, model codecs, keys and names in a file) never
reaches the terminal as control characters; it is shown as ``\\x1b``-style escapes, in lines, tables,
progress bars and JSON alike."""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import FIXTURES, Model
from ptyrun import run_on_pty

from httpserver import POLL

# An OSC title change ended by BEL, an SGR colour, a C1 CSI, and a right-to-left override.
HOSTILE = "\x1b]0;PWNED\x07\x1b[31mred\x9b2J\u202eevil"
RAW_MARKERS = ("\x1b]0;", "\x07", "\x1b[31m", "\x9b", "\u202e")


def _assert_escaped(text: str) -> None:
    for raw in RAW_MARKERS:
        assert raw not in text, (raw, text)
    assert "\\x1b]0;PWNED\\x07" in text, text


class _ReasonServer:
    """Answers every GET with 404 and a hostile reason phrase (http.server writes it as given)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(404, "Not " + HOSTILE.encode("utf-8").decode("latin-1"))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": POLL}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/m.bin"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def reason_server():
    s = _ReasonServer()
    yield s
    s.stop()


def test_a_key_in_models_toml_is_escaped(sandbox):
    sandbox.write_manifest('[processors]\nocrd-x = [{name = "a", url = "./a", '
                           '"\\u001b]0;PWNED\\u0007\\u001b[31mred\\u009b2J\\u202eevil" = 1}]\n')
    r = sandbox.run("plan")
    assert r.code == 2
    _assert_escaped(r.err)


def test_a_server_reason_phrase_is_escaped(sandbox, reason_server):
    sandbox.declare(Model("m.bin", reason_server.url))
    r = sandbox.run("sync")
    assert r.code == 3
    assert "HTTP 404" in r.err
    _assert_escaped(r.err)
    j = sandbox.run("sync", "--json")
    assert j.code == 3
    doc = json.loads(j.out)  # still valid JSON, with the escapes as \\u sequences
    message = doc["failures"][0]["error"]
    assert "PWNED" in message  # the server's phrase is quoted (escaped) in the message
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in j.out


def test_a_server_reason_phrase_is_escaped_on_a_terminal(sandbox, reason_server):
    sandbox.declare(Model("m.bin", reason_server.url))
    r = run_on_pty(["sync"], cwd=sandbox.project, env=sandbox.env(), columns=120)
    assert r.code == 3, r.text
    text = r.raw.decode("utf-8", "replace")
    # rich draws its own colours (ESC [ ... m): only the server's sequences must be absent.
    for raw in ("\x1b]0;", "\x07", "\x9b", "\u202e"):
        assert raw not in text, text
    assert "PWNED" in text and "\\x1b]0;PWNED" in text.replace("\r\n", "").replace("\n", "")


def test_a_codec_is_escaped_in_inspect(sandbox, tmp_path):
    h5py = pytest.importorskip("h5py", reason="the legacy extra is part of the test install")
    for code, shown in ((0x1b, "\\x1b"), (0x9b, "\\x9b"), (0x202e, "\\u202e")):
        model = tmp_path / f"hostile-{code}.hdf5"
        shutil.copyfile(FIXTURES / "pyrnn" / "kraken-toy.hdf5", model)
        with h5py.File(model, "r+") as f:  # the toy's one character replaced by a control code point
            f["codec"][1, 0] = code
        r = sandbox.run("inspect", str(model))
        assert r.code == 0, r.err
        assert chr(code) not in r.out and shown in r.out, r.out
        j = sandbox.run("inspect", str(model), "--json")
        assert json.loads(j.out)["codec"] == ["", chr(code)]
        assert chr(code) not in j.out


def test_a_file_name_and_a_cache_dir_from_a_cloned_manifest_are_escaped(sandbox, tmp_path):
    model = tmp_path / f"model{HOSTILE}.traineddata"
    model.write_bytes(b"not a model")
    for runner in ("pipe", "pty"):
        if runner == "pipe":
            out = sandbox.run("inspect", str(model)).out
        else:
            r = run_on_pty(["inspect", str(model)], cwd=sandbox.project, env=sandbox.env(), columns=200)
            out = r.raw.decode("utf-8", "replace")
        for raw in ("\x1b]0;", "\x07", "\x9b", "\u202e"):
            assert raw not in out, (runner, out)
    sandbox.write_manifest('[settings]\ncache_dir = "c\\u001b]0;PWNED\\u0007"\n[processors]\n')
    r = sandbox.run("cache", "dir")
    assert r.code == 0 and "\x1b" not in r.out and "\x07" not in r.out and "\\x1b]0;PWNED" in r.out, r.out
