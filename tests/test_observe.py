"""The sidecar's view: readiness, drain, metrics and the access log, over real sockets; the
access log's lines themselves in-process."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import Callable

import httpx
import pytest

from offload import __version__
from offload.observe import AccessLog
from tests.servers import FIXTURES, NodeApp, Offload, free_port, metric, poll, start_node_app


def access_lines(server: Offload) -> list[dict[str, object]]:
    time.sleep(0.4)  # lines are written in batches, every 0.2 s
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return [line for line in lines if "method" in line]


class TestReadiness:
    def test_ready_when_the_catalog_is_loaded_and_the_app_accepts(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address, "--static", FIXTURES)
        response = poll(server.admin_url + "/readyz", lambda r: r.status_code == 200)
        assert response.text == "OK: ready\n"

    def test_not_ready_while_the_app_is_down(self, start_offload: Callable[..., Offload]) -> None:
        server = start_offload("--upstream", f"127.0.0.1:{free_port()}", "--static", FIXTURES)
        response = httpx.get(server.admin_url + "/readyz")
        assert response.status_code == 503
        assert "the app does not accept connections" in response.text
        assert httpx.get(server.admin_url + "/livez").status_code == 200  # never the app's fault

    def test_readiness_follows_the_app_going_down_and_coming_back(
        self, start_offload: Callable[..., Offload]
    ) -> None:
        app = start_node_app()
        try:
            server = start_offload("--upstream", app.address, "--static", FIXTURES)
            ready = poll(server.admin_url + "/readyz", lambda r: r.status_code == 200)
            assert ready.status_code == 200
            app.stop()
            down = poll(server.admin_url + "/readyz", lambda r: r.status_code == 503)
            assert "the app does not accept connections" in down.text
            assert httpx.get(server.url + "/style.css").status_code == 200  # static goes on
            app = start_node_app(port=app.port)
            back = poll(server.admin_url + "/readyz", lambda r: r.status_code == 200)
            assert back.status_code == 200
        finally:
            app.stop()

    def test_drain_fails_readiness_and_closes_connections(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address, "--static", FIXTURES)
        poll(server.admin_url + "/readyz", lambda r: r.status_code == 200)
        assert "connection" not in httpx.get(server.url + "/style.css").headers
        drained = httpx.post(server.admin_url + "/drain")
        assert drained.json() == {"draining": True, "in_flight": 0}
        readyz = httpx.get(server.admin_url + "/readyz")
        assert readyz.status_code == 503
        assert "draining" in readyz.text
        assert httpx.get(server.url + "/style.css").headers["connection"] == "close"
        assert httpx.get(server.admin_url + "/drain?wait=1").status_code == 200

    def test_drain_wait_answers_once_requests_in_flight_finish(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address)
        stream_id = uuid.uuid4().hex
        identity = {"accept-encoding": "identity"}
        with (
            httpx.Client(base_url=server.url, timeout=10) as client,
            client.stream("GET", f"/api/stream?id={stream_id}", headers=identity) as response,
        ):
            chunks = response.iter_raw()
            next(chunks)
            busy = httpx.get(server.admin_url + "/drain?wait=0.3")
            assert busy.status_code == 503
            assert busy.json()["in_flight"] == 1
            httpx.get(f"http://{node_app.address}/api/release?id={stream_id}")
            b"".join(chunks)
        assert httpx.get(server.admin_url + "/drain?wait=5").status_code == 200


def test_metrics_count_known_traffic(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload("--upstream", node_app.address, "--static", FIXTURES)
    poll(server.admin_url + "/readyz", lambda r: r.status_code == 200)
    for _ in range(3):
        httpx.get(server.url + "/style.css")
    for _ in range(2):
        httpx.get(server.url + "/api/echo")
    text = httpx.get(server.admin_url + "/metrics").text
    static = {"route": "static", "method": "GET", "code": "200"}
    proxied = {"route": "proxy", "method": "GET", "code": "200"}
    assert metric(text, "offload_http_requests_total", **static) == 3
    assert metric(text, "offload_http_requests_total", **proxied) == 2
    assert (
        metric(text, "offload_http_request_duration_seconds_count", route="static", method="GET")
        == 3
    )
    size = (FIXTURES / "style.css").stat().st_size
    assert metric(text, "offload_http_response_size_bytes_total", route="static") == 3 * size
    assert metric(text, "offload_upstream_up") == 1
    assert metric(text, "offload_static_assets") > 10
    assert metric(text, "offload_build_info", version=__version__) == 1
    assert metric(text, "offload_http_requests_in_flight") == 0


def test_metrics_count_upstream_errors(start_offload: Callable[..., Offload]) -> None:
    server = start_offload("--upstream", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.2")
    assert httpx.get(server.url + "/x").status_code == 502
    text = httpx.get(server.admin_url + "/metrics").text
    assert metric(text, "offload_upstream_errors_total", kind="connect") == 1
    assert metric(text, "offload_http_requests_total", route="proxy", method="GET", code="502") == 1


class TestAccessLog:
    def test_one_json_line_per_request_with_every_field_and_no_secrets(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", node_app.address, "--static", FIXTURES)
        secret = {"authorization": "Bearer top-secret", "cookie": "session=top-secret"}
        httpx.get(server.url + "/style.css?v=1", headers={"user-agent": "tester", **secret})
        httpx.get(server.url + "/api/echo", headers={"x-request-id": "req-42", **secret})
        lines = access_lines(server)
        static, proxied = lines[-2], lines[-1]
        fields = {"ts", "method", "path", "query", "status", "duration_ms", "bytes", "route"}
        fields |= {"client", "request_id", "user_agent"}
        assert fields <= set(static)
        assert (static["path"], static["query"], static["status"]) == ("/style.css", "v=1", 200)
        assert (static["route"], static["user_agent"], static["client"]) == (
            "static",
            "tester",
            "127.0.0.1",
        )
        assert static["bytes"] == (FIXTURES / "style.css").stat().st_size
        assert proxied["route"] == "proxy"
        assert proxied["request_id"] == "req-42"
        assert proxied["upstream_status"] == 200
        assert isinstance(proxied["upstream_ms"], float)
        assert "top-secret" not in server.output()

    def test_upstream_failures_and_client_closes_are_flagged(
        self, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--upstream", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.2")
        httpx.get(server.url + "/x")
        line = access_lines(server)[-1]
        assert (line["status"], line["error"]) == (502, "upstream_refused")

    @pytest.mark.parametrize("log_format", ["text", "off"])
    def test_text_and_off(self, log_format: str, start_offload: Callable[..., Offload]) -> None:
        server = start_offload("--static", FIXTURES, "--access-log", log_format)
        httpx.get(server.url + "/style.css")
        time.sleep(0.4)
        logged = [line for line in server.output().splitlines() if "/style.css" in line]
        if log_format == "off":
            assert logged == []
        else:
            assert len(logged) == 1
            assert " GET /style.css 200 " in logged[0]

    def test_start_up_lines_are_json_too(self, start_offload: Callable[..., Offload]) -> None:
        server = start_offload("--static", FIXTURES)
        first = json.loads(server.output().splitlines()[0])
        assert first["level"] == "info"
        assert "offload listening" in first["message"]


def test_text_log_forged_line_over_the_wire_stays_one_escaped_line(
    start_offload: Callable[..., Offload],
) -> None:
    server = start_offload("--static", FIXTURES, "--access-log", "text")
    httpx.get(server.url + "/x%0A127.0.0.1%20GET%20/forged%20200%1B[2J")
    time.sleep(0.4)  # lines are written in batches, every 0.2 s
    logged = [line for line in server.output().splitlines() if "forged" in line]
    assert len(logged) == 1
    sent = r"/x\x0A127.0.0.1\x20GET\x20/forged\x20200\x1B[2J"
    assert logged[0].split(" ")[1:4] == ["GET", sent, "404"]


RECORD: dict[str, object] = {
    "ts": "2026-01-01T00:00:00.000Z",
    "method": "GET",
    "path": "/",
    "query": "",
    "status": 200,
    "duration_ms": 0.1,
    "bytes": 5,
    "route": "static",
    "client": "127.0.0.1",
    "request_id": "req-1",
    "user_agent": None,
}


def logged(log_format: str, **fields: object) -> str:
    """What an `AccessLog` writes for one request with these fields."""
    stream = io.StringIO()
    log = AccessLog(log_format, stream)

    async def write() -> None:
        log.write({**RECORD, **fields})
        log.flush()

    asyncio.run(write())
    return stream.getvalue()


# (what the client sent, as it appears in a text line): control characters, characters that do
# not print, the field separator and the backslash itself are escaped; the rest is kept
CLIENT_TEXT = [
    ("/style.css", "/style.css"),
    ("/café/日本", "/café/日本"),
    ("/x\n127.0.0.1 GET /forged", r"/x\x0A127.0.0.1\x20GET\x20/forged"),
    ("/x\r\t\x00", r"/x\x0D\x09\x00"),
    ("/\x1b[2J\x1b[31mred", r"/\x1B[2J\x1B[31mred"),
    ("/\x7f\x85", r"/\x7F\x85"),
    ("/line\u2028separator\u2029", r"/line\u2028separator\u2029"),
    ("/tag\U000e0001", r"/tag\U000E0001"),
    ("/back\\slash\\x0A", r"/back\x5Cslash\x5Cx0A"),
]


@pytest.mark.parametrize(("sent", "written"), CLIENT_TEXT)
def test_text_log_path_unsafe_characters_escaped(sent: str, written: str) -> None:
    line = logged("text", path=sent)
    assert line.count("\n") == 1
    assert line.split(" ")[2] == written


def test_text_log_every_field_the_client_sent_escaped() -> None:
    line = logged("text", method="G\nET", query="a=\x1b", request_id="id 1\n2")
    assert line == (r"127.0.0.1 G\x0AET /?a=\x1B 200 5 0.1ms static id\x201\x0A2" + "\n")


@pytest.mark.parametrize("sent", [sent for sent, _ in CLIENT_TEXT])
def test_json_log_any_client_text_stays_one_exact_line(sent: str) -> None:
    line = logged("json", path=sent, request_id=sent, user_agent=sent)
    assert line.count("\n") == 1
    assert line.isascii()  # U+2028 and U+0085 too, which some readers take for line breaks
    record = json.loads(line)
    assert (record["path"], record["request_id"], record["user_agent"]) == (sent, sent, sent)
