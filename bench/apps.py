"""The Python peers offload is compared with, as ASGI app factories for ``uvicorn --factory``
(``bench.apps:create_servestatic``). Each reads the directory to serve from BENCH_ROOT, so the
harness runs them all over the same files; each imports only what it uses, so its start-up time
and memory are its own. ``bench.apps:servestatic`` and the like still name the apps themselves,
built on first use."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

ASGIApp = Any


def _root() -> Path:
    return Path(os.environ.get("BENCH_ROOT", "."))


def create_starlette_static() -> ASGIApp:
    """Starlette's StaticFiles: a stat and an open per request, no content negotiation."""
    from starlette.staticfiles import StaticFiles

    return StaticFiles(directory=_root())


def create_servestatic() -> ASGIApp:
    """ServeStatic (WhiteNoise's ASGI successor): scans at start, serves .br/.gz sidecars."""
    from servestatic import ServeStaticASGI  # type: ignore[import-untyped]  # ships no types

    return ServeStaticASGI(None, root=_root())


def create_ceiling() -> ASGIApp:
    """The Python server's ceiling: a dictionary lookup and one send, no HTTP rules beyond the
    least each case needs: the .br variant when the client accepts br and one exists, and 304
    when If-None-Match is exactly the file's ETag."""
    root = _root()
    files = {f"/{p.relative_to(root)}": p.read_bytes() for p in root.rglob("*") if p.is_file()}
    etags = {path: f'"{hashlib.md5(body).hexdigest()}"'.encode() for path, body in files.items()}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        request_headers = dict(scope["headers"])
        etag = etags.get(path, b"-")
        headers = [(b"content-type", b"application/octet-stream"), (b"etag", etag)]
        if request_headers.get(b"if-none-match") == etag:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if b"br" in request_headers.get(b"accept-encoding", b"") and f"{path}.br" in files:
            path += ".br"
            headers.append((b"content-encoding", b"br"))
        body = files.get(path, b"")
        headers.append((b"content-length", str(len(body)).encode()))
        status = 200 if body else 404
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


_FACTORIES = {
    "starlette_static": create_starlette_static,
    "servestatic": create_servestatic,
    "ceiling": create_ceiling,
}


def __getattr__(name: str) -> ASGIApp:
    """``bench.apps:ceiling`` without --factory: the app, built when uvicorn asks for it."""
    if name not in _FACTORIES:
        raise AttributeError(name)
    app = _FACTORIES[name]()
    globals()[name] = app
    return app
