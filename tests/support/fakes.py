"""Small real HTTP servers on 127.0.0.1 that play parts of the world: the EC2 instance metadata
service (spot notices) and a fault-injecting proxy in front of the S3 server."""

from __future__ import annotations

import datetime
import http.client
import http.server
import json
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Running:
    def __init__(self, handler_cls):
        self.server = _Server(("127.0.0.1", 0), handler_cls)
        self.server.owner = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FakeIMDS(_Running):
    """IMDSv2: PUT /latest/api/token, then GET /latest/meta-data/spot/instance-action with the
    token: 404 until `notice()` is called, then the notice JSON EC2 serves."""

    TOKEN = "fake-token"

    def __init__(self):
        self.notice_body: str | None = None
        self.token_requests = 0
        self.polls_with_token = 0
        super().__init__(_IMDSHandler)

    def notice(self, in_s: float = 120.0):
        """Schedule the interruption `in_s` from now (EC2 gives two minutes), as EC2 writes its time."""
        when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=in_s)
        self.notice_body = json.dumps({"action": "terminate", "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")})


class _IMDSHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, code: int, body: str = ""):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        owner = self.server.owner
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            owner.token_requests += 1
            return self._reply(200, FakeIMDS.TOKEN)
        self._reply(400)

    def do_GET(self):
        owner = self.server.owner
        if self.headers.get("X-aws-ec2-metadata-token") != FakeIMDS.TOKEN:
            return self._reply(401)
        if self.path == "/latest/meta-data/spot/instance-action":
            owner.polls_with_token += 1
            return self._reply(200, owner.notice_body) if owner.notice_body else self._reply(404)
        self._reply(404)


class FaultProxy(_Running):
    """Forwards every request to `upstream`; a fraction `rate` of them (seeded) gets a 500, a 503
    SlowDown or a reset connection instead, and any request whose path contains one of
    `fail_paths` always gets a 500, or the status and S3 error code `fail_with` (e.g. (403,
    "AccessDenied"), (400, "ExpiredToken")). A request whose path contains one of `stall_paths`
    is read and never answered (a stalled S3), until `close()`. Every request is kept in
    `requests` (method, path, headers, body) so a test can see what a client really sent.
    `rewrite(path, request_headers, request_body, response_body)`, if given, returns the body the
    client gets instead of the upstream's (a world the upstream cannot play, e.g. a failed job).
    `bandwidth_bytes_per_s`, if set (also later), is the rate at which request bodies (uploads) are
    read, shared by all connections: a slow link to S3."""

    def __init__(
        self,
        upstream: str,
        rate: float = 0.0,
        seed: int = 0,
        fail_paths: tuple[str, ...] = (),
        fail_with: tuple[int, str] = (500, "InternalError"),
        stall_paths: tuple[str, ...] = (),
        rewrite: Callable[[str, dict[str, str], bytes, bytes], bytes] | None = None,
        bandwidth_bytes_per_s: float | None = None,
    ):
        parsed = urllib.parse.urlparse(upstream)
        self.bandwidth_bytes_per_s = bandwidth_bytes_per_s
        self._link_free_at = 0.0  # time.monotonic() when the throttled link has sent what it was given
        self.throttled_bytes = 0  # request body bytes that went through the throttled link
        self.rewrite = rewrite
        self.stall_paths = tuple(stall_paths)
        self.released = threading.Event()
        self.upstream = (parsed.hostname, parsed.port)
        self.rate = rate
        self.fail_paths = tuple(fail_paths)
        self.fail_with = fail_with
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected = {"500": 0, "503": 0, "reset": 0, "path": 0}
        self.forwarded = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        super().__init__(_ProxyHandler)

    def close(self):
        self.released.set()  # stalled requests end (unanswered) and their threads with them
        super().close()

    def throttle(self, size: int) -> None:
        """Wait for `size` bytes to pass the link (their turn after what other connections sent)."""
        rate = self.bandwidth_bytes_per_s
        if not rate:
            return
        with self.lock:
            self._link_free_at = max(self._link_free_at, time.monotonic()) + size / rate
            until = self._link_free_at
            self.throttled_bytes += size
        time.sleep(max(0.0, until - time.monotonic()))

    def decide(self, path: str) -> str | None:
        if any(p in urllib.parse.unquote(path) for p in self.fail_paths):
            return "path"
        with self.lock:
            if self.rng.random() < self.rate:
                return self.rng.choice(["500", "503", "reset"])
        return None


ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>injected</Message>'
    "<RequestId>fault</RequestId></Error>"
)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self._read(size))
                self.rfile.readline()
        return self._read(int(self.headers.get("Content-Length") or 0))

    def _read(self, size: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 16))
            if not chunk:
                break
            self.server.owner.throttle(len(chunk))
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _handle(self):
        owner = self.server.owner
        body = self._body()
        with owner.lock:
            owner.requests.append((self.command, self.path, dict(self.headers.items()), body))
        if any(p in urllib.parse.unquote(self.path) for p in owner.stall_paths):
            owner.released.wait(600)  # no answer, the connection left open
            self.close_connection = True
            return
        fault = owner.decide(self.path)
        if fault:
            with owner.lock:
                owner.injected[fault] += 1
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            self.connection.close()
            return
        if fault in ("500", "503", "path"):
            code, name = {"500": (500, "InternalError"), "503": (503, "SlowDown")}.get(fault, owner.fail_with)
            data = ERROR_XML.format(code=name).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*owner.upstream, timeout=60)
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if owner.rewrite is not None:
            data = owner.rewrite(self.path, dict(self.headers.items()), body, data)
        with owner.lock:
            owner.forwarded += 1
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                self.send_header(key, value)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
