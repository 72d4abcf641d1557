"""The process: both listeners up, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal

from tests.servers import FIXTURES, run_offload


def test_sigterm_stops_both_listeners_with_status_0() -> None:
    with run_offload("--static", FIXTURES) as server:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        assert "Traceback" not in server.output()
