"""A fault-injecting HTTP proxy for storage tests.

It forwards every request to an upstream server (the moto S3 server) and, by a deterministic
schedule over the request number, fails some of them the way a flaky network or a busy S3 does:

- "500" / "503" / "403": answer with an S3 error (InternalError / SlowDown / AccessDenied)
  without forwarding, so the upstream never sees the request;
- "drop": read the request, then close the connection without any answer (not forwarded);
- "cut": forward a GET, then send the first half of the response (status line, headers and
  half the body for large objects) and close the connection;
- "cut0": the same, but cut right after the headers (no body byte arrives).
  Only reads are cut after being forwarded: other methods get "drop" instead, so no write ever
  runs twice upstream (a repeated CompleteMultipartUpload would fail where real S3 forgives it).

    with FaultyProxy(moto_url) as proxy:           # or FaultyProxy(url, plan=[None, "cut"])
        store = S3Storage(bucket, config=S3Config(endpoint_url=proxy.url))
        ...
        proxy.counts()  # Counter of the faults injected

``plan`` is a sequence of faults (None = forward normally) cycled over the request number, or a
callable ``plan(n, method, path) -> fault | None``. The proxy serves on 127.0.0.1 only; its
threads are daemons, idle client connections end after ``idle_timeout`` and ``close()`` (or the
``with`` block) stops it.
"""
from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, NamedTuple, Sequence
from urllib.parse import urlsplit

ERRORS = {
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
    "503": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
}
DEFAULT_PLAN: tuple[str | None, ...] = (None, "500", None, "cut", None, None, "503", None, "drop", None)
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "expect"}


class Request(NamedTuple):
    n: int
    method: str
    path: str
    range: str | None
    fault: str | None  # the fault actually injected


class FaultyProxy:
    def __init__(self, upstream_url: str,
                 plan: Sequence[str | None] | Callable[[int, str, str], str | None] = DEFAULT_PLAN,
                 idle_timeout: float = 10.0):
        up = urlsplit(upstream_url)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.plan = plan
        self.log: list[Request] = []
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"proxy": self, "timeout": idle_timeout})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FaultyProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def counts(self) -> Counter:
        return Counter(r.fault for r in self.log if r.fault)

    def _choose(self, method: str, path: str, rng: str | None) -> str | None:
        with self._lock:
            n = len(self.log)
            fault = self.plan(n, method, path) if callable(self.plan) else self.plan[n % len(self.plan)]
            if fault in ("cut", "cut0") and method != "GET":
                fault = "drop"
            self.log.append(Request(n, method, path, rng, fault))
        return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects; also answers Expect: 100-continue
    proxy: FaultyProxy

    def log_message(self, *args) -> None:
        pass

    def _handle(self) -> None:
        # Read the whole request first so a fault never leaves the client blocked mid-upload.
        # (botocore sends Content-Length; chunked uploads would need checksum="when_supported".)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = self.proxy._choose(self.command, self.path, self.headers.get("Range"))
        if fault == "drop":
            return self._abort()
        if fault in ERRORS:
            status, reason, code, message = ERRORS[fault]
            xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                   f"<Message>{message}</Message><RequestId>faulty-proxy</RequestId></Error>").encode()
            xml = b"" if self.command == "HEAD" else xml
            return self._send(status, reason, [("Content-Type", "application/xml"),
                                               ("Content-Length", str(len(xml)))], xml)
        status, reason, headers, data = self._forward(body)
        self._send(status, reason, headers, data, cut=fault if fault in ("cut", "cut0") else None)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(*self.proxy.upstream, timeout=30)
        try:
            # Host is passed through unchanged: it is part of what the client signed.
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            if self.command != "HEAD" and not any(k.lower() == "content-length" for k, _ in out):
                out.append(("Content-Length", str(len(data))))
            return resp.status, resp.reason, out, data
        finally:
            conn.close()

    def _send(self, status: int, reason: str, headers, data: bytes, cut: str | None = None) -> None:
        head = (f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
                + "\r\n").encode("latin-1")
        raw = head + data
        keep = {"cut": len(raw) // 2, "cut0": len(head)}.get(cut, len(raw))
        self.wfile.write(raw[:keep])
        self.wfile.flush()
        if cut:
            self._abort()

    def _abort(self) -> None:
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
