"""The start-up case: how long each static server takes from spawn to serving a tree of 10,000
small files, and how much memory it holds then. Each server is started once a round, pinned to
core 0, in alternation; the tree is generated, the same every run."""

from __future__ import annotations

import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import nginx
from bench.fixtures import write_tree
from bench.options import Options
from bench.report import header_line, number, table
from bench.servers import Server, free_port, pinned, rss_mb, start, stop, wait_for_port
from bench.static import offload_command, uvicorn_server

POLL_SECONDS = 0.005
START_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class StartupSample:
    ready_ms: float  # offload: spawn to /readyz 200 on its admin port; others have none
    first_file_ms: float  # spawn to a file answering 200
    started_rss_mb: float  # once ready (offload) or listening, before any request
    after_request_rss_mb: float  # after that first 200


def contenders(root: Path, workdir: Path) -> list[tuple[Server, int | None]]:
    """Each server with a fresh port, and offload's admin port for /readyz."""
    pin = pinned(0)
    started: list[tuple[Server, int | None]] = []
    for name, flags in (
        ("offload", ()),
        ("offload --no-compress-static", ("--no-compress-static",)),
    ):
        port, admin_port = free_port(), free_port()
        command = [*pin, *offload_command(root, port, admin_port, *flags)]
        started.append((Server(name, command, port), admin_port))
    nginx_port = free_port()
    config = nginx.static_config(root, nginx_port, workdir, name="nginx-tree")
    started.append((Server("nginx", [*pin, *nginx.command(config)], nginx_port), None))
    started.append((uvicorn_server("starlette", "create_starlette_static", root), None))
    started.append((uvicorn_server("servestatic", "create_servestatic", root), None))
    return started


def milliseconds_until_ok(url: str, spawned: float) -> float:
    """Polls `url` every 5 ms until it answers 200; milliseconds since `spawned`."""
    deadline = spawned + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, headers={"accept-encoding": "identity"}, timeout=5)
            if response.status_code == 200:
                return (time.monotonic() - spawned) * 1000
        except httpx.TransportError:
            pass
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{url} did not answer 200 within {START_TIMEOUT_SECONDS} s")


def measure_startup(
    server: Server, admin_port: int | None, path: str, workdir: Path
) -> StartupSample:
    spawned = time.monotonic()
    server.process = start(server, workdir)
    try:
        ready_ms = math.nan
        if admin_port is not None:
            ready_ms = milliseconds_until_ok(f"http://127.0.0.1:{admin_port}/readyz", spawned)
        wait_for_port(server.port, server.name, START_TIMEOUT_SECONDS)
        started_rss = rss_mb(server)
        first_file_ms = milliseconds_until_ok(f"http://127.0.0.1:{server.port}{path}", spawned)
        return StartupSample(ready_ms, first_file_ms, started_rss, rss_mb(server))
    finally:
        stop(server.process)


def startup_suite(options: Options) -> str:
    samples: dict[str, list[StartupSample]] = {}
    with tempfile.TemporaryDirectory(prefix="offload-bench-startup-") as temporary:
        root, workdir = Path(temporary, "tree"), Path(temporary, "work")
        root.mkdir()
        workdir.mkdir()
        os.chmod(temporary, 0o755)  # nginx's workers run as another user when started as root
        path = write_tree(root, options.tree_files)
        for _ in range(options.rounds):
            for server, admin_port in contenders(root, workdir):
                sample = measure_startup(server, admin_port, path, workdir)
                samples.setdefault(server.name, []).append(sample)
                line = f"start-up {server.name:30} {sample.first_file_ms:8.0f} ms"
                print(line, file=sys.stderr, flush=True)
    return report(samples, options.tree_files)


def median_of(runs: list[StartupSample], field: str) -> str:
    return number(statistics.median(getattr(run, field) for run in runs))


def report(samples: dict[str, list[StartupSample]], files: int) -> str:
    fields = ("ready_ms", "first_file_ms", "started_rss_mb", "after_request_rss_mb")
    header = ["server", "/readyz ms", "first file ms", "RSS started MB", "RSS after 1 request MB"]
    rows = [[name, *(median_of(runs, field) for field in fields)] for name, runs in samples.items()]
    description = f"a tree of {files:,} files in {max(1, files // 100)} directories; "
    description += "milliseconds from spawn; median of rounds."
    lines = ["## Start-up", "", header_line(description), ""]
    return "\n".join([*lines, *table(header, rows)])
