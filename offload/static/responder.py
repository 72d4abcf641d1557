"""Turns a request for a static path into ASGI messages: the file, a 304/412, or a redirect."""

from __future__ import annotations

import asyncio
import os

from starlette.types import Scope, Send

from offload.responses import http_date, send_plain_text
from offload.static.catalog import Asset, Catalog, OpenAsset, Redirect
from offload.static.http import NOT_MODIFIED, evaluate_preconditions
from offload.static.paths import parse_request_path

IN_MEMORY_MAX_BYTES = 64 * 1024
STREAM_CHUNK_BYTES = 256 * 1024
_CONDITIONAL_HEADERS = (b"if-match", b"if-unmodified-since", b"if-none-match", b"if-modified-since")


class TruncatedFile(OSError):
    """The file shrank while it was being sent: the connection must end, never pad or mix."""


class StaticResponder:
    """Answers GET and HEAD for files under the static root; `respond` says whether it did."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def respond(self, scope: Scope, send: Send) -> bool:
        """Send the response for ``scope`` and return ``True``, or return ``False`` on a miss."""
        path: str = scope["path"]
        segments = parse_request_path(path)
        found = await asyncio.to_thread(
            self.catalog.find, segments, trailing_slash=path.endswith("/")
        )
        if found is None:
            return False
        if isinstance(found, Redirect):
            await _send_redirect(scope, send, found)
            return True
        try:
            await _send_asset(scope, send, found)
        finally:
            os.close(found.fd)
        return True


async def _send_asset(scope: Scope, send: Send, found: OpenAsset) -> None:
    asset = found.asset
    conditionals = _request_headers(scope, _CONDITIONAL_HEADERS)
    status = evaluate_preconditions(
        method=scope["method"],
        etag=asset.etag,
        last_modified=asset.last_modified,
        if_match=conditionals.get(b"if-match"),
        if_unmodified_since=conditionals.get(b"if-unmodified-since"),
        if_none_match=conditionals.get(b"if-none-match"),
        if_modified_since=conditionals.get(b"if-modified-since"),
    )
    if status == NOT_MODIFIED:
        # RFC 9110 §15.4.5: a 304 carries the validators and caching headers, no body
        headers = (*asset.not_modified_headers, (b"date", http_date.now()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
    elif status is not None:
        await send_plain_text(send, status)
    else:
        headers = (*asset.headers, (b"date", http_date.now()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
        else:
            await _send_file(send, found.fd, asset)


async def _send_file(send: Send, fd: int, asset: Asset) -> None:
    """Send exactly ``asset.size`` bytes from the open descriptor: small files in one message,
    larger ones in chunks read off the event loop."""
    if asset.size <= IN_MEMORY_MAX_BYTES:
        body = await asyncio.to_thread(_read_exactly, fd, 0, asset.size)
        await send({"type": "http.response.body", "body": body})
        return
    offset = 0
    while offset < asset.size:
        length = min(STREAM_CHUNK_BYTES, asset.size - offset)
        chunk = await asyncio.to_thread(_read_exactly, fd, offset, length)
        offset += length
        await send({"type": "http.response.body", "body": chunk, "more_body": offset < asset.size})


def _read_exactly(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise TruncatedFile(f"file ended at byte {offset + len(data)} of {offset + length}")
        data += more
    return data


async def _send_redirect(scope: Scope, send: Send, redirect: Redirect) -> None:
    query: bytes = scope.get("query_string", b"")
    location = redirect.location.encode() + (b"?" + query if query else b"")
    headers = [(b"location", location), (b"content-length", b"0"), (b"date", http_date.now())]
    await send({"type": "http.response.start", "status": 308, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _request_headers(scope: Scope, names: tuple[bytes, ...]) -> dict[bytes, str]:
    """The named request headers, repeated ones joined with ", " (RFC 9110 §5.3)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in names:
            text = value.decode("latin-1")
            found[name] = f"{found[name]}, {text}" if name in found else text
    return found
