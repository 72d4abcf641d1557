"""Real servers for the tests: offload started as its own command on loopback ports, in front of
a real Node.js app (tests/upstream/app.js), and a raw client that sends bytes as given."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "static_fixtures"
UPSTREAM_APP = ROOT / "tests" / "upstream" / "app.js"
START_SECONDS = 15.0


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class NodeApp:
    process: subprocess.Popen[str]
    port: int
    socket_path: str | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_node_app(*, port: int = 0, socket_path: str | None = None) -> NodeApp:
    """The Node test app on a loopback port (0: any free one) or a Unix socket."""
    where = {"SOCKET": socket_path} if socket_path else {"PORT": str(port)}
    process = subprocess.Popen(
        ["node", str(UPSTREAM_APP)],
        env={**os.environ, **where},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # "listening <port or path>", once the socket is bound
    if not line.startswith("listening "):
        process.kill()
        raise RuntimeError(f"the Node test app did not start: {line!r}")
    bound = line.split()[1]
    return NodeApp(process, port=0 if socket_path else int(bound), socket_path=socket_path)


@dataclass
class Offload:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: IO[bytes]
    admin_host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_host}:{self.admin_port}"

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def _wait_until_serving(offload: Offload) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if offload.process.poll() is not None:
            raise RuntimeError(f"offload exited during start-up:\n{offload.output()}")
        # the public port opens after the lifespan (the catalog scan); the admin port may be first
        with contextlib.suppress(httpx.TransportError, OSError):
            if httpx.get(offload.admin_url + "/livez").status_code == 200:
                with socket.create_connection(("127.0.0.1", offload.port), timeout=1):
                    return
        time.sleep(0.05)
    raise RuntimeError(f"offload did not start in {START_SECONDS} s:\n{offload.output()}")


@contextlib.contextmanager
def run_offload(
    *arguments: str | Path,
    env: dict[str, str] | None = None,
    port: int = 0,
    admin_port: int = 0,
    admin_host: str = "127.0.0.1",
) -> Iterator[Offload]:
    """Run ``python -m offload`` on loopback ports (0: a free one) until the block ends."""
    port, admin_port = port or free_port(), admin_port or free_port()
    command = [sys.executable, "-m", "offload", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--admin-port", str(admin_port)]
    command += ["--admin-host", admin_host, *map(str, arguments)]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        offload = Offload(
            port=port, admin_port=admin_port, admin_host=admin_host, log=log, process=process
        )
        try:
            _wait_until_serving(offload)
            yield offload
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None


def raw_request(port: int, request: bytes) -> RawResponse:
    """Send bytes exactly as given (no client normalises the target) and read one response,
    which must end with the connection (the request should say ``Connection: close``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return RawResponse(status=int(status_line.split()[1]), headers=headers, body=body)


def raw_get(port: int, target: str, *headers: str) -> RawResponse:
    lines = [f"GET {target} HTTP/1.1", "Host: offload.test", "Connection: close", *headers]
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def peak_rss_bytes(process: subprocess.Popen[bytes]) -> int:
    """The high-water mark of a process's resident memory (Linux /proc/PID/status VmHWM)."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


TCP_TIME_WAIT = "06"


def tcp_states_towards(port: int) -> list[str]:
    """States of this machine's TCP sockets whose remote end is ``port`` (Linux /proc/net),
    TIME_WAIT left out: what the kernel still holds open towards that port."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] != TCP_TIME_WAIT:
                    states.append(fields[3])
    return states


def start_and_fail(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m offload`` on free loopback ports, for start-ups that must fail: it
    returns once the process has ended (within 30 s)."""
    command = [sys.executable, "-m", "offload", "--host", "127.0.0.1"]
    command += ["--port", str(free_port()), "--admin-port", str(free_port()), *arguments]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, timeout=30, check=False
    )


def poll(
    url: str,
    done: Callable[[httpx.Response], bool],
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    seconds: float = 10,
) -> httpx.Response:
    """The first response ``done`` accepts, or the last one after ``seconds``: for what offload
    shows a little later (the watcher's rescan, readiness, a drain, a flag file)."""
    deadline = time.monotonic() + seconds
    while True:
        response = httpx.request(method, url, headers=headers)
        if done(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def wait_until(condition: Callable[[], object], seconds: float = 10) -> bool:
    """Whether ``condition()`` came true within ``seconds``: for what is not an HTTP answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus exposition; 0 when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    line = next((line for line in text.splitlines() if line.startswith(prefix)), None)
    return float(line.split()[-1]) if line else 0.0
