"""Turns a request for a cataloged path into ASGI messages: the negotiated representation, a
304/412, a 206/416 from the identity bytes, or a directory redirect."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Sequence
from typing import NamedTuple

from starlette.types import Receive, Scope, Send

from offload.negotiation import IDENTITY, select_encoding
from offload.responses import Whole, http_date, send_plain_text
from offload.static.assets import Asset, Header, Redirect, Representation
from offload.static.catalog import Catalog
from offload.static.files import read_exactly
from offload.static.http import (
    NOT_MODIFIED,
    UNSATISFIABLE,
    ByteRange,
    evaluate_preconditions,
    is_range_fresh,
    parse_range,
)

# 5 MB at 64 connections: 256 KiB chunks gave 0.63x nginx's rate, 512 KiB 0.74x for about
# 50 MB more peak RSS (each connection holds a chunk and uvicorn's buffer of the last one)
STREAM_CHUNK_BYTES = 512 * 1024
_CONDITIONALS = frozenset(
    {b"if-match", b"if-unmodified-since", b"if-none-match", b"if-modified-since"}
)
_REQUEST_HEADERS = frozenset(
    {
        b"accept-encoding",
        b"if-match",
        b"if-unmodified-since",
        b"if-none-match",
        b"if-modified-since",
        b"range",
        b"if-range",
    }
)
_BOUNDARY = secrets.token_hex(16)


class StaticResponder:
    """Answers GET and HEAD from the catalog; `respond` says whether it did."""

    def __init__(
        self, catalog: Catalog, *, spa: bool = False, internal_prefix: str | None = None
    ) -> None:
        self.catalog = catalog
        self.spa = spa
        self.internal_prefix = internal_prefix

    async def respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        internal: bool = False,
        may_rescan: bool = True,
        on_hit: Callable[[Asset | Redirect], object] | None = None,
    ) -> Asset | Redirect | None:
        """Send the response for ``scope`` and return what answered it, or ``None`` on a miss.

        Paths under the internal prefix miss unless ``internal`` (an X-Accel-Redirect).
        ``on_hit`` hears what will answer before anything is sent.
        """
        path: str = scope["path"]
        if not internal and self._is_internal(path):
            return None
        generation = self.catalog.generation
        entry = self.catalog.entries.get(path) or self._fallback(path)
        if entry is None:
            return None
        if on_hit is not None:
            on_hit(entry)
        if isinstance(entry, Redirect):
            await _send_redirect(scope, send, entry)
            return entry
        request = _request_headers(scope["headers"])
        plan = _plan(scope["method"], entry, request)
        if not plan.needs_file:
            await plan.send(send, _Body(None, _still_connected))
            return entry
        if self.catalog.is_small(plan.representation):
            data = self.catalog.hot.get(plan.representation)  # a hot file: no await at all
            if data is None:
                data = await self.catalog.read_small(plan.representation)
            if data is not None:
                await plan.send(send, _Body(None, _still_connected, data))
                return entry
            fd = None
        else:
            fd = await _open(self.catalog, plan.representation)
        if fd is None:  # changed on disk before the watcher saw it: describe it anew
            if not may_rescan:
                return None
            await self.catalog.rescan(unless_newer_than=generation)
            return await self.respond(
                scope, receive, send, internal=internal, may_rescan=False, on_hit=on_hit
            )
        # uvicorn drops what is sent after a disconnect: stop reading the file instead
        disconnected = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            await plan.send(send, _Body(fd, lambda: not disconnected.done()))
        finally:
            disconnected.cancel()
            os.close(fd)
        return entry

    def answer_at_once(
        self, method: str, path: str, headers: Sequence[Header]
    ) -> tuple[Asset, Whole] | None:
        """The whole response to a GET or HEAD of a file whose bytes are already in memory —
        a 200, a HEAD or a 304 — with no I/O and no await; ``None`` when anything more is
        needed (a miss, a redirect, a range, a failed precondition, a file not read yet), and
        `respond` answers instead. Nothing is sent here."""
        if self._is_internal(path):
            return None
        entry = self.catalog.entries.get(path)
        if not isinstance(entry, Asset):
            return None
        plan = _plan(method, entry, _request_headers(headers))
        if plan.status not in (200, NOT_MODIFIED):
            return None
        data = None
        if plan.needs_file:
            if not self.catalog.is_small(plan.representation):
                return None
            data = self.catalog.hot.get(plan.representation)
            if data is None:
                return None
        return entry, plan.whole(data)

    def _is_internal(self, path: str) -> bool:
        prefix = self.internal_prefix
        return prefix is not None and (path.startswith(prefix) or path == prefix.rstrip("/"))

    def _fallback(self, path: str) -> Asset | Redirect | None:
        """``--spa``: a navigation path without a file extension gets the root index.html."""
        if self.spa and "." not in path.rsplit("/", 1)[-1]:
            return self.catalog.entries.get("/")
        return None


async def _open(catalog: Catalog, representation: Representation) -> int | None:
    """Open on a worker thread; if the request is cancelled meanwhile, the descriptor the
    thread still opens is closed when it arrives, not leaked."""
    opening = asyncio.ensure_future(asyncio.to_thread(catalog.open_representation, representation))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[int | None]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        fd = opening.result()
        if fd is not None:
            os.close(fd)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _still_connected() -> bool:
    return True


class _Plan:
    """What one request gets: the representation, the status, and the ranges if any."""

    def __init__(
        self,
        asset: Asset,
        representation: Representation,
        *,
        status: int,
        ranges: Sequence[ByteRange] = (),
        with_body: bool = True,
    ) -> None:
        self.asset = asset
        self.representation = representation
        self.status = status
        self.ranges = ranges
        self.with_body = with_body

    @property
    def needs_file(self) -> bool:
        has_body = self.with_body and self.status in (200, 206)
        return has_body and self.representation.body is None

    def whole(self, data: bytes | None) -> Whole:
        """A 304, or a 200 whose bytes are at hand (held by the representation, or ``data``),
        or a HEAD."""
        date = (b"date", http_date.now())
        representation = self.representation
        if self.status == NOT_MODIFIED:
            return Whole(304, (*representation.not_modified_headers, date), b"")
        held = representation.body if representation.body is not None else data
        assert held is not None or not self.with_body
        body = held if held is not None and self.with_body else b""
        return Whole(200, (*representation.headers, date), body)

    async def send(self, send: Send, body: _Body) -> None:
        date = (b"date", http_date.now())
        representation = self.representation
        if self.status == NOT_MODIFIED or (
            self.status == 200 and (body.data is not None or not self.needs_file)
        ):
            whole = self.whole(body.data)
            await _start(send, whole.status, whole.headers)
            await send({"type": "http.response.body", "body": whole.body})
        elif self.status == 412:
            await send_plain_text(send, 412)
        elif self.status == 416:
            size = self.asset.identity.size
            headers = (*self.asset.range_headers(), (b"content-length", b"0"))
            await _start(
                send, 416, (*headers, (b"content-range", f"bytes */{size}".encode()), date)
            )
            await send({"type": "http.response.body", "body": b""})
        elif self.status == 206:
            await self._send_ranges(send, body, date)
        else:
            await _start(send, 200, (*representation.headers, date))
            ranges: list[ByteRange] | None = [] if not self.with_body else None
            await _send_body(send, representation, body, ranges)

    async def _send_ranges(self, send: Send, body: _Body, date: Header) -> None:
        identity = self.asset.identity
        if len(self.ranges) == 1:
            part = self.ranges[0]
            headers = (
                *self.asset.range_headers(),
                (b"content-length", str(part.length).encode()),
                (b"content-range", part.content_range(identity.size).encode()),
                date,
            )
            await _start(send, 206, headers)
            await _send_body(send, identity, body, self.ranges)
            return
        heads = [_part_head(self.asset, part) for part in self.ranges]
        closing = f"--{_BOUNDARY}--\r\n".encode()
        length = sum(
            len(head) + part.length + 2 for head, part in zip(heads, self.ranges, strict=True)
        )
        headers = tuple(
            header for header in self.asset.range_headers() if header[0] != b"content-type"
        )
        content_type = f"multipart/byteranges; boundary={_BOUNDARY}".encode()
        await _start(
            send,
            206,
            (
                (b"content-type", content_type),
                (b"content-length", str(length + len(closing)).encode()),
                *headers,
                date,
            ),
        )
        for head, part in zip(heads, self.ranges, strict=True):
            await send({"type": "http.response.body", "body": head, "more_body": True})
            await _send_body(send, identity, body, [part], final=False)
            await send({"type": "http.response.body", "body": b"\r\n", "more_body": True})
        await send({"type": "http.response.body", "body": closing})


def _plan(method: str, asset: Asset, request: dict[bytes, str]) -> _Plan:
    """RFC 9110 §13.2.2 order: choose the representation, evaluate preconditions on it, then
    ranges (GET only, §14.2), which are always answered from the identity bytes (HTTP.md)."""
    coding = IDENTITY
    if asset.negotiable:
        coding = select_encoding(request.get(b"accept-encoding"), asset.codings)
    ranges = None
    if method == "GET" and (header := request.get(b"range")) is not None:
        identity = asset.identity
        ranges = parse_range(header, identity.size)
        if ranges is not None and is_range_fresh(
            request.get(b"if-range"), etag=identity.etag, last_modified=asset.last_modified
        ):
            coding = IDENTITY
        else:
            ranges = None
    representation = asset.representation(coding)
    if ranges is None and _CONDITIONALS.isdisjoint(request):  # most requests: a plain GET
        return _Plan(asset, representation, status=200, with_body=method != "HEAD")
    precondition = evaluate_preconditions(
        method=method,
        etag=representation.etag,
        last_modified=asset.last_modified,
        if_match=request.get(b"if-match"),
        if_unmodified_since=request.get(b"if-unmodified-since"),
        if_none_match=request.get(b"if-none-match"),
        if_modified_since=request.get(b"if-modified-since"),
    )
    if precondition is not None:
        return _Plan(asset, representation, status=precondition)
    if ranges is UNSATISFIABLE:
        return _Plan(asset, representation, status=416)
    if isinstance(ranges, list):
        return _Plan(asset, representation, status=206, ranges=ranges)
    return _Plan(asset, representation, status=200, with_body=method != "HEAD")


class _Body(NamedTuple):
    """Where the bytes come from when the representation holds none (a built variant does):
    ``data`` read whole (a small file), or the open ``fd`` read in chunks while anyone still
    listens."""

    fd: int | None
    is_connected: Callable[[], bool]
    data: bytes | None = None


async def _send_body(
    send: Send,
    representation: Representation,
    source: _Body,
    ranges: Sequence[ByteRange] | None,
    *,
    final: bool = True,
) -> None:
    """The bytes of ``ranges`` (``None``: all of it; empty: none), from memory or the open
    descriptor. Exactly the announced length goes out, or the read raises and the connection
    ends (`TruncatedFile`); reading stops when the client has gone."""
    if ranges is None:
        ranges = [ByteRange(0, representation.size - 1)] if representation.size else []
    held = representation.body if representation.body is not None else source.data
    if not ranges:  # HEAD, or an empty file: nothing to read
        await send({"type": "http.response.body", "body": b"", "more_body": not final})
        return
    if held is not None:
        body = b"".join(held[part.start : part.end + 1] for part in ranges)
        await send({"type": "http.response.body", "body": body, "more_body": not final})
        return
    fd = source.fd
    assert fd is not None
    for part in ranges:
        offset, end = part.start, part.end + 1
        while offset < end:
            if not source.is_connected():
                return
            length = min(STREAM_CHUNK_BYTES, end - offset)
            chunk = await asyncio.to_thread(read_exactly, fd, offset, length)
            offset += length
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if final:
        await send({"type": "http.response.body", "body": b""})


def _part_head(asset: Asset, part: ByteRange) -> bytes:
    return (
        f"--{_BOUNDARY}\r\nContent-Type: {asset.media_type}\r\n"
        f"Content-Range: {part.content_range(asset.identity.size)}\r\n\r\n"
    ).encode()


async def _start(send: Send, status: int, headers: Sequence[Header]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _send_redirect(scope: Scope, send: Send, redirect: Redirect) -> None:
    query: bytes = scope.get("query_string", b"")
    location = redirect.location.encode() + (b"?" + query if query else b"")
    headers = [(b"location", location), (b"content-length", b"0"), (b"date", http_date.now())]
    await _start(send, 308, headers)
    await send({"type": "http.response.body", "body": b""})


def _request_headers(headers: Sequence[Header]) -> dict[bytes, str]:
    """The request headers the static engine reads, repeats joined with ", " (RFC 9110 §5.3)."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in _REQUEST_HEADERS:
            text = value.decode("latin-1")
            found[name] = f"{found[name]}, {text}" if name in found else text
    return found
