"""A faulty app: an asyncio HTTP/1.1 server on a loopback port, in a thread of its own, that
answers each request with the misbehaviour its path names (`FAULTS`), and records what it saw:
which connection each request came on, and which connections offload closed. (An app refusing
connections is a port nothing listens on; `FaultyApp(port=...)` is the app coming back.)"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import random
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

IDLE_SECONDS = 30.0  # the app's keep-alive timeout, unless a fault sets another
HANG_SECONDS = 30.0  # the longest /hang holds a request unanswered
START_SECONDS = 5.0
DRIP_INTERVAL_SECONDS = 0.1
BEFORE_RESET_SECONDS = 0.1  # the head reaches offload before the RST, the same every run

DRIP_BODY = b"0123456789abcdefghij"
CUT_BODY = b"0123456789"  # 10 of the 100 bytes /reset-after-head promises
# deterministic "random" bytes: a peer that does not speak HTTP at all
GARBAGE = random.Random(9112).randbytes(256)


def response(
    body: bytes, *, status: bytes = b"200 OK", headers: Iterable[bytes] = (), length: int = -1
) -> bytes:
    """A keep-alive response; ``length`` overrides the Content-Length of ``body``."""
    lines = [b"HTTP/1.1 " + status, b"Content-Type: application/octet-stream", *headers]
    lines.append(b"Content-Length: %d" % (len(body) if length < 0 else length))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]

    def number(self, name: str, default: float) -> float:
        return float(self.query.get(name, [default])[0])


@dataclass(frozen=True)
class Seen:
    """One request as the app read it."""

    path: str
    connection: int  # the app's number for the connection, from 1, in order of accept
    idle_seconds: float  # how long that connection had waited for this request
    answered: bool = True  # False: dropped with the connection (`Idle.drop_after`)


@dataclass(frozen=True)
class Idle:
    """How a connection waits for its next request: closed after ``seconds``; with
    ``drop_after``, a request that comes after that many idle seconds is closed on unanswered,
    as if the app's keep-alive timer had fired just as it arrived."""

    seconds: float = IDLE_SECONDS
    drop_after: float | None = None


KEEP = Idle()

# a fault writes its answer (or not) and says how the connection then waits; None: it is done
Fault = Callable[[Request, asyncio.StreamWriter], Awaitable[Idle | None]]


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (RST) instead of a FIN: SO_LINGER with a zero timeout."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def answer_ok(request: Request, writer: asyncio.StreamWriter) -> Idle:
    writer.write(response(b"ok"))
    return KEEP


async def hang(request: Request, writer: asyncio.StreamWriter) -> Idle:
    """Never answer; the connection loop then notices when offload gives up on it."""
    return Idle(HANG_SECONDS)


async def slow(request: Request, writer: asyncio.StreamWriter) -> Idle:
    """Answer ok after ``?seconds=`` (1 by default)."""
    await asyncio.sleep(request.number("seconds", 1))
    writer.write(response(b"ok"))
    return KEEP


async def reset_before_head(request: Request, writer: asyncio.StreamWriter) -> None:
    reset(writer)


