"""The access log and the metrics, as the outermost middleware, around the hooks and routing
(observe -> hooks -> route), and the edge's shared counters: in flight, draining.

Log lines are batched and written at most every 0.2 s, so a request costs no write system call.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import os
import select
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from offload.facts import RequestFacts, request_facts
from offload.responses import Whole, send_plain_text

if TYPE_CHECKING:
    from offload.proxy.http import HttpProxy

LOG_FORMATS = ("json", "text", "off")
FLUSH_EVERY_SECONDS = 0.2
ATOMIC_WRITE_BYTES = select.PIPE_BUF  # 4096 on Linux: a pipe write this small is never split
DURATION_BUCKETS = Histogram.DEFAULT_BUCKETS[:-1]  # prometheus-client's, less the +Inf
CLIENT_CLOSED = 499  # nginx's status for a client that left before the response
INTERNAL_ERROR = "internal_error"  # the access log's error for an exception from a hook or routing
# On scope["state"] once the edge's routing has the request: a request that never got there,
# and for which no route was decided, was answered by a hook (its route label is "hook")
ROUTED_KEY = "offload.routed"
FactsMaker = Callable[[], RequestFacts]

logger = logging.getLogger("offload.observe")


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
        self.answered = AnsweredRequests()
        registry.register(self.answered)
        self.in_flight = Gauge(
            "offload_http_requests_in_flight", "Requests being answered", registry=registry
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

    def record(self, route: str, method: str, status: int, seconds: float, sent: int) -> None:
        self.answered.record(route, method, status, seconds, sent)


class _Tally:
    __slots__ = ("buckets", "count", "seconds", "sent")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.sent = 0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf only


class AnsweredRequests:
    """The per-request metrics — ``offload_http_requests_total``,
    ``offload_http_request_duration_seconds`` and ``offload_http_response_size_bytes_total`` —
    kept as plain numbers per (route, method, status) and turned into metric families only when
    scraped. A request costs one dictionary lookup and a few additions, a fraction of what three
    prometheus-client children (each with a lock) cost on every request."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str, int], _Tally] = {}

    def record(self, route: str, method: str, status: int, seconds: float, sent: int) -> None:
        key = (route, method, status)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        tally.count += 1
        tally.seconds += seconds
        tally.sent += sent
        tally.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "offload_http_requests", "Requests answered", labels=["route", "method", "code"]
        )
        sizes = CounterMetricFamily(
            "offload_http_response_size_bytes", "Body bytes sent", labels=["route"]
        )
        durations: dict[tuple[str, str], tuple[list[int], float]] = {}
        sent: dict[str, int] = {}
        for (route, method, status), tally in self._tallies.items():
            requests.add_metric([route, method, str(status)], tally.count)
            sent[route] = sent.get(route, 0) + tally.sent
            counts, total = durations.get((route, method), ([0] * len(tally.buckets), 0.0))
            counts = [mine + theirs for mine, theirs in zip(counts, tally.buckets, strict=True)]
            durations[(route, method)] = (counts, total + tally.seconds)
        histogram = HistogramMetricFamily(
            "offload_http_request_duration_seconds",
            "Time to the last byte",
            labels=["route", "method"],
        )
        bounds = [*map(floatToGoString, DURATION_BUCKETS), "+Inf"]
        for labels, (counts, total) in durations.items():
            cumulative = list(itertools.accumulate(counts))
            histogram.add_metric(list(labels), list(zip(bounds, cumulative, strict=True)), total)
        for route, value in sent.items():
            sizes.add_metric([route], value)
        yield requests
        yield histogram
        yield sizes


class ProtectionCollector:
    """The circuit breaker and the concurrency cap toward the app, read at scrape time."""

    def __init__(self, proxy: HttpProxy) -> None:
        self.proxy = proxy

    def collect(self) -> Iterator[Metric]:
        breaker, cap = self.proxy.breaker, self.proxy.cap
        yield GaugeMetricFamily(
            "offload_upstream_breaker_open",
            "1 while the circuit breaker keeps requests from the app (open or half-open)",
            value=1 if breaker is not None and breaker.is_open else 0,
        )
        yield CounterMetricFamily(
            "offload_upstream_breaker_trips",
            "Times the circuit breaker opened",
            value=breaker.trips if breaker is not None else 0,
        )
        rejected = CounterMetricFamily(
            "offload_upstream_rejected",
            "Requests answered 503 by offload without reaching the app",
            labels=["reason"],
        )
        for reason, count in self.proxy.rejected.items():
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily(
            "offload_upstream_queued",
            "Requests waiting for a slot under --upstream-max-concurrency",
            value=cap.waiting if cap is not None else 0,
        )


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
            line = json.dumps(record, separators=(",", ":"))  # escapes every control character
        else:
            line = _text_line(record)
        if not self._pending:
            asyncio.get_running_loop().call_later(FLUSH_EVERY_SECONDS, self.flush)
        self._pending.append(line + "\n")

    def flush(self) -> None:
        """Write the pending lines, whole (`write_whole_lines`)."""
        lines, self._pending = self._pending, []
        if not lines:
            return
        self.stream.flush()  # whatever went through the stream object first
        write_whole_lines((line.encode() for line in lines), self._write)

    def _write(self, data: bytes) -> None:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a file: a test's StringIO
            self.stream.write(data.decode())
            self.stream.flush()
            return
        write_all(fd, data)


