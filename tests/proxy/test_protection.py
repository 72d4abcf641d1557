"""The circuit breaker and the concurrency cap toward the app, with offload in front of the
faulty app (tests/faults/injector.py), which records every request that reaches it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from offload.config import Upstream
from offload.proxy.breaker import Admission, Breaker, ConcurrencyCap
from offload.proxy.http import HttpProxy, ProxySettings
from tests.faults.injector import FaultyApp
from tests.servers import FIXTURES, Offload, free_port, metric, poll, run_offload

COOLDOWN_SECONDS = 1.5
UPGRADE = {  # a WebSocket handshake, as httpx can send it (it gets no 101 from these tests)
    "connection": "Upgrade",
    "upgrade": "websocket",
    "sec-websocket-version": "13",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.fixture
def faulty_app() -> Iterator[FaultyApp]:
    with FaultyApp() as app:
        yield app


@pytest.fixture
def guarded(faulty_app: FaultyApp) -> Iterator[Offload]:
    """offload with a breaker that opens after 3 failures, and the static fixtures."""
    with run_offload(
        *["--upstream", f"127.0.0.1:{faulty_app.port}", "--static", FIXTURES],
        *["--breaker-failures", "3", "--breaker-cooldown", str(COOLDOWN_SECONDS)],
        *["--read-timeout", "0.5", "--connect-timeout", "0.5"],
    ) as server:
        yield server


def get(server: Offload, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=10)


def metrics(server: Offload) -> str:
    return httpx.get(server.admin_url + "/metrics").text


def trip(server: Offload, fault: str = "/reset-before-head", times: int = 3) -> None:
    for _ in range(times):
        assert get(server, fault).status_code in (502, 504)


class TestBreaker:
    def test_opens_after_consecutive_failures_and_keeps_requests_from_the_app(
        self, guarded: Offload, faulty_app: FaultyApp
    ) -> None:
        assert get(guarded, "/ok").status_code == 200
        trip(guarded)
        reached = len(faulty_app.seen)
        started = time.perf_counter()
        refused = get(guarded, "/ok")
        elapsed = time.perf_counter() - started
        assert refused.status_code == 503
        assert "circuit breaker" in refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 2
        assert elapsed < 0.25  # answered at once (about 1 ms on loopback), not after a timeout
        assert len(faulty_app.seen) == reached  # the app received nothing
        text = metrics(guarded)
        assert metric(text, "offload_upstream_breaker_open") == 1
        assert metric(text, "offload_upstream_breaker_trips_total") == 1
        assert metric(text, "offload_upstream_rejected_total", reason="breaker") == 1

    def test_successes_in_between_keep_it_closed(self, guarded: Offload) -> None:
        for _ in range(3):
            trip(guarded, times=2)
            assert get(guarded, "/ok").status_code == 200
        assert metric(metrics(guarded), "offload_upstream_breaker_trips_total") == 0

    def test_static_files_are_served_while_it_is_open(self, guarded: Offload) -> None:
        trip(guarded)
        assert get(guarded, "/api/anything").status_code == 503
        response = get(guarded, "/style.css")
        assert response.status_code == 200
        assert response.content == (FIXTURES / "style.css").read_bytes()

    def test_readiness_does_not_follow_it(self, guarded: Offload) -> None:
        # an open breaker on every replica at once must not empty the Service: static files
        # are still served, and the breaker answers for the app's requests by itself
        poll(guarded.admin_url + "/readyz", lambda r: r.status_code == 200)
        trip(guarded)
        assert get(guarded, "/ok").status_code == 503
        assert httpx.get(guarded.admin_url + "/readyz").status_code == 200

    def test_a_successful_probe_closes_it(self, guarded: Offload, faulty_app: FaultyApp) -> None:
        trip(guarded)
        time.sleep(COOLDOWN_SECONDS + 0.1)
        reached = len(faulty_app.seen)
        assert get(guarded, "/ok").status_code == 200  # the probe
        assert len(faulty_app.seen) == reached + 1
        assert get(guarded, "/ok").status_code == 200
        assert metric(metrics(guarded), "offload_upstream_breaker_open") == 0

    def test_a_failed_probe_opens_it_again(self, guarded: Offload, faulty_app: FaultyApp) -> None:
        trip(guarded)
        time.sleep(COOLDOWN_SECONDS + 0.1)
        assert get(guarded, "/reset-before-head").status_code == 502  # the probe fails
        reached = len(faulty_app.seen)
        assert get(guarded, "/ok").status_code == 503
        assert len(faulty_app.seen) == reached
        assert metric(metrics(guarded), "offload_upstream_breaker_trips_total") == 2

    def test_only_one_probe_at_a_time(self, guarded: Offload, faulty_app: FaultyApp) -> None:
        trip(guarded)
        time.sleep(COOLDOWN_SECONDS + 0.1)

        async def probe_and_follow() -> tuple[int, int]:
            async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as client:
                probe = asyncio.create_task(client.get("/slow?seconds=0.4"))
                await asyncio.sleep(0.15)  # the probe is at the app
                follower = await client.get("/ok")
                return (await probe).status_code, follower.status_code

        assert asyncio.run(probe_and_follow()) == (200, 503)
        assert get(guarded, "/ok").status_code == 200  # closed by the probe

    def test_concurrent_timeouts_do_not_open_it(self, guarded: Offload) -> None:
        # five clients asking for a slow endpoint at once are not five failures of the app
        async def hang_five() -> list[int]:
            async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as client:
                answers = await asyncio.gather(*(client.get("/hang") for _ in range(5)))
            return [answer.status_code for answer in answers]

        assert asyncio.run(hang_five()) == [504] * 5
        assert get(guarded, "/ok").status_code == 200
        assert metric(metrics(guarded), "offload_upstream_breaker_trips_total") == 0
        assert httpx.get(guarded.admin_url + "/readyz").status_code == 200

    def test_the_apps_own_5xx_count_only_when_asked(
        self, faulty_app: FaultyApp, start_offload: Callable[..., Offload]
    ) -> None:
        upstream = ["--upstream", f"127.0.0.1:{faulty_app.port}", "--breaker-failures", "2"]
        lenient = start_offload(*upstream)
        strict = start_offload(*upstream, "--breaker-on-5xx")
        for server in (lenient, strict):
            for _ in range(2):
                assert get(server, "/server-error").status_code == 500
        assert get(lenient, "/ok").status_code == 200
        assert get(strict, "/ok").status_code == 503

    def test_zero_failures_means_no_breaker(
        self, faulty_app: FaultyApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload(
            "--upstream", f"127.0.0.1:{faulty_app.port}", "--breaker-failures", "0"
        )
        trip(server, times=8)
        assert get(server, "/ok").status_code == 200

    def test_websocket_upgrades_are_refused_while_it_is_open(self, guarded: Offload) -> None:
        trip(guarded)
        response = httpx.get(guarded.url + "/socket", headers=UPGRADE)
        assert response.status_code == 503
        assert "retry-after" in response.headers
        counted = {"route": "websocket", "method": "GET", "code": "503"}  # not 499
        assert metric(metrics(guarded), "offload_http_requests_total", **counted) == 1


class TestConcurrencyCap:
    def test_excess_requests_get_503_and_never_reach_the_app(
        self, faulty_app: FaultyApp, start_offload: Callable[..., Offload]
    ) -> None:
        """Cap 2: two at the app, two in line (they give up after --connect-timeout, before a
        slot frees), the other two refused at once."""
        server = start_offload(
            *["--upstream", f"127.0.0.1:{faulty_app.port}", "--upstream-max-concurrency", "2"],
            *["--connect-timeout", "0.5"],
        )

        async def burst() -> list[tuple[int, str | None]]:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                responses = await asyncio.gather(
                    *(client.get("/slow?seconds=1.5") for _ in range(6))
                )
            return [(r.status_code, r.headers.get("retry-after")) for r in responses]

        answers = sorted(asyncio.run(burst()), key=lambda answer: answer[0])
        assert answers == [(200, None)] * 2 + [(503, "1")] * 4
        assert sum(seen.path == "/slow" for seen in faulty_app.seen) == 2
        text = metrics(server)
        assert metric(text, "offload_upstream_rejected_total", reason="concurrency") == 4
        assert metric(text, "offload_upstream_queued") == 0

    def test_requests_in_line_are_served_when_a_slot_frees(
        self, faulty_app: FaultyApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload(
            *["--upstream", f"127.0.0.1:{faulty_app.port}", "--upstream-max-concurrency", "2"],
            *["--connect-timeout", "5"],
        )

        async def burst() -> tuple[list[int], float]:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                started = time.perf_counter()
                responses = await asyncio.gather(
                    *(client.get("/slow?seconds=0.5") for _ in range(4))
                )
            return [r.status_code for r in responses], time.perf_counter() - started

        statuses, seconds = asyncio.run(burst())
        assert statuses == [200] * 4
        assert seconds >= 1.0  # two rounds of two: never more than two at the app


class TestUnits:
    def test_breaker_states(self) -> None:
        breaker = Breaker(failures=2, cooldown_seconds=0.05)
        early = breaker.admit()  # let in while closed, ends after the breaker opened
        for _ in range(2):
            breaker.settle(breaker.admit(), failed=True)
        assert breaker.is_open
        assert breaker.admit() is Admission.REFUSED
        time.sleep(0.06)
        probe = breaker.admit()
        assert probe is Admission.PROBE
        assert breaker.admit() is Admission.REFUSED  # only one probe
        breaker.settle(early, failed=None)  # not the probe: the probe still holds its place
        assert breaker.admit() is Admission.REFUSED
        breaker.settle(probe, failed=None)  # its client left: the next request may probe
        probe = breaker.admit()
        assert probe is Admission.PROBE
        breaker.settle(probe, failed=True)  # opens again, for a whole cooldown
        assert breaker.admit() is Admission.REFUSED
        assert breaker.trips == 2
        time.sleep(0.06)
        breaker.settle(breaker.admit(), failed=False)
        assert not breaker.is_open
        assert breaker.admit() is Admission.PASSED

    def test_a_probe_held_up_does_not_hold_the_breaker_for_more_than_a_cooldown(self) -> None:
        breaker = Breaker(failures=1, cooldown_seconds=0.05)
        breaker.settle(breaker.admit(), failed=True)
        time.sleep(0.06)
        slow_probe = breaker.admit()  # a slow upload, say, still going
        assert slow_probe is Admission.PROBE
        assert breaker.admit() is Admission.REFUSED
        time.sleep(0.06)
        assert breaker.admit() is Admission.PROBE  # another may try
        breaker.settle(slow_probe, failed=False)
        assert not breaker.is_open

    def test_a_probe_that_leaves_while_waiting_for_a_slot_frees_its_place(self) -> None:
        """The probe waits in the cap's line and its client goes: the breaker must not stay
        half-open, refusing every request, for want of the probe's outcome."""

        async def scenario() -> None:
            settings = ProxySettings(
                breaker_failures=1, breaker_cooldown_seconds=0.3, max_concurrency=1
            )
            proxy = HttpProxy(Upstream.parse(f"127.0.0.1:{free_port()}"), settings)
            assert proxy.breaker is not None
            assert proxy.cap is not None
            proxy.breaker.settle(proxy.breaker.admit(), failed=True)  # open
            assert await proxy.cap.acquire()  # the one slot, taken
            await asyncio.sleep(0.31)  # the cooldown is over

            async def receive() -> dict[str, object]:
                await asyncio.Event().wait()  # the client says nothing more
                return {}

            async def send(message: object) -> None:
                pass

            scope = {"type": "http", "method": "GET", "path": "/", "raw_path": b"/"}
            scope |= {"query_string": b"", "headers": [], "client": ("127.0.0.1", 1)}
            probe = asyncio.create_task(proxy(scope, receive, send))
            await asyncio.sleep(0.05)
            assert proxy.cap.waiting == 1  # the probe, in line
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            assert proxy.breaker.admits_a_probe()  # at once, not a cooldown later

        asyncio.run(scenario())

    def test_cap_hands_a_freed_slot_to_the_first_in_line(self) -> None:
        async def scenario() -> None:
            cap = ConcurrencyCap(limit=1, wait_seconds=1)
            assert await cap.acquire()
            waiting = asyncio.create_task(cap.acquire())
            await asyncio.sleep(0)
            assert cap.waiting == 1
            assert not await cap.acquire()  # the line, as long as the cap, is full
            cap.release()
            assert await waiting
            assert cap.active == 1
            cap.release()
            assert cap.active == 0

        asyncio.run(scenario())

    def test_a_cancelled_wait_leaves_the_line(self) -> None:
        async def scenario() -> None:
            cap = ConcurrencyCap(limit=2, wait_seconds=1)
            assert await cap.acquire()
            assert await cap.acquire()
            cancelled = asyncio.create_task(cap.acquire())
            waiting = asyncio.create_task(cap.acquire())
            await asyncio.sleep(0)
            cancelled.cancel()
            await asyncio.sleep(0)
            assert cap.waiting == 1
            cap.release()
            assert await waiting  # the slot skipped the cancelled wait
            assert cap.active == 2
            assert cap.waiting == 0

        asyncio.run(scenario())

    def test_cap_wait_is_bounded(self) -> None:
        async def scenario() -> None:
            cap = ConcurrencyCap(limit=1, wait_seconds=0.05)
            assert await cap.acquire()
            assert not await cap.acquire()
            assert cap.waiting == 0

        asyncio.run(scenario())


def test_a_refused_app_under_the_watchdog_is_503(start_offload: Callable[..., Offload]) -> None:
    """With -- COMMAND and a restart policy, a refused connection means the app is between
    lives: 503 and Retry-After, not 502; and it does not trip the breaker."""
    server = start_offload(
        *["--upstream", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.2"],
        *["--breaker-failures", "1", "--app-restart", "always"],
        *["--", "sleep", "60"],
    )
    for _ in range(2):
        response = get(server, "/api")
        assert (response.status_code, response.headers.get("retry-after")) == (503, "1")
        assert "restarting" in response.text
    assert httpx.get(server.url + "/socket", headers=UPGRADE).status_code == 503
    assert metric(metrics(server), "offload_upstream_breaker_trips_total") == 0
