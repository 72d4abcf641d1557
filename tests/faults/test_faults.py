"""offload in front of a faulty app (tests/faults/injector.py): for each way the app can
misbehave, the status the client gets, as nginx answers and the HTTP rules ask (refused, reset
before the head or malformed: 502; slower than --read-timeout: 504); and after every fault the
rule that the next request still succeeds, with offload alive and no traceback in its log.

Tested elsewhere, not repeated here: tests/proxy/test_upstream.py (a body cut short by a FIN, a
second response the app sends unasked, an unsolicited 101, a chunked body breaking before its
first chunk), tests/proxy/test_transport.py (a refused connection retried while the app starts,
the connect timeout, a stale pooled connection retried for GET and not for POST) and
tests/proxy/test_forwarding.py (Node's `HTTP/1.1 ???` then close, a slow app, a stalled upload).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from offload.proxy.client import POOL_KEEPALIVE_SECONDS
from tests.faults.injector import CUT_BODY, DRIP_BODY, DRIP_INTERVAL_SECONDS, FaultyApp
from tests.servers import Offload, RawResponse, free_port, raw_get, raw_request, run_offload

READ_TIMEOUT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 1.0
# what a crash or an unhandled error leaves in offload's log
TRACE = re.compile(r"Traceback|exception was never retrieved|Exception in callback")

BAD_GATEWAY, GATEWAY_TIMEOUT = b"Bad Gateway", b"Gateway Timeout"


@pytest.fixture(scope="module")
def faulty_app() -> Iterator[FaultyApp]:
    with FaultyApp() as app:
        yield app


@pytest.fixture(scope="module")
def front(faulty_app: FaultyApp) -> Iterator[Offload]:
    """One offload in front of the faulty app for the whole module: every fault leaves it to
    the next, which is the point."""
    with run_offload(
        "--upstream",
        f"127.0.0.1:{faulty_app.port}",
        "--read-timeout",
        str(READ_TIMEOUT_SECONDS),
        "--connect-timeout",
        str(CONNECT_TIMEOUT_SECONDS),
    ) as running:
        yield running


def assert_next_request_succeeds(front: Offload) -> None:
    """The rule after every fault: offload still runs, logged no traceback, and answers."""
    response = raw_get(front.port, "/ok")
    assert (response.status, response.body) == (200, b"ok")
    assert front.process.poll() is None
    assert not TRACE.search(front.output()), front.output()


@dataclass(frozen=True)
class Case:
    """What the client gets for one fault: the status; the start of the body (offload's own
    text, or the app's bytes); whether the body is all its Content-Length promised; and whether
    offload must close the app's connection itself (the app left it open after the fault), so
    that it never goes back to the pool."""

    path: str
    status: int
    body: bytes
    complete: bool = True
    closes: bool = True


CASES = [
    # HTTP.md: slower than --read-timeout -> 504; offload resets the connection it gave up on
    pytest.param(Case("/hang", 504, GATEWAY_TIMEOUT), id="accept-and-hang"),
    # reset before the head -> 502 (a GET on a pooled connection is first retried once)
    pytest.param(
        Case("/reset-before-head", 502, BAD_GATEWAY, closes=False), id="reset-before-head"
    ),
    pytest.param(Case("/cut-head", 502, BAD_GATEWAY, closes=False), id="half-a-head-then-close"),
    # the head is out: the client sees Content-Length: 100 and the connection end after 10 bytes
    pytest.param(
        Case("/reset-after-head", 200, CUT_BODY, complete=False, closes=False),
        id="reset-after-head",
    ),
    # malformed -> 502, judged on the bytes: the app keeps the connection open
    pytest.param(Case("/garbage-bytes", 502, BAD_GATEWAY), id="garbage-bytes"),
    pytest.param(Case("/garbage-status", 502, BAD_GATEWAY), id="garbage-status-line"),
    # RFC 9112 §6.3: both framings, or two lengths, may be smuggling: nginx answers 502
    pytest.param(Case("/length-and-chunked", 502, BAD_GATEWAY), id="content-length-then-chunked"),
    pytest.param(Case("/chunked-and-length", 502, BAD_GATEWAY), id="chunked-then-content-length"),
    pytest.param(Case("/two-lengths", 502, BAD_GATEWAY), id="two-content-lengths"),
    # nginx accepts no transfer coding but chunked ('upstream sent unknown Transfer-Encoding')
    pytest.param(Case("/identity-coding", 502, BAD_GATEWAY), id="identity-transfer-coding"),
    pytest.param(
        Case("/gzip-then-chunked", 502, BAD_GATEWAY),
        id="gzip-transfer-coding",
    ),
    pytest.param(
        Case("/chunked-then-gzip", 502, BAD_GATEWAY, closes=False),
        id="chunked-not-the-last-coding",
    ),
    # exactly the 5 bytes promised; the connection with the rest in it is closed, never pooled
    pytest.param(Case("/extra-bytes", 200, b"hello"), id="extra-bytes-after-the-body"),
    pytest.param(Case("/extra-bytes-later", 200, b"hello"), id="extra-bytes-while-idle"),
    pytest.param(
        Case("/huge-head", 502, BAD_GATEWAY),
        id="200-kib-of-headers",
    ),
    pytest.param(
        Case("/huge-field", 502, BAD_GATEWAY),
        id="one-200-kib-header",
    ),
    pytest.param(Case("/drip", 200, DRIP_BODY[:5], closes=False), id="slow-drip"),
    # RFC 9110 §15: a status outside 100-599 is no HTTP answer; nginx answers 502 (issue 15)
    pytest.param(Case("/status-600", 502, BAD_GATEWAY), id="status-600"),
    pytest.param(Case("/status-099", 502, BAD_GATEWAY), id="status-099"),
    pytest.param(Case("/status-000", 502, BAD_GATEWAY), id="status-000"),
]


@pytest.mark.parametrize("case", CASES)
def test_fault_gets_its_status_and_the_next_request_succeeds(
    case: Case, faulty_app: FaultyApp, front: Offload
) -> None:
    before = len(faulty_app.seen)
    response = raw_get(front.port, case.path)
    assert response.status == case.status
    assert response.body.startswith(case.body)
    length = int(response.header("content-length") or -1)
    assert (len(response.body) == length) is case.complete
    tries = [seen for seen in faulty_app.seen[before:] if seen.path == case.path]
    assert 1 <= len(tries) <= 2  # at most the one retry of a GET on a stale pooled connection
    if case.closes:
        assert faulty_app.wait_closed_by_peer({seen.connection for seen in tries})
    assert_next_request_succeeds(front)


@pytest.mark.parametrize(
    ("path", "status"), [("/not-modified-with-length", 304), ("/no-content-with-length", 204)]
)
def test_304_and_204_with_content_length_pass_without_a_body_and_keep_the_connection(
    path: str, status: int, faulty_app: FaultyApp, front: Offload
) -> None:
    # RFC 9110 §8.6: a 304 may carry the length a 200 would have; neither has a body (RFC 9112
    # §6.3), and the app's connection is ready for the next request. Issue 15: the client's
    # connection was reset and a traceback logged.
    before = len(faulty_app.seen)
    response = raw_get(front.port, path)
    assert (response.status, response.body) == (status, b"")
    assert response.header("content-length") is None  # offload sends none on either (§8.6)
    if status == 304:
        assert response.header("etag") == '"v1"'
    assert_next_request_succeeds(front)
    first, then = faulty_app.seen[before:]
    assert (first.path, then.path) == (path, "/ok")
    assert then.connection == first.connection  # pooled, and reused


def head_and_get(port: int, path: str, *headers: str) -> tuple[RawResponse, RawResponse]:
    lines = [f"HEAD {path} HTTP/1.1", "Host: offload.test", "Connection: close", *headers]
    head = raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return head, raw_get(port, path, *headers)


@pytest.mark.parametrize(
    ("path", "accept", "coding"),
    [
        ("/json", "br, gzip", "br"),
        ("/json", "gzip;q=0.8", "gzip"),
        ("/json", "identity", None),
        ("/tiny-json", "br, gzip", None),  # under 512 bytes: never compressed
    ],
)
def test_head_gets_the_headers_get_gets(
    path: str, accept: str, coding: str | None, front: Offload
) -> None:
    # RFC 9110 §9.3.2: HEAD's header fields SHOULD be GET's, as from nginx and Caddy. Issue 15:
    # HEAD kept the strong ETag and the identity length, without Vary or Content-Encoding.
    head, get = head_and_get(front.port, path, f"Accept-Encoding: {accept}")
    assert (head.status, head.body, get.status) == (200, b"", 200)
    for name in ("content-type", "content-encoding", "vary", "etag", "content-length"):
        assert head.header(name) == get.header(name), name
    assert get.header("content-encoding") == coding
    assert get.header("etag") == ('W/"v1"' if coding else '"v1"')  # RFC 9110 §8.8.1
    assert_next_request_succeeds(front)


def test_slow_drip_streams_intact_past_the_read_timeout(
    faulty_app: FaultyApp, front: Offload
) -> None:
    count = 15  # 1.5 s of drip: longer than --read-timeout, which never cuts a stream
    arrivals: list[float] = []
    body = b""
    started = time.monotonic()
    identity = {"accept-encoding": "identity"}
    with httpx.stream("GET", f"{front.url}/drip?bytes={count}", headers=identity) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            arrivals.append(time.monotonic() - started)
            body += chunk
    assert body == DRIP_BODY[:count]
    # streamed: the first byte arrives long before the app has sent the last
    assert arrivals[0] < (count / 2) * DRIP_INTERVAL_SECONDS
    assert arrivals[-1] >= (count - 1) * DRIP_INTERVAL_SECONDS
    assert len(arrivals) > count / 2
    assert_next_request_succeeds(front)


def test_app_closing_as_the_pooled_connection_is_reused_gets_one_retry(
    faulty_app: FaultyApp, front: Offload
) -> None:
    # the app's keep-alive timer fires as offload reuses the connection just before the
    # pool's expiry: the app closes on the request unanswered. A GET is retried once on a new
    # connection (RFC 9112 §9.3.1). Margins of 0.25 s either side keep it deterministic.
    before = len(faulty_app.seen)
    drop_after = POOL_KEEPALIVE_SECONDS - 0.5
    assert raw_get(front.port, f"/close-when-idle?drop_after={drop_after}").status == 200
    time.sleep(POOL_KEEPALIVE_SECONDS - 0.25)  # the idle time is the fault: nothing to await
    assert_next_request_succeeds(front)
    oks = [seen for seen in faulty_app.seen[before:] if seen.path == "/ok"]
    assert [seen.answered for seen in oks] == [False, True]  # one retry
    assert oks[0].idle_seconds >= drop_after  # offload did reuse the pooled connection
    assert oks[1].connection != oks[0].connection  # the retry went on a new one


def test_app_keep_alive_timeout_equal_to_the_pools_is_not_an_error(
    faulty_app: FaultyApp, front: Offload
) -> None:
    # README: the app's idle timeout should be longer than the pool's 4 s; here they are equal,
    # and the next request reaches the idle connection as the app's timer closes it. Whichever
    # wins, the app's FIN (offload opens a new connection), offload's request (the app resets,
    # offload retries once), or the app's read (it answers), the client gets its answer.
    assert raw_get(front.port, f"/close-when-idle?after={POOL_KEEPALIVE_SECONDS}").status == 200
    time.sleep(POOL_KEEPALIVE_SECONDS - 0.005)  # the idle time is the fault: nothing to await
    assert_next_request_succeeds(front)


def test_refused_connection_is_502_and_the_app_coming_back_is_used(
    start_offload: Callable[..., Offload],
) -> None:
    port = free_port()  # nothing listens: every connect is refused
    refused = start_offload(
        "--upstream", f"127.0.0.1:{port}", "--connect-timeout", str(CONNECT_TIMEOUT_SECONDS)
    )
    started = time.monotonic()
    response = raw_get(refused.port, "/ok")
    assert response.status == 502
    assert response.body.startswith(BAD_GATEWAY)
    # retried for --connect-timeout (the app may be restarting), not the default 5 s; the
    # retry itself is tests/proxy/test_transport.py's
    assert time.monotonic() - started < CONNECT_TIMEOUT_SECONDS + 2
    with FaultyApp(port=port):
        assert_next_request_succeeds(refused)
