"""The admin listener: its own port, nothing of the public edge (readiness, drain and metrics
are in test_observe.py); who may drain and undo a drain; its own connection budget, which
never fails a probe; the cap on drain waiters."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload.admin import (
    ADMIN_MAX_CONNECTIONS,
    CONTROL_REQUESTS,
    MAX_WAIT_SECONDS,
    MAX_WAITERS,
    AdminApp,
)
from tests.servers import FIXTURES, NodeApp, Offload, free_port, poll, run_offload


def test_livez_answers_200_on_the_admin_port(offload: Offload) -> None:
    response = httpx.get(offload.admin_url + "/livez")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_livez_head_answers_200_without_a_body(offload: Offload) -> None:
    response = httpx.head(offload.admin_url + "/livez")
    assert response.status_code == 200
    assert response.content == b""


def test_livez_refuses_other_methods_with_405_and_allow(offload: Offload) -> None:
    response = httpx.post(offload.admin_url + "/livez")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


def test_admin_port_serves_no_static_file_and_no_app_path(offload: Offload) -> None:
    assert httpx.get(offload.admin_url + "/style.css").status_code == 404
    assert httpx.get(offload.admin_url + "/api/echo").status_code == 404


def test_admin_host_moves_the_admin_listener_only() -> None:
    # 127.0.0.2 is loopback too on Linux: the admin API on an address of its own, as when only
    # the kubelet should reach it
    with run_offload("--static", FIXTURES, admin_host="127.0.0.2") as server:
        assert httpx.get(f"http://127.0.0.2:{server.admin_port}/livez").status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{server.admin_port}/livez")
        assert httpx.get(f"{server.url}/style.css").status_code == 200


def test_admin_host_may_share_the_public_port_number() -> None:
    port = free_port()
    with run_offload("--static", FIXTURES, port=port, admin_port=port, admin_host="127.0.0.2"):
        assert httpx.get(f"http://127.0.0.2:{port}/livez").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/style.css").status_code == 200


# Control requests (POST and DELETE /drain): only from this machine, not from a browser, or
# with the admin token. In-process, so that a peer can be any address.

TOKEN = "s3cret-admin-token-0123456789"
LOOPBACK = (("127.0.0.1", 50000), ("127.0.0.1", 9901))
REMOTE = (("10.1.2.3", 50000), ("10.1.2.4", 9901))
UNIX = (None, ("/tmp/offload-workers-x/worker-0.sock", None))
Peer = tuple[tuple[str, int] | None, tuple[str, int | None]]


class RecordingSubject:
    """An admin `Subject` that keeps the drain state and what it was asked; ``wait_idle``
    waits until ``release`` is set, or its seconds are over."""

    def __init__(self) -> None:
        self.draining = False
        self.stopping = False
        self.waiting = 0
        self.asked_seconds: list[float] = []
        self.release = asyncio.Event()
        self.arrived = asyncio.Condition()  # notified as each waiter starts waiting

    async def not_ready_because(self) -> str | None:
        return "draining" if self.draining else None

    async def metrics(self) -> bytes:
        return b"offload_http_requests_in_flight 0\n"

    async def drain(self) -> None:
        self.draining = True

    async def cancel_drain(self) -> bool:
        if self.stopping:
            return False
        self.draining = False
        return True

    async def wait_idle(self, seconds: float) -> tuple[bool, int]:
        self.asked_seconds.append(seconds)
        if seconds == 0 or self.release.is_set():
            return self.draining, 0
        async with self.arrived:
            self.waiting += 1
            self.arrived.notify_all()
        try:
            async with asyncio.timeout(seconds):
                await self.release.wait()
        except TimeoutError:
            pass
        finally:
            self.waiting -= 1
        return self.draining, 0

    async def until_waiting(self, count: int) -> None:
        async with self.arrived:
            await self.arrived.wait_for(lambda: self.waiting >= count)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    text: str


async def call(
    app: AdminApp,
    method: str,
    target: str = "/drain",
    *,
    peer: Peer = LOOPBACK,
    headers: Sequence[tuple[str, str]] = (("host", "localhost:9901"),),
) -> Answer:
    """One request to the admin API, as uvicorn would hand it over from ``peer``."""
    path, _, query = target.partition("?")
    client, server = peer
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers],
        "client": client,
        "server": server,
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start, body = messages[0], messages[1]
    named = {name.decode(): value.decode() for name, value in start["headers"]}
    return Answer(start["status"], named, body["body"].decode())


def ask(app: AdminApp, method: str, target: str = "/drain", **options: Any) -> Answer:
    return asyncio.run(call(app, method, target, **options))


@pytest.mark.parametrize(
    ("peer", "headers", "token", "status"),
    [
        (LOOPBACK, [("host", "localhost:9901")], None, 200),
        (LOOPBACK, [("host", "127.0.0.1:9901")], None, 200),
        ((("::1", 50000), ("::1", 9901)), [("host", "[::1]:9901")], None, 200),
        ((("::ffff:127.0.0.1", 50000), ("::", 9901)), [("host", "127.0.0.1")], None, 200),
        (LOOPBACK, [], None, 200),  # HTTP/1.0 without Host
        (UNIX, [("host", "localhost")], None, 200),  # the primary asking a worker
        (LOOPBACK, [("host", "localhost"), ("sec-fetch-mode", "cors")], None, 200),  # Node fetch
        # DNS rebinding: a page on evil.example, its name now resolving to 127.0.0.1
        (LOOPBACK, [("host", "evil.example:9901")], None, 403),
        (LOOPBACK, [("host", "evil.example:9901")], TOKEN, 401),
        # a page in the operator's browser posting to http://127.0.0.1:9901/drain
        (LOOPBACK, [("host", "127.0.0.1:9901"), ("origin", "https://evil.example")], None, 403),
        (LOOPBACK, [("host", "localhost"), ("origin", "null")], None, 403),
        (LOOPBACK, [("host", "localhost"), ("sec-fetch-site", "cross-site")], None, 403),
        (LOOPBACK, [("host", "localhost"), ("authorization", f"Bearer {TOKEN}")], TOKEN, 200),
        (LOOPBACK, [("host", "localhost"), ("authorization", "Bearer wrong")], TOKEN, 401),
        # another machine: the pod network, a node, a Service
        (REMOTE, [("host", "10.1.2.4:9901")], None, 403),
        (REMOTE, [("host", "localhost")], None, 403),  # a Host anyone can write
        (REMOTE, [("host", "10.1.2.4:9901"), ("authorization", f"Bearer {TOKEN}")], None, 403),
        (REMOTE, [("host", "10.1.2.4:9901")], TOKEN, 401),
        (REMOTE, [("host", "10.1.2.4:9901"), ("authorization", f"Bearer {TOKEN}")], TOKEN, 200),
        (REMOTE, [("host", "10.1.2.4"), ("authorization", f"bearer {TOKEN}")], TOKEN, 200),
        (REMOTE, [("host", "10.1.2.4"), ("authorization", f"Bearer {TOKEN}x")], TOKEN, 401),
        (REMOTE, [("host", "10.1.2.4"), ("authorization", f"Basic {TOKEN}")], TOKEN, 401),
        (
            REMOTE,
            [("authorization", f"Bearer {TOKEN}"), ("origin", "https://a.example")],
            TOKEN,
            403,
        ),
    ],
)
@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_control_requests_pass_only_from_this_machine_or_with_the_token(
    method: str, peer: Peer, headers: list[tuple[str, str]], token: str | None, status: int
) -> None:
    subject = RecordingSubject()
    subject.draining = method == "DELETE"
    app = AdminApp(subject, token=token)
    answer = ask(app, method, peer=peer, headers=headers)
    assert answer.status == status, answer.text
    changed = subject.draining is (method == "POST")
    assert changed is (status == 200)  # a refused request changes nothing
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")
    if status in (401, 403):
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        assert TOKEN not in answer.text


def test_every_control_request_is_checked() -> None:
    assert {("POST", "/drain"), ("DELETE", "/drain")} <= CONTROL_REQUESTS
    app = AdminApp(RecordingSubject())
    for method, path in CONTROL_REQUESTS:
        assert ask(app, method, path, peer=REMOTE).status == 403


@pytest.mark.parametrize("target", ["/livez", "/readyz", "/metrics", "/drain?wait=0"])
def test_probes_metrics_and_the_drain_state_are_open_to_anyone(target: str) -> None:
    app = AdminApp(RecordingSubject(), token=TOKEN)
    browser = [("host", "evil.example"), ("origin", "https://evil.example")]
    assert ask(app, "GET", target, peer=REMOTE, headers=browser).status == 200


def test_delete_drain_undoes_post_drain() -> None:
    subject = RecordingSubject()
    app = AdminApp(subject)
    assert ask(app, "POST").status == 200
    assert ask(app, "GET", "/readyz").status == 503
    undone = ask(app, "DELETE")
    assert (undone.status, json.loads(undone.text)) == (200, {"draining": False, "in_flight": 0})
    assert ask(app, "GET", "/readyz").status == 200
    assert ask(app, "DELETE").status == 200  # not draining: nothing to undo, still 200


def test_delete_drain_while_stopping_is_409_and_changes_nothing() -> None:
    subject = RecordingSubject()
    subject.draining = subject.stopping = True  # a signal started the shutdown
    answer = ask(AdminApp(subject), "DELETE")
    assert answer.status == 409
    assert "stopping" in answer.text
    assert subject.draining


def test_drain_allows_get_post_and_delete() -> None:
    answer = ask(AdminApp(RecordingSubject()), "PUT")
    assert (answer.status, answer.headers["allow"]) == (405, "GET, POST, DELETE")


def test_drain_wait_is_at_most_60_seconds() -> None:
    subject = RecordingSubject()
    subject.release.set()
    ask(AdminApp(subject), "GET", "/drain?wait=3600")
    assert subject.asked_seconds == [MAX_WAIT_SECONDS] == [60.0]


def test_drain_waiters_past_the_cap_get_429_but_local_ones_still_wait() -> None:
    subject = RecordingSubject()
    app = AdminApp(subject)

    async def scenario() -> tuple[Answer, Answer, Answer]:
        waiters = [
            asyncio.create_task(call(app, "GET", "/drain?wait=30", peer=REMOTE))
            for _ in range(MAX_WAITERS)
        ]
        await subject.until_waiting(MAX_WAITERS)
        turned_away = await call(app, "GET", "/drain?wait=30", peer=REMOTE)
        at_once = await call(app, "GET", "/drain?wait=0", peer=REMOTE)  # waits for nothing
        local = asyncio.create_task(call(app, "GET", "/drain?wait=30"))  # the preStop hook
        await subject.until_waiting(MAX_WAITERS + 1)
        subject.release.set()
        done = await asyncio.gather(*waiters, local)
        assert [answer.status for answer in done] == [200] * (MAX_WAITERS + 1)
        again = await call(app, "GET", "/drain?wait=30", peer=REMOTE)  # the places are free
        return turned_away, at_once, again

    # bounded: a waiter let in past the cap would wait its 30 s
    turned_away, at_once, again = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert turned_away.status == 429
    assert int(turned_away.headers["retry-after"]) > 0
    assert (at_once.status, again.status) == (200, 200)


# Over a real admin listener.


def test_probes_are_answered_while_connections_fill_the_admin_listener() -> None:
    held = ADMIN_MAX_CONNECTIONS + 6
    with (
        run_offload("--static", FIXTURES, "--client-header-timeout", "60") as server,
        contextlib.ExitStack() as stack,
    ):
        for _ in range(held):  # each one an unfinished request head, as a slow client sends
            connection = stack.enter_context(
                socket.create_connection(("127.0.0.1", server.admin_port), timeout=10)
            )
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n")
        metrics = poll(server.admin_url + "/metrics", lambda response: response.status_code == 503)
        assert metrics.status_code == 503  # past the admin listener's own budget
        assert metrics.headers["retry-after"] == "1"
        for probe in ("/livez", "/readyz"):
            assert httpx.get(server.admin_url + probe).status_code == 200, probe
        # the preStop hook's drain gets through too
        assert httpx.post(server.admin_url + "/drain").status_code == 200
        assert httpx.get(server.admin_url + "/drain?wait=1").status_code == 200
        assert httpx.delete(server.admin_url + "/drain").status_code == 200
        assert httpx.get(server.admin_url + "/readyz").status_code == 200


def test_delete_drain_undoes_post_drain_on_the_edge(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload("--upstream", node_app.address, "--static", FIXTURES)
    poll(server.admin_url + "/readyz", lambda response: response.status_code == 200)
    assert httpx.post(server.admin_url + "/drain").json()["draining"] is True
    assert httpx.get(server.admin_url + "/readyz").status_code == 503
    assert httpx.get(server.url + "/style.css").headers["connection"] == "close"
    undone = httpx.delete(server.admin_url + "/drain")
    assert (undone.status_code, undone.json()) == (200, {"draining": False, "in_flight": 0})
    assert httpx.get(server.admin_url + "/readyz").status_code == 200
    for target in ("/style.css", "/api/small-json"):
        assert "connection" not in httpx.get(server.url + target).headers


def test_delete_drain_cannot_undo_a_sigterm(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload("--upstream", node_app.address, "--drain-timeout", "10")
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(httpx.get, f"{server.url}/api/slow?ms=1500", timeout=10)
        poll(server.admin_url + "/metrics", lambda r: "in_flight 1.0" in r.text)
        server.process.send_signal(signal.SIGTERM)
        poll(server.admin_url + "/readyz", lambda response: response.status_code == 503)
        refused = httpx.delete(server.admin_url + "/drain")
        assert refused.status_code == 409
        assert "stopping" in refused.text
        readiness = httpx.get(server.admin_url + "/readyz")
        assert (readiness.status_code, readiness.text.strip()) == (
            503,
            "Service Unavailable: draining",
        )
        assert slow.result().status_code == 200
    assert server.process.wait(timeout=15) == 0


@pytest.mark.parametrize("source", ["OFFLOAD_ADMIN_TOKEN", "--admin-token-file"])
def test_the_admin_token_opens_control_requests_to_other_hosts(source: str, tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")  # as an editor or `echo` leaves it
    flags = ["--admin-token-file", str(token_file)] if source.startswith("--") else []
    env = {"OFFLOAD_ADMIN_TOKEN": TOKEN} if not source.startswith("--") else {}
    with run_offload("--static", FIXTURES, *flags, env=env) as server:
        drain = server.admin_url + "/drain"
        elsewhere = {"host": "offload.example"}  # as another machine would name it
        refused = httpx.post(drain, headers=elsewhere)
        assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")
        wrong = {**elsewhere, "authorization": "Bearer " + TOKEN[::-1]}
        assert httpx.post(drain, headers=wrong).status_code == 401
        assert httpx.get(server.admin_url + "/readyz").status_code == 200
        right = {**elsewhere, "authorization": "Bearer " + TOKEN}
        assert httpx.post(drain, headers=right).status_code == 200
        assert httpx.get(server.admin_url + "/readyz").status_code == 503
        assert httpx.delete(drain, headers=right).status_code == 200
        assert TOKEN not in server.output()
