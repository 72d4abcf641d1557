"""The client's side of one proxied exchange: the request body handed to the app as it
arrives, through a bounded queue, and the watch for the client going away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from starlette.types import Message, Receive

BODY_QUEUE_CHUNKS = 4


class RequestReader:
    """The client's side of one exchange: body chunks for the app as they arrive (a bounded
    queue keeps memory flat), then the wait for the client to go away.

    ``on_abort`` runs when the client disconnects; when the body passes ``max_body_bytes``
    (``too_large``); or when the app has not taken a chunk for ``stall_timeout_seconds``
    (``stalled``): while the queue is full nothing reads from the client, so a stalled app would
    otherwise hold the request forever.
    """

    def __init__(
        self,
        receive: Receive,
        *,
        on_abort: Callable[[], object],
        stall_timeout_seconds: float,
        max_body_bytes: int | None,
        has_body: bool = True,
    ) -> None:
        self._receive = receive
        self._on_abort = on_abort
        self._stall_timeout_seconds = stall_timeout_seconds
        self._max_body_bytes = max_body_bytes
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=BODY_QUEUE_CHUNKS)
        self._received_bytes = 0
        self.body_complete = asyncio.Event()
        self.has_body = has_body
        if not has_body:  # nothing to hand over: only the disconnect is waited for
            self.body_complete.set()
        self.disconnected = asyncio.Event()
        self.stalled = False
        self.too_large = False

    async def run(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
                self._on_abort()
                return
            if message["type"] == "http.request" and not self.body_complete.is_set():
                body = message.get("body", b"")
                self._received_bytes += len(body)
                if self._max_body_bytes is not None and self._received_bytes > self._max_body_bytes:
                    self.too_large = True
                    self._on_abort()
                    return
                if body and not await self._hand_over(body):
                    return
                if not message.get("more_body", False):
                    if not await self._hand_over(None):
                        return
                    self.body_complete.set()

    async def _hand_over(self, chunk: bytes | None) -> bool:
        try:
            async with asyncio.timeout(self._stall_timeout_seconds):
                await self._chunks.put(chunk)
        except TimeoutError:
            self.stalled = True
            self._on_abort()
            return False
        return True

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._chunks.get()) is not None:
            yield chunk

    async def receive_disconnect(self) -> Message:
        """An ASGI ``receive`` for whoever answers in the proxy's place: it only ever says the
        client went away (this reader owns the real one)."""
        await self.disconnected.wait()
        return {"type": "http.disconnect"}
