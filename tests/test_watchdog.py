"""The watchdog of ``offload ... -- COMMAND``: --app-restart and its backoff, the app's lifecycle
in the log, --app-log json, readiness while the app is away, --app-ready-path, and the app's
vital signs on /metrics. The app is tests/upstream/watched_app.py, a real child process."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from offload.supervise import Backoff, describe_exit
from tests.servers import (
    FIXTURES,
    ROOT,
    Offload,
    children_of,
    free_port,
    metric,
    poll,
    run_offload,
    wait_until,
)
from tests.test_workers import workers_of

WATCHED_APP = ROOT / "tests" / "upstream" / "watched_app.py"
GREETING = re.compile(r"watched app (\d+) started at ([\d.]+)")
MiB = 1024 * 1024


def watched(port: int, *flags: str) -> tuple[str, ...]:
    """offload's arguments: the watched app on ``port`` as its child, the static fixtures."""
    upstream = ("--upstream", f"127.0.0.1:{port}", "--static", str(FIXTURES))
    return (*upstream, *flags, "--", sys.executable, str(WATCHED_APP))


def json_lines(server: Offload) -> list[dict[str, object]]:
    found = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:  # a line still being written
                continue
    return found


def app_events(server: Offload) -> list[dict[str, object]]:
    """offload's log lines about the app: started, exited, restarting."""
    return [line for line in json_lines(server) if line.get("logger") == "offload.app"]


def greetings(server: Offload) -> list[tuple[int, float]]:
    """(pid, start time) of every watched app started so far, as each said so on its stdout."""
    return [(int(pid), float(at)) for pid, at in GREETING.findall(server.output())]


def started_app(server: Offload, count: int = 1) -> int:
    """The pid of the ``count``-th app, once it has said it started."""
    assert wait_until(lambda: len(greetings(server)) >= count), server.output()
    return greetings(server)[count - 1][0]


def readiness(server: Offload, status: int) -> httpx.Response:
    return poll(f"{server.admin_url}/readyz", lambda response: response.status_code == status)


@pytest.mark.parametrize(
    ("policy", "ending", "restarts"),
    [
        ("never", "exit 0", False),
        ("never", "exit 1", False),
        ("never", "SIGKILL", False),
        ("on-failure", "exit 0", False),
        ("on-failure", "exit 1", True),
        ("on-failure", "SIGKILL", True),
        ("always", "exit 0", True),
        ("always", "exit 1", True),
        ("always", "SIGKILL", True),
    ],
)
def test_restart_policy_decides_what_follows_the_apps_exit(
    policy: str, ending: str, restarts: bool
) -> None:
    port = free_port()
    code = "1" if ending == "exit 1" else "0"
    environment = {"PORT": str(port), "EXIT_CODE": code}
    with run_offload(*watched(port, "--app-restart", policy), env=environment) as server:
        first = started_app(server)
        assert f"watched app {first} started" in server.output()  # raw: passed on unchanged
        os.kill(first, signal.SIGKILL if ending == "SIGKILL" else signal.SIGUSR1)
        if restarts:
            second = started_app(server, 2)
            assert server.process.poll() is None
            assert children_of(server.process.pid) == [second] != [first]
        else:
            expected = {"exit 0": 0, "exit 1": 1, "SIGKILL": 128 + signal.SIGKILL}[ending]
            assert server.process.wait(timeout=15) == expected
        events = app_events(server)
    assert events[0]["message"] == "the app started"
    assert events[0]["pid"] == first
    exited = {key: events[1].get(key) for key in ("pid", "exit_code", "signal")}
    if ending == "SIGKILL":
        assert exited == {"pid": first, "exit_code": None, "signal": "SIGKILL"}
    else:
        assert exited == {"pid": first, "exit_code": int(code), "signal": None}
    if restarts:
        assert (events[2]["attempt"], events[2]["backoff_seconds"]) == (1, 0.5)
        assert (events[3]["message"], events[3]["pid"]) == ("the app started", second)
    else:
        assert len(events) == 2


def test_restarts_wait_half_a_second_then_twice_as_long_each_time() -> None:
    port = free_port()
    environment = {"PORT": str(port), "EXIT_CODE": "1", "EXIT_AT_ONCE": "1"}
    with run_offload(*watched(port, "--app-restart", "on-failure"), env=environment) as server:
        started_app(server, 3)
        first, second, third = (at for _, at in greetings(server)[:3])
        restarts = [event for event in app_events(server) if "attempt" in event]
    # each app says when it started: the gaps hold the waits, and no more than a little else
    assert 0.5 <= second - first < 0.5 + 2
    assert 1.0 <= third - second < 1.0 + 2
    assert [(event["attempt"], event["backoff_seconds"]) for event in restarts[:2]] == [
        (1, 0.5),
        (2, 1.0),
    ]


def test_sigterm_during_a_backoff_stops_offload_at_once_and_starts_no_app() -> None:
    port = free_port()
    environment = {"PORT": str(port), "EXIT_CODE": "1", "EXIT_AT_ONCE": "1"}
    with run_offload(*watched(port, "--app-restart", "always"), env=environment) as server:
        assert wait_until(lambda: any(event.get("attempt") == 3 for event in app_events(server)))
        server.process.send_signal(signal.SIGTERM)  # 2 s before the fourth app would start
        signalled = time.monotonic()
        assert server.process.wait(timeout=5) == 0
        assert time.monotonic() - signalled < 1.5  # the wait was called off
        started = [event for event in app_events(server) if event["message"] == "the app started"]
        assert len(started) == len(greetings(server)) == 3


