"""The proxy suite: the Node test app (tests/upstream/app.js) reached directly, through nginx
``proxy_pass`` with an upstream keepalive pool, through a plain aiohttp proxy, and through
offload. Every proxy runs on core 0 and the load generators on core 1; the app is left to the
scheduler, as an app and its sidecar are separate containers in a pod. (Pinned to core 0 with
the proxy, the app's wake-ups preempt the proxy on every request and the Python proxies lose
about half their throughput, nginx much less.)"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import nginx
from bench.options import Options
from bench.report import header_line, wrk_table
from bench.servers import HERE, UVICORN, Server, free_port, pinned, running, stop, wait_for_port
from bench.streams import fanout_table, websocket_table
from bench.wrk import Case, Run, at_connections, measure

NODE_APP = HERE.parent / "tests" / "upstream" / "app.js"
SMALL_JSON = Case("small JSON", "/api/small-json")
DOWNLOAD = Case("1 MB download", "/api/download?bytes=1048576")
UPLOAD = Case("10 MB upload", "/api/upload", upload_bytes=10 * 1024 * 1024)
RATIO_COLUMNS = ("nginx", "aiohttp", "node")


def cases(options: Options) -> tuple[Case, ...]:
    json_connections = (*options.connections, *options.json_extra_connections)
    return (
        *at_connections(SMALL_JSON, json_connections),
        *at_connections(DOWNLOAD, (max(options.connections),)),
        *at_connections(UPLOAD, options.upload_connections),
    )


def create_proxy_servers(
    app: subprocess.Popen[bytes], app_port: int, workdir: Path
) -> list[Server]:
    core = pinned(0)
    nginx_port, plain_port = free_port(), free_port()
    upstream = f"127.0.0.1:{app_port}"
    environment = {"BENCH_UPSTREAM": f"http://{upstream}", "PYTHONPATH": str(HERE.parent)}

    def offload(name: str, *flags: str) -> Server:
        port = free_port()
        command = [sys.executable, "-m", "offload", "--upstream", upstream, *flags]
        command += ["--host", "127.0.0.1", "--port", str(port), "--admin-port", str(free_port())]
        command += ["--access-log=off"]  # as nginx's access_log off
        return Server(name, [*core, *command], port)

    return [
        Server("node", [], app_port, process=app),  # started here, measured like the others
        Server(
            "nginx",
            [*core, *nginx.command(nginx.proxy_config(app_port, nginx_port, workdir))],
            nginx_port,
        ),
        Server(
            "aiohttp",
            [*core, *UVICORN, "--port", str(plain_port), "bench.plain_proxy:app"],
            plain_port,
            environment,
        ),
        offload("offload"),
        # the circuit breaker's cost: the default has it on
        offload("offload, no breaker", "--breaker-failures", "0"),
    ]


def proxy_suite(options: Options) -> str:
    run = Run(cases=cases(options), ratio_columns=RATIO_COLUMNS)
    with tempfile.TemporaryDirectory(prefix="offload-bench-proxy-") as temporary:
        workdir = Path(temporary)
        app_port = free_port()
        app = subprocess.Popen(
            ["node", str(NODE_APP)],
            env={"PORT": str(app_port), "PATH": "/usr/bin:/usr/local/bin:/bin"},
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_port(app_port, "node")
            with running(create_proxy_servers(app, app_port, workdir), workdir) as servers:
                time.sleep(options.settle_seconds / 2)
                measure(
                    servers, run, seconds=options.seconds, rounds=options.rounds, workdir=workdir
                )
                fanout = fanout_table(servers, app_port, options)
                websocket = websocket_table(servers, options)
        finally:
            stop(app)
    description = "wrk -t1, connections as named; median of rounds; peak RSS per case."
    return "\n".join(
        [
            "## Proxied requests",
            "",
            header_line(description),
            "",
            wrk_table(run),
            "",
            "The node row's peak RSS is the app's, which serves every row of the case.",
            "",
            fanout,
            "",
            websocket,
        ]
    )
