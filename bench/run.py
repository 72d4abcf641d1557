"""The static benchmark: offload against nginx, Starlette ``StaticFiles``, ServeStatic and a raw
in-memory ASGI app (the ceiling of any Python server on uvicorn), in one run, with wrk.

Servers run one worker each, pinned to core 0; wrk runs on core 1. Every case is measured in
alternation (A B C A B C …) for several rounds, and the median of the rounds is reported, as
ratios against nginx and against the ceiling measured in the same run. Loopback only; every
wrk run is bounded by ``--seconds``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from offload.static.compress import encode

HERE = Path(__file__).resolve().parent
UVICORN = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools"]
UVICORN += ["--no-access-log", "--log-level", "warning", "--workers", "1"]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    accept_encoding: str | None = None
    connections: int = 64


CASES = (
    Case("1 KB CSS", "/small.css"),
    Case("50 KB JS, br", "/app.js", "br"),
    Case("5 MB binary", "/big.bin"),
)


@dataclass
class Server:
    name: str
    command: list[str]
    port: int
    environment: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


@dataclass
class Sample:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    megabytes_per_second: float = 0.0  # counts responses still in flight when the run ends


def write_fixtures(root: Path) -> None:
    """1 KB CSS; 50 KB JS with .br/.gz next to it; 5 MB of random bytes."""
    words = random.Random(7)
    css = "".join(
        f".c{n} {{ margin: {n % 17}px; color: #{n * 999 % 4096:03x}; }}\n" for n in range(40)
    )
    (root / "small.css").write_bytes(css.encode()[:1024])
    names = [f"{words.choice(['get', 'set', 'load', 'render'])}{n}" for n in range(2000)]
    script = "".join(f"function {name}(a, b) {{ return a + b * {len(name)}; }}\n" for name in names)
    data = script.encode()[: 50 * 1024]
    (root / "app.js").write_bytes(data)
    (root / "app.js.br").write_bytes(encode(data, "br", best=True))
    (root / "app.js.gz").write_bytes(encode(data, "gzip", best=True))
    (root / "big.bin").write_bytes(random.Random(11).randbytes(5 * 1024 * 1024))


def pinned(core: int) -> list[str]:
    """The command prefix that runs a process on one core, when the machine has two or more."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def nginx_config(root: Path, port: int, workdir: Path) -> Path:
    brotli = Path("/usr/lib/nginx/modules/ngx_http_brotli_static_module.so")
    load = f"load_module {brotli};" if brotli.exists() else ""
    static = "brotli_static on;" if brotli.exists() else ""
    config = workdir / "nginx.conf"
    config.write_text(
        f"""{load}
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=10000 inactive=60s;
    open_file_cache_valid 60s;
    gzip_static on;
    {static}
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        etag on;
    }}
}}
"""
    )
    return config


def create_servers(root: Path, workdir: Path) -> list[Server]:
    pin = pinned(0)
    ports = [free_port() for _ in range(6)]
    environment = {"BENCH_ROOT": str(root), "PYTHONPATH": str(HERE.parent)}
    servers = [
        Server(
            "offload",
            [
                *pin,
                *[sys.executable, "-m", "offload", "--static", str(root), "--host", "127.0.0.1"],
                "--access-log=off",  # as nginx's access_log off: like for like
                *["--port", str(ports[0]), "--admin-port", str(ports[5])],
            ],
            ports[0],
        ),
        Server(
            "nginx", [*pin, "nginx", "-c", str(nginx_config(root, ports[1], workdir))], ports[1]
        ),
        Server(
            "starlette",
            [*pin, *UVICORN, "--port", str(ports[2]), "bench.apps:starlette_static"],
            ports[2],
            environment,
        ),
        Server(
            "servestatic",
            [*pin, *UVICORN, "--port", str(ports[3]), "bench.apps:servestatic"],
            ports[3],
            environment,
        ),
        Server(
            "ceiling",
            [*pin, *UVICORN, "--port", str(ports[4]), "bench.apps:ceiling"],
            ports[4],
            environment,
        ),
    ]
    return [server for server in servers if server.name != "nginx" or shutil.which("nginx")]


@contextlib.contextmanager
def running(servers: list[Server], workdir: Path) -> Iterator[list[Server]]:
    try:
        for server in servers:
            if not server.command:
                continue  # started by the caller
            server.process = subprocess.Popen(
                server.command,
                env={**os.environ, **server.environment},
                stdout=subprocess.DEVNULL,
                stderr=(workdir / f"{server.name}.log").open("wb"),
            )
        for server in servers:
            wait_for_port(server)
        yield servers
    finally:
        for server in servers:
            if server.process is not None:
                server.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.process.wait(timeout=10)


def wait_for_port(server: Server, timeout_seconds: float = 30) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not start")


