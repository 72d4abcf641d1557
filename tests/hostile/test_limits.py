"""The limits offload enforces itself, which uvicorn does not: a deadline for the request head
and for pauses in a body (408), the size of the request line (414) and of the header block
(431), and the number of open connections (503 with Retry-After). Raw sockets throughout: a
well-behaved client cannot send what these tests send."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.servers import FIXTURES, NodeApp, Offload, raw_request

SHORT = "1"  # seconds, for --client-header-timeout and --client-body-timeout in these tests


def read_all(connection: socket.socket) -> bytes:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return received


@pytest.fixture
def strict(node_app: NodeApp, start_offload: Callable[..., Offload]) -> Offload:
    return start_offload(
        "--upstream", node_app.address, "--static", FIXTURES,
        "--client-header-timeout", SHORT, "--client-body-timeout", SHORT,
    )  # fmt: skip


def test_a_head_that_never_completes_gets_408(strict: Offload) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as connection:
        connection.sendall(b"GET /style.css HTTP/1.1\r\nHost: t\r\n")  # no blank line, ever
        started = time.monotonic()
        received = read_all(connection)
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"connection: close" in received
    assert 1.0 <= time.monotonic() - started < 3.0


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(strict: Offload) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as connection:
        started = time.monotonic()
        assert read_all(connection) == b""
    assert 1.0 <= time.monotonic() - started < 3.0


def test_a_stalled_body_gets_408_and_the_next_connection_is_served(strict: Offload) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as connection:
        connection.sendall(
            b"POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        received = read_all(connection)
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert httpx.post(f"{strict.url}/api/echo", content=b"y" * 100).json()["bodyLength"] == 100


def test_a_slow_but_steady_body_is_not_cut(strict: Offload) -> None:
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as connection:
        connection.sendall(b"POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n")
        connection.sendall(b"Connection: close\r\n\r\n")
        for byte in b"abcdef":  # 3 s in all, never a pause of the 1 s allowed
            time.sleep(0.5)
            connection.sendall(bytes([byte]))
        received = read_all(connection)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b'"bodyLength":6' in received


def test_a_request_line_past_8_kib_gets_414(strict: Offload) -> None:
    target = "/" + "a" * 9000
    response = raw_request(strict.port, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert response.status == 414
    assert response.header("connection") == "close"


@pytest.mark.parametrize(
    "headers",
    [
        "".join(f"X-Many-{n}: {n}\r\n" for n in range(101)),  # more than 100 fields
        f"X-Big: {'b' * 40_000}\r\n",  # a block past 32 KiB
    ],
    ids=["101 fields", "40 KB field"],
)
def test_a_header_block_too_large_gets_431(strict: Offload, headers: str) -> None:
    request = f"GET /style.css HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode()
    response = raw_request(strict.port, request)
    assert response.status == 431
    assert httpx.get(f"{strict.url}/style.css").status_code == 200  # nothing else suffers


def test_one_header_field_growing_without_end_gets_431(strict: Offload) -> None:
    """httptools passes a field on only once it is whole: the bytes are counted as they come."""
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as connection:
        connection.sendall(b"GET /style.css HTTP/1.1\r\nHost: t\r\nX-Big: ")
        with contextlib.suppress(OSError):  # offload may close while this is still sending
            for _ in range(64):  # 4 MiB at most, far past the 40 KiB a head may take
                connection.sendall(b"a" * 65536)
        received = read_all(connection)
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert httpx.get(f"{strict.url}/style.css").status_code == 200


TRAILER_STREAMS = {  # what starts the trailer section, and what then keeps coming
    "one field": (b"X-Big: ", b"a" * 65536),
    "many fields": (b"", b"X-Many: 0123456789abcdef0123456789\r\n" * 1820),
}


@pytest.mark.parametrize(("start", "piece"), TRAILER_STREAMS.values(), ids=TRAILER_STREAMS)
def test_a_trailer_section_growing_without_end_gets_431(
    strict: Offload, start: bytes, piece: bytes
) -> None:
    """Trailers are buffered by httptools as header fields are, and dropped after: counted too
    (a 50 MB trailer field took offload from 45 to 141 MB)."""
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as connection:
        connection.sendall(
            b"POST /api/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n" + start
        )
        with contextlib.suppress(OSError):  # offload may close while this is still sending
            for _ in range(64):  # 4 MiB at most, far past the 32 KiB a trailer section may take
                connection.sendall(piece)
        received = read_all(connection)
    assert received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert received.endswith(b"the request's trailer fields are too large\n")  # not the app's
    assert httpx.get(f"{strict.url}/style.css").status_code == 200


def test_past_max_connections_requests_get_503_with_retry_after(
    start_offload: Callable[..., Offload],
) -> None:
    server = start_offload("--static", FIXTURES, "--max-connections", "2")
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    try:
        time.sleep(0.2)
        response = raw_request(server.port, b"GET /style.css HTTP/1.1\r\nHost: t\r\n\r\n")
        assert response.status == 503
        assert response.header("retry-after") == "1"
    finally:
        for connection in held:
            connection.close()
    time.sleep(0.2)
    assert httpx.get(f"{server.url}/style.css").status_code == 200


def test_300_slow_loris_connections_do_not_slow_normal_requests(strict: Offload) -> None:
    """Each sends a byte of its head every 0.3 s and never finishes: all get 408 once their
    head is overdue, and meanwhile ordinary requests are answered at once."""
    stop = threading.Event()
    answers: list[bytes] = []

    def loris() -> None:
        with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as connection:
            try:
                for byte in b"GET /style.css HTTP/1.1\r\nX-Slow: " + b"s" * 100:
                    if stop.is_set():
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(0.3)
            except OSError:
                pass  # offload closed it: what is read below says how
            try:
                answers.append(read_all(connection))
            except OSError:
                answers.append(b"")

    threads = [threading.Thread(target=loris, daemon=True) for _ in range(300)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        latencies = []
        with httpx.Client(base_url=strict.url, timeout=5) as client:
            for _ in range(20):
                started = time.monotonic()
                assert client.get("/style.css").status_code == 200
                latencies.append(time.monotonic() - started)
        print(f"\nwith 300 slow-loris connections: slowest of 20 requests {max(latencies):.4f} s")
        assert max(latencies) < 0.5
    finally:
        for thread in threads:
            thread.join(timeout=10)
        stop.set()
    assert len(answers) == 300
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {
        answer[:20] for answer in answers
    }
