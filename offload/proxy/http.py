"""The streaming forwarder: one pooled aiohttp session to the app, raw bytes both ways, and the
mapping of upstream failures to 502 and 504.

aiohttp rather than httpx for this leg: measured 13x the throughput (DESIGN.md, "Dependencies").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from multidict import CIMultiDict
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from offload.proxy.headers import Header, create_client_headers, create_upstream_headers
from offload.responses import http_date, send_plain_text

# Node's http server closes idle keep-alive sockets after 5 s (server.keepAliveTimeout). The pool
# must give a socket up first, or a request may race the app's close and see a reset.
POOL_KEEPALIVE_SECONDS = 4.0
BODY_QUEUE_CHUNKS = 4
MAX_RESPONSE_HEADER_FIELD_BYTES = 32 * 1024


class UpstreamBroke(ConnectionError):
    """The app's response failed after its head was sent: the client connection must be cut."""


class _UpstreamConnection:
    """The connection one request to the app uses, once it has one."""

    protocol: ResponseHandler | None = None

    def abort(self) -> None:
        """Reset the connection. A close, even aiohttp's abort, leaves the kernel flushing the
        unread upload behind the FIN, so an app that stopped reading never learns the request
        is gone; SO_LINGER 0 makes the close a reset (RST) that it sees at once."""
        if self.protocol is None or self.protocol.transport is None:
            return
        sock = self.protocol.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.protocol.abort()


_CURRENT_CONNECTION: contextvars.ContextVar[_UpstreamConnection] = contextvars.ContextVar(
    "offload_upstream_connection"
)


class _RecordingConnector(aiohttp.TCPConnector):
    """Tells the request being sent (through a context variable) which connection it got."""

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109  # aiohttp's signature
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        if (current := _CURRENT_CONNECTION.get(None)) is not None:
            current.protocol = connection.protocol
        return connection


def create_session(*, connect_timeout_seconds: float) -> aiohttp.ClientSession:
    """The one client for the app. It adds nothing the client did not send and changes no bytes."""
    connector = _RecordingConnector(limit=0, keepalive_timeout=POOL_KEEPALIVE_SECONDS)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_seconds),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        max_field_size=MAX_RESPONSE_HEADER_FIELD_BYTES,
    )


