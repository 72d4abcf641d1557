"""The admin listener's app: /livez, /readyz, /metrics and /drain. It never shares a port with the
public edge, so every public path belongs to the app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from starlette.types import Receive, Scope, Send

from offload.admin_access import ControlAccess
from offload.config import Config, Upstream
from offload.responses import send_plain_text
from offload.vitals import AppVitals

if TYPE_CHECKING:
    from offload.app import Edge
    from offload.supervise import Supervisor

UPSTREAM_CHECK_SECONDS = 1.0


# The admin listener's own connection budget, instead of the public --max-connections: past it
# a request gets 503, except on `UNCAPPED_PATHS`, so that no crowd of connections can fail the
# kubelet's probes (a failed /livez restarts the container) or the preStop hook's drain.
ADMIN_MAX_CONNECTIONS = 64
UNCAPPED_PATHS = frozenset({b"/livez", b"/readyz", b"/drain"})
# GET /drain?wait: at most this many wait at once, each at most this long (the preStop hook's
# wait, from this machine or with the token, is never turned away: see AdminApp._wait_idle)
MAX_WAITERS = 8
MAX_WAIT_SECONDS = 60.0
WAITERS_RETRY_AFTER_SECONDS = 5
# Requests that change offload's state: only these pass the `ControlAccess` check.
CONTROL_REQUESTS = frozenset({("POST", "/drain"), ("DELETE", "/drain")})
Handler = Callable[[Scope, Send], Awaitable[None]]


class Subject(Protocol):
    """What the admin API reports on and drains: one edge, or the workers of ``--workers``."""

    async def not_ready_because(self) -> str | None: ...

    async def metrics(self) -> bytes: ...

    async def drain(self) -> None: ...

    async def cancel_drain(self) -> bool:
        """Undo `drain`: ``False`` (nothing done) once offload is stopping, on a signal."""
        ...

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
    - ``POST /drain``: start draining (for a ``preStop`` hook); ``DELETE /drain`` undoes it,
      unless offload is stopping on a signal (409); both only from this machine or with the
      admin token (`ControlAccess`). ``GET /drain?wait=SECONDS`` answers once no request is in
      flight (200), or when the wait (at most `MAX_WAIT_SECONDS`) is over (503).
    """

    def __init__(self, subject: Subject, *, token: str | None = None) -> None:
        self.subject = subject
        self.access = ControlAccess(token)
        self.waiters = 0  # GET /drain?wait requests waiting that count towards MAX_WAITERS
        self.routes: dict[str, dict[str, Handler]] = {
            "/livez": {"GET": self._livez, "HEAD": self._livez},
            "/readyz": {"GET": self._readyz, "HEAD": self._readyz},
            "/metrics": {"GET": self._metrics, "HEAD": self._metrics},
            "/drain": {
                "GET": self._wait_idle,
                "POST": self._start_drain,
                "DELETE": self._cancel_drain,
            },
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        methods = self.routes.get(path)
        if methods is None:
            await send_plain_text(send, 404)
            return
        handler = methods.get(method)
        if handler is None:
            allow = ", ".join(methods).encode()
            await send_plain_text(send, 405, headers=[(b"allow", allow)])
            return
        if (method, path) in CONTROL_REQUESTS:
            refusal = self.access.refusal(scope)
            if refusal is not None:
                await send_plain_text(send, refusal.status, refusal.reason, headers=refusal.headers)
                return
        await handler(scope, send)

    async def _livez(self, scope: Scope, send: Send) -> None:
        await send_plain_text(send, 200, "offload is running")

    async def _readyz(self, scope: Scope, send: Send) -> None:
        reason = await self.subject.not_ready_because()
        await send_plain_text(send, 503 if reason else 200, reason or "ready")

    async def _metrics(self, scope: Scope, send: Send) -> None:
        await _send(send, 200, CONTENT_TYPE_LATEST, await self.subject.metrics())

    async def _start_drain(self, scope: Scope, send: Send) -> None:
        await self.subject.drain()
        await self._send_drain_state(send)

    async def _cancel_drain(self, scope: Scope, send: Send) -> None:
        if not await self.subject.cancel_drain():
            reason = "offload is stopping (a signal): its drain cannot be undone"
            await send_plain_text(send, 409, reason)
            return
        await self._send_drain_state(send)

    async def _wait_idle(self, scope: Scope, send: Send) -> None:
        seconds = _seconds(scope.get("query_string", b""))
        # a waiter that could drain (the preStop hook: this machine, or the token) is not
        # counted: no crowd of others can cut its wait short
        counted = seconds > 0 and self.access.refusal(scope) is not None
        if counted and self.waiters >= MAX_WAITERS:
            retry = [(b"retry-after", str(WAITERS_RETRY_AFTER_SECONDS).encode())]
            reason = f"{MAX_WAITERS} requests are waiting on /drain already"
            await send_plain_text(send, 429, reason, headers=retry)
            return
        self.waiters += int(counted)
        try:
            draining, in_flight = await self.subject.wait_idle(seconds)
        finally:
            self.waiters -= int(counted)
        await _send_json(send, 200 if in_flight == 0 else 503, draining, in_flight)

    async def _send_drain_state(self, send: Send) -> None:
        draining, in_flight = await self.subject.wait_idle(0)
        await _send_json(send, 200, draining, in_flight)


class EdgeSubject:
    """The admin API's view of the edge in this process, and of the process itself
    (prometheus-client's ``process_*`` metrics); ``health`` is the ``--app-ready-path`` check."""

    def __init__(self, edge: Edge, health: AppHealthCheck | None = None) -> None:
        self.edge = edge
        self.health = health
        # set by the server when a signal starts the shutdown (Edge.begin_shutdown drains, as
        # POST /drain does): that drain is not for DELETE /drain to undo
        self.stopping = False
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

    async def cancel_drain(self) -> bool:
        if self.stopping:
            return False
        self.edge.state.draining = False
        return True

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

    async def cancel_drain(self) -> bool:
        return await self.subject.cancel_drain()

    async def wait_idle(self, seconds: float) -> tuple[bool, int]:
        return await self.subject.wait_idle(seconds)


async def _send_json(send: Send, status: int, draining: bool, in_flight: int) -> None:
    body = json.dumps({"draining": draining, "in_flight": in_flight}).encode()
    await _send(send, status, "application/json", body)


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
        return max(0.0, min(float(values[0]), MAX_WAIT_SECONDS))
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
