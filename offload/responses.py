"""The short plain-text responses offload writes itself (400, 404, 412, 502, 504)."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from starlette.types import Send


async def send_plain_text(
    send: Send, status: int, detail: str = "", *, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """A complete response whose body is the status phrase, and the reason when there is one."""
    phrase = HTTPStatus(status).phrase
    body = (f"{phrase}: {detail}\n" if detail else f"{phrase}\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
