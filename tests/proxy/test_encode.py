"""Compression of proxied responses: the rules as tables, the encoders, and the real thing
through offload from the Node app (JSON decoded equal, live events, what is left alone)."""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from collections.abc import Callable

import brotli
import httpx
import pytest

from offload.proxy.encode import (
    StreamEncoder,
    choose_coding,
    compressed_headers,
    is_live_stream,
)
from tests.servers import NodeApp, Offload

JSON = [(b"content-type", b"application/json"), (b"content-length", b"4096")]


@pytest.mark.parametrize(
    ("headers", "status", "accept", "coding"),
    [
        (JSON, 200, "br, gzip", "br"),
        (JSON, 200, "gzip", "gzip"),
        (JSON, 200, None, None),
        (JSON, 200, "identity", None),
        (JSON, 200, "gzip;q=0.8", "gzip"),  # RFC 9110 §12.5.3: identity has no q=1
        (JSON, 200, "br;q=0.5, gzip;q=0.9", "gzip"),
        (JSON, 200, "br;q=0, gzip;q=0.8", "gzip"),
        (JSON, 200, "gzip;q=0.8, identity", None),
        (JSON, 304, "br", None),
        (JSON, 206, "br", None),
        (JSON, 204, "br", None),
        ([*JSON, (b"content-encoding", b"gzip")], 200, "br", None),  # never twice
        ([*JSON, (b"cache-control", b"public, no-transform")], 200, "br", None),
        ([(b"content-type", b"application/json"), (b"content-length", b"100")], 200, "br", None),
        ([(b"content-type", b"image/png"), (b"content-length", b"9999")], 200, "br", None),
        ([(b"content-type", b"text/event-stream")], 200, "br", "br"),  # unknown length
    ],
)
def test_choose_coding(
    headers: list[tuple[bytes, bytes]], status: int, accept: str | None, coding: str | None
) -> None:
    # the same for GET and HEAD: HEAD's headers are GET's (RFC 9110 §9.3.2)
    assert choose_coding(accept_encoding=accept, status=status, headers=headers) == coding


@pytest.mark.parametrize(
    ("headers", "live"),
    [
        (JSON, False),
        ([(b"content-type", b"application/json")], True),
        ([(b"content-type", b"text/event-stream"), (b"content-length", b"10")], True),
        ([*JSON, (b"X-Accel-Buffering", b"no")], True),
    ],
)
def test_is_live_stream(headers: list[tuple[bytes, bytes]], live: bool) -> None:
    assert is_live_stream(headers) is live


def test_compressed_headers_drop_length_weaken_etag_and_add_vary() -> None:
    headers = [*JSON, (b"etag", b'"abc"'), (b"vary", b"Origin")]
    assert compressed_headers(headers, "br") == [
        (b"content-type", b"application/json"),
        (b"etag", b'W/"abc"'),
        (b"vary", b"Origin, Accept-Encoding"),
        (b"content-encoding", b"br"),
    ]


@pytest.mark.parametrize("coding", ["br", "gzip"])
def test_flushed_stream_decodes_chunk_by_chunk(coding: str) -> None:
    encoder = StreamEncoder(coding, flush_each=True)
    decoder = brotli.Decompressor() if coding == "br" else zlib.decompressobj(31)
    decode = decoder.process if coding == "br" else decoder.decompress
    for event in (b"data: one\n\n", b"data: two\n\n"):
        assert decode(encoder.feed(event)) == event  # each event decodable on arrival
    decode(encoder.finish())


def big_json(client: httpx.Client, path: str, accept: str) -> httpx.Response:
    return client.get(path, headers={"accept-encoding": accept})


@pytest.mark.parametrize("coding", ["br", "gzip"])
def test_json_is_compressed_and_decodes_equal(client: httpx.Client, coding: str) -> None:
    plain = big_json(client, "/api/big-json", "identity")
    encoded = big_json(client, "/api/big-json", coding)
    assert "content-encoding" not in plain.headers
    assert encoded.headers["content-encoding"] == coding
    assert "accept-encoding" in encoded.headers["vary"].lower()
    assert encoded.json() == plain.json()
    raw = gzip.decompress if coding == "gzip" else brotli.decompress
    with client.stream("GET", "/api/big-json", headers={"accept-encoding": coding}) as response:
        wire = b"".join(response.iter_raw())
    assert len(wire) < len(plain.content) // 3
    assert json.loads(raw(wire)) == plain.json()


@pytest.mark.parametrize("accept", ["gzip;q=0.8", "br;q=0.5, gzip;q=0.9", "br;q=0, gzip;q=0.8"])
def test_identity_the_header_does_not_name_ranks_below_its_codings(
    client: httpx.Client, accept: str
) -> None:
    # RFC 9110 §12.5.3; nginx and Caddy send gzip for these (issue 15)
    response = big_json(client, "/api/big-json", accept)
    assert response.headers["content-encoding"] == "gzip"
    assert response.json() == big_json(client, "/api/big-json", "identity").json()


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/api/big-json", "br"),  # compressed: HEAD announces it
        ("/api/big-json", "gzip;q=0.8"),
        ("/api/big-json", "identity"),
        ("/api/big-json-no-transform", "br"),  # left alone: HEAD too
    ],
)
def test_head_gets_the_headers_get_gets(client: httpx.Client, path: str, accept: str) -> None:
    # RFC 9110 §9.3.2: HEAD's header fields SHOULD be GET's, as from nginx and Caddy (issue 15:
    # HEAD got identity's headers where GET was compressed)
    compared = ("content-encoding", "vary", "etag", "content-type", "cache-control")
    headers = {"accept-encoding": accept}
    with client.stream("GET", path, headers=headers) as got:
        expected = {name: got.headers.get(name) for name in compared}
        length = got.headers.get("content-length")
    head = client.head(path, headers=headers)
    assert head.status_code == 200
    assert head.content == b""
    assert {name: head.headers.get(name) for name in compared} == expected
    assert head.headers.get("content-length") in (None, length)
    if expected["content-encoding"] is not None:
        assert "content-length" not in head.headers  # GET's compressed length is unknown


@pytest.mark.parametrize(
    "path", ["/api/big-json-no-transform", "/api/small-json", "/api/precompressed"]
)
def test_no_transform_tiny_and_already_encoded_pass_as_they_are(
    client: httpx.Client, path: str
) -> None:
    response = client.get(path, headers={"accept-encoding": "br"})
    assert response.headers.get("content-encoding") in (None, "gzip")
    if path == "/api/precompressed":
        assert response.json() == {"already": "compressed"}  # gzip from the app, once


def test_events_arrive_live_while_compressed(client: httpx.Client, offload: Offload) -> None:
    stream_id = uuid.uuid4().hex
    decoder = brotli.Decompressor()
    headers = {"accept-encoding": "br"}
    with client.stream("GET", f"/api/events?id={stream_id}", headers=headers) as response:
        assert response.headers["content-encoding"] == "br"
        chunks = response.iter_raw()
        # each event must decode on arrival: the app sends the next only once released
        for number in (1, 2, 3):
            received = b""
            while b"\n\n" not in received:
                received += decoder.process(next(chunks))
            assert json.loads(received.split(b"data: ", 1)[1])["event"] == number
            if number < 3:
                httpx.get(f"{offload.url}/api/release?id={stream_id}")


def test_no_compress_proxied_switch(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload("--upstream", node_app.address, "--no-compress-proxied")
    response = httpx.get(server.url + "/api/big-json", headers={"accept-encoding": "br"})
    assert "content-encoding" not in response.headers
