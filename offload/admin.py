"""The admin listener's app: /livez, /readyz, /metrics and /drain. It never shares a port with the
public edge, so every public path belongs to the app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from starlette.types import Receive, Scope, Send

from offload.config import Config, Upstream
from offload.responses import send_plain_text
from offload.vitals import AppVitals

if TYPE_CHECKING:
    from offload.app import Edge
    from offload.supervise import Supervisor

UPSTREAM_CHECK_SECONDS = 1.0


class Subject(Protocol):
    """What the admin API reports on and drains: one edge, or the workers of ``--workers``."""

    async def not_ready_because(self) -> str | None: ...

    async def metrics(self) -> bytes: ...

    async def drain(self) -> None: ...

    async def wait_idle(self, seconds: float) -> tuple[bool, int]:
        """Wait up to ``seconds`` for no request in flight: (draining, requests in flight)."""
        ...


class AdminApp:
    """The admin API.

    - ``GET /livez``: 200 while the process runs; it never asks the app (no restart storms).
    - ``GET /readyz``: 200 when the static root is readable, the catalog loaded and the app
      accepting connections (checked every second in the background, not per probe) — with
      ``-- COMMAND``, its process running too, and with ``--app-ready-path``, its health
      endpoint answering 2xx; 503 with the reason otherwise, and 503 once draining.
    - ``GET /metrics``: Prometheus text format.
    - ``POST /drain``: start draining (for a ``preStop`` hook); ``GET /drain?wait=SECONDS``
      answers once no request is in flight (200), or when the wait is over (503).
    """

    def __init__(self, subject: Subject) -> None:
        self.subject = subject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/drain":
            await self._drain(scope, send)
        elif path not in ("/livez", "/readyz", "/metrics"):
            await send_plain_text(send, 404)
        elif method not in ("GET", "HEAD"):
            await send_plain_text(send, 405, headers=[(b"allow", b"GET, HEAD")])
        elif path == "/livez":
            await send_plain_text(send, 200, "offload is running")
        elif path == "/readyz":
            reason = await self.subject.not_ready_because()
            await send_plain_text(send, 503 if reason else 200, reason or "ready")
        else:
            await _send(send, 200, CONTENT_TYPE_LATEST, await self.subject.metrics())

    async def _drain(self, scope: Scope, send: Send) -> None:
        if scope["method"] == "POST":
            await self.subject.drain()
            draining, in_flight = await self.subject.wait_idle(0)
            done = True
        elif scope["method"] == "GET":
            seconds = _seconds(scope.get("query_string", b""))
            draining, in_flight = await self.subject.wait_idle(seconds)
            done = in_flight == 0
        else:
            await send_plain_text(send, 405, headers=[(b"allow", b"GET, POST")])
            return
        body = json.dumps({"draining": draining, "in_flight": in_flight}).encode()
        await _send(send, 200 if done else 503, "application/json", body)


class EdgeSubject:
    """The admin API's view of the edge in this process, and of the process itself
    (prometheus-client's ``process_*`` metrics); ``health`` is the ``--app-ready-path`` check."""

    def __init__(self, edge: Edge, health: AppHealthCheck | None = None) -> None:
        self.edge = edge
        self.health = health
        ProcessCollector(registry=edge.metrics.registry)

    async def not_ready_because(self) -> str | None:
        reason = self.edge.not_ready_because()
        if reason is None and self.health is not None:
            return self.health.not_ready_because()
        return reason

    async def metrics(self) -> bytes:
        edge = self.edge
        edge.metrics.upstream_up.set(1 if edge.state.upstream_up else 0)
        edge.metrics.in_flight.set(edge.state.in_flight)
        edge.metrics.static_assets.set(len(edge.catalog.entries) if edge.catalog else 0)
        return generate_latest(edge.metrics.registry)

    async def drain(self) -> None:
        self.edge.state.draining = True

    async def wait_idle(self, seconds: float) -> tuple[bool, int]:
        state = self.edge.state
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await state.idle.wait()
        return state.draining, state.in_flight


class SupervisedSubject:
    """The admin API's view with the app run as ``-- COMMAND`` added, in front of the edge or
    of the workers (the primary process runs the app): readiness also needs the app's
    process running, and ``/metrics`` gains its vital signs (``offload_app_*``)."""

    def __init__(self, subject: Subject, supervisor: Supervisor, upstream: Upstream) -> None:
        self.subject = subject
        self.supervisor = supervisor
        self.upstream = upstream
        self.registry = CollectorRegistry()
        self.registry.register(AppVitals(supervisor))
        self._seen_accepting: object = None  # the process last seen accepting connections

    async def not_ready_because(self) -> str | None:
        reason = self.supervisor.not_ready_because() or await self._starting_because()
        return reason or await self.subject.not_ready_because()

    async def _starting_because(self) -> str | None:
        """A (re)started app is starting until its port is seen open. The edge checks the port
        only every second: it may not have noticed that the app was ever gone."""
        process = self.supervisor.process
        if self.supervisor.stopping or process is None or process is self._seen_accepting:
            return None
        if not await accepts_connections(self.upstream):
            return "the app is starting"
        self._seen_accepting = process
        return None

    async def metrics(self) -> bytes:
        return await self.subject.metrics() + generate_latest(self.registry)

    async def drain(self) -> None:
        await self.subject.drain()

    async def wait_idle(self, seconds: float) -> tuple[bool, int]:
        return await self.subject.wait_idle(seconds)


async def _send(send: Send, status: int, content_type: str, body: bytes) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _seconds(query: bytes) -> float:
    values = parse_qs(query.decode("latin-1")).get("wait", ["0"])
    try:
        return max(0.0, min(float(values[0]), 3600.0))
    except ValueError:
        return 0.0


async def watch_upstream(edge: Edge) -> None:
    """Keep ``edge.state.upstream_up`` current: can a connection to the app be opened?"""
    upstream = edge.config.upstream_address
    while upstream is not None:
        edge.state.upstream_up = await accepts_connections(upstream)
        await asyncio.sleep(UPSTREAM_CHECK_SECONDS)


async def accepts_connections(upstream: Upstream) -> bool:
    try:
        async with asyncio.timeout(UPSTREAM_CHECK_SECONDS):
            _, writer = await _connect(upstream)
        writer.close()
        return True
    except (OSError, TimeoutError):
        return False


async def _connect(upstream: Upstream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if upstream.unix_path is not None:
        return await asyncio.open_unix_connection(upstream.unix_path)
    return await asyncio.open_connection(upstream.host, upstream.port)


def is_readable(directory: str) -> bool:
    return os.access(directory, os.R_OK | os.X_OK)


class AppHealthCheck:
    """``--app-ready-path``: the app's own health endpoint, asked every second in the
    background (`watch`); readiness needs its last answer to be 2xx."""

    def __init__(self, upstream: Upstream, path: str) -> None:
        self.upstream = upstream
        self.path = path
        self.reason: str | None = f"the app's {path} has not been asked yet"
        host = upstream.base_url.removeprefix("http://")
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: offload\r\n"
            "Connection: close\r\n\r\n"
        ).encode()

    @classmethod
    def for_config(cls, config: Config) -> AppHealthCheck | None:
        upstream = config.upstream_address
        if upstream is None or config.app_ready_path is None:
            return None
        return cls(upstream, config.app_ready_path)

    def not_ready_because(self) -> str | None:
        return self.reason

    async def watch(self) -> None:
        while True:
            self.reason = await self._ask()
            await asyncio.sleep(UPSTREAM_CHECK_SECONDS)

    async def _ask(self) -> str | None:
        """One GET of the path: ``None`` for a 2xx, else what went wrong."""
        try:
            async with asyncio.timeout(UPSTREAM_CHECK_SECONDS):
                reader, writer = await _connect(self.upstream)
                try:
                    writer.write(self._request)
                    status_line = await reader.readline()
                finally:
                    writer.close()
        except TimeoutError:
            return f"the app's {self.path} did not answer within {UPSTREAM_CHECK_SECONDS:g} s"
        except OSError as error:
            reason = (error.strerror or str(error)).lower()
            return f"the app's {self.path} did not answer: {reason}"
        except ValueError:  # a status line past the stream's 64 KiB limit
            return f"the app's {self.path} did not answer with HTTP"
        version, _, rest = status_line.partition(b" ")
        status = rest[:3]
        if not version.startswith(b"HTTP/") or not status.isdigit():
            return f"the app's {self.path} did not answer with HTTP"
        if not 200 <= int(status) < 300:
            return f"the app's {self.path} answered {int(status)}"
        return None
