"""The servers under test as processes: start them pinned to a core, wait for their ports, stop
them, and read their memory from /proc (VmRSS now, VmHWM the peak, reset through clear_refs)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
UVICORN = [sys.executable, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools"]
UVICORN += ["--no-access-log", "--log-level", "warning", "--workers", "1"]
# fan-out holds thousands of sockets at once; the machine's hard limit is the ceiling
OPEN_FILES_WANTED = 20000


@dataclass
class Server:
    name: str
    command: list[str]  # empty: the caller starts it (and may set `process` to have it measured)
    port: int
    environment: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


def pinned(core: int) -> list[str]:
    """The command prefix that runs a process on one core, when the machine has two or more."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def raise_open_files_limit() -> None:
    """Children inherit it: 1,000 SSE clients need 1,000 sockets in the client and 2,000 in a
    proxy."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def start(server: Server, workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        server.command,
        env={**os.environ, **server.environment},
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"{server.name}.log").open("wb"),
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def running(servers: list[Server], workdir: Path) -> Iterator[list[Server]]:
    """Starts every server that has a command, waits for all ports, stops what it started."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for server in servers:
            if server.command:
                server.process = start(server, workdir)
                started.append(server.process)
        for server in servers:
            wait_for_port(server.port, server.name)
        yield servers
    finally:
        for process in started:
            stop(process)


def wait_for_port(port: int, name: str, timeout_seconds: float = 30) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.01)
    raise RuntimeError(f"{name} did not open port {port} within {timeout_seconds} s")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (nginx: master and worker)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    tree = [pid]
    for child in children.stdout.split():
        tree += process_tree(int(child))
    return tree


def _status_megabytes(pid: int, key: str) -> float | None:
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        if match := re.search(rf"{key}:\s+(\d+) kB", status):
            return int(match.group(1)) / 1024
    return None


def memory_mb(server: Server, key: str) -> float:
    """The largest `key` (VmRSS, VmHWM) of the server's processes: the one doing the serving."""
    if server.process is None:
        return float("nan")
    values = (_status_megabytes(pid, key) for pid in process_tree(server.process.pid))
    return max((value for value in values if value is not None), default=float("nan"))


def peak_rss_mb(server: Server) -> float:
    return memory_mb(server, "VmHWM")


def rss_mb(server: Server) -> float:
    return memory_mb(server, "VmRSS")


def reset_peak_rss(server: Server) -> bool:
    """Sets VmHWM back to the current RSS ("5" to clear_refs, Linux 4.0+), so the next peak
    read is the next case's own. False where that is not permitted."""
    if server.process is None:
        return True
    try:
        for pid in process_tree(server.process.pid):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True
