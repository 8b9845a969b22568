"""Real servers on 127.0.0.1 for tests: FileServer serves in-memory files (Range, injected faults);
RawServer answers each request with exactly the bytes a test writes (malformed, slow, cut short)."""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

POLL = 0.02  # seconds: serve_forever's shutdown check (its 0.5 s default dominated test teardown)


@dataclass
class Fault:
    """A fault for one path. ``times`` limits how many requests it applies to."""

    status: int | None = None  # answer with this status (and ``headers``), no body
    truncate_at: int | None = None  # send the full Content-Length, then close after this many bytes
    no_length: bool = False  # no Content-Length header, close-delimited body
    reset_at: int | None = None  # send this many bytes, then reset the connection (RST)
    stall_at: int | None = None  # send this many bytes, then go silent for ``stall_for`` seconds
    stall_for: float = 0.0
    ignore_range: bool = False  # answer 200 with the whole body even to a Range request
    redirect_to: str | None = None
    then_serve: bytes | None = None  # after the fault fired, the path serves these bytes instead
    times: int = 1_000_000
    headers: dict[str, str] = field(default_factory=dict)
    only_ranges: bool = False  # applies only to requests with a Range header (segments, resumes)
    rate: int | None = None  # bytes per second for this response (a trickle)
    head_delay: float = 0.0  # seconds before the response head is sent
    beyond_inflight: int | None = None  # applies only while more requests than this are being answered


class FileServer:
    """Serve ``files`` (path -> bytes) on an ephemeral port; record each request (method, path, headers)."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, Fault] = {}
        self.requests: list[tuple[str, str]] = []
        self.headers_seen: list[tuple[str, dict[str, str]]] = []
        self.ignore_range: set[str] = set()  # paths that answer 200 (whole body) to Range requests
        self.delay = 0.0  # seconds each GET waits before answering (to observe overlap)
        self.rate: int | None = None  # bytes per second per response (to spread a download over time)
        self.inflight = 0
        self.max_inflight = 0
        self._lock = threading.Lock()
        self.tls = tls
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
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass
                finally:
                    with server._lock:
                        server.inflight -= 1

            def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _write(self, data: bytes, rate: int | None = None) -> None:
                rate = rate or server.rate
                if not rate:
                    self.wfile.write(data)
                    return
                step = max(1, rate // 20)
                for i in range(0, len(data), step):
                    self.wfile.write(data[i:i + step])
                    self.wfile.flush()
                    time.sleep(step / rate)

            def _serve(self, head: bool):
                path = urlsplit(self.path).path
                with server._lock:
                    server.requests.append((self.command, self.path))
                    server.headers_seen.append((self.path, dict(self.headers)))
                    fault = server.faults.get(path)
                    if fault is not None and fault.only_ranges and "Range" not in self.headers:
                        fault = None
                    if fault is not None and fault.beyond_inflight is not None and \
                            server.inflight <= fault.beyond_inflight:
                        fault = None
                    if fault is not None:
                        fault.times -= 1
                        if fault.times < 0:
                            fault = None
                    body = server.files.get(path)
                    if fault is not None and fault.then_serve is not None:
                        server.files[path] = fault.then_serve
                if fault is not None and fault.head_delay:
                    time.sleep(fault.head_delay)
                if fault is not None and fault.redirect_to:
                    return self._empty(302, {"Location": fault.redirect_to})
                if fault is not None and fault.status:
                    return self._empty(fault.status, fault.headers)
                if body is None:
                    return self._empty(404)
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                start, end, status = 0, len(body), 200
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                ranged = (rng and rng.startswith("bytes=") and not (fault and fault.ignore_range)
                          and path not in server.ignore_range)
                if ranged and (if_range is None or if_range == etag):
                    a, _, b = rng[6:].partition("-")
                    start = int(a or 0)
                    end = int(b) + 1 if b else len(body)
                    if start >= len(body):
                        return self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                    status = 206
                self.send_response(status)
                if not (fault and fault.no_length):
                    self.send_header("Content-Length", str(end - start))
                else:
                    self.send_header("Connection", "close")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
                self.end_headers()
                if head:
                    return
                chunk = body[start:end]
                if fault is None:
                    return self._write(chunk)
                if fault.rate:
                    return self._write(chunk, fault.rate)
                if fault.stall_at is not None:
                    self._write(chunk[: fault.stall_at])
                    self.wfile.flush()
                    time.sleep(fault.stall_for)
                    self.close_connection = True
                    return
                if fault.reset_at is not None:
                    self._write(chunk[: fault.reset_at])
                    self.wfile.flush()
                    # SO_LINGER 0: close() sends RST, a real "connection reset by peer".
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                if fault.truncate_at is not None:
                    self._write(chunk[: fault.truncate_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._write(chunk)
                if fault.no_length:
                    self.close_connection = True

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients killed mid-request are expected here
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": POLL}, daemon=True)

    @property
    def base(self) -> str:
        """``http(s)://127.0.0.1:PORT``."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"

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


