"""A hook that rewrites paths before routing: ``/v1/...`` is served as ``/...``, so a file or
the app answers under its new name. Setting ``raw_path`` too tells offload what the app should
receive; offload would otherwise send it the rewritten path, percent-encoded.

    offload --hook-dir examples/hooks --hook rewrite:hook ...
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

OLD_PREFIX = "/v1/"


def hook(app: ASGIApp) -> ASGIApp:
    async def rewrite(scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and path.startswith(OLD_PREFIX):
            new_path = "/" + path.removeprefix(OLD_PREFIX)
            scope = {**scope, "path": new_path, "raw_path": new_path.encode()}
        await app(scope, receive, send)

    return rewrite
