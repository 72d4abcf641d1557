"""The supervised app's vital signs on ``/metrics``: whether it runs, its restarts and last exit
status from the watchdog, and its CPU time, memory and open files from ``/proc``, read when
scraped (nothing polls in between)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from offload.supervise import Supervisor

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcessUsage:
    cpu_seconds: float  # user + system, of the process itself (not of children it waited for)
    resident_bytes: int
    open_fds: int


def read_usage(pid: int) -> ProcessUsage | None:
    """What a process uses now, from ``/proc/PID`` (proc(5)), or ``None`` when it is gone."""
    base = f"/proc/{pid}"
    try:
        with open(f"{base}/stat") as stat, open(f"{base}/statm") as statm:
            stat_text, statm_text = stat.read(), statm.read()
        open_fds = len(os.listdir(f"{base}/fd"))
    except OSError:
        return None
    # Field 2, the command name, may hold spaces and parentheses: count from the last ")",
    # where field 3 is. utime and stime are fields 14 and 15, in clock ticks.
    fields = stat_text.rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    resident_pages = int(statm_text.split()[1])
    return ProcessUsage(
        cpu_seconds=ticks / CLOCK_TICKS_PER_SECOND,
        resident_bytes=resident_pages * PAGE_BYTES,
        open_fds=open_fds,
    )


class AppVitals:
    """A prometheus-client collector: ``offload_app_*``, for the app ``supervisor`` runs."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        supervisor = self.supervisor
        running = supervisor.is_running()
        yield GaugeMetricFamily(
            "offload_app_up", "1 while the app's process runs", value=1 if running else 0
        )
        yield CounterMetricFamily(
            "offload_app_restarts", "Times offload restarted the app", value=supervisor.restarts
        )
        if supervisor.last_exit_code is not None:
            yield GaugeMetricFamily(
                "offload_app_last_exit_code",
                "The app's exit status when it last exited; -N when signal N killed it",
                value=supervisor.last_exit_code,
            )
        process = supervisor.process
        usage = read_usage(process.pid) if running and process is not None else None
        if usage is None:
            return
        yield CounterMetricFamily(
            "offload_app_cpu_seconds",
            "CPU time of the app's process, user and system (not of its children)",
            value=usage.cpu_seconds,
        )
        yield GaugeMetricFamily(
            "offload_app_resident_memory_bytes",
            "Resident memory of the app's process",
            value=usage.resident_bytes,
        )
        yield GaugeMetricFamily(
            "offload_app_open_fds",
            "Open file descriptors of the app's process",
            value=usage.open_fds,
        )
