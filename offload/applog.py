"""``--app-log json``: the app's stdout and stderr, read through pipes and written to offload's
stdout as JSON lines tagged ``"source": "app"``, so one stream carries offload's log and the
app's, each line whole."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import select
import sys
import time
from collections.abc import Iterator, Sequence

READ_BYTES = 65536
ATOMIC_WRITE_BYTES = select.PIPE_BUF  # as the access log: a pipe write this small is never split
# A line still without its end past this many characters is passed on as it is, in pieces:
# an app that writes a megabyte without a newline does not make offload hold a megabyte.
MAX_PENDING_CHARS = 16384


async def relay_output(reader: asyncio.StreamReader, stream: str) -> None:
    """Pass the app's ``stream`` ("stdout" or "stderr") on, line by line, until it ends; the
    last line is passed on even without its newline. Bytes that are not UTF-8 become U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while chunk := await reader.read(READ_BYTES):
        *lines, pending = (pending + decoder.decode(chunk)).split("\n")
        if len(pending) > MAX_PENDING_CHARS:
            lines.append(pending)
            pending = ""
        if lines:
            write_lines(stream, lines)
    pending += decoder.decode(b"", final=True)
    if pending:
        write_lines(stream, [pending])


def write_lines(stream: str, lines: Sequence[str]) -> None:
    """Write the lines as JSON lines on offload's stdout, in writes of whole JSON lines of at
    most `ATOMIC_WRITE_BYTES`: the access log and offload's own log share the stream (with
    ``--workers``, from several processes), and the kernel keeps only writes that small in one
    piece."""
    sys.stdout.flush()  # what went through the stream object first
    fd = sys.stdout.fileno()
    chunk = b""
    for line in lines:
        for data in _json_lines(stream, line.removesuffix("\r")):
            if chunk and len(chunk) + len(data) > ATOMIC_WRITE_BYTES:
                _write(fd, chunk)
                chunk = b""
            chunk += data
    _write(fd, chunk)


def _json_lines(stream: str, message: str) -> Iterator[bytes]:
    """One JSON line for the message, or, when that would pass `ATOMIC_WRITE_BYTES`, several,
    each with a consecutive piece of it."""
    entry = {"ts": _timestamp(), "source": "app", "stream": stream, "message": message}
    data = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
    if len(data) <= ATOMIC_WRITE_BYTES or len(message) < 2:
        yield data
        return
    half = len(message) // 2
    yield from _json_lines(stream, message[:half])
    yield from _json_lines(stream, message[half:])


def _write(fd: int, data: bytes) -> None:
    """Write it all; if offload's stdout fails (closed, full), the lines are lost rather than
    the relay: it must go on reading, or the app would block on a full pipe."""
    with contextlib.suppress(OSError):
        while data:
            written = os.write(fd, data)
            data = data[written:]


def _timestamp() -> str:
    """ISO 8601 UTC with milliseconds, as the access log writes it."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
