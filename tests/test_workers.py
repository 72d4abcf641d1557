"""--workers N: N processes on the public port, one admin listener whose answers cover them all."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from offload.workers import sum_metrics
from tests.servers import FIXTURES, NodeApp, Offload, metric, poll, run_offload

WORKER_MARK = "spawn_main"  # in the command line of every process multiprocessing spawns


def workers_of(primary: int) -> list[int]:
    children = Path(f"/proc/{primary}/task/{primary}/children").read_text().split()
    return [pid for pid in map(int, children) if WORKER_MARK in _command_line(pid)]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def two_workers(node_app: NodeApp, start_offload: Callable[..., Offload]) -> Offload:
    server = start_offload("--upstream", node_app.address, "--static", FIXTURES, "--workers", "2")
    poll(f"{server.admin_url}/readyz", lambda response: response.status_code == 200)
    return server


def test_two_workers_serve_and_the_admin_port_sums_their_metrics(
    two_workers: Offload, offload: Offload
) -> None:
    assert len(workers_of(two_workers.process.pid)) == 2
    for _ in range(20):  # a connection each, so both workers take some
        for target in ("/style.css", "/api/small-json"):
            response = httpx.get(two_workers.url + target, headers={"connection": "close"})
            assert response.status_code == 200
    text = httpx.get(f"{two_workers.admin_url}/metrics").text
    requests = "offload_http_requests_total"
    assert metric(text, requests, code="200", method="GET", route="static") == 20
    assert metric(text, requests, code="200", method="GET", route="proxy") == 20
    count = "offload_http_request_duration_seconds_count"
    assert metric(text, count, method="GET", route="static") == 20
    assert metric(text, "offload_http_requests_in_flight") == 0
    # the same in every worker: reported once, not summed
    single = httpx.get(f"{offload.admin_url}/metrics").text
    assert metric(text, "offload_static_assets") == metric(single, "offload_static_assets") > 0
    assert metric(text, "offload_upstream_up") == 1
    assert 'offload_build_info{version="' in text


def test_drain_covers_every_worker(two_workers: Offload) -> None:
    assert httpx.get(f"{two_workers.admin_url}/readyz").status_code == 200
    drained = httpx.post(f"{two_workers.admin_url}/drain")
    assert drained.json() == {"draining": True, "in_flight": 0}
    readiness = httpx.get(f"{two_workers.admin_url}/readyz")
    assert readiness.status_code == 503
    assert "draining" in readiness.text
    for _ in range(6):  # whichever worker answers, it asks the client to go
        response = httpx.get(two_workers.url + "/style.css", headers={"connection": "close"})
        assert response.headers["connection"] == "close"
    waited = httpx.get(f"{two_workers.admin_url}/drain?wait=2")
    assert (waited.status_code, waited.json()) == (200, {"draining": True, "in_flight": 0})


def test_delete_drain_undoes_the_drain_in_every_worker(two_workers: Offload) -> None:
    assert httpx.post(f"{two_workers.admin_url}/drain").status_code == 200
    undone = httpx.delete(f"{two_workers.admin_url}/drain")
    assert (undone.status_code, undone.json()) == (200, {"draining": False, "in_flight": 0})
    assert httpx.get(f"{two_workers.admin_url}/readyz").status_code == 200
    for _ in range(6):  # a connection each: whichever worker answers, it lets the client stay
        assert "connection" not in httpx.get(two_workers.url + "/style.css").headers


def test_a_worker_that_dies_is_replaced(two_workers: Offload) -> None:
    primary = two_workers.process.pid
    first, second = workers_of(primary)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = workers_of(primary)
        if len(now) == 2 and first not in now:
            break
        time.sleep(0.1)
    assert first not in now
    assert second in now
    assert len(now) == 2, now
    poll(f"{two_workers.admin_url}/readyz", lambda response: response.status_code == 200)
    for _ in range(6):
        response = httpx.get(two_workers.url + "/style.css", headers={"connection": "close"})
        assert response.status_code == 200
    assert "worker 0 exited" in two_workers.output() or "worker 1 exited" in two_workers.output()


def test_a_worker_that_keeps_dying_is_replaced_later_each_time(two_workers: Offload) -> None:
    """Killed twice within 10 s of starting: replaced after 0.5 s, then after 1 s."""
    primary = two_workers.process.pid
    victim = min(workers_of(primary))
    replaced_after = []
    for _ in range(2):
        others = set(workers_of(primary)) - {victim}
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() < killed + 15 and not set(workers_of(primary)) - others - {victim}:
            time.sleep(0.05)
        replaced_after.append(time.monotonic() - killed)
        (victim,) = set(workers_of(primary)) - others  # its replacement, killed next
    output = two_workers.output()
    assert "starting another in 0.5 s" in output
    assert "starting another in 1.0 s" in output
    assert replaced_after[0] >= 0.5
    assert replaced_after[1] >= 1.0, replaced_after


def test_sigterm_stops_every_worker_and_exits_0(two_workers: Offload) -> None:
    pids = workers_of(two_workers.process.pid)
    two_workers.process.send_signal(signal.SIGTERM)
    assert two_workers.process.wait(timeout=20) == 0
    assert not [pid for pid in pids if WORKER_MARK in _command_line(pid)]


def test_workers_do_not_outlive_a_killed_primary(node_app: NodeApp) -> None:
    with run_offload("--upstream", node_app.address, "--workers", "2") as server:
        poll(f"{server.admin_url}/readyz", lambda response: response.status_code == 200)
        pids = workers_of(server.process.pid)
        assert len(pids) == 2
        server.process.kill()
        server.process.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(WORKER_MARK in _command_line(p) for p in pids):
            time.sleep(0.1)
        assert not [pid for pid in pids if WORKER_MARK in _command_line(pid)]


def test_sum_metrics_adds_counters_and_in_flight_and_keeps_other_gauges_once() -> None:
    worker = """\
# HELP offload_http_requests_total Requests answered
# TYPE offload_http_requests_total counter
offload_http_requests_total{{code="200",method="GET",route="static"}} {requests}
# HELP offload_http_requests_created Requests answered
# TYPE offload_http_requests_created gauge
offload_http_requests_created{{code="200",method="GET",route="static"}} {created}
# HELP offload_http_requests_in_flight Requests being answered
# TYPE offload_http_requests_in_flight gauge
offload_http_requests_in_flight {in_flight}
# HELP offload_static_assets Paths in the static catalog
# TYPE offload_static_assets gauge
offload_static_assets 16.0
"""
    text = sum_metrics(
        [
            worker.format(requests=3.0, created=200.0, in_flight=1.0),
            worker.format(requests=4.0, created=100.0, in_flight=2.0),
        ]
    ).decode()
    labels = {"code": "200", "method": "GET", "route": "static"}
    assert metric(text, "offload_http_requests_total", **labels) == 7
    assert metric(text, "offload_http_requests_created", **labels) == 100
    assert metric(text, "offload_http_requests_in_flight") == 3
    assert metric(text, "offload_static_assets") == 16
    assert "# TYPE offload_http_requests_total counter" in text
