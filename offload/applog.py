"""``--app-log json``: the app's stdout and stderr, read through pipes and written to offload's
stdout as JSON lines tagged ``"source": "app"``, so one stream carries offload's log and the
app's, each line whole."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence

from offload.observe import ATOMIC_WRITE_BYTES, timestamp, write_all, write_whole_lines

READ_BYTES = 65536
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
    """Write the lines as JSON lines on offload's stdout, whole (`write_whole_lines`): the
    access log and offload's own log share the stream, with ``--workers`` from several
    processes."""
    sys.stdout.flush()  # what went through the stream object first
    fd = sys.stdout.fileno()
    pieces = (data for line in lines for data in _json_lines(stream, line.removesuffix("\r")))
    write_whole_lines(pieces, lambda data: _write(fd, data))


def _json_lines(stream: str, message: str) -> Iterator[bytes]:
    """One JSON line for the message, or, when that would pass `ATOMIC_WRITE_BYTES`, several,
    each with a consecutive piece of it."""
    entry = {"ts": timestamp(), "source": "app", "stream": stream, "message": message}
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
        write_all(fd, data)
