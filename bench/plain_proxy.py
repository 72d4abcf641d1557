"""A plain aiohttp proxy under uvicorn, the reference offload's proxy is measured against: one
pooled session, the response streamed back, nothing else (no header rules, no timeouts, no
disconnect handling). The app's address comes from BENCH_UPSTREAM."""

from __future__ import annotations

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:3000")
_session: Any = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _session = aiohttp.ClientSession(auto_decompress=False)
                await send({"type": "lifespan.startup.complete"})
            else:
                await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    async with _session.request(scope["method"], UPSTREAM + scope["path"]) as response:
        headers = [(name.lower(), value) for name, value in response.raw_headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
