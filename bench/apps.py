"""The Python peers offload is compared with, as ASGI apps for uvicorn. Each reads the
directory to serve from BENCH_ROOT, so the harness runs them all over the same files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from servestatic import ServeStaticASGI
from starlette.staticfiles import StaticFiles

ROOT = Path(os.environ.get("BENCH_ROOT", "."))

# Starlette's StaticFiles: a stat and an open per request, no content negotiation.
starlette_static = StaticFiles(directory=ROOT)

# ServeStatic (WhiteNoise's ASGI successor): scans at start, serves .br/.gz sidecars.
servestatic = ServeStaticASGI(None, root=ROOT)


def _load(path: Path) -> bytes:
    return path.read_bytes()


_FILES = {f"/{p.relative_to(ROOT)}": _load(p) for p in ROOT.rglob("*") if p.is_file()}


async def ceiling(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The Python server's ceiling: a dictionary lookup and one send, no HTTP rules at all.
    Sends the .br variant when the client accepts br and one exists."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    accept = dict(scope["headers"]).get(b"accept-encoding", b"")
    headers = [(b"content-type", b"application/octet-stream")]
    if b"br" in accept and f"{path}.br" in _FILES:
        path += ".br"
        headers.append((b"content-encoding", b"br"))
    body = _FILES.get(path, b"")
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200 if body else 404, "headers": headers})
    await send({"type": "http.response.body", "body": body})