def check(server: Server, case: Case) -> str:
    """What the server sends for the case: status and Content-Encoding, checked before timing."""
    headers = {"accept-encoding": case.accept_encoding or "identity"}
    response = httpx.get(f"http://127.0.0.1:{server.port}{case.path}", headers=headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{server.name} answered {case.path} with {response.status_code}")
    return f"{response.status_code} {response.headers.get('content-encoding', 'identity')}"


def run_wrk(server: Server, case: Case, *, seconds: int, connections: int) -> Sample:
    pin = pinned(1)
    # a generous timeout, so a slow server is measured as slow rather than as failing
    command = [*pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    command.append("--latency")
    if case.accept_encoding:
        command += ["-H", f"Accept-Encoding: {case.accept_encoding}"]
    command.append(f"http://127.0.0.1:{server.port}{case.path}")
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 30
    )
    return parse_wrk(output.stdout)


def parse_wrk(output: str) -> Sample:
    def latency_ms(percentile: str) -> float:
        match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if match is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    requests = re.search(r"Requests/sec:\s+([\d.]+)", output)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", output)
    scale = {"B": 1e-6, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if requests is None or errors is not None:
        raise RuntimeError(f"wrk failed or saw errors:\n{output}")
    megabytes = float(transfer.group(1)) * scale[transfer.group(2)] if transfer else float("nan")
    return Sample(float(requests.group(1)), latency_ms("50"), latency_ms("99"), megabytes)


def peak_rss_mb(server: Server) -> float:
    """VmHWM of the serving process (nginx: its worker)."""
    assert server.process is not None
    pids = [server.process.pid]
    children = subprocess.run(
        ["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True
    )
    pids += [int(pid) for pid in children.stdout.split()]
    peaks = []
    for pid in pids:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            if match := re.search(r"VmHWM:\s+(\d+) kB", status):
                peaks.append(int(match.group(1)) / 1024)
    return max(peaks, default=float("nan"))


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    system = f"Linux {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}"


def median_samples(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.requests_per_second for s in samples),
        statistics.median(s.p50_ms for s in samples),
        statistics.median(s.p99_ms for s in samples),
        statistics.median(s.megabytes_per_second for s in samples),
    )


def ratio(medians: dict[str, Sample], server: str, against: str) -> str:
    if not medians.get(against, Sample(0, 0, 0)).requests_per_second:
        return "n/a"
    return f"{medians[server].requests_per_second / medians[against].requests_per_second:.2f}"


def report(run: Run) -> str:
    lines = [f"Machine: {machine()}; wrk -t1, connections as named; median of rounds.", ""]
    ratios = " | ".join(f"x {name}" for name in run.ratio_columns)
    lines.append(f"| case | server | req/s | MB/s | p50 ms | p99 ms | {ratios} | sent |")
    lines.append("|---|---|---:|---:|---:|---:|" + "---:|" * len(run.ratio_columns) + "---|")
    for case in run.cases:
        medians = {
            server: median_samples(samples)
            for (case_name, server), samples in run.samples.items()
            if case_name == case.name
        }
        for server, sample in medians.items():
            shown = " | ".join(ratio(medians, server, name) for name in run.ratio_columns)
            lines.append(
                f"| {case.name} | {server} | {sample.requests_per_second:,.0f} "
                f"| {sample.megabytes_per_second:,.1f} "
                f"| {sample.p50_ms:.2f} | {sample.p99_ms:.2f} | {shown} "
                f"| {run.checks[(case.name, server)]} |"
            )
    lines += ["", "| server | peak RSS MB |", "|---|---:|"]
    lines += [f"| {name} | {peak:.0f} |" for name, peak in run.peak_rss_mb.items()]
    return "\n".join(lines)


@dataclass
class Run:
    cases: tuple[Case, ...]
    ratio_columns: tuple[str, ...]
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    checks: dict[tuple[str, str], str] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)


def measure(servers: list[Server], run: Run, *, seconds: int, rounds: int) -> None:
    """Each case, each round, each server in turn: A B C A B C, so drift hits all alike."""
    for case in run.cases:
        for _ in range(rounds):
            for server in servers:
                sample = run_wrk(server, case, seconds=seconds, connections=case.connections)
                run.samples.setdefault((case.name, server.name), []).append(sample)
                rate = f"{sample.requests_per_second:10,.0f} req/s"
                print(f"{case.name:14} {server.name:12} {rate}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--suite", choices=("static", "proxy", "all"), default="all")
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case")
    arguments = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("wrk is missing: bench/run.sh installs it with nginx", file=sys.stderr)
        return 1
    if arguments.suite in ("static", "all"):
        print(static_suite(seconds=arguments.seconds, rounds=arguments.rounds), flush=True)
    if arguments.suite in ("proxy", "all"):
        from bench.proxy import proxy_suite

        print(proxy_suite(seconds=arguments.seconds, rounds=arguments.rounds), flush=True)
    return 0


def static_suite(*, seconds: int, rounds: int) -> str:
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as temporary:
        root, workdir = Path(temporary, "root"), Path(temporary, "work")
        root.mkdir()
        workdir.mkdir()
        os.chmod(temporary, 0o755)  # nginx's workers run as another user when started as root
        write_fixtures(root)
        run = Run(cases=CASES, ratio_columns=("nginx", "ceiling", "starlette", "servestatic"))
        with running(create_servers(root, workdir), workdir) as servers:
            time.sleep(2)  # offload builds its variants in the background: let it finish
            run.checks = {
                (case.name, server.name): check(server, case)
                for case in CASES
                for server in servers
            }
            measure(servers, run, seconds=seconds, rounds=rounds)
            run.peak_rss_mb = {server.name: peak_rss_mb(server) for server in servers}
    return report(run)
