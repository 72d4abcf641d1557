"""The access log and the metrics, as one middleware between the hooks and routing
(DESIGN.md: hooks -> observe -> route), and the edge's shared counters: in flight, draining.

Log lines are batched and written at most every 0.2 s, so a request costs no write system call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload.facts import request_facts

LOG_FORMATS = ("json", "text", "off")
FLUSH_EVERY_SECONDS = 0.2
ATOMIC_WRITE_BYTES = select.PIPE_BUF  # 4096 on Linux: a pipe write this small is never split
CLIENT_CLOSED = 499  # nginx's status for a client that left before the response


@dataclass
class EdgeState:
    """What the admin API reports and changes: requests in flight, draining, the app's port."""

    in_flight: int = 0
    draining: bool = False
    upstream_up: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while none is in flight

    def __post_init__(self) -> None:
        self.idle.set()


class Metrics:
    """offload's Prometheus metrics, in a registry of their own (no process-wide globals)."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "offload_http_requests", "Requests answered", ["route", "method", "code"],
            registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "offload_http_request_duration_seconds", "Time to the last byte", ["route", "method"],
            registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "offload_http_requests_in_flight", "Requests being answered", registry=registry
        )
        self.response_bytes = Counter(
            "offload_http_response_size_bytes", "Body bytes sent", ["route"], registry=registry
        )
        self.upstream_errors = Counter(
            "offload_upstream_errors", "Failures reaching the app", ["kind"], registry=registry
        )
        self.upstream_up = Gauge(
            "offload_upstream_up", "1 while the app accepts connections", registry=registry
        )
        self.static_assets = Gauge(
            "offload_static_assets", "Paths in the static catalog", registry=registry
        )
        Info("offload_build", "offload's version", registry=registry).info({"version": version})
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def record(self, route: str, method: str, status: int, seconds: float, sent: int) -> None:
        """One answered request. Label lookups are cached: this runs once per request."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route, method),
                self.response_bytes.labels(route),
            )
        requests, duration, response_bytes = children
        requests.inc()
        duration.observe(seconds)
        response_bytes.inc(sent)


_UPSTREAM_ERROR_KINDS = {
    "upstream_refused": "connect",
    "upstream_timeout": "timeout",
    "upstream_reset": "reset",
    "upstream_malformed": "protocol",
}


class AccessLog:
    """One line per request on ``stream``: a JSON object, or a short text line."""

    def __init__(self, log_format: str, stream: TextIO | None = None) -> None:
        self.log_format = log_format
        self.stream = stream or sys.stdout
        self._pending: list[str] = []

    def write(self, record: dict[str, object]) -> None:
        if self.log_format == "off":
            return
        if self.log_format == "json":
            line = json.dumps(record, separators=(",", ":"))
        else:
            query = f"?{record['query']}" if record["query"] else ""
            line = (
                f"{record['client']} {record['method']} {record['path']}{query} "
                f"{record['status']} {record['bytes']} {record['duration_ms']}ms "
                f"{record['route']} {record['request_id']}"
            )
        if not self._pending:
            asyncio.get_running_loop().call_later(FLUSH_EVERY_SECONDS, self.flush)
        self._pending.append(line + "\n")

    def flush(self) -> None:
        """Write the pending lines in writes of whole lines of at most `ATOMIC_WRITE_BYTES`:
        with ``--workers`` every process writes to the same pipe, and the kernel keeps only
        writes that small in one piece, so a line never interleaves with another's."""
        lines, self._pending = self._pending, []
        if not lines:
            return
        self.stream.flush()  # whatever went through the stream object first
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode()
            if chunk and size + len(data) > ATOMIC_WRITE_BYTES:
                self._write(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file: a test's StringIO
            self.stream.write(data.decode())
            self.stream.flush()
            return
        while data:
            written = os.write(fd, data)
            data = data[written:]


class ObserveMiddleware:
    """Counts, times and logs every HTTP and WebSocket request; while draining, asks clients
    to close their connection after each response (``Connection: close``)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, log: AccessLog, state: EdgeState):
        self.app = app
        self.metrics = metrics
        self.log = log
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 0
        sent_bytes = 0

        async def observed_send(message: Message) -> None:
            nonlocal status, sent_bytes
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if self.state.draining:
                    message = {
                        **message,
                        "headers": [*message["headers"], (b"connection", b"close")],
                    }
            elif kind == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            elif kind == "websocket.accept":
                status = 101
            await send(message)

        self.state.in_flight += 1  # the gauge is set from this at scrape time
        if self.state.in_flight == 1:
            self.state.idle.clear()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.state.in_flight -= 1
            if self.state.in_flight == 0:
                self.state.idle.set()
            self._record(scope, status, sent_bytes, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, sent_bytes: int, seconds: float) -> None:
        facts = request_facts(scope)
        route = (facts.route if facts else None) or "none"
        error = facts.error if facts else None
        if error == "client_closed" or status == 0:
            status = CLIENT_CLOSED if status == 0 else status
        self.metrics.record(route, scope.get("method", "GET"), status, seconds, sent_bytes)
        if error in _UPSTREAM_ERROR_KINDS:
            self.metrics.upstream_errors.labels(_UPSTREAM_ERROR_KINDS[error]).inc()
        if self.log.log_format != "off":
            self.log.write(_log_record(scope, facts, status, sent_bytes, seconds, route))


def _log_record(
    scope: Scope, facts: object, status: int, sent_bytes: int, seconds: float, route: str
) -> dict[str, object]:
    """The access-log fields. No Authorization, no Cookie: only what is named here is logged."""
    headers = dict(scope.get("headers", []))
    client = scope.get("client")
    record: dict[str, object] = {
        "ts": _timestamp(),
        "method": scope.get("method", "GET"),
        "path": getattr(facts, "path", scope.get("path")),
        "query": scope.get("query_string", b"").decode("latin-1"),
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "bytes": sent_bytes,
        "route": route,
        "client": client[0] if client else None,
        "request_id": getattr(facts, "request_id", None),
        "user_agent": headers.get(b"user-agent", b"").decode("latin-1") or None,
    }
    if route == "proxy":
        record["upstream_status"] = getattr(facts, "upstream_status", None)
        record["upstream_ms"] = getattr(facts, "upstream_ms", None)
    if error := getattr(facts, "error", None):
        record["error"] = error
    return record


_second_text: tuple[int, str] = (-1, "")


def _timestamp() -> str:
    """ISO 8601 UTC with milliseconds; the seconds part is formatted once a second."""
    global _second_text
    now = time.time()
    second = int(now)
    if second != _second_text[0]:
        _second_text = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_text[1]}.{int((now - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Start-up messages and errors as JSON lines, on the access log's stream."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
