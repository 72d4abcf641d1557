"""The HTTP/1.1 client to the app: a pool of keep-alive connections over TCP or a Unix socket,
requests written as the bytes they are, responses parsed by httptools (llhttp, the parser
uvicorn uses) and streamed back with backpressure.

Why not aiohttp here: on this project's 2-core machine a plain aiohttp proxy served 3,300 to
3,900 small JSON requests/s, and the same proxy on this client 9,200 to 10,700 (bench/proxy.py;
DESIGN.md's earlier measurement chose aiohttp over httpx). aiohttp still carries WebSockets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools

from offload.config import Upstream

Header = tuple[bytes, bytes]

HIGH_WATER_BYTES = 256 * 1024  # response bytes held before reading from the app pauses
MAX_RESPONSE_HEAD_BYTES = 64 * 1024  # past it, 502 (nginx: "upstream sent too big header")
# RFC 9110 §9.2.2: safe to send twice
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamError(Exception):
    """The app could not be reached, or did not answer with a well-formed response head."""


class UpstreamRefused(UpstreamError):
    """No connection: refused, unreachable, or the name did not resolve."""


class UpstreamClosed(UpstreamError):
    """The connection closed or broke before the response was complete."""


class UpstreamMalformed(UpstreamError):
    """The app's bytes are not HTTP/1.1."""


