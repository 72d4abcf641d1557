"""The WebSocket bridge: a client's upgrade becomes a WebSocket to the app on the shared session.
Text and binary frames pass both ways, the subprotocol the app chose is the one the client gets,
and a close on either side — code and reason — closes the other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiohttp
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from offload.facts import new_request_id, request_facts
from offload.proxy.breaker import Admission
from offload.proxy.headers import Header, create_upstream_headers, is_trusted
from offload.proxy.http import BREAKER_OPEN, HttpProxy, as_text_headers, raw_target
from offload.responses import http_date

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # uvicorn's own limit for the client side
CLOSE_TIMEOUT_SECONDS = 5.0
# Chosen by aiohttp for the upstream handshake; the client's would be wrong or doubled.
_HANDSHAKE_HEADERS = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions"}
    | {b"sec-websocket-protocol"}
)
# RFC 6455 §7.4.1: 1005 and 1006 describe a close, they are never sent in one.
_UNSENDABLE = {1005: 1000, 1006: 1001}
_APP_FAILED = 1011
_GOING_AWAY = 1001


class WebSocketBridge:
    """Bridges one client WebSocket to the app, through the proxy's session."""

    def __init__(self, proxy: HttpProxy) -> None:
        self.proxy = proxy
        self._going_away = asyncio.Event()

    def close_all(self) -> None:
        """offload is stopping: close every bridged WebSocket, both sides, with 1001."""
        self._going_away.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        admission = self.proxy.admit()
        if admission is Admission.REFUSED:
            await _refuse(scope, send, 503, BREAKER_OPEN, headers=[self.proxy.retry_after()])
            return
        try:
            upstream = await self._connect(scope)
        except aiohttp.WSServerHandshakeError as error:
            status = error.status if error.status >= 400 else 502
            self.proxy.settle(
                admission, failed=status >= 500 and self.proxy.settings.breaker_on_5xx
            )
            await _refuse(scope, send, status)
            return
        except TimeoutError:
            self.proxy.settle(admission, failed=None)  # as for HTTP: no verdict on the app
            await _refuse(scope, send, 504)
            return
        except aiohttp.ClientConnectorError:  # refused, as for HTTP
            await _refuse(scope, send, 503 if self.proxy.settle_refused(admission) else 502)
            return
        except aiohttp.ClientError:
            self.proxy.settle(admission, failed=True)
            await _refuse(scope, send, 502)
            return
        except BaseException:
            self.proxy.settle(admission, failed=None)
            raise
        self.proxy.settle(admission, failed=False)
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            await _bridge(receive, send, upstream, self._going_away)
        finally:
            await upstream.close()

    async def _connect(self, scope: Scope) -> aiohttp.ClientWebSocketResponse:
        client = scope.get("client")
        peer = client[0] if client else None
        headers = create_upstream_headers(
            [header for header in scope["headers"] if header[0] not in _HANDSHAKE_HEADERS],
            client_host=peer,
            scheme="https" if scope.get("scheme") == "wss" else "http",
            request_id=_request_id(scope),
            trusted=is_trusted(peer, self.proxy.settings.trusted_proxies),
        )
        url = "ws" + self.proxy.upstream.base_url.removeprefix("http") + raw_target(scope)
        async with asyncio.timeout(self.proxy.settings.read_timeout_seconds):
            return await self.proxy.session.ws_connect(
                URL(url, encoded=True),
                protocols=scope.get("subprotocols") or (),
                headers=as_text_headers(headers),
                autoclose=False,
                autoping=True,
                max_msg_size=MAX_MESSAGE_BYTES,
            )


def _request_id(scope: Scope) -> str:
    """The id the access log shows for this request: the client's ``X-Request-ID``, or the one
    offload made for it (`RequestFacts`); a new one only outside offload's edge."""
    facts = request_facts(scope)
    return facts.request_id if facts is not None else new_request_id()


async def _bridge(
    receive: Receive,
    send: Send,
    upstream: aiohttp.ClientWebSocketResponse,
    going_away: asyncio.Event,
) -> None:
    """Pump both ways until either side closes, or offload stops (1001 to both sides). The
    other pump is cancelled first, so the close to the app is the only reader of its reply."""
    from_client = asyncio.create_task(_client_to_app(receive, upstream))
    from_app = asyncio.create_task(_app_to_client(upstream, send))
    leaving = asyncio.create_task(going_away.wait())
    tasks = (from_client, from_app, leaving)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if from_app in done:
        from_app.result()  # it closed the client's side, or failed: the bridge with it
        return
    if from_client in done:
        code, reason = from_client.result()  # the client closed: pass its code on
    else:
        await send(_close_message(_GOING_AWAY, "offload is shutting down"))
        code, reason = _GOING_AWAY, "offload is shutting down"
    with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await upstream.close(code=_UNSENDABLE.get(code, code), message=reason.encode())


async def _client_to_app(
    receive: Receive, upstream: aiohttp.ClientWebSocketResponse
) -> tuple[int, str]:
    """Client frames to the app until the client closes; its close code and reason."""
    while True:
        message = await receive()
        if message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await upstream.send_str(message["text"])
            else:
                await upstream.send_bytes(message.get("bytes") or b"")
        elif message["type"] == "websocket.disconnect":
            return int(message.get("code") or 1005), message.get("reason") or ""


async def _app_to_client(upstream: aiohttp.ClientWebSocketResponse, send: Send) -> None:
    while True:
        message = await upstream.receive()
        if message.type == aiohttp.WSMsgType.TEXT:
            await send({"type": "websocket.send", "text": message.data})
        elif message.type == aiohttp.WSMsgType.BINARY:
            await send({"type": "websocket.send", "bytes": message.data})
        elif message.type == aiohttp.WSMsgType.CLOSE:
            code, reason = int(message.data), message.extra or ""
            await send(_close_message(_UNSENDABLE.get(code, code), reason))
            return
        else:  # the app's connection failed or closed without a close frame
            await send(_close_message(_APP_FAILED, "the app's connection ended"))
            return


def _close_message(code: int, reason: str) -> Message:
    return {"type": "websocket.close", "code": code, "reason": reason}


async def _refuse(
    scope: Scope, send: Send, status: int, reason: str = "", headers: Sequence[Header] = ()
) -> None:
    """The handshake failed at the app, or offload kept it from the app: send the status when
    the server can (the ASGI ``websocket.http.response`` extension), else refuse (uvicorn
    answers 403)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send(_close_message(1008, ""))
        return
    body = f"{reason or f'the app refused the WebSocket ({status})'}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"date", http_date.now()),
        *headers,
    ]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
