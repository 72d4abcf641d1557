"""The streaming forwarder: raw bytes both ways between the client and the app, the body limit on
the way in, optional compression on the way out, and upstream failures mapped to 502 and 504."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDict
from starlette.types import Message, Receive, Scope, Send

from offload.config import Upstream
from offload.facts import RequestFacts, new_request_id, request_facts
from offload.proxy import encode
from offload.proxy.breaker import Admission, Breaker, ConcurrencyCap
from offload.proxy.client import POOL_KEEPALIVE_SECONDS, create_session
from offload.proxy.headers import (
    Header,
    Network,
    create_client_headers,
    create_upstream_headers,
    is_trusted,
)
from offload.proxy.reader import RequestReader
from offload.proxy.upstream import (
    UpstreamError,
    UpstreamMalformed,
    UpstreamPool,
    UpstreamRefused,
    UpstreamResponse,
)
from offload.responses import http_date, send_plain_text

logger = logging.getLogger("offload.proxy")

BREAKER_OPEN = "the app is failing: offload's circuit breaker is open"
RETRY_SOON: Header = (b"retry-after", b"1")
CONNECT_RETRY_FIRST_SECONDS = 0.05
CONNECT_RETRY_MAX_SECONDS = 0.5

# serves a path from the static root in place of the app's response (X-Accel-Redirect)
AccelRedirect = Callable[[str, Scope, Receive, Send, list[Header]], Awaitable[None]]


@dataclass(frozen=True)
class ProxySettings:
    """How requests are forwarded: see `offload.Config` for each setting's meaning."""

    read_timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 5.0
    compress: bool = True
    max_body_bytes: int | None = None
    trusted_proxies: tuple[Network, ...] = ()
    max_connections: int = 0
    breaker_failures: int = 0  # 0: no breaker
    breaker_cooldown_seconds: float = 5.0
    breaker_on_5xx: bool = False
    max_concurrency: int = 0  # 0: no cap
    restarted_by_offload: bool = False  # a refused app is one offload's watchdog brings back


