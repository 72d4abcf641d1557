"""Hostile input over raw sockets, each case a row with the answer it must get: traversal in
every encoding, ways out of the root, ranges and dates no RFC allows, request framing that
smuggles, and headers that split or confuse. After each, nothing outside the root has been sent
and offload still serves."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import NodeApp, Offload, run_offload

SECRET = b"7f3a-not-for-clients"  # in every file outside the root; never in any answer


@pytest.fixture(scope="module")
def edge(node_app: NodeApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offload]:
    base = tmp_path_factory.mktemp("hostile-inputs")
    root, sibling, outside = base / "srv", base / "srv2", base / "outside"
    for directory in (root, sibling, outside, root / "sub"):
        directory.mkdir()
    (root / "inside.txt").write_bytes(b"inside")
    (root / "data.bin").write_bytes(bytes(range(256)) * 4)  # 1024 bytes
    (root / "app.js").write_text("var x = 1;\n" * 500)
    for secret in (sibling / "secret.txt", outside / "secret.txt", root / ".dotsecret"):
        secret.write_bytes(SECRET)
    # a precompressed variant pointing out of the root (aiohttp's CVE-2024-42367)
    (root / "app.js.br").symlink_to(outside / "secret.txt")
    (root / "zero.bin").symlink_to("/dev/zero")
    os.mkfifo(root / "pipe.txt")
    with run_offload("--static", root, "--upstream", node_app.address) as server:
        yield server


def exchange(server: Offload, request: bytes) -> bytes:
    """Everything offload sends back for ``request`` until it closes (or 5 s pass)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        connection.sendall(request)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def statuses(received: bytes) -> list[int]:
    return [int(line.split()[1]) for line in received.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def get(server: Offload, target: str, *headers: str) -> bytes:
    extra = "".join(f"{header}\r\n" for header in headers)
    request = f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n"
    return exchange(server, request.encode())


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/../outside/secret.txt", 400),
        ("/%2e%2e/outside/secret.txt", 400),
        ("/%2E%2E/outside/secret.txt", 400),
        ("/..%2foutside%2fsecret.txt", 400),
        ("/..%2Foutside%2Fsecret.txt", 400),
        ("/..%5coutside%5csecret.txt", 400),  # backslash
        ("/sub/../../outside/secret.txt", 400),
        ("/../srv2/secret.txt", 400),  # the sibling sharing the root's prefix
        ("/./inside.txt", 400),
        ("/inside.txt%00.png", 400),  # NUL
        ("/%252e%252e/outside/secret.txt", 404),  # double encoding: decoded once, a name
        ("/%c0%ae%c0%ae/outside/secret.txt", 404),  # overlong UTF-8 dots are not dots
        ("/%u002e%u002e/outside/secret.txt", 404),  # IIS %u form: a literal name
        ("//outside/secret.txt", 404),  # repeated slashes collapse inside the root
        ("/.dotsecret", 404),
        ("/%2edotsecret", 404),
        ("/pipe.txt", 404),  # a FIFO: never opened
        ("/zero.bin", 404),  # a device, through a symlink out of the root
        ("/inside.txt/", 404),
        ("/%ff%fe", 404),
    ],
)
def test_paths_never_leave_the_root(edge: Offload, target: str, status: int) -> None:
    received = get(edge, target)
    assert statuses(received) == [status]
    assert SECRET not in received


def test_a_precompressed_variant_linking_out_of_the_root_is_never_sent(edge: Offload) -> None:
    received = get(edge, "/app.js", "Accept-Encoding: br")
    assert statuses(received) == [200]
    assert SECRET not in received  # offload's own br, or identity: never the linked file


@pytest.mark.parametrize(
    ("range_header", "status", "content_range"),
    [
        ("bytes=" + ",".join(f"{n}-{n + 10}" for n in range(300)), 200, None),  # too many parts
        ("bytes=0-99999999999999999999999", 206, b"bytes 0-1023/1024"),
        ("bytes=1_0-20", 200, None),  # int() takes it; the RFC does not
        ("bytes=+5-10", 200, None),
        ("bytes=\uff11-5", 200, None),  # a full-width digit
        ("bytes=0x10-20", 200, None),
        ("bytes=10-5", 200, None),  # reversed: the header is invalid, so ignored
        ("bytes=--5", 200, None),
        ("items=0-5", 200, None),  # an unknown unit
        ("bytes=-0", 416, b"bytes */1024"),
        ("bytes=1024-", 416, b"bytes */1024"),
        ("bytes=1023-", 206, b"bytes 1023-1023/1024"),
        ("bytes=0-5 ,6-7", 206, b"bytes 0-7/1024"),  # adjacent parts coalesce
    ],
)
def test_ranges_no_rfc_allows_are_ignored_and_answers_stay_within_the_file(
    edge: Offload, range_header: str, status: int, content_range: bytes | None
) -> None:
    received = get(edge, "/data.bin", f"Range: {range_header}")
    assert statuses(received) == [status]
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    if content_range is None:
        assert b"content-range" not in head
    else:
        assert b"content-range: " + content_range in head


