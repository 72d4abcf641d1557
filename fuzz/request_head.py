"""Coverage-guided fuzzing of offload's request-head handling with atheris: each input is the
bytes a client sends on one connection to offload's own protocol (`EdgeHttpProtocol` over
httptools) in front of the real edge app, which serves a small static root and proxies the rest
to a stub app on a Unix socket, all on one uvloop event loop.

    pip install atheris
    python fuzz/request_head.py -dict=fuzz/request_head.dict -max_total_time=60 CORPUS fuzz/seeds

Per input it checks: no exception escapes the protocol, the app or a loop callback (uvicorn
logs an app's exception and answers 500: both count); every connection ends once the client
leaves; what is written is nothing or starts with ``HTTP/1.1 `` and a status of 100-599; and
no byte of a file outside the static root is ever sent. See fuzz/README.md.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import atheris
import brotli
import httptools

with atheris.instrument_imports(include=["offload", "uvicorn.protocols"]):
    import uvicorn
    import uvloop
    from uvicorn.server import ServerState

    from offload.app import create_app
    from offload.config import Config
    from offload.protocol import EdgeHttpProtocol, Limits, with_limits

SECRET = b"OUTSIDE-THE-ROOT"  # in every file outside the static root; never in an answer
STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] ")
SETTLE_SECONDS = 0.02  # for the app while the client is still connected (it may await a body)
HANG_SECONDS = 5.0  # for everything to end once the client has left


class Finding(Exception):
    """An invariant broke: libFuzzer saves the input that did it."""


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
        assert isinstance(protocol, asyncio.Protocol)
        self.protocol = protocol  # a WebSocket upgrade hands the connection over

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


class StubApp(asyncio.Protocol):
    """The app behind offload: answers every complete request with 200, and names the file
    in its ``X-Fuzz-Accel`` header, if any, as its ``X-Accel-Redirect``: the fuzzer picks
    which file the app hands to the static engine."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.parser = httptools.HttpRequestParser(self)
        self.accel: bytes | None = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # no WebSockets here
            self.transport.close()

    def on_message_begin(self) -> None:
        self.accel = None

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-fuzz-accel":
            self.accel = value

    def on_message_complete(self) -> None:
        accel = b"x-accel-redirect: %s\r\n" % self.accel if self.accel else b""
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n%s\r\napp\n" % accel)


def is_known_denial_error(record: logging.LogRecord, written: bytes) -> bool:
    """uvicorn's websockets-sansio never marks the handshake done after a denial response
    (the ``websocket.http.response`` extension offload refuses upgrades with), so it logs this
    for every upgrade the app refuses; the client gets the right answer (Kludex/uvicorn#3138).
    Had offload really returned without answering, uvicorn would have sent a 500."""
    return (
        record.getMessage() == "ASGI callable returned without completing handshake."
        and STATUS_LINE.match(written) is not None
        and not written.startswith(b"HTTP/1.1 500 ")
    )


def create_static_root() -> Path:
    """A root worth probing: plain, compressible with sidecars, nested, hidden, and symlinks
    out of it; beside it, files that must never be sent."""
    base = Path(os.path.realpath(tempfile.mkdtemp(prefix="offload-fuzz-")))
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


class Harness:
    """One event loop, one edge app and one uvicorn config for the whole run; a new
    connection (protocol and transport) for every input."""

    def __init__(self) -> None:
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
        self.app = create_app(config)
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
        self.loop.run_until_complete(self.start_app())

    async def start_app(self) -> None:
        """What the edge's lifespan does, less the file watcher: its thread would run between
        inputs, and turns libFuzzer's crash report into "run interrupted"."""
        self.stub = await self.loop.create_unix_server(StubApp, self.upstream_path)
        assert self.app.catalog is not None
        assert self.app.proxy is not None
        await self.app.catalog.rescan()
        await self.app.proxy.start()

    def run(self, chunks: list[bytes]) -> bytes:
        """What offload writes back to a client that sends ``chunks`` and then leaves."""
        self.loop_errors.clear()
        self.error_log.records.clear()
        written = self.loop.run_until_complete(self.converse(chunks))
        if self.loop_errors:
            raise Finding(f"an exception in a loop callback: {self.loop_errors[0]}")
        for record in self.error_log.records:
            if is_known_denial_error(record, written):
                continue
            raise Finding(f"logged at ERROR: {record.getMessage()}") from (
                record.exc_info[1] if record.exc_info else None
            )
        return written

    async def converse(self, chunks: list[bytes]) -> bytes:
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
            await self.settle(SETTLE_SECONDS)
        if isinstance(protocol, EdgeHttpProtocol) and not transport.closing:
            protocol.expire(time.monotonic() + 3600)  # every deadline has passed: 408 or close
            await self.settle(SETTLE_SECONDS)
        transport.close()  # the client leaves
        if not await self.settle(HANG_SECONDS):
            raise Finding(f"requests still running {HANG_SECONDS} s after the client left")
        if leftovers := asyncio.all_tasks() - before:
            raise Finding(f"a task outlives its connection: {leftovers.pop()!r}")
        if self.state.connections:
            raise Finding("a connection is still counted after it was lost")
        return bytes(transport.written)

    async def settle(self, timeout_seconds: float) -> bool:
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


def split(data: bytes) -> list[bytes]:
    """The first byte says how the rest arrives: whole, or in up to eight pieces."""
    if not data:
        return [b""]
    pieces, rest = data[0] % 8 + 1, data[1:]
    size = max(1, -(-len(rest) // pieces))
    return [rest[index : index + size] for index in range(0, len(rest), size)] or [b""]


def check(written: bytes) -> None:
    if written and not STATUS_LINE.match(written):
        raise Finding(f"the answer does not start with a status line: {written[:80]!r}")
    if SECRET in written:
        raise Finding("a file outside the static root was sent")


def main() -> None:
    harness = Harness()

    def test_one_input(data: bytes) -> None:
        check(harness.run(split(data)))

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
