"""The admin listener's app: /livez for now. It never shares a port with the public edge, so
every public path belongs to the app."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from offload.responses import send_plain_text


async def admin_app(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /livez`` answers 200 while the process runs; it never asks the app (no restart
    storms when the app is slow)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    if scope["path"] != "/livez":
        await send_plain_text(send, 404)
    elif scope["method"] not in ("GET", "HEAD"):
        await send_plain_text(send, 405, headers=[(b"allow", b"GET, HEAD")])
    else:
        await send_plain_text(send, 200, "offload is running")
