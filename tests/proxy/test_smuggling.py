"""What reaches the app is exactly one well-framed request per client request: raw requests over
loopback to offload in front of the real Node app, each checked against what the app says it
received (its echo of head and body, and its log of every request line it parsed).

Each case was a real hole (issue 14): a ``Connection`` option that took the framing off a body,
an upgrade whose body offload never read, trailer fields merged into headers both ways, and a
``//authority`` target routed by the app past a hook's prefix check."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers import NodeApp, Offload, RawResponse, raw_request, run_offload

TOKEN = "s3cret"
GATE = ("--hook-dir", "examples/hooks", "--hook", "bearer_gate:hook")
REPORT = b"0123456789" * 100  # the file only X-Accel-Redirect may hand out


@pytest.fixture(scope="module")
def gated(node_app: NodeApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offload]:
    """offload as the issue's reviewer ran it: the bearer gate on /admin/, an internal prefix."""
    root = tmp_path_factory.mktemp("smuggling")
    (root / "protected").mkdir()
    (root / "protected" / "report.txt").write_bytes(REPORT)
    with run_offload(
        "--upstream",
        node_app.address,
        "--static",
        root,
        "--internal-prefix",
        "/protected/",
        *GATE,
        env={"OFFLOAD_GATE_TOKEN": TOKEN},
    ) as server:
        yield server


def seen_by_app(node_app: NodeApp, marker: str) -> int:
    """How many requests the app parsed whose request line contains ``marker``."""
    response = httpx.get(f"http://127.0.0.1:{node_app.port}/api/seen", params={"marker": marker})
    return int(response.json()["count"])


def smuggled(marker: str, *, method: str = "GET", headers: str = "") -> bytes:
    """A whole request, to be hidden in a body: reaching the app as a request is the hole."""
    return f"{method} /admin/{marker} HTTP/1.1\r\nHost: app\r\n{headers}\r\n".encode()


def echo_of(response: httpx.Response | RawResponse) -> dict[str, Any]:
    if isinstance(response, httpx.Response):
        return dict(response.json())
    body = response.body
    if response.header("transfer-encoding") == "chunked":
        body = dechunk(body)
    return dict(json.loads(body))


def dechunk(body: bytes) -> bytes:
    whole = b""
    while True:
        size, _, body = body.partition(b"\r\n")
        if not int(size, 16):
            return whole
        whole, body = whole + body[: int(size, 16)], body[int(size, 16) + 2 :]


def header_names(echo: dict[str, Any]) -> list[str]:
    raw: list[str] = echo["rawHeaders"]
    return [name.lower() for name in raw[::2]]


