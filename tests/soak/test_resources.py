"""Resources under abuse and over time: after thousands of clients that leave mid-response,
offload's descriptors, connections to the app and memory return to their baseline; under a
steady mix of static, proxied and WebSocket traffic every answer is right and memory stays
flat. Loopback only, every loop bounded. ``OFFLOAD_SOAK_SECONDS`` sets the soak's length
(60 s by default, as CI runs it; 600 for the long run)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.servers import NodeApp, Offload, run_offload, tcp_states_towards

DISCONNECTING_CLIENTS = 10_000
AT_ONCE = 64
SOAK_SECONDS = float(os.environ.get("OFFLOAD_SOAK_SECONDS", "60"))
BIG = 1024 * 1024
POOL_EXPIRY_SECONDS = 4  # offload's idle connections to the app (proxy/upstream.py)


def open_fds(server: Offload) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def rss_bytes(server: Offload) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def app_connections(node_app: NodeApp) -> int:
    return len(tcp_states_towards(node_app.port))


@pytest.fixture(scope="module")
def server(node_app: NodeApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offload]:
    root = tmp_path_factory.mktemp("soak")
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "small.css").write_bytes(b"body { margin: 0 }\n" * 20)
    with run_offload("--static", root, "--upstream", node_app.address, "--access-log", "off") as s:
        yield s


async def _leave_early(port: int, target: bytes) -> None:
    """Ask for a large response, read its first bytes, and reset the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: t\r\nAccept-Encoding: identity\r\n\r\n" % target)
    await asyncio.wait_for(reader.readexactly(4096), timeout=10)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.close()


async def _many_leaving(port: int, count: int = DISCONNECTING_CLIENTS) -> None:
    targets = [b"/big.bin", b"/api/download?bytes=%d" % BIG]
    pending = iter(range(count))

    async def worker() -> None:
        for number in pending:
            await _leave_early(port, targets[number % 2])

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(AT_ONCE))), timeout=240)


def settled(server: Offload, node_app: NodeApp) -> tuple[int, int, int]:
    """Descriptors, connections to the app and RSS, once idle pooled connections have expired
    (after 4 s): what offload holds when nothing is going on."""
    time.sleep(POOL_EXPIRY_SECONDS + 1)
    return open_fds(server), app_connections(node_app), rss_bytes(server)


def test_clients_leaving_mid_response_leave_nothing_behind(
    server: Offload, node_app: NodeApp
) -> None:
    """Two rounds of 10,000 after a first that brings every pool and buffer to its size. The
    level memory settles at after a round varies by a few MiB (the allocator's arenas, one per
    file-reading thread), so memory is judged over the last round, with a looser bound over
    both: a leak grows with every round."""
    asyncio.run(_many_leaving(server.port))
    fds, connections, rss = settled(server, node_app)
    rss_rounds = [rss]
    started = time.monotonic()
    for _ in range(2):
        asyncio.run(_many_leaving(server.port))
        fds_after, connections_after, rss_after = settled(server, node_app)
        rss_rounds.append(rss_after)
    took = time.monotonic() - started
    print(
        f"\n{DISCONNECTING_CLIENTS} clients leaving, twice, in {took:.1f} s: fds {fds} -> "
        f"{fds_after}, connections to the app {connections} -> {connections_after}, RSS "
        + " -> ".join(f"{value / 2**20:.1f}" for value in rss_rounds)
        + " MiB"
    )
    assert fds_after <= fds + 2
    assert connections_after <= connections + 2
    assert rss_rounds[2] <= rss_rounds[1] + 8 * 2**20
    assert rss_rounds[2] <= rss_rounds[0] + 16 * 2**20
    assert "Traceback" not in server.output()


async def _soak(port: int, seconds: float) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    base = f"http://127.0.0.1:{port}"
    expected_css = b"body { margin: 0 }\n" * 20

    async def static(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            async with session.get(f"{base}/small.css") as response:
                right = response.status == 200 and await response.read() == expected_css
            outcomes["static ok" if right else "static WRONG"] += 1

    async def proxied(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            body = os.urandom(256)
            async with session.post(f"{base}/api/echo", data=body) as response:
                answer = await response.json()
            right = answer["bodyLength"] == 256
            outcomes["proxy ok" if right else "proxy WRONG"] += 1

    async def websocket(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            async with session.ws_connect(f"ws://127.0.0.1:{port}/ws/echo") as ws:
                for n in range(50):
                    await ws.send_str(f"message {n}")
                    message = await ws.receive(timeout=10)
                    right = message.data == f"message {n}"
                    outcomes["websocket ok" if right else "websocket WRONG"] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [static(session) for _ in range(4)] + [proxied(session) for _ in range(4)]
        tasks += [websocket(session) for _ in range(2)]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    return outcomes


def test_a_mixed_soak_answers_every_request_right_with_flat_memory(server: Offload) -> None:
    asyncio.run(_soak(server.port, min(5.0, SOAK_SECONDS)))  # warm up
    rss = rss_bytes(server)
    outcomes = asyncio.run(_soak(server.port, SOAK_SECONDS))
    grown = rss_bytes(server) - rss
    print(f"\nsoak {SOAK_SECONDS:.0f} s: {dict(outcomes)}, RSS grew {grown / 2**20:.1f} MiB")
    assert not [kind for kind in outcomes if kind.endswith("WRONG")], outcomes
    assert all(outcomes[f"{kind} ok"] > 0 for kind in ("static", "proxy", "websocket"))
    assert grown < 16 * 2**20