class UpstreamResponse:
    """One response from the app: its head at once, its body as it arrives."""

    def __init__(self, connection: _Connection, method: str) -> None:
        self._connection = connection
        self._method = method
        self.status = 0
        self.headers: list[Header] = []
        self.head_bytes = 0  # of the fields parsed so far: the app's head is limited too
        self.received_before_head = 0  # bytes read while no head was complete
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._arrived = asyncio.Event()
        self.complete = False
        self._error: UpstreamError | None = None

    @property
    def ends_with_connection(self) -> bool:
        """A response with neither a length nor chunking: its body runs until the close."""
        if not self.status or self.status in (204, 304):
            return False
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    @property
    def at_eof(self) -> bool:
        return self.complete and not self._chunks

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises `UpstreamError` if it breaks off."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < HIGH_WATER_BYTES:
                    self._connection.resume_reading()
                yield chunk
            elif self.complete:
                return
            elif self._error is not None:
                raise self._error
            else:
                self._arrived.clear()
                await self._arrived.wait()

    def release(self) -> None:
        """Give the connection back to the pool if the exchange ended cleanly, else close it."""
        self._connection.finish(reusable=self.complete and not self._chunks)

    # -- called by the connection's parser --------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise UpstreamMalformed("the app's response head is too large")  # nginx: 502 too
        if self.status:
            # a trailer field: never merged into the header section (RFC 9110 §6.5.1), where
            # it could set a cookie or an X-Accel-Redirect the app did not send as a header
            return
        self.headers.append((name, value))

    def on_headers_complete(self, status: int) -> bool:
        """Returns False for an interim (1xx) head, which is skipped."""
        if not 100 <= status <= 599:
            # RFC 9110 §15: a status code is 100-599, but llhttp takes any three digits; one
            # outside is no HTTP answer: 502, as from nginx (issue 15: the client got nothing)
            raise UpstreamMalformed(f"the app's status {status} is outside 100-599")
        if status < 200:
            self.headers = []
            return False
        codings = b",".join(
            value for key, value in self.headers if key.lower() == b"transfer-encoding"
        )
        if codings and codings.strip().lower() != b"chunked":
            # offload would pass gzip'd bytes on as the body: refuse, as nginx does
            raise UpstreamMalformed("the app used a transfer coding other than chunked")
        self.status = status
        if not self.head.done():
            self.head.set_result(None)
        if self._method == "HEAD":
            self.complete = True  # no body follows; the parser would wait for one
        return True

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= HIGH_WATER_BYTES:
            self._connection.pause_reading()
        self._arrived.set()

    def on_message_complete(self) -> None:
        self.complete = True
        self._arrived.set()

    def fail(self, error: UpstreamError) -> None:
        self._error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved here: the awaiting request reports it
        self._arrived.set()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the app and the exchange on it, if any."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: UpstreamResponse | None = None
        # one parser for the connection's life: llhttp resets itself between messages
        self._parser = httptools.HttpResponseParser(self)
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._reading_paused = False
        self._keep_alive = False  # the last response allowed the connection to be reused
        self._unsolicited = False  # the app sent more than the response it was asked for
        self.sending: asyncio.Task[None] | None = None  # the request body, still going out
        self.body_whole = True  # every byte the head declared went out (or none was declared)
        self.reused = False
        self.idle_since = 0.0
        self.closed = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._can_write.set()
        response = self.response
        if response is not None and not response.complete:
            if exc is None and response.ends_with_connection:
                response.on_message_complete()  # RFC 9112 §6.3: the close ends the body
            else:
                response.fail(UpstreamClosed("the app closed the connection"))
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes while idle: nothing asked for them
            self.close()
            return
        try:
            self._parser.feed_data(data)
            response = self.response
            if response is not None and not response.status:  # one huge field, still coming
                response.received_before_head += len(data)
                if response.received_before_head > MAX_RESPONSE_HEAD_BYTES:
                    raise UpstreamMalformed("the app's response head is too large")
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, UpstreamMalformed) as error:
            if self.response is not None:
                self.response.fail(UpstreamMalformed(f"the app's response is malformed: {error}"))
            self.close()

    # -- httptools callbacks ----------------------------------------------------------------

    def _current(self) -> UpstreamResponse | None:
        """The response these bytes belong to; ``None`` for bytes after it was complete (a
        second message nobody asked for), which also makes the connection unusable."""
        if self.response is None or self.response.complete:
            self._unsolicited = True
            return None
        return self.response

    def on_header(self, name: bytes, value: bytes) -> None:
        if (response := self._current()) is not None:
            response.on_header(name, value)

    def on_headers_complete(self) -> None:
        if (response := self._current()) is not None:
            response.on_headers_complete(self._parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if (response := self._current()) is not None:
            response.on_body(body)

    def on_message_complete(self) -> None:
        if self._unsolicited:
            return
        if self.response is not None and self.response.status and not self.response.complete:
            # read now: once feed_data returns, llhttp has reset and no longer knows
            self._keep_alive = self._parser.should_keep_alive()
            self.response.on_message_complete()

    # -- used by the pool -------------------------------------------------------------------

    def start(self, method: str) -> UpstreamResponse:
        self.response = UpstreamResponse(self, method)
        return self.response

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamClosed("the connection to the app is closed")
        self.transport.write(data)
        if not self._can_write.is_set():
            await self._can_write.wait()

    def pause_reading(self) -> None:
        if self.transport is not None and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def finish(self, *, reusable: bool) -> None:
        keep_alive, self._keep_alive = self._keep_alive, False
        # pooled only if the bytes sent are the bytes the head declared: else the app would
        # read the rest of this body from the next request, or the next request as its rest
        request_sent, self.body_whole = self.body_whole, True
        if self.sending is not None:
            self.sending.cancel()  # the app answered before taking the whole body
        self.response, self.sending = None, None
        self.resume_reading()
        if reusable and keep_alive and request_sent and not self._unsolicited and not self.closed:
            self.pool.give_back(self)
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def reset(self) -> None:
        """Close with a reset (RST). A plain close leaves the kernel flushing an unread upload
        behind the FIN, so an app that stopped reading never learns the request is gone."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None and sock.family != socket.AF_UNIX:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        self.closed = True


class UpstreamPool:
    """Keep-alive connections to the app. Idle ones are reused newest first and closed once idle
    for ``keepalive_seconds`` (a sweep closes them even when no request comes to reuse them);
    with ``max_connections``, requests wait for a free one."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        connect_timeout_seconds: float,
        max_connections: int = 0,
        keepalive_seconds: float = 4.0,
    ) -> None:
        self.upstream = upstream
        self.connect_timeout_seconds = connect_timeout_seconds
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self._idle: list[_Connection] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def request(
        self,
        method: str,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        *,
        chunked: bool = False,
        length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request (``head`` is its request line and headers, framing included) and
        return once the response head arrived. ``body`` goes out chunked, or must be exactly
        the ``length`` bytes the head declares. A reused connection the app had closed is
        retried once on a fresh one when the request is idempotent and has no body (RFC 9112
        §9.3.1)."""
        framing = _BodyFraming(chunked=chunked, length=length)
        connection = await self._acquire()
        try:
            return await self._exchange(connection, method, head, body, framing)
        except UpstreamClosed:
            if not (connection.reused and body is None and method in IDEMPOTENT_METHODS):
                raise
        return await self._exchange(await self._acquire(fresh=True), method, head, None, framing)

    async def _exchange(
        self,
        connection: _Connection,
        method: str,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        framing: _BodyFraming,
    ) -> UpstreamResponse:
        response = connection.start(method)
        try:
            await connection.write(head)
            if body is not None:  # the app may answer before the body is all sent
                connection.body_whole = False
                connection.sending = asyncio.create_task(_send_body(connection, body, framing))
            await response.head
            return response
        except BaseException:
            if connection.sending is not None:
                connection.sending.cancel()
            connection.reset()  # given up before the head: never leave it half-sent
            raise

    async def _acquire(self, *, fresh: bool = False) -> _Connection:
        while True:
            if not fresh and (connection := self._take_idle()) is not None:
                return connection
            if not self.max_connections or self._open < self.max_connections:
                break
            if fresh and self._idle:
                self._idle.pop(0).close()  # make room: its slot frees when it has closed
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the turn on
                raise
        self._open += 1
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.keepalive_seconds:
                connection.reused = True
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_seconds):
                if self.upstream.unix_path is not None:
                    _, protocol = await loop.create_unix_connection(
                        lambda: _Connection(self), self.upstream.unix_path
                    )
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Connection(self), self.upstream.host, self.upstream.port
                    )
        except TimeoutError:
            raise  # TimeoutError is an OSError too: it means 504, not a refusal
        except OSError as error:
            raise UpstreamRefused(f"cannot connect to the app: {error}") from error
        return protocol

    def give_back(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        if self._sweep is None:
            loop = asyncio.get_running_loop()
            self._sweep = loop.call_later(self.keepalive_seconds, self._close_expired)
        self._wake_one()

    def _close_expired(self) -> None:
        """Close the connections idle too long; they are the oldest, at the list's start."""
        self._sweep = None
        now = time.monotonic()
        while self._idle and now - self._idle[0].idle_since >= self.keepalive_seconds:
            self._idle.pop(0).close()
        if self._idle:
            wait = self.keepalive_seconds - (now - self._idle[0].idle_since)
            self._sweep = asyncio.get_running_loop().call_later(wait, self._close_expired)

    def forget(self, connection: _Connection) -> None:
        """A connection closed: its slot is free."""
        if connection in self._idle:
            self._idle.remove(connection)
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in self._idle:
            connection.close()
        self._idle.clear()


@dataclass(frozen=True, slots=True)
class _BodyFraming:
    chunked: bool
    length: int | None


async def _send_body(
    connection: _Connection, body: AsyncIterator[bytes], framing: _BodyFraming
) -> None:
    """The request body as it arrives from the client: in chunked framing (RFC 9112 §7.1), or
    as is under the head's Content-Length. Bytes that do not add up to that length (a server
    that handed over less, or more) would leave the app reading the next request as this
    body: the connection is reset instead, and never pooled."""
    sent = 0
    with contextlib.suppress(UpstreamClosed):  # the response path reports a closed connection
        async for chunk in body:
            if framing.chunked:
                await connection.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                continue
            sent += len(chunk)
            if framing.length is None or sent > framing.length:
                break
            await connection.write(chunk)
        else:
            if framing.chunked:
                await connection.write(b"0\r\n\r\n")
            if framing.chunked or sent == framing.length:
                connection.body_whole = True
                return
        connection.reset()
