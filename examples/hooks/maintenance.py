"""A maintenance switch on the shared volume: while the flag file exists, every request gets a
503 page with ``Retry-After``; remove the file and traffic flows again, no restart needed.

    OFFLOAD_MAINTENANCE_FILE=/srv/maintenance.on offload --hook-dir examples/hooks \\
        --hook maintenance:hook ...

``/.well-known/`` stays reachable (certificate renewals). The flag is looked at once a second,
not on every request.
"""

from __future__ import annotations

import os
import time

from starlette.types import ASGIApp, Receive, Scope, Send

PAGE = b"<!doctype html><title>Back soon</title><h1>Back soon</h1><p>We are doing maintenance.</p>"
CHECK_EVERY_SECONDS = 1.0


def hook(app: ASGIApp) -> ASGIApp:
    flag = os.environ.get("OFFLOAD_MAINTENANCE_FILE", "maintenance.on")
    checked_at, on = 0.0, False

    def in_maintenance() -> bool:
        nonlocal checked_at, on
        now = time.monotonic()
        if now - checked_at >= CHECK_EVERY_SECONDS:
            checked_at, on = now, os.path.exists(flag)
        return on

    async def maintenance(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        exempt = scope["type"] not in ("http", "websocket") or path.startswith("/.well-known/")
        if exempt or not in_maintenance():
            await app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})  # try again later
        else:
            headers = [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(PAGE)).encode()),
                (b"retry-after", b"120"),
                (b"cache-control", b"no-store"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": PAGE})

    return maintenance