def _text_line(record: dict[str, object]) -> str:
    """``client method target status bytes duration route request_id``, what the client sent
    escaped (`escape_text`) when it needs to be."""
    query = f"?{record['query']}" if record["query"] else ""
    line = (
        f"{record['client']} {record['method']} {record['path']}{query} "
        f"{record['status']} {record['bytes']} {record['duration_ms']}ms "
        f"{record['route']} {record['request_id']}"
    )
    if line.isprintable() and line.count(" ") == 7 and "\\" not in line:
        return line  # nearly every line, at the cost of three scans in C
    client, method, target, request_id = (
        escape_text(str(record[name])) for name in ("client", "method", "path", "request_id")
    )
    query = f"?{escape_text(str(record['query']))}" if record["query"] else ""
    return (
        f"{client} {method} {target}{query} {record['status']} {record['bytes']} "
        f"{record['duration_ms']}ms {record['route']} {request_id}"
    )


def escape_text(value: str) -> str:
    """``value`` as one field of a text line: control characters, other characters that do
    not print (U+0085, U+2028…), the space that separates fields and the backslash itself
    escaped as nginx does, ``\\xHH`` (``\\uHHHH`` past U+00FF), so that a client cannot forge
    a line (``%0A`` in a path) or a field, nor send escape codes to a terminal (issue 14)."""
    if value.isprintable() and " " not in value and "\\" not in value:
        return value
    return "".join(map(_escape_character, value))


def _escape_character(character: str) -> str:
    if character.isprintable() and character not in " \\":
        return character
    code = ord(character)
    if code <= 0xFF:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def write_whole_lines(lines: Iterable[bytes], write: Callable[[bytes], None]) -> None:
    """Hand ``write`` the lines in pieces of whole lines of at most `ATOMIC_WRITE_BYTES`: with
    ``--workers`` (and the app's output under ``--app-log json``) several writers share one
    pipe, and the kernel keeps only writes that small in one piece, so a line never
    interleaves with another's."""
    chunk: list[bytes] = []
    size = 0
    for data in lines:
        if chunk and size + len(data) > ATOMIC_WRITE_BYTES:
            write(b"".join(chunk))
            chunk, size = [], 0
        chunk.append(data)
        size += len(data)
    if chunk:
        write(b"".join(chunk))


def write_all(fd: int, data: bytes) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


