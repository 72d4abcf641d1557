"""Streaming compression of proxied responses: which ones to compress, how their headers change,
and the encoders, flushed per upstream chunk for live streams."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import brotli

from offload.negotiation import IDENTITY, is_compressible, select_encoding
from offload.proxy.headers import Header

MIN_COMPRESS_BYTES = 512
BROTLI_QUALITY = 4  # on the request path: most of the saving for a small part of quality 11's CPU
GZIP_LEVEL = 5
CODINGS = ("br", "gzip")
_NEVER_COMPRESSED_STATUSES = frozenset({204, 206, 304})


def choose_coding(
    *, accept_encoding: str | None, status: int, headers: Sequence[Header]
) -> str | None:
    """The coding to apply to the app's response, or ``None`` to pass it through as it is.

    Never twice (the app set Content-Encoding), never against ``no-transform`` (RFC 9111
    §5.2.2.6), never for bodies known to be tiny, ranges, or types that do not shrink. The
    same for HEAD, whose header fields are GET's (RFC 9110 §9.3.2): it announces the coding
    GET's body gets. (Only a GET body of unknown length that ends up under
    `MIN_COMPRESS_BYTES` goes out as it is while HEAD announced a coding: HEAD has no body
    to measure, and nginx announces gzip then too.)
    """
    if status < 200 or status in _NEVER_COMPRESSED_STATUSES:
        return None
    values = {name.lower(): value for name, value in headers}
    if b"content-encoding" in values or b"content-range" in values:
        return None
    if b"no-transform" in values.get(b"cache-control", b"").lower():
        return None
    length = values.get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) < MIN_COMPRESS_BYTES):
        return None
    if not is_compressible(values.get(b"content-type", b"").decode("latin-1").lower()):
        return None
    coding = select_encoding(accept_encoding, CODINGS)
    return None if coding == IDENTITY else coding


def is_live_stream(headers: Sequence[Header]) -> bool:
    """Event streams, bodies of unknown length, and ``X-Accel-Buffering: no`` are flushed chunk
    by chunk: a buffering encoder would hold events back."""
    values = {name.lower(): value for name, value in headers}
    return (
        b"content-length" not in values
        or values.get(b"content-type", b"").startswith(b"text/event-stream")
        or values.get(b"x-accel-buffering", b"").lower() == b"no"
    )


def should_peek(headers: Sequence[Header]) -> bool:
    """Whether to read the first chunk before deciding: only when the length is unknown and
    the response is not an event stream, which must not wait for its first event."""
    values = {name.lower(): value for name, value in headers}
    return b"content-length" not in values and not (
        values.get(b"content-type", b"").startswith(b"text/event-stream")
        or values.get(b"x-accel-buffering", b"").lower() == b"no"
    )


def compressed_headers(headers: Sequence[Header], coding: str) -> list[Header]:
    """The response headers once the body is encoded: no length, the coding, ``Vary``, and a
    weak ETag, since the bytes are no longer the app's (RFC 9110 §8.8.1)."""
    result: list[Header] = []
    has_vary = False
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            continue
        if lower == b"etag" and not value.startswith(b"W/"):
            value = b"W/" + value
        if lower == b"vary":
            has_vary = True
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"*" not in tokens and b"accept-encoding" not in tokens:
                value += b", Accept-Encoding"
        result.append((name, value))
    if not has_vary:
        result.append((b"vary", b"Accept-Encoding"))
    result.append((b"content-encoding", coding.encode()))
    return result


class StreamEncoder:
    """One response's encoder. ``flush_each`` makes every chunk decodable as it arrives."""

    def __init__(self, coding: str, *, flush_each: bool) -> None:
        self.flush_each = flush_each
        self._brotli: brotli.Compressor | None = None
        self._zlib: zlib._Compress | None = None
        if coding == "br":
            self._brotli = brotli.Compressor(quality=BROTLI_QUALITY)
        else:
            self._zlib = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip framing

    def feed(self, chunk: bytes) -> bytes:
        if self._brotli is not None:
            data = bytes(self._brotli.process(chunk))
            return data + bytes(self._brotli.flush()) if self.flush_each else data
        assert self._zlib is not None
        data = self._zlib.compress(chunk)
        return data + self._zlib.flush(zlib.Z_SYNC_FLUSH) if self.flush_each else data

    def finish(self) -> bytes:
        if self._brotli is not None:
            return bytes(self._brotli.finish())
        assert self._zlib is not None
        return self._zlib.flush()
