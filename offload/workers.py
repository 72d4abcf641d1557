"""``--workers N``: N processes serve the public port; one admin listener speaks for them all.

The primary process binds both ports, starts the workers and serves the admin API. Each worker
serves the public socket it inherits (the kernel hands each connection to one of them) and its
own admin API on a Unix socket in a private directory. The primary's admin API asks every
worker: ready when all are, ``POST /drain`` drains all and ``DELETE /drain`` undoes it in all,
``GET /drain?wait`` waits for all, ``/metrics`` is their sum. A worker that dies is replaced;
SIGTERM drains them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from multiprocessing.process import BaseProcess
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from offload.config import Config
from offload.supervise import Backoff

logger = logging.getLogger("offload")
ASK_TIMEOUT_SECONDS = 2.0
WATCH_SECONDS = 0.5
PR_SET_PDEATHSIG = 1
# Gauges whose sum over workers means something; every other gauge is the same in each worker
# (the catalog's size, the app's port being open, the version) and is reported once, as the max.
SUMMED_GAUGES = frozenset({"offload_http_requests_in_flight", "offload_upstream_queued"})

# offload's processes (the primary and every worker) report prometheus-client's process_*
# metrics: memory adds up (CPU time is a counter, added anyway); the start time, the open
# descriptors and their limit are each the largest (the newest process, the fullest table).
SUMMED_PROCESS_GAUGES = frozenset({"process_resident_memory_bytes", "process_virtual_memory_bytes"})


class Workers:
    """The worker processes, and the admin API's view of them (an ``admin.Subject``)."""

    def __init__(self, config: Config, public: socket.socket) -> None:
        self.config = config
        self.public = public
        self.directory = Path(tempfile.mkdtemp(prefix="offload-workers-"))
        self.processes: list[BaseProcess] = []
        self.draining = False
        self.stopping = False
        self._context = multiprocessing.get_context("spawn")  # no forked event loop
        self.own_metrics = CollectorRegistry()  # the primary's process, summed with the workers
        ProcessCollector(registry=self.own_metrics)

    def _admin_socket(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"

    def _start(self, index: int) -> BaseProcess:
        process = self._context.Process(
            target=run_worker,
            args=(self.config, self.public, str(self._admin_socket(index)), os.getpid()),
            name=f"offload-worker-{index}",
        )
        process.start()
        return process

    async def run(self) -> None:
        """Start the workers, replace any that dies, and return once all have stopped. A
        worker that keeps dying is replaced later each time, as the watchdog restarts the app
        (`Backoff`: 0.5 s doubling to 30 s), so a crash loop does not spin the machine."""
        count = self.config.workers
        self.processes = [self._start(index) for index in range(count)]
        started = [time.monotonic()] * count
        backoffs = [Backoff() for _ in range(count)]
        due: list[float | None] = [None] * count  # when a dead worker's replacement starts
        try:
            while not self.stopping:
                await asyncio.sleep(WATCH_SECONDS)
                for index, process in enumerate(self.processes):
                    now = time.monotonic()
                    if process.is_alive() or self.stopping:
                        continue
                    replace_at = due[index]
                    if replace_at is None:
                        seconds = backoffs[index].next_seconds(now - started[index])
                        due[index] = now + seconds
                        logger.error(
                            "worker %d exited with status %s: starting another in %s s",
                            index,
                            process.exitcode,
                            seconds,
                        )
                    elif now >= replace_at:
                        self.processes[index] = self._start(index)
                        started[index], due[index] = now, None
            await self._wait_for_exit()
        finally:
            for process in self.processes:
                if process.is_alive():
                    process.kill()
                    process.join()
            with contextlib.suppress(OSError):
                for path in self.directory.iterdir():
                    path.unlink()
                self.directory.rmdir()

    async def _wait_for_exit(self) -> None:
        # each worker drains for up to --drain-timeout; a second more for its own shutdown
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.drain_timeout_seconds + 5):
                while any(process.is_alive() for process in self.processes):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # (processes, not tasks: nothing to await)

    def begin_shutdown(self) -> None:
        self.draining = self.stopping = True
        for process in self.processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        # The workers hold the listening socket now: the last to stop adopts what is queued.
        self.public.close()

    # The admin API's subject.

    async def not_ready_because(self) -> str | None:
        if self.draining:
            return "draining"
        answers = await self._ask_all("GET", "/readyz")
        for index, answer in enumerate(answers):
            if answer is None:
                return f"worker {index} is not answering"
            status, body = answer
            if status != 200:
                return f"worker {index}: {body.decode(errors='replace').strip()}"
        return None

    async def metrics(self) -> bytes:
        texts = [answer[1].decode() for answer in await self._ask_all("GET", "/metrics") if answer]
        return sum_metrics([*texts, generate_latest(self.own_metrics).decode()])

    async def drain(self) -> None:
        self.draining = True
        await self._ask_all("POST", "/drain")

    async def cancel_drain(self) -> bool:
        if self.stopping:
            return False
        answers = await self._ask_all("DELETE", "/drain")
        if any(answer is not None and answer[0] == 409 for answer in answers):
            return False  # a worker is stopping already: what the others do no longer matters
        self.draining = False
        return True

    async def wait_idle(self, seconds: float) -> tuple[bool, int]:
        answers = await self._ask_all("GET", f"/drain?wait={seconds}", seconds=seconds + 2)
        in_flight = sum(json.loads(answer[1])["in_flight"] for answer in answers if answer)
        return self.draining, in_flight

    async def _ask_all(
        self, method: str, path: str, *, seconds: float = ASK_TIMEOUT_SECONDS
    ) -> list[tuple[int, bytes] | None]:
        return await asyncio.gather(
            *(
                self._ask(self._admin_socket(index), method, path, seconds)
                for index in range(len(self.processes))
            )
        )

    @staticmethod
    async def _ask(where: Path, method: str, path: str, seconds: float) -> tuple[int, bytes] | None:
        """One request to a worker's admin API: (status, body), or None if it cannot answer."""
        try:
            connector = aiohttp.UnixConnector(path=str(where))
            async with aiohttp.ClientSession(connector=connector) as session:
                deadline = aiohttp.ClientTimeout(total=seconds)
                # localhost: a worker takes control requests only for this machine's names
                async with session.request(
                    method, f"http://localhost{path}", timeout=deadline
                ) as response:
                    return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None


def sum_metrics(texts: Iterable[str]) -> bytes:
    """Workers' metrics as one exposition: counters and histograms added, in-flight requests
    added, other gauges the largest, ``_created`` times the earliest."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            samples = values.setdefault(merged.name, {})
            added = family.type in ("counter", "histogram", "summary")
            added = added or family.name in SUMMED_GAUGES or family.name in SUMMED_PROCESS_GAUGES
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in samples:
                    samples[key] = sample.value
                elif sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)
                elif added:
                    samples[key] += sample.value
                else:
                    samples[key] = max(samples[key], sample.value)
    for name, family in families.items():
        family.samples = [
            Sample(sample, dict(labels), value) for (sample, labels), value in values[name].items()
        ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    """A collector that reports metrics already gathered."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def run_worker(config: Config, public: socket.socket, admin_path: str, primary: int) -> None:
    """A worker's main: the edge on the shared public socket, its admin API on a Unix socket."""
    if sys.platform.startswith("linux"):  # the primary killed outright: stop too, gracefully
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != primary:  # it died before the line above could take effect
        sys.exit(1)
    from offload.server import serve_worker  # the server imports this module

    admin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(admin_path)  # a replaced worker's socket
    admin.bind(admin_path)
    sys.exit(serve_worker(config, public, admin))