def test_backoff_doubles_up_to_30_seconds_and_starts_over_after_10_steady_seconds() -> None:
    backoff = Backoff()
    waits = [backoff.next_seconds(uptime_seconds=1) for _ in range(9)]
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.next_seconds(uptime_seconds=10) == 0.5
    assert backoff.next_seconds(uptime_seconds=9.9) == 1


@pytest.mark.parametrize(
    ("status", "fields"),
    [(0, {"exit_code": 0}), (3, {"exit_code": 3}), (-9, {"signal": "SIGKILL"})],
)
def test_an_exit_is_logged_with_its_code_or_its_signal(
    status: int, fields: dict[str, object]
) -> None:
    assert describe_exit(status)[1] == fields


def test_app_log_json_wraps_each_line_of_both_streams() -> None:
    port = free_port()
    environment = {"PORT": str(port), "EXIT_CODE": "0", "LAST_WORDS": "last words"}
    with run_offload(*watched(port, "--app-log", "json"), env=environment) as server:
        pid = started_app(server)
        assert wait_until(lambda: "not utf-8" in server.output())
        os.kill(pid, signal.SIGUSR1)  # "last words", without a newline, then exit 0
        assert server.process.wait(timeout=15) == 0
        output = server.output()
        lines = [line for line in json_lines(server) if line.get("source") == "app"]
        exited = app_events(server)[-1]
    assert not [line for line in output.splitlines() if not line.startswith("{")]
    assert all(len(line.encode()) <= 4096 for line in output.splitlines())
    assert all(set(line) == {"ts", "source", "stream", "message"} for line in lines)
    stdout = [line["message"] for line in lines if line["stream"] == "stdout"]
    stderr = [line["message"] for line in lines if line["stream"] == "stderr"]
    assert stderr == ["not utf-8: \ufffd\ufffd"]
    assert str(stdout[0]).startswith(f"watched app {pid} started")
    long_line = stdout[1:-1]  # 10,000 characters: more than one atomic write, so in pieces
    assert len(long_line) > 1
    assert "".join(map(str, long_line)) == "x" * 10_000
    assert stdout[-1] == "last words"  # the partial last line, passed on at exit
    assert (exited["message"], exited["exit_code"]) == ("the app exited with status 0", 0)


def test_readiness_fails_while_the_app_restarts_and_static_files_go_on() -> None:
    port = free_port()
    with run_offload(*watched(port, "--app-restart", "always"), env={"PORT": str(port)}) as server:
        assert readiness(server, 200).status_code == 200
        os.kill(started_app(server), signal.SIGKILL)
        down = readiness(server, 503)
        assert "the app is restarting" in down.text
        assert httpx.get(f"{server.url}/style.css").status_code == 200
        assert readiness(server, 200).status_code == 200
        assert httpx.get(f"{server.url}/api/anything").text == "ok"
        text = httpx.get(f"{server.admin_url}/metrics").text
    assert metric(text, "offload_app_up") == 1
    assert metric(text, "offload_app_restarts_total") == 1
    assert metric(text, "offload_app_last_exit_code") == -signal.SIGKILL


def test_app_ready_path_needs_a_2xx_from_the_apps_own_endpoint() -> None:
    port = free_port()
    flags = ("--app-ready-path", "/health")
    with run_offload(*watched(port, *flags), env={"PORT": str(port)}) as server:
        assert readiness(server, 200).status_code == 200
        assert httpx.put(f"{server.url}/health?status=503").status_code == 200  # via offload
        down = readiness(server, 503)
        assert "the app's /health answered 503" in down.text
        httpx.put(f"{server.url}/health?status=204")
        assert readiness(server, 200).status_code == 200


def test_the_apps_vital_signs_follow_what_it_uses() -> None:
    port = free_port()
    with run_offload(*watched(port), env={"PORT": str(port)}) as server:
        pid = started_app(server)
        before = httpx.get(f"{server.admin_url}/metrics").text
        assert httpx.post(f"{server.url}/grow").text == "grown"  # 64 MiB more, written
        after = httpx.get(f"{server.admin_url}/metrics").text
        resident = _resident_bytes(pid)
    assert metric(before, "offload_app_up") == 1
    assert metric(before, "offload_app_restarts_total") == 0
    assert "offload_app_last_exit_code" not in before  # it has not exited yet
    assert metric(before, "offload_app_cpu_seconds_total") > 0
    assert metric(before, "offload_app_open_fds") >= 4  # stdin, stdout, stderr, its socket
    grown = metric(after, "offload_app_resident_memory_bytes")
    assert grown - metric(before, "offload_app_resident_memory_bytes") >= 60 * MiB
    assert abs(grown - resident) < 8 * MiB  # what /proc/PID/status says too
    assert metric(after, "process_resident_memory_bytes") > 10 * MiB  # offload's own


def test_with_workers_the_primary_watches_the_app_and_sums_offloads_processes() -> None:
    port = free_port()
    flags = ("--workers", "2", "--app-ready-path", "/health")
    with run_offload(*watched(port, *flags), env={"PORT": str(port)}) as server:
        assert readiness(server, 200).status_code == 200
        text = httpx.get(f"{server.admin_url}/metrics").text
        primary = server.process.pid
        resident = sum(map(_resident_bytes, [primary, *workers_of(primary)]))
        httpx.put(f"{server.url}/health?status=500")
        down = readiness(server, 503)
    assert text.count("# TYPE offload_app_up gauge") == 1
    assert metric(text, "offload_app_up") == 1
    # three processes of offload: their memory adds up
    assert 0.8 * resident < metric(text, "process_resident_memory_bytes") < 1.25 * resident
    assert "the app's /health answered 500" in down.text


def _resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024