class HttpProxy:
    """Forwards one HTTP request to the app and streams the answer back.

    `start` and `close` bracket the shared session; they run in the app's lifespan.
    """

    def __init__(
        self,
        upstream: Upstream,
        settings: ProxySettings,
        *,
        accel_redirect: AccelRedirect | None = None,
    ) -> None:
        self.upstream = upstream
        self.settings = settings
        self.accel_redirect = accel_redirect
        self._origins = tuple(origin.encode() for origin in upstream.origins)
        self._host = str(upstream).encode() if upstream.unix_path is None else b"localhost"
        self._session: aiohttp.ClientSession | None = None
        self._pool: UpstreamPool | None = None
        self.breaker = (
            Breaker(settings.breaker_failures, settings.breaker_cooldown_seconds)
            if settings.breaker_failures
            else None
        )
        # a request waits for a slot as it would for a connection
        self.cap = (
            ConcurrencyCap(settings.max_concurrency, settings.connect_timeout_seconds)
            if settings.max_concurrency
            else None
        )
        self.rejected = {"breaker": 0, "concurrency": 0}  # requests answered 503 by offload

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session the WebSocket bridge uses."""
        assert self._session is not None, "HttpProxy.start() runs in the lifespan"
        return self._session

    async def start(self) -> None:
        self._pool = UpstreamPool(
            self.upstream,
            connect_timeout_seconds=self.settings.connect_timeout_seconds,
            max_connections=self.settings.max_connections,
            keepalive_seconds=POOL_KEEPALIVE_SECONDS,
        )
        self._session = create_session(
            self.upstream,
            connect_timeout_seconds=self.settings.connect_timeout_seconds,
            max_connections=self.settings.max_connections,
        )

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        framing = _Framing.of(scope["headers"])
        if (framing.length or 0) > (self.settings.max_body_bytes or float("inf")):
            await send_plain_text(send, 413, "the request body is larger than allowed")
            return
        progress = _ResponseProgress(send)
        task = asyncio.current_task()
        assert task is not None
        aborted = False

        def cancel_unless_complete() -> None:
            nonlocal aborted
            if not progress.complete and not aborted:
                aborted = True  # the client went away, or the body must not go on
                task.cancel()

        reader = RequestReader(
            receive,
            on_abort=cancel_unless_complete,
            stall_timeout_seconds=self.settings.read_timeout_seconds,
            max_body_bytes=self.settings.max_body_bytes,
            has_body=framing.has_body,
        )
        reading = asyncio.create_task(reader.run())
        try:
            await self._relay(scope, reader, progress.send, framing)
        except asyncio.CancelledError:
            # the relay runs in this task (a task less per request); a cancel that is not
            # the reader's own, such as server shutdown, goes on up
            if not aborted or task.cancelling() > 1:
                raise
            task.uncancel()
            if (facts := request_facts(scope)) is not None and not reader.too_large:
                facts.error = facts.error or (
                    "upstream_timeout" if reader.stalled else "client_closed"
                )
            if not progress.started and reader.too_large:
                await send_plain_text(send, 413, "the request body is larger than allowed")
            elif not progress.started and reader.stalled:
                await send_plain_text(send, 504, "the app stopped reading the request body")
        finally:
            reading.cancel()

    def admit(self) -> Admission:
        """Whether the breaker lets this request (or WebSocket) reach the app; one that does
        reports its outcome with `settle`."""
        if self.breaker is None:
            return Admission.PASSED
        admission = self.breaker.admit()
        if admission is Admission.REFUSED:
            self.rejected["breaker"] += 1
        return admission

    def settle(self, admission: Admission, *, failed: bool | None) -> None:
        """An admitted exchange ended: the app failed, answered, or nobody knows (the client
        left first: ``None``)."""
        if self.breaker is not None:
            self.breaker.settle(admission, failed=failed)

    async def _relay(
        self, scope: Scope, reader: RequestReader, send: Send, framing: _Framing
    ) -> None:
        facts = request_facts(scope)
        admission = self.admit()
        refusal = None
        if admission is Admission.REFUSED:
            refusal = BREAKER_OPEN
        elif self.cap is not None and not await self._take_slot(admission):
            self.rejected["concurrency"] += 1
            refusal = "too many requests at the app: try again shortly"
        if refusal is not None:
            _note(facts, "upstream_rejected")
            await send_plain_text(send, 503, refusal, headers=[self.retry_after()])
            return
        try:
            await self._exchange(scope, reader, send, facts, admission, framing)
        finally:
            if self.cap is not None:
                self.cap.release()

    async def _take_slot(self, admission: Admission) -> bool:
        """A slot under the cap; without one (refused, or the client left while waiting), the
        breaker hears that this request tells nothing about the app."""
        assert self.cap is not None
        taken = False
        try:
            taken = await self.cap.acquire()
        finally:
            if not taken:
                self.settle(admission, failed=None)
        return taken

    def settle_refused(self, admission: Admission) -> bool:
        """The app refused the connection; whether it is between lives, restarted by offload's
        watchdog (then no verdict on it), rather than failing."""
        restarting = self.settings.restarted_by_offload
        self.settle(admission, failed=None if restarting else True)
        return restarting

    def retry_after(self) -> Header:
        """``Retry-After`` for offload's own 503: the rest of the breaker's cooldown, or 1 s."""
        seconds = self.breaker.retry_after_seconds() if self.breaker is not None else 1
        return (b"retry-after", str(seconds).encode())

    async def _exchange(
        self,
        scope: Scope,
        reader: RequestReader,
        send: Send,
        facts: RequestFacts | None,
        admission: Admission,
        framing: _Framing,
    ) -> None:
        request_id = (
            facts.request_id.encode()
            if facts is not None
            else _header(scope["headers"], b"x-request-id") or new_request_id().encode()
        )
        started = time.perf_counter()
        try:
            response = await self._send_request(scope, reader, request_id, framing)
        except TimeoutError:
            # not the app's failure for certain: any client can ask for a slow endpoint, and
            # five at once would open the breaker for every request on every replica
            self.settle(admission, failed=None)
            _note(facts, "upstream_timeout")
            await send_plain_text(send, 504, "the app did not answer in time")
            return
        except UpstreamRefused:
            _note(facts, "upstream_refused")
            if self.settle_refused(admission):
                await send_plain_text(send, 503, "the app is restarting", headers=[RETRY_SOON])
            else:
                await send_plain_text(send, 502, "the app refused the connection")
            return
        except UpstreamError as error:
            self.settle(admission, failed=True)
            _note(
                facts,
                "upstream_malformed" if isinstance(error, UpstreamMalformed) else "upstream_reset",
            )
            await send_plain_text(send, 502, "the app closed the connection or answered malformed")
            return
        except BaseException:
            self.settle(admission, failed=None)  # the client left, or offload is stopping
            raise
        self.settle(admission, failed=self.settings.breaker_on_5xx and response.status >= 500)
        if facts is not None:
            facts.upstream_status = response.status
            facts.upstream_ms = round((time.perf_counter() - started) * 1000, 3)
        try:
            headers = create_client_headers(
                response.headers,
                date=http_date.now(),
                request_id=request_id,
                upstream_origins=self._origins,
            )
            target = response.header(b"x-accel-redirect")
            if target is not None and self.accel_redirect is not None:
                # the app authorised; offload sends the file
                path = target.decode("latin-1")
                await self.accel_redirect(path, scope, reader.receive_disconnect, send, headers)
            else:
                await self._stream_response(scope, response, headers, send)
        finally:
            # an unfinished body leaves the connection mid-message: it cannot go back to the pool
            response.release()

    async def _stream_response(
        self, scope: Scope, response: UpstreamResponse, headers: list[Header], send: Send
    ) -> None:
        if response.status in _WITHOUT_CONTENT:
            headers = _without_length(headers)
        coding = self._coding(scope, response.status, headers)
        head_only = scope["method"] == "HEAD"
        chunks = response.chunks()
        first = b""
        if coding and not head_only and encode.should_peek(headers):
            # no length given: a body that is complete in its first chunk and tiny is not
            # worth compressing; an event stream is never held back for this
            try:
                first = await anext(chunks, b"")
            except UpstreamError:
                _note(request_facts(scope), "upstream_reset")
                await send_plain_text(send, 502, "the app's response broke off")
                return
            if response.at_eof and len(first) < encode.MIN_COMPRESS_BYTES:
                coding = None
        encoder = None
        if coding:
            # RFC 9110 §9.3.2: HEAD gets the header fields GET would (its coding, Vary, the
            # weak ETag, no length), with no body to encode (issue 15: it got identity's)
            if not head_only:
                encoder = encode.StreamEncoder(coding, flush_each=encode.is_live_stream(headers))
            headers = encode.compressed_headers(headers, coding)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if first:
            data = encoder.feed(first) if encoder else first
            await send({"type": "http.response.body", "body": data, "more_body": True})
        try:
            async for chunk in chunks:
                data = encoder.feed(chunk) if encoder else chunk
                if encoder is None and response.at_eof:
                    # the last chunk: send it as the final message, one send fewer
                    await send({"type": "http.response.body", "body": data})
                    return
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except UpstreamError as error:
            # the head is out: all that is left is to end the connection, short of its length
            # (returning without the final message makes uvicorn close it)
            logger.warning("the app's response to %s broke off: %s", scope["path"], error)
            _note(request_facts(scope), "upstream_reset")
            return
        await send({"type": "http.response.body", "body": encoder.finish() if encoder else b""})

    def _coding(self, scope: Scope, status: int, headers: list[Header]) -> str | None:
        """The coding GET's body gets, and HEAD's headers announce; ``None``: as it is."""
        if not self.settings.compress:
            return None
        accept_encoding = _text_header(scope["headers"], b"accept-encoding")
        if accept_encoding is None:
            return None
        return encode.choose_coding(accept_encoding=accept_encoding, status=status, headers=headers)

    async def _send_request(
        self, scope: Scope, reader: RequestReader, request_id: bytes, framing: _Framing
    ) -> UpstreamResponse:
        """The app's response head. A refused connection is retried for up to the connect
        timeout (the app may be restarting); nothing is sent then, so even a POST is safe.
        The pool retries an idempotent request without a body once when a pooled connection
        turns out closed (RFC 9112 §9.3.1)."""
        deadline = time.monotonic() + self.settings.connect_timeout_seconds
        pause = CONNECT_RETRY_FIRST_SECONDS
        while True:
            try:
                return await self._attempt(scope, reader, request_id, framing)
            except UpstreamRefused:
                if time.monotonic() + pause > deadline or reader.disconnected.is_set():
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, CONNECT_RETRY_MAX_SECONDS)

    async def _attempt(
        self, scope: Scope, reader: RequestReader, request_id: bytes, framing: _Framing
    ) -> UpstreamResponse:
        """One try. The read timeout counts from the end of the request body, so a slow upload
        is not mistaken for a slow app. The head's framing is offload's own (`_Framing`)."""
        assert self._pool is not None, "HttpProxy.start() runs in the lifespan"
        client = scope.get("client")
        peer = client[0] if client else None
        headers = create_upstream_headers(
            scope["headers"],
            client_host=peer,
            scheme=scope.get("scheme", "http"),
            request_id=request_id.decode("latin-1"),
            trusted=is_trusted(peer, self.settings.trusted_proxies),
        )
        head = _request_head(scope, headers, host=self._host, framing=framing.header)
        method: str = scope["method"]
        has_body = framing.has_body
        request = self._pool.request(
            method,
            head,
            reader.chunks() if has_body else None,
            chunked=framing.chunked,
            length=framing.length,
        )
        if not has_body:  # the common case, kept lean
            async with asyncio.timeout(self.settings.read_timeout_seconds):
                return await request
        # a body still arriving: the timeout starts once it is all sent
        sending = asyncio.ensure_future(request)
        body_sent = asyncio.ensure_future(reader.body_complete.wait())
        try:
            await asyncio.wait((sending, body_sent), return_when=asyncio.FIRST_COMPLETED)
            body_sent.cancel()
            async with asyncio.timeout(self.settings.read_timeout_seconds):
                return await sending
        except BaseException:
            # given up just as the head arrived: that response is nobody's, free its connection
            if sending.done() and not sending.cancelled() and sending.exception() is None:
                sending.result().release()
            raise
        finally:
            sending.cancel()
            body_sent.cancel()  # also when cancelled inside the wait: no task left pending


# RFC 9110 §15.3.5, §15.4.5: no content follows a 204 or a 304 (and llhttp reads none)
_WITHOUT_CONTENT = frozenset({204, 304})


def _without_length(headers: list[Header]) -> list[Header]:
    """A 204 or 304's headers without Content-Length. RFC 9110 §8.6: a 204 must not carry one;
    a 304's may give the length a 200 would have, but uvicorn would then wait for that many
    body bytes and reset the connection (issue 15), and a 304 of offload's own has none."""
    return [header for header in headers if header[0].lower() != b"content-length"]