async def reset_after_head(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(response(CUT_BODY, length=100))
    await writer.drain()
    await asyncio.sleep(BEFORE_RESET_SECONDS)
    reset(writer)


async def cut_head(request: Request, writer: asyncio.StreamWriter) -> None:
    """Half a head, then a plain close."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
    await writer.drain()


def sending(data: bytes, *, then_close: bool = False) -> Fault:
    """A fault that sends ``data`` and keeps the connection open (offload must judge the bytes
    themselves, not wait for a close), or closes it after."""

    async def send(request: Request, writer: asyncio.StreamWriter) -> Idle | None:
        writer.write(data)
        await writer.drain()
        return None if then_close else KEEP

    return send


async def extra_bytes_later(request: Request, writer: asyncio.StreamWriter) -> Idle:
    """Content-Length: 5, and five more bytes 50 ms later, when offload has long put the
    connection back in its pool."""
    writer.write(response(b"hello"))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"world")
    return KEEP


async def drip(request: Request, writer: asyncio.StreamWriter) -> Idle:
    """A body of ``?bytes=`` bytes (5 by default), one every 100 ms."""
    body = DRIP_BODY[: int(request.number("bytes", 5))]
    writer.write(response(b"", length=len(body)))
    for byte in body:
        await writer.drain()
        await asyncio.sleep(DRIP_INTERVAL_SECONDS)
        writer.write(bytes([byte]))
    return KEEP


async def close_when_idle(request: Request, writer: asyncio.StreamWriter) -> Idle:
    """Answer, then close the connection after ``?after=`` idle seconds, as an app's keep-alive
    timeout does (Node's `server.keepAliveTimeout`); with ``?drop_after=``, close it on the next
    request instead if that comes after so many idle seconds."""
    writer.write(response(b"ok"))
    drop_after = request.number("drop_after", 0) if "drop_after" in request.query else None
    return Idle(request.number("after", IDLE_SECONDS), drop_after)


def json_with_etag(size: int) -> Fault:
    """``size`` bytes of JSON with a strong ETag and its Content-Length, the body left out for
    HEAD as a well-behaved app does (RFC 9110 §9.3.2)."""
    body = b'{"pad": "%s"}' % (b"x" * (size - 11))
    head = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: "v1"\r\n'
    head += b"Content-Length: %d\r\n\r\n" % len(body)

    async def send(request: Request, writer: asyncio.StreamWriter) -> Idle:
        writer.write(head if request.method == "HEAD" else head + body)
        return KEEP

    return send


GZIPPED = gzip.compress(b"hello", mtime=0)
HUGE_HEADERS = [b"X-Filler-%03d: %s" % (index, b"f" * 1000) for index in range(205)]

FAULTS: dict[str, Fault] = {
    "/ok": answer_ok,
    "/hang": hang,
    "/slow": slow,
    "/server-error": sending(response(b"oops", status=b"500 Internal Server Error")),
    "/reset-before-head": reset_before_head,
    "/reset-after-head": reset_after_head,
    "/cut-head": cut_head,
    "/garbage-bytes": sending(GARBAGE),
    "/garbage-status": sending(b"HTTP/1.1 ???\r\n\r\n"),
    "/length-and-chunked": sending(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ),
    "/chunked-and-length": sending(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    ),
    # a transfer coding other than chunked: offload does not decode it
    "/gzip-then-chunked": sending(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(GZIPPED), GZIPPED)
    ),
    # chunked not last: RFC 9112 §6.3 says the body runs to the close
    "/chunked-then-gzip": sending(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n" + GZIPPED,
        then_close=True,
    ),
    "/identity-coding": sending(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello"
    ),
    "/two-lengths": sending(response(b"hello!", headers=[b"Content-Length: 6"], length=5)),
    "/extra-bytes": sending(response(b"hello") + b"world"),
    "/extra-bytes-later": extra_bytes_later,
    "/huge-head": sending(response(b"ok", headers=HUGE_HEADERS)),
    "/huge-field": sending(response(b"ok", headers=[b"X-Big: " + b"b" * 200 * 1024])),
    "/drip": drip,
    # RFC 9110 §8.6: a 304 may carry the Content-Length a 200 would have, and no body follows
    "/not-modified-with-length": sending(
        b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n'
    ),
    # a 204 must not carry one (§8.6), but some apps send "Content-Length: 0" or more
    "/no-content-with-length": sending(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"),
    "/json": json_with_etag(4096),
    "/tiny-json": json_with_etag(100),
    # status codes are 100-599 (RFC 9110 §15); llhttp takes any three digits
    "/status-600": sending(response(b"ok", status=b"600 Beyond")),
    "/status-099": sending(response(b"ok", status=b"099 Before")),
    "/status-000": sending(response(b"ok", status=b"000 None")),
    "/close-when-idle": close_when_idle,
}
NOT_FOUND = sending(response(b"", status=b"404 Not Found"))


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request, its body (by Content-Length) read and dropped; None once the peer
    closed or reset the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        for line in lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                await reader.readexactly(int(value))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    method, target, _ = request_line.split(" ", 2)
    parts = urlsplit(target)
    return Request(method, parts.path, parse_qs(parts.query))


class FaultyApp:
    """The faulty app, on ``127.0.0.1:port`` (0: a free port) while the ``with`` block runs.
    offload's readiness check also connects once a second; those connections carry no
    request."""

    def __init__(self, *, port: int = 0) -> None:
        self.port = port
        self.seen: list[Seen] = []
        self.closed_by_peer: set[int] = set()  # connections offload closed or reset
        self._changed = threading.Condition()
        self._numbers = itertools.count(1)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None

    def __enter__(self) -> FaultyApp:
        self._thread.start()
        if not self._ready.wait(START_SECONDS) or self._failure is not None:
            raise RuntimeError(f"the faulty app did not start: {self._failure!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(START_SECONDS)

    def wait_closed_by_peer(self, connections: set[int], seconds: float = 2.0) -> bool:
        """Whether offload closed all these connections within ``seconds``."""
        with self._changed:
            return self._changed.wait_for(lambda: connections <= self.closed_by_peer, seconds)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._serve_connection(next(self._numbers), reader, writer)
            finally:
                tasks.discard(task)

        try:
            server = await asyncio.start_server(serve, "127.0.0.1", self.port)
        except OSError as error:
            self._failure = error
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve_connection(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        idle: Idle | None = KEEP
        try:
            while idle is not None:
                idle_since = time.monotonic()
                try:
                    async with asyncio.timeout(idle.seconds):
                        request = await read_request(reader)
                except TimeoutError:
                    return  # the app's own keep-alive timeout: a plain close
                if request is None:
                    self._note_closed_by_peer(number)
                    return
                idle_seconds = time.monotonic() - idle_since
                if idle.drop_after is not None and idle_seconds >= idle.drop_after:
                    self.seen.append(Seen(request.path, number, idle_seconds, answered=False))
                    return
                self.seen.append(Seen(request.path, number, idle_seconds))
                fault = FAULTS.get(request.path, NOT_FOUND)
                idle = await fault(request, writer)
                if idle is not None:  # (a reset connection has nothing to drain)
                    await writer.drain()
        except ConnectionError:
            self._note_closed_by_peer(number)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _note_closed_by_peer(self, number: int) -> None:
        with self._changed:
            self.closed_by_peer.add(number)
            self._changed.notify_all()
