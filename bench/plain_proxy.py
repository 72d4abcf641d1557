"""A plain aiohttp proxy under uvicorn, the reference offload's proxy is measured against: one
pooled session with no connection limit, the request body and the response streamed through,
nothing else (no header rules, no timeouts, no disconnect handling). The app's address comes
from BENCH_UPSTREAM."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:3000")
_session: Any = None


async def _lifespan(receive: Any, send: Any) -> None:
    global _session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # no limit: 1,000 event streams are 1,000 connections to the app, as in nginx
            connector = aiohttp.TCPConnector(limit=0)
            _session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            await send({"type": "lifespan.startup.complete"})
        else:
            await _session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _body(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    url = UPSTREAM + scope["path"]
    if scope["query_string"]:
        url += "?" + scope["query_string"].decode()
    request_headers = dict(scope["headers"])
    length = request_headers.get(b"content-length")
    has_body = length not in (None, b"0") or b"transfer-encoding" in request_headers
    forwarded = {"content-length": length.decode()} if has_body and length else {}
    data = _body(receive) if has_body else None
    async with _session.request(scope["method"], url, data=data, headers=forwarded) as response:
        headers = [(name.lower(), value) for name, value in response.raw_headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