class TestFramingIsOffloads:
    @pytest.mark.parametrize(
        "connection", ["content-length", "keep-alive, Content-Length", "close, CONTENT-LENGTH"]
    )
    def test_connection_naming_content_length_keeps_the_body_framed(
        self, gated: Offload, node_app: NodeApp, connection: str
    ) -> None:
        marker = uuid.uuid4().hex
        body = smuggled(marker)
        with httpx.Client(base_url=gated.url, timeout=10) as client:
            response = client.post("/api/echo", content=body, headers={"connection": connection})
            # the next request on the same connection is answered on its own
            after = client.get("/api/echo", params={"after": marker})
        echo = echo_of(response)
        assert echo["bodyLength"] == len(body)
        assert echo["bodySha256"] == hashlib.sha256(body).hexdigest()
        assert header_names(echo).count("content-length") == 1
        assert echo_of(after)["url"] == f"/api/echo?after={marker}"
        assert seen_by_app(node_app, f"/admin/{marker}") == 0

    def test_a_large_smuggled_length_cannot_capture_the_next_request(
        self, gated: Offload, node_app: NodeApp
    ) -> None:
        marker = uuid.uuid4().hex
        capture = smuggled(marker, method="POST", headers="Content-Length: 500\r\n")
        with httpx.Client(base_url=gated.url, timeout=10) as client:
            client.post("/api/echo", content=capture, headers={"connection": "content-length"})
            victim = client.get(
                "/api/echo", params={"victim": marker}, headers={"authorization": "Bearer mine"}
            )
        assert victim.status_code == 200
        assert echo_of(victim)["url"] == f"/api/echo?victim={marker}"
        assert seen_by_app(node_app, marker) == 1  # the victim itself, and no smuggled POST

    def test_connection_naming_transfer_encoding_keeps_the_chunks(
        self, gated: Offload, node_app: NodeApp
    ) -> None:
        marker = uuid.uuid4().hex
        body = smuggled(marker)
        request = (
            b"POST /api/echo HTTP/1.1\r\nHost: offload.test\r\n"
            b"Connection: close, transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        )
        echo = echo_of(raw_request(gated.port, request))
        assert echo["bodyLength"] == len(body)
        assert seen_by_app(node_app, f"/admin/{marker}") == 0


class TestUpgradeOtherThanWebSocket:
    @pytest.mark.parametrize(
        "framing", ["Content-Length: {length}", "Transfer-Encoding: chunked"], ids=["length", "te"]
    )
    @pytest.mark.parametrize("path", ["/api/echo", "/api/small-json"])  # the second answers early
    def test_with_a_body_is_refused_before_the_app(
        self, gated: Offload, node_app: NodeApp, framing: str, path: str
    ) -> None:
        marker = uuid.uuid4().hex
        body = smuggled(marker)
        if framing.startswith("Transfer"):
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        head = (
            f"POST {path}?upgrade={marker} HTTP/1.1\r\nHost: offload.test\r\n"
            f"Connection: Upgrade\r\nUpgrade: h2c\r\n{framing.format(length=len(body))}\r\n\r\n"
        )
        response = raw_request(gated.port, head.encode() + body)
        assert response.status == 400
        assert seen_by_app(node_app, marker) == 0
        # the app's connections are clean: the next request is answered as itself
        after = httpx.get(gated.url + "/api/echo", params={"after": marker})
        assert echo_of(after)["url"] == f"/api/echo?after={marker}"

    def test_without_a_body_is_answered_plainly_and_the_connection_closed(
        self, gated: Offload, node_app: NodeApp
    ) -> None:
        marker = uuid.uuid4().hex
        upgrade = (
            f"GET /api/echo?upgrade={marker} HTTP/1.1\r\nHost: offload.test\r\n"
            "Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        ).encode()
        # a request pipelined after it is never read: httptools stopped at the upgrade
        response = raw_request(gated.port, upgrade + smuggled(marker))
        assert response.status == 200
        assert response.header("connection") == "close"
        echo = echo_of(response)
        assert "upgrade" not in header_names(echo)
        assert seen_by_app(node_app, marker) == 1


class TestTrailersAreNeverHeaders:
    def test_request_trailers_do_not_reach_the_app_as_headers(self, gated: Offload) -> None:
        request = (
            b"POST /api/echo HTTP/1.1\r\nHost: offload.test\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
            b"Host: evil.test\r\nAuthorization: Bearer forged\r\nCookie: session=forged\r\n\r\n"
        )
        echo = echo_of(raw_request(gated.port, request))  # head and trailers in one read
        names = header_names(echo)
        assert names.count("host") == 1
        assert "authorization" not in names
        assert "cookie" not in names
        assert echo["rawTrailers"] == []
        assert echo["bodyLength"] == 5

    def test_a_trailer_cannot_pass_a_hooks_check(self, gated: Offload) -> None:
        request = (
            b"POST /admin/x HTTP/1.1\r\nHost: offload.test\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )
        assert raw_request(gated.port, request).status == 401

    def test_response_trailers_do_not_become_response_headers(self, gated: Offload) -> None:
        response = raw_request(
            gated.port,
            b"GET /api/trailers HTTP/1.1\r\nHost: offload.test\r\nConnection: close\r\n\r\n",
        )
        assert response.status == 200
        assert response.header("set-cookie") is None
        assert response.header("location") is None
        assert response.header("x-accel-redirect") is None
        assert b"the body\n" in response.body
        assert REPORT not in response.body


class TestNetworkPathTargets:
    def test_a_double_slash_target_reaches_the_app_as_the_path_hooks_saw(
        self, gated: Offload
    ) -> None:
        # Node's new URL("//x/admin/secret", base) reads "x" as a host and routes /admin/secret;
        # the hook saw /x/admin/secret, so that is what the app must get
        response = raw_request(
            gated.port,
            b"GET //x/admin/secret HTTP/1.1\r\nHost: offload.test\r\nConnection: close\r\n\r\n",
        )
        assert echo_of(response) == {"app": True, "method": "GET", "url": "/x/admin/secret"}

    @pytest.mark.parametrize("target", ["//admin/secret", "///admin/secret", "/%2fadmin/secret"])
    def test_the_gate_holds_for_every_spelling_of_its_prefix(
        self, gated: Offload, target: str
    ) -> None:
        request = f"GET {target} HTTP/1.1\r\nHost: offload.test\r\nConnection: close\r\n\r\n"
        assert raw_request(gated.port, request.encode()).status == 401
