"""The static suite: offload against nginx, Starlette ``StaticFiles``, ServeStatic and a raw
in-memory ASGI app (the ceiling of any Python server on uvicorn), over the same generated files,
each with one worker pinned to core 0 and wrk on core 1."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import nginx
from bench.fixtures import write_fixtures
from bench.options import Options
from bench.report import header_line, wrk_table
from bench.servers import HERE, UVICORN, Server, free_port, pinned, running
from bench.wrk import Case, Run, at_connections, measure

CASES = (
    Case("1 KB CSS", "/small.css"),
    Case("50 KB JS, br", "/app.js", accept_encoding="br"),
    Case("5 MB binary", "/big.bin"),
    Case("304 revalidation", "/small.css", revalidate=True),
)
RATIO_COLUMNS = ("nginx", "ceiling", "starlette", "servestatic")


def offload_command(root: Path, port: int, admin_port: int, *flags: str) -> list[str]:
    return [
        *[sys.executable, "-m", "offload", "--static", str(root), "--host", "127.0.0.1"],
        "--access-log=off",  # as nginx's access_log off: like for like
        *["--port", str(port), "--admin-port", str(admin_port), *flags],
    ]


def uvicorn_server(name: str, factory: str, root: Path) -> Server:
    """A Python peer from bench/apps.py under uvicorn, serving `root`."""
    port = free_port()
    command = [*pinned(0), *UVICORN, "--port", str(port), "--factory", f"bench.apps:{factory}"]
    environment = {"BENCH_ROOT": str(root), "PYTHONPATH": str(HERE.parent)}
    return Server(name, command, port, environment)


def create_servers(root: Path, workdir: Path) -> list[Server]:
    pin = pinned(0)
    offload_port, nginx_port = free_port(), free_port()
    servers = [
        Server("offload", [*pin, *offload_command(root, offload_port, free_port())], offload_port),
        Server(
            "nginx",
            [*pin, *nginx.command(nginx.static_config(root, nginx_port, workdir))],
            nginx_port,
        ),
        uvicorn_server("starlette", "create_starlette_static", root),
        uvicorn_server("servestatic", "create_servestatic", root),
        uvicorn_server("ceiling", "create_ceiling", root),
    ]
    return [server for server in servers if server.name != "nginx" or shutil.which("nginx")]


def static_suite(options: Options) -> str:
    cases = tuple(case for base in CASES for case in at_connections(base, options.connections))
    run = Run(cases=cases, ratio_columns=RATIO_COLUMNS)
    with tempfile.TemporaryDirectory(prefix="offload-bench-static-") as temporary:
        root, workdir = Path(temporary, "root"), Path(temporary, "work")
        root.mkdir()
        workdir.mkdir()
        os.chmod(temporary, 0o755)  # nginx's workers run as another user when started as root
        write_fixtures(root)
        with running(create_servers(root, workdir), workdir) as servers:
            time.sleep(options.settle_seconds)  # offload's background variants: let them finish
            measure(servers, run, seconds=options.seconds, rounds=options.rounds, workdir=workdir)
    description = "wrk -t1, connections as named; median of rounds; peak RSS per case."
    return "\n".join(["## Static files", "", header_line(description), "", wrk_table(run)])
