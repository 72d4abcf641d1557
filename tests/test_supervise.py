"""Shared fate: ``offload [options] -- COMMAND`` runs the app as its child, and each dies with
the other."""

from __future__ import annotations

import os
import signal

import httpx

from tests.servers import (
    FIXTURES,
    UPSTREAM_APP,
    children_of,
    free_port,
    run_offload,
    start_and_fail,
    wait_until,
)


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = f"/proc/{pid}/status"
    return not (os.path.exists(status) and "State:\tZ" in open(status).read())


def supervised(port: int) -> tuple[str, ...]:
    return ("--upstream", f"127.0.0.1:{port}", "--static", str(FIXTURES), "--")


def test_the_app_runs_as_offloads_child_and_serves() -> None:
    port = free_port()
    with run_offload(*supervised(port), "node", UPSTREAM_APP, env={"PORT": str(port)}) as server:
        assert wait_until(lambda: httpx.get(server.admin_url + "/readyz").status_code == 200)
        assert httpx.get(server.url + "/api/echo").json()["method"] == "GET"
        assert len(children_of(server.process.pid)) == 1


def test_offload_exits_with_the_apps_failure_when_the_app_dies() -> None:
    port = free_port()
    with run_offload(*supervised(port), "node", UPSTREAM_APP, env={"PORT": str(port)}) as server:
        [app] = children_of(server.process.pid)
        os.kill(app, signal.SIGKILL)
        assert server.process.wait(timeout=15) == 128 + signal.SIGKILL


def test_sigterm_reaches_the_app_and_both_stop() -> None:
    port = free_port()
    with run_offload(*supervised(port), "node", UPSTREAM_APP, env={"PORT": str(port)}) as server:
        [app] = children_of(server.process.pid)
        assert wait_until(lambda: httpx.get(server.admin_url + "/readyz").status_code == 200)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        assert wait_until(lambda: not is_running(app))


def test_the_app_does_not_outlive_a_killed_offload() -> None:
    port = free_port()
    with run_offload(*supervised(port), "node", UPSTREAM_APP, env={"PORT": str(port)}) as server:
        [app] = children_of(server.process.pid)
        server.process.kill()
        server.process.wait(timeout=10)
        assert wait_until(lambda: not is_running(app))


def test_a_command_that_cannot_start_stops_start_up_with_one_line() -> None:
    result = start_and_fail("--upstream", "127.0.0.1:1", "--", "no-such-program-here")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.splitlines()[-1]]
    assert "no-such-program-here" in result.stderr


def test_a_command_needs_an_upstream() -> None:
    result = start_and_fail("--static", str(FIXTURES), "--", "node", str(UPSTREAM_APP))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "offload: error: --upstream: -- COMMAND needs --upstream, the app's address"
    )
