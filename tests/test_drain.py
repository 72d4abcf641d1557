"""Graceful shutdown: on SIGTERM offload stops accepting, lets requests in flight finish (streams
up to --drain-timeout), closes WebSockets with 1001, and exits 0, losing nothing it accepted."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import signal
import time
import uuid
from collections.abc import Callable

import aiohttp
import httpx
import pytest

from tests.servers import FIXTURES, ROOT, NodeApp, Offload, free_port, poll

EXAMPLE_APP = ROOT / "examples" / "node-app"
LOAD_CLIENTS = 16
LOAD_SECONDS_BEFORE_SIGTERM = 1.0


async def _load_client(
    port: int, target: bytes, outcomes: collections.Counter[str], *, keep_alive: bool
) -> None:
    """Requests one after another until the port refuses a connection: each outcome counted as
    ``answered``, ``refused`` (offload had stopped accepting) or ``lost`` (a connection that
    was open, or a request that was sent, got no complete answer)."""
    numbers = itertools.count()
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    deadline = time.monotonic() + 30  # bounded whatever happens
    while time.monotonic() < deadline:
        if connection is None:
            try:
                connection = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                outcomes["refused"] += 1
                return
        reader, writer = connection
        close = b"keep-alive" if keep_alive else b"close"
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: offload.test\r\nX-Request-ID: load-%d\r\n"
            b"Connection: %s\r\n\r\n" % (target, next(numbers), close)
        )
        try:
            headers = await _read_response(reader)
            outcomes["answered"] += 1
            done = not keep_alive or headers.get("connection") == "close"
        except (OSError, asyncio.IncompleteReadError, ValueError):
            outcomes["lost"] += 1
            done = True
        if done:
            writer.close()
            connection = None


async def _read_response(reader: asyncio.StreamReader) -> dict[str, str]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    if head[0].split()[1] != "200":
        raise ValueError(head[0])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        await reader.readuntil(b"0\r\n\r\n")
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return headers


async def _load_through_sigterm(
    server: Offload, *, keep_alive: bool, proxied: bytes = b"/api/small-json"
) -> collections.Counter[str]:
    outcomes: collections.Counter[str] = collections.Counter()
    targets = [b"/index.html", proxied]  # static and proxied, half each
    clients = [
        asyncio.create_task(
            _load_client(server.port, targets[n % 2], outcomes, keep_alive=keep_alive)
        )
        for n in range(LOAD_CLIENTS)
    ]
    await asyncio.sleep(LOAD_SECONDS_BEFORE_SIGTERM)
    outcomes["answered before SIGTERM"] = outcomes["answered"]
    server.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*clients), timeout=40)
    return outcomes


@pytest.mark.parametrize(
    ("keep_alive", "workers"),
    [(True, 1), (False, 1), (True, 2)],
    ids=["keep-alive", "connection-close", "keep-alive-2-workers"],
)
def test_sigterm_under_steady_load_loses_no_request(
    node_app: NodeApp, start_offload: Callable[..., Offload], keep_alive: bool, workers: int
) -> None:
    server = start_offload(
        "--upstream", node_app.address, "--static", FIXTURES, "--access-log", "off",
        "--workers", str(workers),
    )  # fmt: skip
    poll(f"{server.admin_url}/readyz", lambda response: response.status_code == 200)
    outcomes = asyncio.run(_load_through_sigterm(server, keep_alive=keep_alive))
    assert server.process.wait(timeout=15) == 0
    assert outcomes["answered before SIGTERM"] > 100, outcomes  # the load was real
    assert outcomes["lost"] == 0, outcomes
    assert outcomes["refused"] == LOAD_CLIENTS, outcomes  # every client saw the port close


def test_sigterm_lets_a_slow_request_finish_while_readiness_fails(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload("--upstream", node_app.address, "--drain-timeout", "10")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(httpx.get, f"{server.url}/api/slow?ms=1500", timeout=10)
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        readiness = httpx.get(f"{server.admin_url}/readyz")  # the admin port outlives the drain
        response = slow.result()
    assert readiness.status_code == 503
    assert readiness.text.strip().endswith("draining")
    assert response.status_code == 200
    assert response.json() == {"slow": True}
    assert response.headers["connection"] == "close"
    assert server.process.wait(timeout=15) == 0


def test_a_stream_gets_the_drain_timeout_and_no_more(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload("--upstream", node_app.address, "--drain-timeout", "1")
    stream_id = uuid.uuid4().hex
    with httpx.stream("GET", f"{server.url}/api/head-only?id={stream_id}", timeout=10) as events:
        assert events.status_code == 200
        chunks = events.iter_raw()  # held: dropping it would close the connection
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        took = time.monotonic() - signalled
        with pytest.raises(httpx.RemoteProtocolError):
            list(chunks)  # cut off: the app never finished it
    assert 1.0 <= took < 5.0
    log = server.output()
    assert "drain timeout: closing 1 connections still open" in log
    assert "Traceback" not in log


def test_sigterm_closes_websockets_with_1001_on_both_sides(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload("--upstream", node_app.address)
    socket_id = uuid.uuid4().hex

    async def closed_by_shutdown() -> tuple[aiohttp.WSMsgType, object]:
        async with aiohttp.ClientSession() as session:
            url = f"ws://127.0.0.1:{server.port}/ws/echo?id={socket_id}"
            ws = await session.ws_connect(url, autoclose=False)
            await ws.send_str("ping")
            await ws.receive(timeout=5)
            server.process.send_signal(signal.SIGTERM)
            message = await ws.receive(timeout=10)
            await ws.close()
            return message.type, message.data

    assert asyncio.run(closed_by_shutdown()) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert server.process.wait(timeout=15) == 0
    app_side = httpx.get(f"http://127.0.0.1:{node_app.port}/api/ws-close?id={socket_id}")
    assert app_side.json() == {"code": 1001, "reason": "offload is shutting down"}


def test_supervised_app_stops_after_the_drain_and_ends_its_streams(
    start_offload: Callable[..., Offload],
) -> None:
    """``-- COMMAND``: under load, with an event stream open, SIGTERM loses no request, and
    offload does not wait out --drain-timeout for the stream: the app, told to stop once no
    new request can reach it, ends its streams itself."""
    app = EXAMPLE_APP
    port = free_port()
    server = start_offload(
        "--upstream", f"127.0.0.1:{port}", "--static", app / "public", "--access-log", "off",
        "--", "node", app / "server.js",
        env={"PORT": str(port)},
    )  # fmt: skip
    poll(f"{server.admin_url}/readyz", lambda response: response.status_code == 200)
    identity = {"accept-encoding": "identity"}
    with httpx.stream("GET", f"{server.url}/api/events", headers=identity, timeout=10) as events:
        chunks = events.iter_raw()  # held: dropping it would close the connection
        assert b"event: time" in next(chunks)
        started = time.monotonic()
        outcomes = asyncio.run(_load_through_sigterm(server, keep_alive=True, proxied=b"/api/time"))
        assert server.process.wait(timeout=15) == 0
        took = time.monotonic() - started - LOAD_SECONDS_BEFORE_SIGTERM
        list(chunks)  # the app ended the stream: it closes cleanly
    assert outcomes["answered before SIGTERM"] > 100, outcomes
    assert outcomes["lost"] == 0, outcomes
    assert took < 5, f"{took:.1f} s: the stream held the drain"
