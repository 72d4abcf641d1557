"""What every response offload writes itself carries: the Date header from one clock, and the
short plain-text bodies of offload's own answers (400, 404, 412, 502, 504)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import formatdate
from http import HTTPStatus
from typing import NamedTuple

from starlette.types import Send


class HttpDateClock:
    """The ``Date`` header value, formatted once per second.

    offload writes Date itself rather than leaving it to uvicorn, whose value is refreshed on a
    timer and can lag the clock that ``Last-Modified`` is capped by (RFC 9110 §8.8.2.1: a
    Last-Modified later than Date must not be sent).
    """

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second, self._value = second, formatdate(second, usegmt=True).encode()
        return self._value


http_date = HttpDateClock()


class Whole(NamedTuple):
    """A response known in full before its first byte is sent."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


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
        (b"date", http_date.now()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