def _note(facts: RequestFacts | None, error: str) -> None:
    """Record what went wrong with the app, for the access log and the metrics."""
    if facts is not None:
        facts.error = error


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


def raw_target(scope: Scope) -> str:
    """The client's request target byte for byte: raw path and query, never re-encoded; only
    a path that starts with ``//`` loses its extra slashes. The app could read ``//x/admin`` as
    a network-path reference (RFC 3986 §4.2: host ``x``, path ``/admin``), as Node's
    ``new URL(req.url, base)`` does, while hooks checked the canonical ``/x/admin``."""
    raw_path: bytes | None = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else quote(scope["path"])
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    query: bytes = scope.get("query_string", b"")
    target = f"{path}?{query.decode('latin-1')}" if query else path
    # RFC 3986 allows only ASCII in a target; escape stray bytes rather than re-encode them
    return target if target.isascii() else quote(target, safe="".join(map(chr, range(33, 127))))


def _header(headers: list[Header], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def _text_header(headers: list[Header], name: bytes) -> str | None:
    values = [value.decode("latin-1") for key, value in headers if key == name]
    return ", ".join(values) if values else None


@dataclass(frozen=True, slots=True)
class _Framing:
    """How the request's body goes to the app: ``length`` bytes, chunked, or none. Decided from
    what the server hands offload (httptools has refused any ambiguous framing, and decoded
    chunks), and written into the head by offload itself, never copied from the client's
    headers: a ``Connection: content-length`` cannot take the framing off a body that follows.
    """

    length: int | None = None  # the client's Content-Length, re-sent as is
    chunked: bool = False  # re-framed in chunks of offload's own (RFC 9112 §7.1)

    @classmethod
    def of(cls, headers: list[Header]) -> _Framing:
        length = None
        for name, value in headers:
            if name == b"transfer-encoding":
                return _CHUNKED  # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length
            if name == b"content-length":
                length = value.strip()
        if length is None or not length.isdigit():
            return _NO_BODY  # no body, or one offload cannot frame: nothing is relayed
        return cls(length=int(length))

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)

    @property
    def header(self) -> bytes | None:
        if self.chunked:
            return b"transfer-encoding: chunked"
        if self.length is not None:
            return b"content-length: %d" % self.length
        return None


_NO_BODY = _Framing()
_CHUNKED = _Framing(chunked=True)


def _request_head(
    scope: Scope, headers: list[Header], *, host: bytes, framing: bytes | None
) -> bytes:
    """The request line and headers, as bytes: the client's values go out exactly as received,
    then offload's framing."""
    lines = [b"%s %s HTTP/1.1" % (scope["method"].encode(), raw_target(scope).encode())]
    if not any(name.lower() == b"host" for name, _ in headers):
        lines.append(b"host: " + host)  # an HTTP/1.0 client may send none
    lines.extend(name + b": " + value for name, value in headers)
    if framing is not None:
        lines.append(framing)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def as_text_headers(headers: list[Header]) -> CIMultiDict[str]:
    """Headers as aiohttp takes them. It writes values as UTF-8, so each is decoded as UTF-8
    when it is valid (and passes unchanged), else as Latin-1."""
    return CIMultiDict(_as_text(header) for header in headers)


def _as_text(header: Header) -> tuple[str, str]:
    name, value = header
    try:
        return name.decode("latin-1"), value.decode("utf-8")
    except UnicodeDecodeError:
        return name.decode("latin-1"), value.decode("latin-1")
