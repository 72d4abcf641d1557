"""The admin listener's app: /livez, /readyz, /metrics and /drain. It never shares a port with the
public edge, so every public path belongs to the app."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from offload.responses import send_plain_text

if TYPE_CHECKING:
    from offload.app import Edge

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
      accepting connections (checked every second in the background, not per probe); 503 with
      the reason otherwise, and 503 once draining.
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
    """The admin API's view of the edge in this process."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    async def not_ready_because(self) -> str | None:
        return self.edge.not_ready_because()

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
        try:
            async with asyncio.timeout(UPSTREAM_CHECK_SECONDS):
                if upstream.unix_path is not None:
                    _, writer = await asyncio.open_unix_connection(upstream.unix_path)
                else:
                    _, writer = await asyncio.open_connection(upstream.host, upstream.port)
            writer.close()
            edge.state.upstream_up = True
        except (OSError, TimeoutError):
            edge.state.upstream_up = False
        await asyncio.sleep(UPSTREAM_CHECK_SECONDS)


def is_readable(directory: str) -> bool:
    return os.access(directory, os.R_OK | os.X_OK)
