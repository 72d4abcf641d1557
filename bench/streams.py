"""The streaming cases, each driven by its own client process on core 1: WebSocket echo messages
per second (bench/wsecho.py) and the time to deliver one Server-Sent Event to every one of many
open streams (bench/fanout.py). Servers in alternation, rounds as for wrk."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass

from bench.options import Options
from bench.report import number, table
from bench.servers import HERE, Server, pinned

WEBSOCKET_CONNECTIONS = 16
WEBSOCKET_SERVERS = ("node", "offload")
FANOUT_SERVERS = ("node", "nginx", "aiohttp", "offload")


@dataclass(frozen=True)
class FanoutSample:
    subscribed: int
    received: int
    seconds: float  # from the trigger until the last client had the event


def client(module: str, *arguments: str, timeout_seconds: float) -> str:
    """Runs a client module on core 1 and returns what it printed."""
    command = [*pinned(1), sys.executable, "-m", module, *arguments]
    output = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout_seconds,
        cwd=HERE.parent,
    )
    return output.stdout


def websocket_rate(port: int, *, seconds: int) -> float:
    """Echoed messages per second over `WEBSOCKET_CONNECTIONS` sockets."""
    arguments = [f"ws://127.0.0.1:{port}/ws/echo", "--seconds", str(seconds)]
    arguments += ["--connections", str(WEBSOCKET_CONNECTIONS)]
    return float(client("bench.wsecho", *arguments, timeout_seconds=seconds + 30))


def fan_out(server: Server, app_port: int, *, clients: int, group: str) -> FanoutSample:
    arguments = [f"http://127.0.0.1:{server.port}", f"http://127.0.0.1:{app_port}"]
    arguments += ["--clients", str(clients), "--group", group]
    result = json.loads(client("bench.fanout", *arguments, timeout_seconds=120))
    return FanoutSample(result["subscribed"], result["received"], result["seconds"])


def websocket_table(servers: list[Server], options: Options) -> str:
    rates: dict[str, list[float]] = {}
    for _ in range(options.rounds):
        for server in servers:
            if server.name in WEBSOCKET_SERVERS:
                rate = websocket_rate(server.port, seconds=options.seconds)
                rates.setdefault(server.name, []).append(rate)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    rows = [
        [name, number(rate), f"{rate / medians['node']:.2f}" if medians.get("node") else "n/a"]
        for name, rate in medians.items()
    ]
    header = [f"WebSocket echo, {WEBSOCKET_CONNECTIONS} sockets", "messages/s", "x node"]
    return "\n".join(table(header, rows))


def fanout_table(servers: list[Server], app_port: int, options: Options) -> str:
    clients = options.fanout_clients
    samples: dict[str, list[FanoutSample]] = {}
    for round_number in range(options.rounds):
        for server in servers:
            if server.name in FANOUT_SERVERS:
                group = f"{server.name}-{round_number}"
                sample = fan_out(server, app_port, clients=clients, group=group)
                samples.setdefault(server.name, []).append(sample)
                line = f"SSE fan-out {server.name:12} {sample.received}/{clients}"
                print(f"{line} in {sample.seconds * 1000:.1f} ms", file=sys.stderr, flush=True)
    medians = {name: statistics.median(s.seconds for s in runs) for name, runs in samples.items()}
    rows = []
    for name, runs in samples.items():
        received = min(sample.received for sample in runs)
        against_node = medians[name] / medians["node"] if medians.get("node") else None
        rows.append(
            [
                name,
                f"{received}/{clients}",
                number(medians[name] * 1000, 1),
                number(max(sample.seconds for sample in runs) * 1000, 1),
                "n/a" if against_node is None else f"{against_node:.2f}",
            ]
        )
    header = [f"SSE fan-out, {clients:,} clients", "received", "median ms", "max ms", "x node"]
    return "\n".join(table(header, rows))
