"""offload's HTTP/1.1 client to the app, against a raw socket server that answers exactly what
each test needs: keep-alive reuse, interim responses, HEAD, bodies cut short."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.servers import Offload

Answer = Callable[[bytes], bytes | None]  # request head -> bytes to send, None to hang up


class RawApp:
    """Answers each request on a connection with ``answer(head)``; counts connections."""

    def __init__(self, answer: Answer, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after  # hang up after each answer
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(connection,), daemon=True).start()

    def _connection(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            buffered = b""
            while True:
                while b"\r\n\r\n" not in buffered:
                    try:
                        chunk = connection.recv(65536)
                    except OSError:  # offload reset the connection: that is its right
                        return
                    if not chunk:
                        return
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                reply = self.answer(head)
                if reply is None:
                    return
                connection.sendall(reply)
                if self.close_after:
                    return

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def raw_app(start_offload: Callable[..., Offload]) -> Iterator[Callable[..., Offload]]:
    apps: list[RawApp] = []

    def start(answer: Answer, *, close_after: bool = False) -> Offload:
        app = RawApp(answer, close_after=close_after)
        apps.append(app)
        return start_offload("--upstream", f"127.0.0.1:{app.port}", "--read-timeout", "5")

    yield start
    for app in apps:
        app.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_keep_alive_connection_is_reused(raw_app: Callable[..., Offload]) -> None:
    app_seen: list[bytes] = []

    def answer(head: bytes) -> bytes:
        app_seen.append(head)
        return OK

    server = raw_app(answer)
    for _ in range(5):
        assert httpx.get(server.url + "/x").text == "ok"
    assert len(app_seen) == 5
    # one connection carried all five requests
    assert [line.split(b" ")[0] for line in app_seen] == [b"GET"] * 5


def test_interim_response_is_skipped(raw_app: Callable[..., Offload]) -> None:
    server = raw_app(lambda head: b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK)
    response = httpx.get(server.url + "/x")
    assert response.status_code == 200
    assert response.text == "ok"


def test_head_response_has_no_body_and_the_next_request_works(
    raw_app: Callable[..., Offload],
) -> None:
    def answer(head: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        return OK

    server = raw_app(answer)
    head = httpx.head(server.url + "/x")
    assert head.status_code == 200
    assert head.headers["content-length"] == "10"
    assert httpx.get(server.url + "/x").text == "ok"


def test_body_cut_short_ends_the_client_connection(raw_app: Callable[..., Offload]) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."
    server = raw_app(lambda head: cut, close_after=True)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(server.url + "/x")


def test_connection_close_from_the_app_is_honoured(raw_app: Callable[..., Offload]) -> None:
    closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    server = raw_app(lambda head: closing, close_after=True)
    for _ in range(3):
        assert httpx.get(server.url + "/x").text == "ok"


def test_response_without_length_ends_with_the_connection(
    raw_app: Callable[..., Offload],
) -> None:
    # no length and no chunking: the body runs until the app closes (RFC 9112 §6.3)
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close"
    server = raw_app(lambda head: until_close, close_after=True)
    assert httpx.get(server.url + "/x").text == "until close"


def test_body_breaking_before_its_first_chunk_is_502_when_compressing(
    raw_app: Callable[..., Offload],
) -> None:
    head_only = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = raw_app(lambda head: head_only, close_after=True)
    response = httpx.get(server.url + "/x", headers={"accept-encoding": "gzip"})
    assert response.status_code == 502
    assert "Traceback" not in server.output()


def test_a_second_message_the_app_sends_unasked_is_not_merged(
    raw_app: Callable[..., Offload],
) -> None:
    second = b"HTTP/1.1 302 Found\r\nLocation: http://evil.test/\r\nContent-Length: 5\r\n\r\nhello"
    server = raw_app(lambda head: OK + second)
    response = httpx.get(server.url + "/x")
    assert response.status_code == 200
    assert response.text == "ok"
    assert "location" not in response.headers
    assert httpx.get(server.url + "/y").text == "ok"  # on a new connection


def test_unsolicited_upgrade_is_502_without_a_traceback(
    raw_app: Callable[..., Offload],
) -> None:
    upgrade = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    server = raw_app(lambda head: upgrade)
    assert httpx.get(server.url + "/x").status_code == 502
    assert "Traceback" not in server.output()
