"""A real HTTP server on 127.0.0.1 for tests: serves in-memory files, supports Range, injects faults."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Fault:
    """A fault for one path: an HTTP status, a truncated body, or a redirect."""

    status: int | None = None
    truncate_at: int | None = None  # send Content-Length of the full body, then close early
    redirect_to: str | None = None
    times: int = 1_000_000  # how many requests it applies to
    headers: dict[str, str] = field(default_factory=dict)


class FileServer:
    """Serve ``files`` (path -> bytes) on an ephemeral port; record each request path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, Fault] = {}
        self.requests: list[tuple[str, str]] = []
        self.delay = 0.0  # seconds each GET waits before answering (to observe overlap)
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                with server._lock:
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    self._serve(head=False)
                finally:
                    with server._lock:
                        server.inflight -= 1

            def _serve(self, head: bool):
                path = urlsplit(self.path).path
                with server._lock:
                    server.requests.append((self.command, self.path))
                    fault = server.faults.get(path)
                    if fault is not None:
                        fault.times -= 1
                        if fault.times < 0:
                            fault = None
                    body = server.files.get(path)
                if fault is not None and fault.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", fault.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault is not None and fault.status:
                    self.send_response(fault.status)
                    for k, v in fault.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, end = 0, len(body)
                rng = self.headers.get("Range")
                status = 200
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start = int(a or 0)
                    end = int(b) + 1 if b else len(body)
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
                self.end_headers()
                if head:
                    return
                chunk = body[start:end]
                if fault is not None and fault.truncate_at is not None:
                    chunk = chunk[: fault.truncate_at]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        """Absolute URL of a served path."""
        return self.base + path

    def add(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; return its URL."""
        self.files[path] = data
        return self.url(path)

    def count(self, path: str) -> int:
        """How many GET requests reached ``path``."""
        return sum(1 for m, p in self.requests if m == "GET" and urlsplit(p).path == path)

    def start(self) -> "FileServer":
        """Start serving in a background thread."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
