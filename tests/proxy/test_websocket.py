"""The WebSocket bridge over real sockets: an aiohttp client, offload, and the Node test app's
WebSocket server (tests/upstream/websocket.js)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable

import aiohttp
import httpx
import pytest

from tests.servers import NodeApp, Offload, free_port

MAX_MESSAGE = 16 * 1024 * 1024


def ws_url(offload: Offload, path: str) -> str:
    return f"ws://127.0.0.1:{offload.port}{path}"


async def connect(
    session: aiohttp.ClientSession, url: str, **options: object
) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(url, max_msg_size=MAX_MESSAGE, **options)  # type: ignore[arg-type]


def test_text_binary_and_large_messages_round_trip(offload: Offload) -> None:
    async def exchange() -> None:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(offload, "/ws/echo"))
            await ws.send_str("héllo")
            assert (await ws.receive()).data == "héllo"
            await ws.send_bytes(b"\x00\x01\xff")
            reply = await ws.receive()
            assert reply.type == aiohttp.WSMsgType.BINARY
            assert reply.data == b"\x00\x01\xff"
            large = os.urandom(1024 * 1024)
            await ws.send_bytes(large)
            assert (await ws.receive()).data == large
            await ws.close()

    asyncio.run(exchange())


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["chat.v1", "chat.v2"], "chat.v1"), (["x", "chat.v2"], "chat.v2"), (["other"], None)],
)
def test_subprotocol_chosen_by_the_app_reaches_the_client(
    offload: Offload, offered: list[str], chosen: str | None
) -> None:
    async def handshake() -> tuple[str | None, dict[str, object]]:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(offload, "/ws/echo"), protocols=offered)
            await ws.send_str("hello")
            seen = json.loads((await ws.receive()).data)
            await ws.close()
            return ws.protocol, seen

    protocol, seen = asyncio.run(handshake())
    assert protocol == chosen
    assert seen["subprotocol"] == chosen


def test_query_and_cookies_reach_the_app(offload: Offload) -> None:
    async def hello() -> dict[str, object]:
        async with aiohttp.ClientSession() as session:
            url = ws_url(offload, "/ws/echo?room=7&id=q")
            ws = await connect(session, url, headers={"Cookie": "session=abc"})
            await ws.send_str("hello")
            seen: dict[str, object] = json.loads((await ws.receive()).data)
            await ws.close()
            return seen

    seen = asyncio.run(hello())
    assert seen["cookie"] == "session=abc"
    assert seen["query"] == "room=7&id=q"


def test_the_app_gets_the_request_id_the_access_log_shows(offload: Offload) -> None:
    marker = uuid.uuid4().hex

    async def hello() -> dict[str, object]:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(offload, f"/ws/echo?id={marker}"))
            await ws.send_str("hello")
            seen: dict[str, object] = json.loads((await ws.receive()).data)
            await ws.close()
            return seen

    sent_to_app = asyncio.run(hello())["requestId"]

    def logged() -> list[dict[str, object]]:
        lines = (json.loads(line) for line in offload.output().splitlines() if marker in line)
        return [line for line in lines if line.get("route") == "websocket"]

    deadline = time.monotonic() + 5  # the access log is written in batches every 0.2 s
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [line["request_id"] for line in logged()] == [sent_to_app]


def test_app_close_code_and_reason_reach_the_client(offload: Offload) -> None:
    async def closed_by_app() -> tuple[int | None, str]:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(offload, "/ws/echo"))
            await ws.send_str("close:4001:bye now")
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.CLOSE
            return ws.close_code, message.extra or ""

    assert asyncio.run(closed_by_app()) == (4001, "bye now")


def test_client_close_code_and_reason_reach_the_app(offload: Offload) -> None:
    socket_id = uuid.uuid4().hex

    async def close_from_client() -> None:
        async with aiohttp.ClientSession() as session:
            ws = await connect(session, ws_url(offload, f"/ws/echo?id={socket_id}"))
            await ws.send_str("ping")
            await ws.receive()
            await ws.close(code=4002, message=b"client bye")

    asyncio.run(close_from_client())
    record = poll_json(f"{offload.url}/api/ws-close?id={socket_id}", lambda body: bool(body))
    assert record == {"code": 4002, "reason": "client bye"}


def test_many_concurrent_sockets(offload: Offload) -> None:
    async def one(session: aiohttp.ClientSession, number: int) -> None:
        ws = await connect(session, ws_url(offload, f"/ws/echo?id=many{number}"))
        for message in range(20):
            await ws.send_str(f"{number}:{message}")
            assert (await ws.receive()).data == f"{number}:{message}"
        await ws.close()

    async def all_at_once() -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(one(session, number) for number in range(50)))

    asyncio.run(all_at_once())


def test_handshake_refused_by_the_app_keeps_its_status(offload: Offload) -> None:
    async def refused() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
                await connect(session, ws_url(offload, "/ws/reject"))
            return raised.value.status

    assert asyncio.run(refused()) == 403


def test_app_down_refuses_the_handshake_with_502(start_offload: Callable[..., Offload]) -> None:
    server = start_offload("--upstream", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.3")

    async def refused() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
                await connect(session, ws_url(server, "/ws/echo"))
            return raised.value.status

    assert asyncio.run(refused()) == 502


def poll_json(url: str, done: Callable[[dict[str, object]], bool]) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, object] = httpx.get(url).json()
        if done(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_clients_closing_leave_no_error_behind(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    """Each client's close reaches the app with its code, and offload logs no failure: the
    close to the app is the only reader of the app's reply (two readers raced here once)."""
    server = start_offload("--upstream", node_app.address)
    ids = [uuid.uuid4().hex for _ in range(16)]

    async def one(session: aiohttp.ClientSession, socket_id: str) -> None:
        ws = await connect(session, ws_url(server, f"/ws/echo?id={socket_id}"))
        for _ in range(20):
            await ws.send_str("ping")
            await ws.receive()
        await ws.close(code=1000)

    async def all_at_once() -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(one(session, socket_id) for socket_id in ids))

    asyncio.run(all_at_once())
    for socket_id in ids:
        record = poll_json(f"{server.url}/api/ws-close?id={socket_id}", lambda body: bool(body))
        assert record == {"code": 1000, "reason": ""}
    time.sleep(0.3)
    assert "Traceback" not in server.output()
