"""A property of what offload sends the app, checked with hypothesis over offload's own
connection and edge in-process (tests/edge_harness.py): for any requests a client pipelines on
one connection — any Connection options, upgrades other than WebSocket, bodies framed by length
or in chunks, trailer fields — the app parses exactly one request per whole client request,
with the same method and body bytes and the client's own X-Seq, and every request is answered
unless an earlier answer closed the connection."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.edge_harness import EdgeHarness, check_forwarded, client_requests

# No example database in the work tree, and no per-example deadline: CI machines vary
PROPERTY = settings(database=None, deadline=None, max_examples=150)
# Long enough for any request to be answered; the harness moves on as soon as none is running
SETTLE_SECONDS = 2.0

CONNECTION_TOKENS = st.sampled_from(
    [
        "keep-alive",
        "content-length",
        "Content-Length",
        "transfer-encoding",
        "upgrade",
        "host",
        "te",
        "close",
    ]
)
TRAILER_NAMES = st.sampled_from(
    ["Host", "X-Seq", "Content-Length", "Transfer-Encoding", "Authorization", "X-Fuzz-Accel"]
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    connection: tuple[str, ...]
    upgrade: str | None
    framing: str  # none, length or chunked
    chunks: tuple[bytes, ...]
    trailers: tuple[tuple[str, str], ...]

    def encode(self, seq: int) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: offload.test", f"X-Seq: {seq}"]
        if self.connection:
            lines.append("Connection: " + ", ".join(self.connection))
        if self.upgrade is not None:
            lines.append(f"Upgrade: {self.upgrade}")
        body = b"".join(self.chunks)
        if self.framing == "length":
            lines.append(f"Content-Length: {len(body)}")
        elif self.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
            chunked = b"".join(
                b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in self.chunks if chunk
            )
            trailers = "".join(f"{name}: {value}\r\n" for name, value in self.trailers)
            body = chunked + b"0\r\n" + trailers.encode() + b"\r\n"
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


REQUESTS = st.builds(
    Request,
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
    path=st.sampled_from(["/api/x", "//api/x", "///x/admin", "/api/x?q=1"]),
    connection=st.lists(CONNECTION_TOKENS, max_size=3).map(tuple),
    upgrade=st.sampled_from([None, "h2c", "foo/2"]),
    framing=st.sampled_from(["none", "length", "chunked"]),
    chunks=st.lists(st.binary(max_size=40), max_size=3).map(tuple),
    trailers=st.lists(
        st.tuples(TRAILER_NAMES, st.sampled_from(["1", "evil.test"])), max_size=2
    ).map(tuple),
)


@pytest.fixture(scope="module")
def harness() -> Iterator[EdgeHarness]:
    edge = EdgeHarness(settle_seconds=SETTLE_SECONDS)
    yield edge
    edge.close()


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]


class _Answers:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answers: list[Answer] = []
        self._headers: dict[bytes, bytes] = {}

    def on_message_begin(self) -> None:
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_message_complete(self) -> None:
        self.answers.append(Answer(self.parser.get_status_code(), self._headers))


def answers(written: bytes) -> list[Answer]:
    reader = _Answers()
    reader.parser.feed_data(written)
    return reader.answers


def as_body(request: Request) -> bytes:
    return b"".join(request.chunks) if request.framing != "none" else b""


@PROPERTY
@given(requests=st.lists(REQUESTS, min_size=1, max_size=3))
@example(  # issue 14: Connection took Content-Length off a body holding a request
    requests=[
        Request("POST", "/api/x", ("keep-alive", "Content-Length"), None, "length",
                (b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",), ()),
        Request("GET", "/api/x", (), None, "none", (), ()),
    ]
)  # fmt: skip
@example(  # issue 14: an h2c upgrade's body, never read, was still declared to the app
    requests=[Request("POST", "/api/x", ("upgrade",), "h2c", "length", (b"hello",), ())]
)
@example(  # issue 14: trailer fields became headers
    requests=[
        Request("POST", "/api/x", (), None, "chunked", (b"hi",), (("X-Seq", "1"), ("Host", "e")))
    ]
)
def test_the_app_parses_one_request_per_client_request_with_its_body(
    harness: EdgeHarness, requests: list[Request]
) -> None:
    data = b"".join(request.encode(seq) for seq, request in enumerate(requests))
    written = harness.run([data])
    check_forwarded(data, harness.received, harness.malformed)
    seqs = [forwarded.values(b"x-seq") for forwarded in harness.received]
    assert all(len(values) == 1 for values in seqs), f"X-Seq per request at the app: {seqs}"
    assert len({values[0] for values in seqs}) == len(seqs), f"a request twice: {seqs}"
    for forwarded in harness.received:
        request = requests[int(forwarded.values(b"x-seq")[0])]
        assert forwarded.method == request.method.encode()
        assert forwarded.body == as_body(request)
    # every whole request is answered, in order, unless an answer before it closed the connection
    whole = client_requests(data)
    given_answers = answers(written)
    for index in range(len(whole)):
        if index and given_answers[index - 1].headers.get(b"connection") == b"close":
            break
        assert index < len(given_answers), f"request {index} of {len(whole)} was not answered"
        seq = given_answers[index].headers.get(b"x-stub-seq")
        assert seq is None or int(seq) == index