RESET = object()  # a RawServer piece: abort the connection with an RST ("connection reset by peer")


@dataclass
class RawRequest:
    """One request a RawServer received: its number, request line and headers (lower-case names)."""

    index: int
    method: str
    target: str
    headers: dict[str, str]


class _Listener:
    """A listening socket on 127.0.0.1 whose accept loop hands each connection to ``_handle`` on its
    own thread; ``stop`` ends the loop (connections in progress end on their own)."""

    def _listen(self) -> None:
        self._stopped = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        self._stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        raise NotImplementedError


class RawServer(_Listener):
    """A TCP server on 127.0.0.1 answering each HTTP request with exactly the bytes a test chooses.

    ``respond(request)`` returns an iterable of pieces: ``bytes`` are sent as they are (malformed
    status lines and headers included), a ``float`` sleeps that many seconds, :data:`RESET` aborts
    the connection with an RST. The connection is closed after the last piece: one request per
    connection. ``requests`` records every request, in order of arrival. With ``read_request=False``
    the server answers as soon as a client connects, reading nothing (for a TLS client's handshake:
    the request then has an empty method, target and headers).
    """

    def __init__(self, respond, read_request: bool = True) -> None:
        self.respond = respond
        self.read_request = read_request
        self.requests: list[RawRequest] = []
        self._lock = threading.Lock()
        self._listen()

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def url(self, path: str) -> str:
        """Absolute URL of a path on this server."""
        return self.base + path

    def start(self) -> "RawServer":
        """Start accepting connections in a background thread."""
        self.thread.start()
        return self

    def _read_head(self, conn: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                got = conn.recv(65536)
            except OSError:
                return None
            if not got:
                return None
            data += got
        return data.split(b"\r\n\r\n", 1)[0]

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            head = self._read_head(conn) if self.read_request else b" "
            if head is None:
                return
            line, *fields = head.decode("latin-1").split("\r\n")
            method, target = (line.split(" ") + ["", ""])[:2]
            headers = {}
            for f in fields:
                name, _, value = f.partition(":")
                headers[name.strip().lower()] = value.strip()
            with self._lock:
                req = RawRequest(len(self.requests), method, target, headers)
                self.requests.append(req)
            for piece in self.respond(req):
                if self._stopped.is_set():
                    return
                if piece is RESET:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if isinstance(piece, (int, float)):
                    time.sleep(piece)
                else:
                    conn.sendall(piece)
        except OSError:
            pass  # the client went away: expected when it cuts a response short
        finally:
            conn.close()


def http_head(status: str | int, headers: dict[str, str | int] | list[tuple[str, str]] | None = None) -> bytes:
    """A response head for RawServer: ``HTTP/1.1 <status>`` (an int gets a reason phrase), the headers,
    ``Connection: close`` unless given, and the blank line; encoded as UTF-8."""
    if isinstance(status, int):
        from http import HTTPStatus

        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Unknown"
        line = f"HTTP/1.1 {status} {reason}"
    else:
        line = status
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    if not any(k.lower() == "connection" for k, _ in items):
        items.append(("Connection", "close"))
    text = line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n"
    return text.encode("utf-8")  # a test may send non-ASCII bytes, as broken servers do


def make_cert(directory, *names: str) -> tuple[str, str]:
    """A self-signed certificate (and its key) for host ``names`` (DNS names or IP addresses), written to
    ``directory``; returns the two file names (the certificate is also the CA bundle that trusts it)."""
    import ipaddress
    import subprocess
    from pathlib import Path

    sans = []
    for name in names:
        try:
            ipaddress.ip_address(name)
            sans.append(f"IP:{name}")
        except ValueError:
            sans.append(f"DNS:{name}")
    cert, key = Path(directory) / f"{names[0]}.pem", Path(directory) / f"{names[0]}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={names[0]}", "-addext", "subjectAltName=" + ",".join(sans), "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


class TunnelProxy(_Listener):
    """An HTTPS proxy on 127.0.0.1 standing in for the internet: ``CONNECT host:port`` is relayed to the
    local port ``routes`` names for it (a server that plays that host, with its own certificate), anything
    else is answered 502. ``seen`` records every request line the proxy received, in order."""

    def __init__(self, routes: dict[str, int]) -> None:
        self.routes = routes
        self.seen: list[str] = []
        self._listen()
        self.thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for HTTPS_PROXY."""
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                got = conn.recv(4096)
                if not got:
                    return
                head += got
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.seen.append(line)
            method, target = (line.split(" ") + ["", ""])[:2]
            port = self.routes.get(target) if method == "CONNECT" else None
            if port is None:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            upstream = socket.create_connection(("127.0.0.1", port), timeout=30)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            threading.Thread(target=_relay, args=(upstream, conn), daemon=True).start()
            _relay(conn, upstream)
        except OSError:
            pass
        finally:
            conn.close()


def _relay(src: socket.socket, dst: socket.socket) -> None:
    """Copy bytes from ``src`` to ``dst`` until ``src`` ends; then end ``dst`` too."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
