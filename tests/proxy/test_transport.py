"""The leg to the app: Unix sockets, retries (refused while the app starts, a stale pooled
connection), the pool slot a leaving client frees, and 100 MB both ways with memory flat."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.servers import NodeApp, Offload, free_port, peak_rss_bytes, start_node_app

HUNDRED_MB = 100 * 1024 * 1024


def test_unix_socket_upstream_serves_http_and_websockets(
    tmp_path: Path, start_offload: Callable[..., Offload]
) -> None:
    app = start_node_app(socket_path=str(tmp_path / "app.sock"))
    try:
        server = start_offload("--upstream", app.address)
        echo = httpx.post(server.url + "/api/echo?x=1", content=b"over a socket").json()
        assert echo["url"] == "/api/echo?x=1"
        assert echo["bodyLength"] == len(b"over a socket")

        async def websocket_echo() -> str:
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(f"ws://127.0.0.1:{server.port}/ws/echo")
                await ws.send_str("unix")
                reply = (await ws.receive()).data
                await ws.close()
                return str(reply)

        assert asyncio.run(websocket_echo()) == "unix"
    finally:
        app.stop()


def test_refused_connections_are_retried_while_the_app_starts(
    start_offload: Callable[..., Offload],
) -> None:
    port = free_port()
    server = start_offload("--upstream", f"127.0.0.1:{port}", "--connect-timeout", "10")
    apps: list[NodeApp] = []
    starter = threading.Timer(0.5, lambda: apps.append(start_node_app(port=port)))
    starter.start()
    try:
        # sent while nothing listens: offload keeps trying until the app is up
        response = httpx.post(server.url + "/api/echo", content=b"early", timeout=15)
        assert response.status_code == 200
        assert response.json()["bodyLength"] == 5
    finally:
        starter.join()
        for app in apps:
            app.stop()


def test_refused_connection_gives_up_after_the_connect_timeout(
    start_offload: Callable[..., Offload],
) -> None:
    server = start_offload("--upstream", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.5")
    started = time.monotonic()
    assert httpx.get(server.url + "/api/echo").status_code == 502
    assert 0.3 < time.monotonic() - started < 5


class StaleAfterFirstRequest:
    """An app that answers the first request on each connection with keep-alive, and closes
    the connection on the second without answering: the race of a pooled connection that the
    app closes just as offload reuses it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StaleAfterFirstRequest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(connection,), daemon=True).start()

    def _connection(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            for answered in range(2):
                head = self._read_request(connection)
                if head is None:
                    return
                self.requests.append(head.split(b" ", 2)[0].decode() + f" on request {answered}")
                if answered == 1:
                    return  # close without a response
                body = b"ok"
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n" + body
                )

    @staticmethod
    def _read_request(connection: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                while len(rest) < length:
                    rest += connection.recv(65536)
        return head


def test_stale_pooled_connection_is_retried_for_get(
    start_offload: Callable[..., Offload],
) -> None:
    with StaleAfterFirstRequest() as app:
        server = start_offload("--upstream", f"127.0.0.1:{app.port}")
        assert httpx.get(server.url + "/warm").status_code == 200
        assert httpx.get(server.url + "/again").status_code == 200  # retried on a new one
        assert app.requests == ["GET on request 0", "GET on request 1", "GET on request 0"]


def test_stale_pooled_connection_is_not_retried_for_post(
    start_offload: Callable[..., Offload],
) -> None:
    with StaleAfterFirstRequest() as app:
        server = start_offload("--upstream", f"127.0.0.1:{app.port}")
        assert httpx.post(server.url + "/warm", content=b"x").status_code == 200
        assert httpx.post(server.url + "/again", content=b"y").status_code == 502
        assert app.requests == ["POST on request 0", "POST on request 1"]  # never twice


def test_client_leaving_frees_the_only_pool_slot(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload(
        "--upstream", node_app.address, "--upstream-max-connections", "1", "--read-timeout", "5"
    )
    stream_id = uuid.uuid4().hex
    identity = {"accept-encoding": "identity"}
    with (
        httpx.Client(base_url=server.url, timeout=10) as leaving,
        leaving.stream("GET", f"/api/stream?id={stream_id}", headers=identity) as response,
    ):
        chunks = response.iter_raw()  # held: dropping it would close the connection early
        assert next(chunks) == b"first\n"
        # the pool's only connection is busy: another request waits for it, and gives up
        # (a waiter cancelled this way must not lose the pool's next turn)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(server.url + "/api/echo", timeout=0.5)
    # the stream's connection was the pool's only one: this succeeds only if it was freed
    assert httpx.get(server.url + "/api/echo", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def big(node_app: NodeApp) -> Iterator[Offload]:
    from tests.servers import run_offload

    with run_offload("--upstream", node_app.address) as server:
        yield server


def test_100_mb_download_is_intact_with_memory_flat(big: Offload) -> None:
    before = peak_rss_bytes(big.process)
    digest = hashlib.sha256()
    received = 0
    headers = {"accept-encoding": "identity"}
    with httpx.stream("GET", f"{big.url}/api/download?bytes={HUNDRED_MB}", headers=headers) as r:
        for chunk in r.iter_raw():
            digest.update(chunk)
            received += len(chunk)
    assert received == HUNDRED_MB
    assert digest.hexdigest() == hashlib.sha256(b"x" * HUNDRED_MB).hexdigest()
    assert peak_rss_bytes(big.process) - before < 30 * 1024 * 1024


def test_100_mb_chunked_upload_is_intact_with_memory_flat(big: Offload) -> None:
    before = peak_rss_bytes(big.process)
    block = os.urandom(1024 * 1024)
    digest = hashlib.sha256()

    def pieces() -> Iterator[bytes]:
        for _ in range(100):
            digest.update(block)
            yield block

    echo = httpx.post(f"{big.url}/api/echo", content=pieces(), timeout=60).json()
    assert echo["bodyLength"] == HUNDRED_MB
    assert echo["bodySha256"] == digest.hexdigest()
    assert peak_rss_bytes(big.process) - before < 30 * 1024 * 1024
