"""What a hook does is in the books: a request a hook answers itself, one it never finishes
and one it fails are counted, logged and in flight like any other (issue 14). In-process, on
the edge, its admin view (`EdgeSubject`) and its access log; the one traceback and uvicorn's
part over a real socket."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload import create_app
from offload.admin import EdgeSubject
from offload.app import Edge
from offload.hooks import Hook
from tests.hookmods import probes
from tests.servers import ROOT, Offload, metric, wait_until

HOOKS = ROOT / "tests" / "hookmods"
TRACEBACK = "Traceback (most recent call last)"


def http_scope(path: str, *, method: str = "GET") -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"offload.test")],
        "client": ("127.0.0.1", 50000),
        "state": {},
    }


def websocket_scope(path: str) -> Scope:
    return {
        **http_scope(path),
        "type": "websocket",
        "extensions": {"websocket.http.response": {}},
    }


async def no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Books:
    """An edge with these hooks, what it sent, and what its metrics and access log hold."""

    def __init__(self, root: Path, hooks: list[Hook]) -> None:
        self.edge: Edge = create_app(static=root, hooks=hooks)
        self.log = io.StringIO()
        self.edge.access_log.stream = self.log
        self.subject = EdgeSubject(self.edge)
        self.sent: list[Message] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def call(self, scope: Scope, receive: Callable[[], Awaitable[Message]] = no_body) -> None:
        await self.edge(scope, receive, self.send)

    async def requests_total(self, route: str, code: int, method: str = "GET") -> float:
        text = (await self.subject.metrics()).decode()
        labels = {"route": route, "method": method, "code": str(code)}
        return metric(text, "offload_http_requests_total", **labels)

    def logged(self) -> list[dict[str, object]]:
        self.edge.access_log.flush()
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@pytest.fixture
def books(tmp_path: Path) -> Callable[..., Books]:
    def make(*hooks: Hook) -> Books:
        return Books(tmp_path, list(hooks))

    return make


def test_hook_raising_before_answering_gets_500_counted_and_logged(
    books: Callable[..., Books], caplog: pytest.LogCaptureFixture
) -> None:
    edge = books(probes.faulty)

    async def scenario() -> None:
        await edge.call(http_scope("/raise"))
        assert await edge.requests_total("hook", 500) == 1

    asyncio.run(scenario())
    assert edge.sent[0]["status"] == 500
    assert edge.sent[1]["body"] == b"Internal Server Error\n"
    [line] = edge.logged()
    assert (line["status"], line["route"], line["error"]) == (500, "hook", "internal_error")
    [record] = [record for record in caplog.records if record.exc_info]
    assert "GET /raise" in record.getMessage()
    assert edge.edge.state.in_flight == 0


def test_hook_raising_after_its_response_started_is_recorded_with_the_status_sent(
    books: Callable[..., Books], caplog: pytest.LogCaptureFixture
) -> None:
    edge = books(probes.faulty)

    async def scenario() -> None:
        await edge.call(http_scope("/raise-late"))  # returns: the server then closes
        assert await edge.requests_total("hook", 200) == 1

    asyncio.run(scenario())
    assert [message["type"] for message in edge.sent] == [
        "http.response.start",
        "http.response.body",
    ]
    assert edge.sent[1]["more_body"] is True  # never completed: no 500 after a 200
    [line] = edge.logged()
    assert (line["status"], line["bytes"], line["error"]) == (200, 4, "internal_error")
    assert len([record for record in caplog.records if record.exc_info]) == 1


def test_routing_raising_gets_500_with_its_route(
    books: Callable[..., Books], monkeypatch: pytest.MonkeyPatch
) -> None:
    edge = books(probes.unchanged)

    async def broken(*_: object) -> None:
        raise OSError("the static engine failed")

    assert edge.edge.static is not None
    monkeypatch.setattr(edge.edge.static, "respond", broken)

    async def scenario() -> None:
        await edge.call(http_scope("/style.css"))
        assert await edge.requests_total("none", 500) == 1

    asyncio.run(scenario())
    assert edge.sent[0]["status"] == 500


def test_hook_that_never_returns_is_in_flight(books: Callable[..., Books]) -> None:
    entered = asyncio.Event()

    def stall(app: ASGIApp) -> ASGIApp:
        async def never_returns(scope: Scope, receive: Receive, send: Send) -> None:
            entered.set()
            await asyncio.Event().wait()

        return never_returns

    edge = books(stall)

    async def scenario() -> None:
        request = asyncio.create_task(edge.call(http_scope("/slow")))
        await entered.wait()
        assert await edge.subject.wait_idle(0) == (False, 1)  # /drain?wait=0: 503, in flight 1
        text = (await edge.subject.metrics()).decode()
        assert metric(text, "offload_http_requests_in_flight") == 1
        request.cancel()
        assert await edge.subject.wait_idle(1) == (False, 0)

    asyncio.run(scenario())


@pytest.mark.parametrize("draining", [False, True])
def test_hook_answering_itself_is_counted_as_route_hook(
    books: Callable[..., Books], draining: bool
) -> None:
    edge = books(probes.short)
    edge.edge.state.draining = draining

    async def scenario() -> None:
        await edge.call(http_scope("/short"))
        assert await edge.requests_total("hook", 200) == 1

    asyncio.run(scenario())
    [line] = edge.logged()
    assert (line["route"], line["status"], line["bytes"]) == ("hook", 200, 5)
    closes = (b"connection", b"close") in edge.sent[0]["headers"]
    assert closes is draining  # a hook's answer is drained like any other


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/missing", 404),  # routing had it, no route (no --upstream): not a hook's answer
        ("/a/../b", 400),  # refused before the hooks
    ],
)
def test_offloads_own_answers_through_a_hook_are_route_none(
    books: Callable[..., Books], path: str, status: int
) -> None:
    edge = books(probes.unchanged, probes.first)

    async def scenario() -> None:
        await edge.call(http_scope(path))
        assert await edge.requests_total("none", status) == 1

    asyncio.run(scenario())
    assert edge.logged()[0]["route"] == "none"


def test_hook_raising_on_a_websocket_handshake_gets_500_counted(
    books: Callable[..., Books],
) -> None:
    def refuse(app: ASGIApp) -> ASGIApp:
        async def fail(scope: Scope, receive: Receive, send: Send) -> None:
            raise RuntimeError("the hook failed on a handshake")

        return fail

    edge = books(refuse)

    async def scenario() -> None:
        await edge.call(websocket_scope("/ws"))
        assert await edge.requests_total("hook", 500) == 1

    asyncio.run(scenario())
    assert edge.sent[0] == {
        "type": "websocket.http.response.start",
        "status": 500,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"22"),
        ],
    }
    assert edge.logged()[0]["error"] == "internal_error"


def test_hook_refusing_a_websocket_handshake_is_counted_as_403(
    books: Callable[..., Books],
) -> None:
    edge = books(probes.deny_websockets)

    async def scenario() -> None:
        await edge.call({**websocket_scope("/ws"), "query_string": b"deny=1"})
        assert await edge.requests_total("hook", 403) == 1

    asyncio.run(scenario())
    assert edge.sent == [{"type": "websocket.close", "code": 4403}]


def test_client_leaving_a_websocket_is_no_internal_error(
    books: Callable[..., Books], caplog: pytest.LogCaptureFixture
) -> None:
    def talk(app: ASGIApp) -> ASGIApp:
        async def accept_and_send(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": "hello"})

        return accept_and_send

    edge = books(talk)

    async def gone(message: Message) -> None:
        if message["type"] == "websocket.send":
            raise ConnectionResetError("the client has gone")  # as uvicorn's ClientDisconnected

    async def scenario() -> None:
        with pytest.raises(ConnectionResetError):  # for the server, which expects it
            await edge.edge(websocket_scope("/ws"), no_body, gone)
        assert await edge.requests_total("hook", 101) == 1

    asyncio.run(scenario())
    assert edge.logged()[0]["error"] == "client_closed"
    assert not [record for record in caplog.records if record.exc_info]


def test_hook_failures_over_a_socket_log_one_traceback_each(
    start_offload: Callable[..., Offload],
) -> None:
    server = start_offload(
        "--static", ROOT / "static_fixtures", "--hook-dir", HOOKS, "--hook", "probes:faulty"
    )
    early = httpx.get(server.url + "/raise")
    assert (early.status_code, early.text) == (500, "Internal Server Error\n")
    with pytest.raises(httpx.RemoteProtocolError):  # the connection ends short of the body
        httpx.get(server.url + "/raise-late")
    text = httpx.get(server.admin_url + "/metrics").text
    assert metric(text, "offload_http_requests_total", route="hook", method="GET", code="500") == 1
    assert metric(text, "offload_http_requests_total", route="hook", method="GET", code="200") == 1
    # the access log's lines are written every 0.2 s
    assert wait_until(lambda: server.output().count('"error":"internal_error"') == 2)
    assert server.output().count(TRACEBACK) == 2, server.output()
