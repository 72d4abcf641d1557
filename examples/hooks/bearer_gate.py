"""A hook that requires ``Authorization: Bearer <token>`` under a path prefix, for HTTP and
WebSockets alike, before offload serves a file or the app sees the request:

    OFFLOAD_GATE_TOKEN=s3cret offload --hook-dir examples/hooks --hook bearer_gate:hook ...

The prefix is ``/admin/`` unless OFFLOAD_GATE_PREFIX says otherwise. The hook reads
``scope["path"]``, which offload has already decoded and checked once, so ``//admin/``,
``/%61dmin/`` or ``/x/../admin/`` cannot slip past it; it compares without regard to case,
since Express routes ``/ADMIN/`` to ``/admin/`` by default. Without a token set, start-up
fails.
"""

from __future__ import annotations

import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send


def hook(app: ASGIApp) -> ASGIApp:
    token = os.environ.get("OFFLOAD_GATE_TOKEN", "").encode()
    if not token:
        raise RuntimeError("set OFFLOAD_GATE_TOKEN to the token the gate accepts")
    prefix = os.environ.get("OFFLOAD_GATE_PREFIX", "/admin/").lower()
    expected = b"Bearer " + token

    async def gate(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "").lower()
        guarded = scope["type"] in ("http", "websocket") and (
            path.startswith(prefix) or path == prefix.rstrip("/")
        )
        presented = dict(scope.get("headers", [])).get(b"authorization", b"")
        if not guarded or hmac.compare_digest(presented, expected):
            await app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            body = b"a bearer token is required here\n"
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="offload"'),
            ]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    return gate
