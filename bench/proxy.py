"""The proxy benchmark: a small JSON response from the Node test app (tests/upstream/app.js),
reached directly, through nginx ``proxy_pass`` with an upstream keepalive pool, through a plain
aiohttp proxy, and through offload; then WebSocket echo messages per second through offload and
directly. Every proxy runs on core 0 and the load generators on core 1; the app is left to the
scheduler, as an app and its sidecar are separate containers in a pod. (Pinned to core 0 with
the proxy, the app's wake-ups preempt the proxy on every request and the Python proxies lose
about half their throughput, nginx much less.)"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import (
    HERE,
    UVICORN,
    Case,
    Run,
    Server,
    check,
    free_port,
    measure,
    peak_rss_mb,
    pinned,
    report,
    running,
    wait_for_port,
)

NODE_APP = HERE.parent / "tests" / "upstream" / "app.js"
CASES = (
    Case("small JSON, 64 connections", "/api/small-json", connections=64),
    Case("small JSON, 1 connection", "/api/small-json", connections=1),
)
WEBSOCKET_CONNECTIONS = 16


def nginx_proxy_config(upstream_port: int, port: int, workdir: Path) -> Path:
    config = workdir / "nginx-proxy.conf"
    temporary = " ".join(
        f"{kind}_temp_path {workdir}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    config.write_text(
        f"""worker_processes 1;
daemon off;
pid {workdir}/nginx-proxy.pid;
error_log {workdir}/nginx-proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {temporary}
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""
    )
    return config


def create_proxy_servers(app_port: int, workdir: Path) -> list[Server]:
    core = pinned(0)
    nginx_port, plain_port, offload_port, admin_port = (free_port() for _ in range(4))
    upstream = f"127.0.0.1:{app_port}"
    environment = {"BENCH_UPSTREAM": f"http://{upstream}", "PYTHONPATH": str(HERE.parent)}
    return [
        Server("node", [], app_port),
        Server(
            "nginx",
            [*core, "nginx", "-c", str(nginx_proxy_config(app_port, nginx_port, workdir))],
            nginx_port,
        ),
        Server(
            "aiohttp",
            [*core, *UVICORN, "--port", str(plain_port), "bench.plain_proxy:app"],
            plain_port,
            environment,
        ),
        Server(
            "offload",
            [
                *core,
                *[sys.executable, "-m", "offload", "--upstream", upstream],
                *["--host", "127.0.0.1", "--port", str(offload_port)],
                *["--admin-port", str(admin_port), "--access-log=off"],  # as nginx's access_log off
            ],
            offload_port,
        ),
    ]


def websocket_rate(port: int, *, seconds: int) -> float:
    """Echoed messages per second over `WEBSOCKET_CONNECTIONS` sockets, client on core 1."""
    command = [*pinned(1), sys.executable, "-m", "bench.wsecho", f"ws://127.0.0.1:{port}/ws/echo"]
    command += ["--seconds", str(seconds), "--connections", str(WEBSOCKET_CONNECTIONS)]
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 30
    )
    return float(output.stdout.strip())


def proxy_suite(*, seconds: int, rounds: int) -> str:
    with tempfile.TemporaryDirectory(prefix="offload-bench-proxy-") as temporary:
        workdir = Path(temporary)
        app_port = free_port()
        app = subprocess.Popen(
            ["node", str(NODE_APP)],
            env={"PORT": str(app_port), "PATH": "/usr/bin:/usr/local/bin:/bin"},
            stdout=subprocess.DEVNULL,
        )
        try:
            servers = create_proxy_servers(app_port, workdir)
            wait_for_port(servers[0])
            run = Run(cases=CASES, ratio_columns=("nginx", "aiohttp", "node"))
            with running(servers, workdir) as started:
                time.sleep(1)
                run.checks = {
                    (case.name, s.name): check(s, case) for case in CASES for s in started
                }
                measure(started, run, seconds=seconds, rounds=rounds)
                run.peak_rss_mb = {s.name: peak_rss_mb(s) for s in started if s.process}
                sockets = {name: [] for name in ("node", "offload")}
                for _ in range(rounds):
                    for s in started:
                        if s.name in sockets:
                            sockets[s.name].append(websocket_rate(s.port, seconds=seconds))
        finally:
            app.terminate()
            app.wait(timeout=10)
    lines = [
        report(run),
        "",
        "| WebSocket echo, 16 sockets | messages/s | x node |",
        "|---|---:|---:|",
    ]
    medians = {name: sorted(rates)[len(rates) // 2] for name, rates in sockets.items()}
    for name, rate in medians.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / medians['node']:.2f} |")
    return "\n".join(lines)
