"""Proxied requests over real loopback sockets to the real Node test app: methods, bodies,
header rules, streaming, disconnects and the failure statuses."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.servers import (
    FIXTURES,
    NodeApp,
    Offload,
    free_port,
    raw_get,
    raw_request,
    run_offload,
    start_node_app,
    tcp_states_towards,
)

UPLOAD_BYTES = 20 * 1024 * 1024


def app_headers(echo: dict[str, Any]) -> list[tuple[str, str]]:
    """The headers the app received, in order, names lower-cased."""
    raw: list[str] = echo["rawHeaders"]
    return [(raw[i].lower(), raw[i + 1]) for i in range(0, len(raw), 2)]


def app_header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in app_headers(echo) if key == name]


class TestRouting:
    def test_get_miss_goes_to_the_app(self, client: httpx.Client) -> None:
        response = client.get("/api/echo?x=1")
        assert response.status_code == 200
        assert response.json()["method"] == "GET"
        assert response.json()["url"] == "/api/echo?x=1"

    @pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    def test_other_methods_on_a_static_path_go_to_the_app(
        self, client: httpx.Client, method: str
    ) -> None:
        response = client.request(method, "/style.css")
        assert response.json() == {"app": True, "method": method, "url": "/style.css"}

    def test_app_receives_the_raw_target_byte_for_byte(self, offload: Offload) -> None:
        response = raw_get(offload.port, "/api/%2Fraw//path%3F?q=a%20b&q=%2F")
        assert b'"url":"/api/%2Fraw//path%3F?q=a%20b&q=%2F"' in response.body

    def test_a_leading_double_slash_is_collapsed_not_read_as_a_host(self, offload: Offload) -> None:
        response = raw_get(offload.port, "//api/%2Fraw//path%3F?q=//x")
        assert b'"url":"/api/%2Fraw//path%3F?q=//x"' in response.body

    def test_admin_paths_on_the_public_port_belong_to_the_app(self, client: httpx.Client) -> None:
        response = client.get("/livez")
        assert response.status_code == 404
        assert response.json()["app"] is True


class TestBodies:
    def test_upload_of_20_mb_reaches_the_app_intact(self, client: httpx.Client) -> None:
        data = os.urandom(UPLOAD_BYTES)
        echo = client.post("/api/echo", content=data).json()
        assert echo["bodyLength"] == UPLOAD_BYTES
        assert echo["bodySha256"] == hashlib.sha256(data).hexdigest()
        assert app_header_values(echo, "content-length") == [str(UPLOAD_BYTES)]

    def test_chunked_upload_of_20_mb_reaches_the_app_intact(self, client: httpx.Client) -> None:
        data = os.urandom(UPLOAD_BYTES)

        def pieces() -> Iterator[bytes]:
            for start in range(0, len(data), 1024 * 1024):
                yield data[start : start + 1024 * 1024]

        echo = client.post("/api/echo", content=pieces()).json()
        assert echo["bodyLength"] == UPLOAD_BYTES
        assert echo["bodySha256"] == hashlib.sha256(data).hexdigest()
        assert app_header_values(echo, "transfer-encoding") == ["chunked"]

    def test_download_streams_intact(self, client: httpx.Client) -> None:
        response = client.get("/api/download?bytes=5000001")
        assert response.headers["content-length"] == "5000001"
        assert response.content == b"x" * 5_000_001

    def test_head_is_forwarded_without_a_body(self, client: httpx.Client) -> None:
        response = client.head("/api/download?bytes=1000")
        assert response.status_code == 200
        assert response.content == b""


class TestHeaders:
    def test_host_and_end_to_end_headers_pass_unchanged(self, offload: Offload) -> None:
        response = raw_get(
            offload.port,
            "/api/echo",
            "Cookie: session=1",
            "Authorization: Bearer token",
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        echo = _json_body(response.body)
        assert app_header_values(echo, "host") == ["offload.test"]
        assert app_header_values(echo, "cookie") == ["session=1"]
        assert app_header_values(echo, "authorization") == ["Bearer token"]
        assert app_header_values(echo, "traceparent") == [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ]

    def test_nothing_is_added_that_the_client_did_not_send(self, offload: Offload) -> None:
        echo = _json_body(raw_get(offload.port, "/api/echo").body)
        names = {name for name, _ in app_headers(echo)}
        assert names == {
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id",
        }

    def test_hop_by_hop_request_headers_are_dropped(self, offload: Offload) -> None:
        response = raw_get(
            offload.port,
            "/api/echo",
            "Connection: close, X-Hop",
            "X-Hop: private",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Authorization: Basic eDp5",
            "Upgrade: h2c",
        )
        names = {name for name, _ in app_headers(_json_body(response.body))}
        assert names.isdisjoint({"x-hop", "keep-alive", "te", "proxy-authorization", "upgrade"})

    def test_forwarded_headers_are_set_and_spoofed_ones_replaced(self, offload: Offload) -> None:
        response = raw_get(
            offload.port,
            "/api/echo",
            "X-Forwarded-For: 6.6.6.6",
            "X-Forwarded-Host: evil.test",
            "X-Forwarded-Proto: https",
            "Forwarded: for=6.6.6.6",
            "X-Real-IP: 6.6.6.6",
            "X-Forwarded-Port: 443",
        )
        echo = _json_body(response.body)
        for dropped in ("forwarded", "x-real-ip", "x-forwarded-port"):
            assert app_header_values(echo, dropped) == []
        assert app_header_values(echo, "x-forwarded-for") == ["127.0.0.1"]
        assert app_header_values(echo, "x-forwarded-host") == ["offload.test"]
        assert app_header_values(echo, "x-forwarded-proto") == ["http"]

    def test_no_content_type_is_added_to_a_body(self, offload: Offload) -> None:
        request = (
            b"POST /api/echo HTTP/1.1\r\nHost: offload.test\r\nConnection: close\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        echo = _json_body(raw_request(offload.port, request).body)
        assert app_header_values(echo, "content-type") == []
        assert echo["bodyLength"] == 5

    def test_connection_cannot_remove_host(self, offload: Offload) -> None:
        echo = _json_body(raw_get(offload.port, "/api/echo", "Connection: host").body)
        assert app_header_values(echo, "host") == ["offload.test"]

    def test_request_id_is_added_once_and_a_clients_is_kept(self, client: httpx.Client) -> None:
        added = app_header_values(client.get("/api/echo").json(), "x-request-id")
        assert len(added) == 1
        assert len(added[0]) == 32
        kept = client.get("/api/echo", headers={"x-request-id": "abc-123"}).json()
        assert app_header_values(kept, "x-request-id") == ["abc-123"]

    def test_repeated_set_cookie_headers_stay_apart(self, client: httpx.Client) -> None:
        response = client.get("/api/cookies")
        assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]

    def test_hop_by_hop_response_headers_are_dropped(self, client: httpx.Client) -> None:
        response = client.get("/api/hop-by-hop")
        assert response.headers["x-public"] == "kept"
        for name in ("x-private", "keep-alive", "proxy-authenticate"):
            assert name not in response.headers

    def test_the_apps_date_passes_and_one_date_is_sent(self, client: httpx.Client) -> None:
        assert len(client.get("/api/echo").headers.get_list("date")) == 1


class TestStreaming:
    def test_first_chunk_arrives_before_the_last_is_produced(
        self, client: httpx.Client, offload: Offload
    ) -> None:
        stream_id = uuid.uuid4().hex
        identity = {"accept-encoding": "identity"}
        with client.stream("GET", f"/api/stream?id={stream_id}", headers=identity) as response:
            chunks = response.iter_raw()
            # the app writes "last" only once released: a buffering proxy times out here
            assert next(chunks) == b"first\n"
            released = httpx.get(f"{offload.url}/api/release?id={stream_id}")
            assert released.json() == {"released": True}
            assert b"".join(chunks) == b"last\n"

    def test_client_going_away_closes_the_apps_response(self, offload: Offload) -> None:
        stream_id = uuid.uuid4().hex
        with (
            httpx.Client(base_url=offload.url, timeout=10) as leaving,
            leaving.stream(
                "GET", f"/api/stream?id={stream_id}", headers={"accept-encoding": "identity"}
            ) as response,
        ):
            chunks = response.iter_raw()  # held: dropping it would close the connection early
            assert next(chunks) == b"first\n"
            assert _stream_state(offload, stream_id) == "open"
        # the client's connection is gone mid-response: offload must close the app's side
        assert _wait_for_stream_state(offload, stream_id) == "aborted"

    def test_client_leaving_after_the_head_closes_the_apps_response(self, offload: Offload) -> None:
        stream_id = uuid.uuid4().hex
        with (
            httpx.Client(base_url=offload.url, timeout=10) as leaving,
            leaving.stream("GET", f"/api/head-only?id={stream_id}") as response,
        ):
            assert response.headers["content-type"] == "text/event-stream"
            assert _stream_state(offload, stream_id) == "open"
        # the head arrived, no body yet: offload must still notice the client leaving
        assert _wait_for_stream_state(offload, stream_id) == "aborted"


def _stream_state(offload: Offload, stream_id: str) -> str:
    return str(httpx.get(f"{offload.url}/api/stream-state?id={stream_id}").json()["state"])


def _wait_for_stream_state(offload: Offload, stream_id: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (state := _stream_state(offload, stream_id)) != "open":
            return state
        time.sleep(0.05)
    return "open"


class TestFailures:
    def test_app_down_is_502_with_a_short_text(self, start_offload: Callable[..., Offload]) -> None:
        server = start_offload("--upstream", f"127.0.0.1:{free_port()}")
        response = httpx.get(server.url + "/api/echo")
        assert response.status_code == 502
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text.startswith("Bad Gateway")

    def test_malformed_response_is_502(self, client: httpx.Client) -> None:
        response = client.get("/api/malformed")
        assert response.status_code == 502
        assert response.text.startswith("Bad Gateway")

    def test_app_slower_than_read_timeout_is_504(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address, "--read-timeout", "0.5")
        started = time.monotonic()
        response = httpx.get(server.url + "/api/slow?ms=5000")
        assert response.status_code == 504
        assert response.text.startswith("Gateway Timeout")
        assert time.monotonic() - started < 4
        assert httpx.get(server.url + "/api/slow?ms=10").status_code == 200

    def test_slow_upload_is_not_a_read_timeout(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address, "--read-timeout", "0.5")

        def trickle() -> Iterator[bytes]:
            for _ in range(4):
                yield b"x" * 1024
                time.sleep(0.25)  # the client, not the app, is slow: 1 s in all

        echo = httpx.post(server.url + "/api/echo", content=trickle()).json()
        assert echo["bodyLength"] == 4096

    def test_app_that_stops_reading_an_upload_gets_504_and_is_reset(
        self, start_offload: Callable[..., Offload]
    ) -> None:
        app = start_node_app()  # its own app: only this test's connections go to it
        server = start_offload("--upstream", app.address, "--read-timeout", "1")
        stream_id = uuid.uuid4().hex
        head = (
            f"POST /api/no-read?id={stream_id} HTTP/1.1\r\nHost: offload.test\r\n"
            f"Content-Length: {64 * 1024 * 1024}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.5) as connection:
            connection.sendall(head.encode())
            with contextlib.suppress(TimeoutError):  # send until the window closes
                for _ in range(64 * 16):
                    connection.sendall(b"x" * 65536)
            connection.settimeout(10)
            assert connection.recv(65536).startswith(b"HTTP/1.1 504 ")
        # a plain close would sit in FIN-WAIT-1 behind the unread upload: offload resets it
        deadline = time.monotonic() + 5
        while tcp_states_towards(app.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tcp_states_towards(app.port) == []
        app.process.kill()
        app.process.wait()

    def test_static_only_mode_answers_misses_with_404(
        self, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--static", FIXTURES)
        response = httpx.get(server.url + "/api/echo")
        assert response.status_code == 404
        assert response.text == "Not Found\n"


def _json_body(body: bytes) -> dict[str, Any]:
    """The JSON object in a raw chunked body (one chunk, as the Node app writes it)."""
    start, end = body.index(b"{"), body.rindex(b"}") + 1
    result: dict[str, Any] = json.loads(body[start:end])
    return result


class TestLimitsAndTrust:
    def test_declared_body_over_the_limit_is_413_before_the_app_sees_it(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address, "--max-body-size", "1K")
        assert httpx.post(server.url + "/api/echo", content=b"x" * 1024).status_code == 200
        response = httpx.post(server.url + "/api/echo", content=b"x" * 1025)
        assert response.status_code == 413
        assert "larger than allowed" in response.text

    def test_chunked_body_crossing_the_limit_is_413(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address, "--max-body-size", "1M")

        def pieces() -> Iterator[bytes]:
            for _ in range(4):
                yield b"x" * 512 * 1024

        response = httpx.post(server.url + "/api/echo", content=pieces())
        assert response.status_code == 413

    def test_trusted_proxy_keeps_the_chain(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address, "--trusted-proxies", "127.0.0.0/8")
        headers = {"x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https"}
        echo = httpx.get(server.url + "/api/echo", headers=headers).json()
        assert app_header_values(echo, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
        assert app_header_values(echo, "x-forwarded-proto") == ["https"]

    def test_request_id_is_echoed_to_the_client(self, client: httpx.Client) -> None:
        response = client.get("/api/echo", headers={"x-request-id": "trace-me"})
        assert response.headers["x-request-id"] == "trace-me"
        generated = client.get("/api/echo")
        sent = app_header_values(generated.json(), "x-request-id")
        assert [generated.headers["x-request-id"]] == sent

    def test_location_on_the_apps_own_origin_is_rewritten(self, client: httpx.Client) -> None:
        response = client.get("/api/redirect")
        assert response.status_code == 302
        assert response.headers["location"] == "/api/echo?from=redirect"


@pytest.fixture(scope="module")
def accel(node_app: NodeApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offload]:
    root = tmp_path_factory.mktemp("accel")
    (root / "protected").mkdir()
    (root / "protected" / "report.txt").write_bytes(b"0123456789" * 100)
    (root / "public.txt").write_bytes(b"public")
    internal = ("--internal-prefix", "/protected/")
    with run_offload("--upstream", node_app.address, "--static", root, *internal) as server:
        yield server


class TestAccelRedirect:
    def test_app_hands_the_file_to_offload(self, accel: Offload) -> None:
        response = httpx.get(accel.url + "/api/accel")
        assert response.status_code == 200
        assert response.content == b"0123456789" * 100
        assert response.headers["content-disposition"] == 'attachment; filename="report.txt"'
        assert response.headers["set-cookie"] == "downloaded=1; Path=/"
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert "x-accel-redirect" not in response.headers

    def test_hand_off_honours_ranges_and_conditionals(self, accel: Offload) -> None:
        ranged = httpx.get(accel.url + "/api/accel", headers={"range": "bytes=0-9"})
        assert ranged.status_code == 206
        assert ranged.content == b"0123456789"
        etag = httpx.get(accel.url + "/api/accel").headers["etag"]
        cached = httpx.get(accel.url + "/api/accel", headers={"if-none-match": etag})
        assert cached.status_code == 304

    def test_internal_files_are_not_served_directly(self, accel: Offload) -> None:
        response = httpx.get(accel.url + "/protected/report.txt")
        assert response.json() == {"app": True, "method": "GET", "url": "/protected/report.txt"}
        assert httpx.get(accel.url + "/public.txt").content == b"public"

    def test_hand_off_to_a_missing_file_is_404(self, accel: Offload) -> None:
        response = httpx.get(accel.url + "/api/accel?to=/protected/missing.txt")
        assert response.status_code == 404