class ObserveMiddleware:
    """Counts, times and logs every HTTP and WebSocket request, those a hook answers itself
    included; while draining, asks clients to close their connection after each response
    (``Connection: close``). An exception from a hook or routing is logged here, once, with
    its traceback, and answered 500 when no response has started (`_answer_internal_error`)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, log: AccessLog, state: EdgeState):
        self.app = app
        self.metrics = metrics
        self.log = log
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 0
        sent_bytes = 0
        client_left = False

        async def observed_send(message: Message) -> None:
            nonlocal status, sent_bytes, client_left
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
            elif kind == "websocket.http.response.start":  # a handshake answered with a status
                status = message["status"]
            elif kind == "websocket.close" and status == 0:
                status = 403  # ASGI: a close before the accept is the server's 403
            try:
                await send(message)
            except OSError:  # ASGI: how the server says the client has gone (uvicorn's WebSockets)
                client_left = True
                raise

        error = None
        self._begin()
        try:
            await self.app(scope, receive, observed_send)
        except Exception:  # whatever a hook or routing raises is this request's 500
            if client_left:
                error = "client_closed"
                raise  # not a failure of offload's: the server's to handle, quietly
            error = INTERNAL_ERROR
            await _answer_failure(scope, observed_send, started=status != 0)
        finally:
            self._end()
            facts = request_facts(scope)
            seconds = time.perf_counter() - started
            if error is not None:
                status = status or 500  # even if the 500 could not be sent
            route = _route_label(scope, facts)
            self._record(scope, facts, route, status, sent_bytes, seconds, error=error)

    async def send_whole(
        self, scope: Scope, send: Send, whole: Whole, *, route: str, facts: FactsMaker
    ) -> None:
        """Send a response known in full, observed as `__call__` observes one, without its
        wrapper around ``send``: the edge's fast path for static hits when there are no hooks.
        ``facts`` are made only for the access log."""
        started = time.perf_counter()
        headers = whole.headers
        if self.state.draining:
            headers = (*headers, (b"connection", b"close"))
        status = sent_bytes = 0
        self._begin()
        try:
            await send({"type": "http.response.start", "status": whole.status, "headers": headers})
            status = whole.status
            await send({"type": "http.response.body", "body": whole.body})
            sent_bytes = len(whole.body)
        finally:
            self._end()
            made = facts() if self.log.log_format != "off" else None
            seconds = time.perf_counter() - started
            self._record(scope, made, route, status, sent_bytes, seconds)

    def _begin(self) -> None:
        self.state.in_flight += 1  # the gauge is set from this at scrape time
        if self.state.in_flight == 1:
            self.state.idle.clear()

    def _end(self) -> None:
        self.state.in_flight -= 1
        if self.state.in_flight == 0:
            self.state.idle.set()

    def _record(
        self,
        scope: Scope,
        facts: RequestFacts | None,
        route: str,
        status: int,
        sent_bytes: int,
        seconds: float,
        *,
        error: str | None = None,
    ) -> None:
        error = error or (facts.error if facts else None)
        if status == 0:
            status = CLIENT_CLOSED
        self.metrics.record(route, scope.get("method", "GET"), status, seconds, sent_bytes)
        if error in _UPSTREAM_ERROR_KINDS:
            self.metrics.upstream_errors.labels(_UPSTREAM_ERROR_KINDS[error]).inc()
        if self.log.log_format != "off":
            self.log.write(_log_record(scope, facts, status, sent_bytes, seconds, route, error))


def _route_label(scope: Scope, facts: RequestFacts | None) -> str:
    """The route of the metrics and the access log: the one routing decided; ``hook`` for a
    request a hook answered (or failed) before routing; ``none`` when routing had it and
    decided none (a 404 without ``--upstream``), or for a path refused before the hooks."""
    if facts is None:
        return "none"
    if facts.route is not None:
        return facts.route
    return "none" if scope["state"].get(ROUTED_KEY) else "hook"


async def _answer_failure(scope: Scope, send: Send, *, started: bool) -> None:
    """Called with an exception from a hook or routing in hand: log it with its traceback and,
    before the response started, answer 500. After, returning short of the response's end is
    enough: uvicorn closes the connection, with a one-line error and no second traceback."""
    facts = request_facts(scope)
    request = (
        f"{scope.get('method', 'WebSocket')} {escape_text(scope.get('path', ''))}"
        f" (request id {escape_text(facts.request_id) if facts else None})"
    )
    if started:
        logger.exception("%s failed after its response started", request)
        return
    logger.exception("%s failed: answered 500", request)
    await _answer_internal_error(scope, send)


async def _answer_internal_error(scope: Scope, send: Send) -> None:
    """500, plain text; for a WebSocket handshake, as an HTTP response if the server can send
    one (the ASGI ``websocket.http.response`` extension), else a close (uvicorn's 403)."""
    if scope["type"] == "http":
        await send_plain_text(send, 500)
    elif "websocket.http.response" in scope.get("extensions", {}):
        body = b"Internal Server Error\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "websocket.http.response.start", "status": 500, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1011})  # RFC 6455 §7.4.1: internal error


def _log_record(
    scope: Scope,
    facts: RequestFacts | None,
    status: int,
    sent_bytes: int,
    seconds: float,
    route: str,
    error: str | None,
) -> dict[str, object]:
    """The access-log fields. No Authorization, no Cookie: only what is named here is logged."""
    headers = dict(scope.get("headers", []))
    client = scope.get("client")
    record: dict[str, object] = {
        "ts": timestamp(),
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
    if error:
        record["error"] = error
    return record


_second_text: tuple[int, str] = (-1, "")


def timestamp() -> str:
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
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # structured fields, given as logger.info(..., extra={"fields": {"pid": 123}})
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