class RequestReader:
    """The client's side of one exchange: body chunks for the app as they arrive (a bounded
    queue keeps memory flat), then the wait for the client to go away.

    ``on_abort`` runs when the client disconnects, or when the app has not taken a body chunk
    for ``stall_timeout_seconds`` (then ``stalled`` is set): while the queue is full nothing
    reads from the client, so a stalled app would otherwise hold the request forever.
    """

    def __init__(
        self, receive: Receive, *, on_abort: Callable[[], object], stall_timeout_seconds: float
    ) -> None:
        self._receive = receive
        self._on_abort = on_abort
        self._stall_timeout_seconds = stall_timeout_seconds
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=BODY_QUEUE_CHUNKS)
        self.body_complete = asyncio.Event()
        self.stalled = False

    async def run(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._on_abort()
                return
            if message["type"] == "http.request" and not self.body_complete.is_set():
                more_body = message.get("more_body", False)
                body = message.get("body", b"")
                if body and not await self._hand_over(body):
                    return
                if not more_body:
                    if not await self._hand_over(None):
                        return
                    self.body_complete.set()

    async def _hand_over(self, chunk: bytes | None) -> bool:
        try:
            async with asyncio.timeout(self._stall_timeout_seconds):
                await self._chunks.put(chunk)
        except TimeoutError:
            self.stalled = True
            self._on_abort()
            return False
        return True

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk


class HttpProxy:
    """Forwards one HTTP request to the app and streams the answer back.

    `start` and `close` bracket the shared session; they run in the app's lifespan.
    """

    def __init__(
        self, base_url: str, *, connect_timeout_seconds: float, read_timeout_seconds: float
    ):
        self.base_url = base_url
        self.connect_timeout_seconds = connect_timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = create_session(connect_timeout_seconds=self.connect_timeout_seconds)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        progress = _ResponseProgress(send)

        def cancel_unless_complete() -> None:
            if not progress.complete:
                relay.cancel()  # the client went away: stop the app's request with it

        reader = RequestReader(
            receive,
            on_abort=cancel_unless_complete,
            stall_timeout_seconds=self.read_timeout_seconds,
        )
        relay = asyncio.create_task(self._relay(scope, reader, progress.send))
        reading = asyncio.create_task(reader.run())
        try:
            await relay
        except asyncio.CancelledError:
            if progress.complete or not relay.cancelled() or _is_cancelling():
                raise
            if reader.stalled and not progress.started:
                await send_plain_text(send, 504, "the app stopped reading the request body")
        finally:
            reading.cancel()

    async def _relay(self, scope: Scope, reader: RequestReader, send: Send) -> None:
        try:
            response = await self._send_request(scope, reader)
        except TimeoutError:
            await send_plain_text(send, 504, "the app did not answer in time")
            return
        except aiohttp.ClientConnectorError:
            await send_plain_text(send, 502, "the app refused the connection")
            return
        except aiohttp.ClientError:
            await send_plain_text(send, 502, "the app closed the connection or answered malformed")
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": create_client_headers(response.raw_headers, date=http_date.now()),
                }
            )
            try:
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except aiohttp.ClientError as error:
                raise UpstreamBroke(f"the app's response broke off: {error!r}") from error
            await send({"type": "http.response.body", "body": b""})
        finally:
            # an unfinished body leaves the connection mid-message: it cannot go back to the pool
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    async def _send_request(self, scope: Scope, reader: RequestReader) -> aiohttp.ClientResponse:
        """The app's response head. The read timeout counts from the end of the request body,
        so a slow upload is not mistaken for a slow app."""
        assert self._session is not None, "HttpProxy.start() runs in the lifespan"
        headers = create_upstream_headers(
            scope["headers"],
            client_host=scope["client"][0] if scope.get("client") else None,
            scheme=scope.get("scheme", "http"),
            request_id=uuid.uuid4().hex,
        )
        request = self._session.request(
            scope["method"],
            URL(self.base_url + _raw_target(scope), encoded=True),
            headers=CIMultiDict(_as_text(header) for header in headers),
            data=reader.chunks() if _has_body(scope["headers"]) else None,
            allow_redirects=False,
        )
        connection = _UpstreamConnection()
        token = _CURRENT_CONNECTION.set(connection)  # the task below copies this context
        try:
            sending = asyncio.ensure_future(request)
        finally:
            _CURRENT_CONNECTION.reset(token)
        try:
            body_sent = asyncio.ensure_future(reader.body_complete.wait())
            await asyncio.wait((sending, body_sent), return_when=asyncio.FIRST_COMPLETED)
            body_sent.cancel()
            async with asyncio.timeout(self.read_timeout_seconds):
                return await sending
        finally:
            if not sending.done():
                sending.cancel()
                connection.abort()


class _ResponseProgress:
    """How far the response to the client got: started, and complete (final body sent)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.complete = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.complete = True
        await self._send(message)


def _is_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _raw_target(scope: Scope) -> str:
    """The client's request target byte for byte: raw path and query, never re-encoded."""
    raw_path: bytes | None = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
    query: bytes = scope.get("query_string", b"")
    target = f"{path}?{query.decode('latin-1')}" if query else path
    # RFC 3986 allows only ASCII in a target; escape stray bytes rather than re-encode them
    return target if target.isascii() else quote(target, safe="".join(map(chr, range(33, 127))))


def _has_body(headers: list[Header]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _as_text(header: Header) -> tuple[str, str]:
    """aiohttp writes header values as UTF-8: decode so valid UTF-8 passes through unchanged."""
    name, value = header
    try:
        return name.decode("latin-1"), value.decode("utf-8")
    except UnicodeDecodeError:
        return name.decode("latin-1"), value.decode("latin-1")
