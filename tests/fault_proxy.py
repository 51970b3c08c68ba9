"""A fault-injecting reverse proxy in front of a Hub (the local one in tests): a hostile network on loopback.

    with FaultProxy(hub_url, rate=0.1, seed=0) as url:   # point HF_ENDPOINT at `url`
        ...
    proxy.faults  # Counter: injected faults by kind

A seeded share `rate` of the requests gets a fault instead of an answer, of a kind drawn from `kinds`:

- "500", "503": that status with a Hub-style error body;
- "429": a rate-limit answer with `Retry-After: retry_after` seconds;
- "drop": the connection closed without a response (the client sees "server disconnected");
- "reset": the connection reset (RST) without a response.

The request's body is read in full before a fault, so the fault never lands in the middle of the client's upload
and the Hub never sees the request. With `lost` > 0, that share of the other requests is forwarded and handled by
the Hub, and its answer lost on the way back (the connection closed, kind "lost"): the client cannot tell whether
a commit, a tag or a merge happened, and retries it. Every other request is forwarded faithfully on a connection of
its own: method, path and query, all headers (`Host` included, so the Hub builds its URLs, e.g. LFS upload links,
for the proxy), bodies streamed both ways (chunked ones re-chunked), `Range` passed through, and a `Location`
naming the Hub rewritten to name the proxy.

Decisions are seeded per request, not per arrival: fault or not, and which, follow from (seed, method, path with
commit shas masked, how many times that request was seen before), so concurrent workers do not change each other's
draws, a retried request draws again, and the same run gets the same faults. `decide(request)` may pick a fault (or
None) for given requests before the draw, e.g. a 429 for the first read of one file. `log` lists every request with
what it got.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

FAULT_KINDS = ("500", "503", "429", "drop", "reset")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "content-length"}
_SHA = re.compile(r"[0-9a-f]{40}")
_BLOCK = 1 << 16


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    path: str  # path and query, as sent
    headers: dict[str, str]  # names lower-cased

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    range: str | None
    outcome: str  # a fault kind, or the Hub's status code as text


class FaultProxy:
    def __init__(self, upstream: str, rate: float = 0.1, seed: int = 0, kinds: tuple[str, ...] = FAULT_KINDS,
                 retry_after: int = 1, decide: Callable[[ProxyRequest], str | None] | None = None, lost: float = 0.0):
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)} (known: {', '.join(FAULT_KINDS)})")
        self.upstream = upstream.rstrip("/")
        parts = urlsplit(self.upstream)
        self._upstream_host, self._upstream_port = parts.hostname, parts.port or 80
        self.rate, self.seed, self.kinds, self.retry_after, self.decide = rate, seed, tuple(kinds), retry_after, decide
        self.lost = lost
        self.faults: Counter[str] = Counter()
        self.log: list[LoggedRequest] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> str:
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()
        return self.url

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------ decisions
    def fault_for(self, request: ProxyRequest) -> str | None:
        """The fault this request gets (None: forwarded and answered; "lost": forwarded, its answer lost)."""
        if self.decide is not None:
            kind = self.decide(request)
            if kind is not None:
                return kind
        key = f"{request.method} {_SHA.sub('<sha>', request.path)}"
        with self._lock:
            seen = self._seen[key]
            self._seen[key] += 1
        draw = random.Random(f"{self.seed}|{key}|{seen}")
        if draw.random() < self.rate:
            return draw.choice(self.kinds)
        return "lost" if draw.random() < self.lost else None

    def record(self, request: ProxyRequest, outcome: str, fault: bool) -> None:
        with self._lock:
            self.log.append(LoggedRequest(request.method, request.path, request.range, outcome))
            if fault:
                self.faults[outcome] += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many workers connecting at once are queued, not refused


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: clients reuse pooled connections

        def log_message(self, format, *args) -> None:  # the proxy's own log is `proxy.log`
            pass

        def handle_request(self) -> None:
            request = ProxyRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            body = self._request_body()
            kind = proxy.fault_for(request)
            if kind in (None, "lost"):
                status = self._forward(request, body, deliver=kind is None)
                proxy.record(request, str(status) if kind is None else kind, fault=kind is not None)
                return
            b"".join(body)  # the whole upload is read first: the client is not cut off mid-send
            proxy.record(request, kind, fault=True)
            if kind in ("drop", "reset"):
                self.close_connection = True
                if kind == "reset":  # close with RST: linger on, timeout 0
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            status = int(kind)
            message = {429: "Too Many Requests (injected)", 500: "Internal Server Error (injected)",
                       503: "Service Unavailable (injected)"}[status]
            payload = f'{{"error": "{message}"}}'.encode()
            self.send_response_only(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Error-Message", message)
            if status == 429:
                self.send_header("Retry-After", str(proxy.retry_after))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = handle_request

        def _request_body(self):
            """The request's body as an iterator of blocks (read from the socket as it is consumed)."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._chunks()
            length = int(self.headers.get("Content-Length") or 0)
            return self._blocks(length)

        def _blocks(self, length: int):
            while length > 0:
                block = self.rfile.read(min(_BLOCK, length))
                if not block:
                    raise ConnectionError("the client closed the connection mid-body")
                length -= len(block)
                yield block

        def _chunks(self):
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()  # the chunk's CRLF

        def _forward(self, request: ProxyRequest, body, deliver: bool = True) -> int:
            """Send the request to the Hub and stream its answer back (or, not `deliver`ed, read it and close the
            connection without a word); returns the Hub's status."""
            upstream = HTTPConnection(proxy._upstream_host, proxy._upstream_port, timeout=600)
            try:
                upstream.putrequest(request.method, request.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        upstream.putheader(name, value)
                chunked = "content-length" not in request.headers and "transfer-encoding" in request.headers
                if chunked:
                    upstream.putheader("Transfer-Encoding", "chunked")
                elif "content-length" in request.headers:
                    upstream.putheader("Content-Length", request.headers["content-length"])
                upstream.endheaders()
                for block in body:
                    upstream.send(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                if chunked:
                    upstream.send(b"0\r\n\r\n")
                response = upstream.getresponse()
                if not deliver:
                    response.read()
                    self.close_connection = True
                    return response.status
                self.send_response_only(response.status, response.reason)
                length = response.getheader("Content-Length")
                for name, value in response.getheaders():
                    if name.lower() == "location" and value.startswith(proxy.upstream):
                        value = proxy.url + value[len(proxy.upstream):]
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                has_body = request.method != "HEAD" and response.status not in (204, 304) and response.status >= 200
                rechunk = has_body and length is None
                if length is not None:
                    self.send_header("Content-Length", length)
                elif rechunk:
                    self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while has_body:
                    block = response.read(_BLOCK)
                    if not block:
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if rechunk else block)
                if rechunk:
                    self.wfile.write(b"0\r\n\r\n")
                return response.status
            finally:
                upstream.close()

    return Handler
