"""offload's HTTP/1.1 connection: uvicorn's httptools protocol, with the limits uvicorn does not
enforce and the write corking that saves a system call per response.

Limits (nginx's names in brackets):
- a request head must arrive whole within ``--client-header-timeout``, counted from the
  connection's start or the request's first byte, else 408 (``client_header_timeout``);
- a request body may pause for at most ``--client-body-timeout`` between two reads, else 408,
  or the connection closes if the response has started (``client_body_timeout``);
- a request line longer than `MAX_REQUEST_LINE_BYTES` gets 414, a header block larger than
  `MAX_HEADER_BYTES` or with more than `MAX_HEADERS` fields 431
  (``large_client_header_buffers``);
- past ``--max-connections`` open connections, a request gets 503 with ``Retry-After``;
- an HTTP/1.1 request without exactly one valid Host gets 400 (RFC 9112 §3.2), and a version
  other than 1.0 and 1.1 (0.9, 2.0 spoken as text) gets 505;
- an upgrade other than WebSocket (``h2c``, ``CONNECT``) is not performed: httptools stops
  reading at its head, so one that declares a body gets 400 (offload could not relay it), and
  one without a body is answered as a plain request and its connection closed after it;
- trailer fields of a chunked request are dropped, never merged into its headers (RFC 9110
  §6.5.1): httptools reports them as more header fields, which the app would otherwise see;
  a trailer section larger than `MAX_HEADER_BYTES` ends the request with 431.
Deadlines are checked by a sweep every `SWEEP_SECONDS` (`enforce_deadlines`), so a request
costs no timer of its own.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import ClassVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

MAX_REQUEST_LINE_BYTES = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
SWEEP_SECONDS = 0.5
RETRY_AFTER_SECONDS = 1
_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}
# RFC 9110 §7.2: uri-host [":" port]; a reg-name, an IPv4 address or a bracketed IPv6 literal
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]+)(?::[0-9]*)?")


@dataclass(frozen=True)
class Limits:
    """See the module's docstring; 0 ``max_connections`` means no limit. Requests for
    ``uncapped_paths`` are answered past it (the admin listener's probes)."""

    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    max_connections: int = 0
    uncapped_paths: frozenset[bytes] = frozenset()


class _Refused(Exception):
    """Raised from a parser callback: httptools stops parsing, uvicorn answers through
    `EdgeHttpProtocol.send_400_response`, which sends this status instead."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _TrailerSink(list[tuple[bytes, bytes]]):
    """Where the fields httptools reports after a head end up: nowhere. They are trailers, and
    uvicorn would append them to the scope's headers, which the app may not have read yet."""

    def append(self, field: tuple[bytes, bytes]) -> None:
        pass


_TRAILERS = _TrailerSink()


class _CorkedTransport:
    """A transport whose writes in one turn of the event loop leave in one system call: uvicorn
    writes a response's head as soon as it is sent, and its body right after; joined, they
    cost one send() instead of two. Everything else goes to the real transport."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class EdgeHttpProtocol(HttpToolsProtocol):
    """One client connection. `limits` is set on a subclass per listener (`with_limits`)."""

    limits: ClassVar[Limits] = Limits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's own signature
        super().connection_made(cast(asyncio.Transport, _CorkedTransport(transport, self.loop)))
        self._read_bytes = 0  # the size of the read being parsed
        self._head_reads = 0  # bytes read after the one a head began in, while it is unfinished
        self._valid_host: bytes | None = None  # the last Host found valid: most send one
        self._refusal: _Refused | None = None
        self._deadline: float | None = time.monotonic() + self.limits.header_timeout_seconds
        self._in_head = False  # a request's first byte has come, its head not yet whole
        self._in_body = False
        self._upgrade_ignored = False  # httptools stopped at an upgrade: the rest is not read
        self._trailer_reads: int | None = None  # bytes read in a trailer section, if in one

    def handle_websocket_upgrade(self) -> None:
        # a WebSocket writes one frame at a time: it gets the real transport, without the
        # corking's callback per write, and no deadline of the HTTP request's
        corked = cast(_CorkedTransport, self.transport)
        corked._flush()
        self.transport = corked._transport
        self._deadline = None
        super().handle_websocket_upgrade()

    # -- deadlines ------------------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Called by the sweep: end the connection if its head or body is overdue."""
        if self._deadline is None or now < self._deadline or self.transport.is_closing():
            return
        cycle = self.cycle
        if self._in_body and (cycle is None or not cycle.more_body):
            self._deadline = None  # the body is whole (or there was none): nothing to wait for
            return
        if self._in_body and self.flow.read_paused:  # the app stopped reading, not the client
            self._deadline = now + self.limits.body_timeout_seconds
            return
        self._deadline = None
        if self._in_head:
            self._answer_and_close(408, "the request head did not arrive in time")
        elif not self._in_body:
            self.transport.close()  # not one byte of a request: nothing to answer
        else:
            self._abort_request(408, "the request body stalled")

    def data_received(self, data: bytes) -> None:
        if self._upgrade_ignored:
            return  # the parser stopped for good; the connection closes after the response
        self._read_bytes = len(data)
        HttpToolsProtocol.data_received(self, data)
        # httptools hands over a header field only once it is whole, so one huge field would be
        # buffered unseen: what a still unfinished head has taken is counted here (not the
        # read it began in, which may hold pipelined requests before it)
        if self._in_head and not self.transport.is_closing():
            if self._head_reads >= 0:
                self._head_reads += len(data)
                if self._head_reads > MAX_REQUEST_LINE_BYTES + MAX_HEADER_BYTES:
                    self._in_head = False
                    if len(self.url) > MAX_REQUEST_LINE_BYTES:
                        self._answer_and_close(414, "the request target is too long")
                    else:
                        self._answer_and_close(431, "the request's header fields are too large")
            else:
                self._head_reads = 0
        elif self._trailer_reads is not None and not self.transport.is_closing():
            # the same for a trailer section, which httptools buffers field by field too
            if self._trailer_reads >= 0:
                self._trailer_reads += len(data)
                if self._trailer_reads > MAX_HEADER_BYTES:
                    self._trailer_reads = None
                    self._abort_request(431, "the request's trailer fields are too large")
            else:
                self._trailer_reads = 0

    # -- parser callbacks -------------------------------------------------------------------------

    # These run for every request, so the limits are checked once the head is whole rather than
    # field by field (a head is at most one read, or is counted by `data_received`), and the
    # base class is called directly, a little cheaper than super().

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._head_reads = -1  # this read: not counted
        self._in_head = True
        self._in_body = False
        self._deadline = time.monotonic() + self.limits.header_timeout_seconds

    def on_headers_complete(self) -> None:
        headers = self.headers
        if len(self.url) > MAX_REQUEST_LINE_BYTES:
            self._refuse(414, "the request target is too long")
        if len(headers) > MAX_HEADERS:
            self._refuse(431, "the request has too many header fields")
        # a head that came in one small read is small: only a large read, or a head spread over
        # several, is measured
        # (a field is counted 4 bytes more than its name and value, one more than it may take)
        measured = self._read_bytes > MAX_HEADER_BYTES - MAX_HEADERS or self._head_reads >= 0
        if (
            measured
            and sum(len(name) + len(value) + 4 for name, value in headers) > MAX_HEADER_BYTES
        ):
            self._refuse(431, "the request's header fields are too large")
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._refuse(505, "offload speaks HTTP/1.0 and HTTP/1.1 here")
        hosts = [value for name, value in headers if name == b"host"]
        if len(hosts) == 1:
            if hosts[0] != self._valid_host:
                if not _HOST.fullmatch(hosts[0]):
                    self._refuse(400, "the Host header is not a valid host")
                self._valid_host = hosts[0]
        elif hosts or version == "1.1":
            self._refuse(400, "an HTTP/1.1 request needs exactly one Host header")  # RFC 9112 §3.2
        limit = self.limits.max_connections
        if (
            limit
            and len(self.connections) > limit
            and self.url.partition(b"?")[0] not in self.limits.uncapped_paths
        ):
            self._refuse(503, "too many connections: try again shortly")
        upgrade = self.parser.should_upgrade()
        if upgrade and not self._should_upgrade():
            self._ignore_upgrade(headers)
        HttpToolsProtocol.on_headers_complete(self)
        if upgrade:
            if self.cycle is not None and self.cycle.scope is self.scope:
                self.cycle.keep_alive = False  # the parser reads no further on this connection
        else:
            self.headers = _TRAILERS
        self._in_head = False
        self._in_body = True
        self._deadline = time.monotonic() + self.limits.body_timeout_seconds

    def _ignore_upgrade(self, headers: list[tuple[bytes, bytes]]) -> None:
        """An upgrade offload does not perform. httptools ends the message at its head and reads
        nothing after it, so a body it declares could not reach the app: refused."""
        for name, value in headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip(b" \t0")):
                self._refuse(400, "a request that upgrades to anything but WebSocket has no body")
        self._upgrade_ignored = True

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn warns for every such request: a client could fill the log with it. The
        request is answered (see `_ignore_upgrade`); what follows it on the connection is not."""

    def on_body(self, body: bytes) -> None:
        HttpToolsProtocol.on_body(self, body)
        self._trailer_reads = None  # a chunk with data: not the last one
        self._deadline = time.monotonic() + self.limits.body_timeout_seconds

    def on_chunk_header(self) -> None:
        """A chunk begins. If it is the last (size 0), its trailer section follows before any
        body byte: `data_received` counts the reads after this one until a body byte or the
        chunk's end."""
        self._trailer_reads = -1  # this read: not counted

    def on_chunk_complete(self) -> None:
        self._trailer_reads = None

    # -- refusals -------------------------------------------------------------------------------

    def _refuse(self, status: int, reason: str) -> None:
        self._refusal = _Refused(status, reason)
        raise self._refusal

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools could not parse, or that a callback here
        refused: then the refusal's own status."""
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._answer_and_close(refusal.status, refusal.reason)

    def _abort_request(self, status: int, reason: str) -> None:
        """End the request whose body is still coming: answer ``status`` in the app's place if
        its response has not started (the app's answer, if any, is dropped), else just close."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True
            cycle.message_event.set()
            self._answer_and_close(status, reason)
        else:
            self.transport.close()

    def _answer_and_close(self, status: int, reason: str) -> None:
        body = f"{reason}\n".encode()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if status == 503:
            head.append(b"retry-after: %d\r\n" % RETRY_AFTER_SECONDS)
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()


def with_limits(limits: Limits) -> type[EdgeHttpProtocol]:
    """The protocol class for a listener with these limits."""
    return type("EdgeHttpProtocol", (EdgeHttpProtocol,), {"limits": limits})


async def enforce_deadlines(state: ServerState) -> None:
    """Every `SWEEP_SECONDS`, end the connections whose head or body is overdue."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        now = time.monotonic()
        for connection in list(state.connections):
            if isinstance(connection, EdgeHttpProtocol):
                connection.expire(now)
