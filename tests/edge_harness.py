"""offload's own connection (`EdgeHttpProtocol` over httptools) and edge app on one event loop,
fed bytes in-process through a recording transport, in front of a stub app on a Unix socket that
parses what offload forwards. Shared by the property tests (tests/hostile/) and the fuzz harness
(fuzz/request_head.py), which differ only in their inputs and in what they check."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import brotli
import httptools
import uvicorn
import uvloop
from uvicorn.server import ServerState

from offload.app import Edge, create_app
from offload.config import Config
from offload.protocol import EdgeHttpProtocol, Limits, with_limits

SECRET = b"OUTSIDE-THE-ROOT"  # in every file outside the static root; never in an answer
SETTLE_SECONDS = 0.02  # for the app while the client is still connected (it may await a body)
HANG_SECONDS = 5.0  # for everything to end once the client has left


class Finding(Exception):
    """An invariant broke."""


class RecordingTransport(asyncio.Transport):
    """A connection's far end: keeps what is written before `close`, and tells the protocol
    the connection is lost on the next turn of the loop, as a socket transport does."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing:  # a closed socket transport drops writes too
            self.written += data

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self._lose)

    def _lose(self) -> None:
        self.protocol.connection_lost(None)  # whichever protocol holds the connection by now

    def is_closing(self) -> bool:
        return self.closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = cast(asyncio.Protocol, protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class ErrorLog(logging.Handler):
    """Collects what is logged at ERROR: uvicorn's "Exception in ASGI application" among it."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Forwarded:
    """One request as the stub app parsed it from what offload sent."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key.lower() == name]


class StubApp(asyncio.Protocol):
    """The app behind offload. It parses what offload forwards with httptools (llhttp, as
    Node does), records every whole request in `received` and any bytes it cannot parse in
    `malformed`, and answers each request with 200; the answer carries the request's
    ``X-Seq`` as ``X-Stub-Seq`` and, as its ``X-Accel-Redirect``, whatever the request's
    ``X-Fuzz-Accel`` names."""

    received: list[Forwarded]
    malformed: list[bytes]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.parser = httptools.HttpRequestParser(self)
        self.current: Forwarded | None = None
        self.url = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # offload's WebSocket bridge: no WebSockets here
            self.transport.close()
        except httptools.HttpParserError:
            self.malformed.append(data)
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.current = Forwarded(method=b"", target=b"")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method()
        self.current.target = self.url

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        request, self.current = self.current, None
        assert request is not None
        self.received.append(request)
        headers = b"".join(
            b"%s: %s\r\n" % (name, value)
            for name, value in (
                *((b"x-stub-seq", seq) for seq in request.values(b"x-seq")),
                *((b"x-accel-redirect", accel) for accel in request.values(b"x-fuzz-accel")),
            )
        )
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n%s\r\napp\n" % headers)


def create_static_root() -> Path:
    """A root worth probing: plain, compressible with sidecars, nested, hidden, and symlinks
    out of it; beside it, files that must never be sent."""
    base = Path(os.path.realpath(tempfile.mkdtemp(prefix="offload-edge-")))
    root, outside = base / "root", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (base / "root2").mkdir()
    script = b"var answer = 42;\n" * 200
    (root / "index.html").write_bytes(b"<!doctype html><title>fuzz</title>\n")
    (root / "app.js").write_bytes(script)
    (root / "app.js.gz").write_bytes(gzip.compress(script))
    (root / "app.js.br").write_bytes(brotli.compress(script))
    (root / "data.bin").write_bytes(bytes(range(256)) * 4)
    (root / "sub" / "page.html").write_bytes(b"<p>sub</p>\n")
    (root / ".hidden").write_bytes(b"hidden\n")
    for secret in (outside / "secret.txt", base / "root2" / "secret.txt", base / "secret.txt"):
        secret.write_bytes(SECRET + b"\n")
    os.symlink("../outside/secret.txt", root / "leak.txt")
    os.symlink("../outside", root / "out")
    os.symlink("sub/page.html", root / "alias.html")
    return root


class EdgeHarness:
    """One event loop, one edge app, one stub app and one uvicorn config for the whole run; a
    new client connection (protocol and transport) for every input. ``settle_seconds`` is how
    long the loop may run after each piece of input while requests are still in flight."""

    def __init__(self, *, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.settle_seconds = settle_seconds
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.error_log = ErrorLog()
        logging.getLogger().addHandler(self.error_log)  # also keeps warnings off the terminal
        root = create_static_root()
        self.upstream_path = str(root.parent / "app.sock")
        config = Config(
            static=root,
            upstream=f"unix:{self.upstream_path}",
            access_log="off",
            compress_static=False,  # the sidecars are there: no variants built in between
        )
        self.app: Edge = create_app(config)
        self.uvicorn_config = uvicorn.Config(
            self.app,
            http=with_limits(Limits()),
            ws="websockets-sansio",
            lifespan="off",  # started below, by hand
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            log_config=None,
        )
        self.uvicorn_config.load()
        self.state = ServerState()
        self.received: list[Forwarded] = []  # what the stub app parsed, for the current input
        self.malformed: list[bytes] = []
        self.loop.run_until_complete(self._start_app())

    async def _start_app(self) -> None:
        """What the edge's lifespan does, less the file watcher: its thread would run between
        inputs (and turns libFuzzer's crash report into "run interrupted")."""

        def stub() -> StubApp:
            app = StubApp()
            app.received, app.malformed = self.received, self.malformed
            return app

        self.stub = await self.loop.create_unix_server(stub, self.upstream_path)
        assert self.app.catalog is not None
        assert self.app.proxy is not None
        await self.app.catalog.rescan()
        await self.app.proxy.start()

    def close(self) -> None:
        """Stop the stub app, close the pool and the loop, and stop collecting the log."""
        assert self.app.proxy is not None
        self.stub.close()
        self.loop.run_until_complete(self.app.proxy.close())
        self.loop.close()
        asyncio.set_event_loop(None)
        logging.getLogger().removeHandler(self.error_log)

    def run(self, chunks: list[bytes]) -> bytes:
        """What offload writes back to a client that sends ``chunks`` and then leaves; what the
        stub app parsed meanwhile is in `received` and `malformed`."""
        self.loop_errors.clear()
        self.error_log.records.clear()
        self.received.clear()
        self.malformed.clear()
        written = self.loop.run_until_complete(self._converse(chunks))
        if self.loop_errors:
            raise Finding(f"an exception in a loop callback: {self.loop_errors[0]}")
        return written

    async def _converse(self, chunks: list[bytes]) -> bytes:
        protocol_class = self.uvicorn_config.http_protocol_class
        protocol = protocol_class(  # type: ignore[call-arg]  # as offload's _serve_accepted does
            config=self.uvicorn_config,
            server_state=self.state,
            app_state={},
            _loop=self.loop,
        )
        before = asyncio.all_tasks()  # this coroutine's own task, and nothing of the last input
        transport = RecordingTransport(self.loop, protocol)
        protocol.connection_made(transport)
        for chunk in chunks:
            if transport.closing:
                break
            transport.protocol.data_received(chunk)
            await self._settle(self.settle_seconds)
        if isinstance(protocol, EdgeHttpProtocol) and not transport.closing:
            protocol.expire(time.monotonic() + 3600)  # every deadline has passed: 408 or close
            await self._settle(self.settle_seconds)
        transport.close()  # the client leaves
        if not await self._settle(HANG_SECONDS):
            raise Finding(f"requests still running {HANG_SECONDS} s after the client left")
        if leftovers := asyncio.all_tasks() - before:
            raise Finding(f"a task outlives its connection: {leftovers.pop()!r}")
        if self.state.connections:
            raise Finding("a connection is still counted after it was lost")
        for _ in range(3):  # the stub's last reads
            await asyncio.sleep(0)
        return bytes(transport.written)

    async def _settle(self, timeout_seconds: float) -> bool:
        """Let the loop run until no request task is left (True), or the time is up."""
        deadline = time.monotonic() + timeout_seconds
        for _ in range(3):
            await asyncio.sleep(0)
        while pending := [task for task in self.state.tasks if not task.done()]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.wait(pending, timeout=remaining)
            for _ in range(3):  # done callbacks, then the corked transport's flush
                await asyncio.sleep(0)
        return True


@dataclass
class ClientRequest:
    """A whole request in the client's bytes, as httptools (offload's parser) reads them."""

    method: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _ClientParser:
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.requests: list[ClientRequest] = []
        self._current: ClientRequest | None = None

    def on_message_begin(self) -> None:
        self._current = ClientRequest(b"", [], b"")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        if not self._current.method:  # after the head: a trailer field
            self._current.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self._current is not None
        self._current.method = self.parser.get_method()

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body += body

    def on_message_complete(self) -> None:
        assert self._current is not None
        self.requests.append(self._current)


def client_requests(data: bytes) -> list[ClientRequest]:
    """The whole requests a client's bytes hold, up to the first that httptools refuses or that
    upgrades (offload reads nothing after either)."""
    reader = _ClientParser()
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        reader.parser.feed_data(data)
    return reader.requests


def check_forwarded(data: bytes, received: list[Forwarded], malformed: list[bytes]) -> None:
    """What reached the app is one well-framed request per client request: the stub parsed
    every byte offload sent, and its requests are, in order, some of the client's whole
    requests with the same method and the same body bytes."""
    if malformed:
        raise Finding(f"the app could not parse what offload sent: {malformed[0][:120]!r}")
    sent = iter(client_requests(data))
    for request in received:
        if not any(
            request.method == original.method and request.body == original.body for original in sent
        ):
            raise Finding(
                f"the app parsed a request the client did not send: {request.method!r} "
                f"{request.target!r} with {len(request.body)} body bytes"
            )