@pytest.mark.parametrize(
    ("header", "status"),
    [
        ("If-Modified-Since: yesterday", 200),  # not a date: ignored
        ("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT+1", 200),
        ("If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT", 200),  # older than the file
        ("If-Modified-Since: Fri, 31 Dec 9999 23:59:59 GMT", 304),
        ("If-Unmodified-Since: garbage", 200),
        ("If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT", 412),
    ],
)
def test_dates_garbage_is_ignored(edge: Offload, header: str, status: int) -> None:
    assert statuses(get(edge, "/data.bin", header)) == [status]


POST = "POST /api/echo HTTP/1.1\r\nHost: t\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (f"{POST}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", [400]),
        (f"{POST}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", [400]),
        (f"{POST}Content-Length: 1_0\r\n\r\nhellohello", [400]),
        (f"{POST}Content-Length: +5\r\n\r\nhello", [400]),
        (f"{POST}Content-Length: -1\r\n\r\nhello", [400]),
        (f"{POST}Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", [400]),
        (f"{POST}Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n", [400]),
        (f"{POST}Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", [400]),
        (f"{POST}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", [400]),
        (f"{POST}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", [400]),  # bare LF
        # a smuggled second request after the error is never answered
        (
            "GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: a\r\n\r\n"
            "GET /inside.txt HTTP/1.1\r\nHost: t\r\n\r\n",
            [400],
        ),
        ("GET /inside.txt HTTP/2.0\r\nHost: t\r\n\r\n", [505]),
        ("GET /inside.txt\r\n\r\n", [505]),  # HTTP/0.9
        ("GET /inside.txt HTTP/1.2\r\nHost: t\r\n\r\n", [400]),
        ("GET /inside.txt HTTP/1.1\r\nConnection: close\r\n\r\n", [400]),  # no Host
        ("GET /inside.txt HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", [400]),
        ("GET /inside.txt HTTP/1.1\r\nHost: a b\r\n\r\n", [400]),
        ("GET /inside.txt HTTP/1.1\r\nHost: \r\n\r\n", [400]),  # RFC 9110 §4.2.1: empty
        ("GET /inside.txt HTTP/1.1\r\nHost: a/b@c\r\n\r\n", [400]),
        ("GET /inside.txt HTTP/1.0\r\n\r\n", [200]),  # 1.0 needs no Host
        # the absolute form: served from here, never fetched from elsewhere
        (
            "GET http://elsewhere.example/inside.txt HTTP/1.1\r\nHost: t\r\n"
            "Connection: close\r\n\r\n",
            [200],
        ),
        ("GET /api/echo HTTP/1.1\r\nHost: t\r\nX-A: a\rSet-Cookie: x=1\r\n\r\n", [400]),
        ("GET /inside.txt HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n", [400]),  # obs-fold
        ("GET /inside.txt HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", [400]),
        ("GET /inside.txt HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", [400]),
        ("GET /inside.txt HTTP/1.1\nHost: t\n\n", [400]),
        ("FOO /api/echo HTTP/1.1\r\nHost: t\r\n\r\n", [400]),  # httptools knows no FOO
        ("\x16\x03\x01\x02\x00\x01" + "\x00" * 100, [400]),  # a TLS ClientHello
    ],
)
def test_framing_and_headers_that_smuggle_or_split_get_one_clear_answer(
    edge: Offload, request_bytes: str, expected: list[int]
) -> None:
    received = exchange(edge, request_bytes.encode("latin-1"))
    assert statuses(received) == expected
    assert b"set-cookie" not in received.lower()


def test_offload_still_serves_after_all_of_it(edge: Offload) -> None:
    assert httpx.get(f"{edge.url}/inside.txt").content == b"inside"
    assert "Traceback" not in edge.output()
