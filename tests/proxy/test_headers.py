"""Which headers cross the proxy, as tables (RFC 9110 §7.6)."""

from __future__ import annotations

import ipaddress

import pytest

from offload.proxy.headers import (
    connection_options,
    create_client_headers,
    create_upstream_headers,
    is_trusted,
    rewrite_location,
)


def upstream(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return create_upstream_headers(
        headers, client_host="10.1.2.3", scheme="https", request_id="rid"
    )


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name.lower() for name, _ in headers]


def test_connection_options_are_lower_case_tokens() -> None:
    headers = [(b"Connection", b"Keep-Alive, X-Foo"), (b"connection", b" x-bar ,")]
    assert connection_options(headers) == {b"keep-alive", b"x-foo", b"x-bar"}


@pytest.mark.parametrize(
    "name",
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-named-in-connection",
        b"expect",
    ],
)
def test_hop_by_hop_request_headers_are_dropped(name: bytes) -> None:
    headers = [(b"host", b"a.test"), (b"connection", b"x-named-in-connection"), (name, b"1")]
    assert name not in names(upstream(headers))


def test_end_to_end_request_headers_keep_their_order_and_host() -> None:
    headers = [(b"host", b"a.test"), (b"cookie", b"a=1"), (b"traceparent", b"00-1-2-01")]
    assert upstream(headers)[:3] == headers


def test_forwarded_headers_replace_what_the_client_claimed() -> None:
    headers = [(b"host", b"a.test"), (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-host", b"x")]
    forwarded = upstream(headers)
    assert (b"x-forwarded-for", b"10.1.2.3") in forwarded
    assert (b"x-forwarded-proto", b"https") in forwarded
    assert (b"x-forwarded-host", b"a.test") in forwarded
    assert names(forwarded).count(b"x-forwarded-for") == 1
    assert names(forwarded).count(b"x-forwarded-host") == 1


def test_request_id_is_added_only_when_missing() -> None:
    assert (b"x-request-id", b"rid") in upstream([(b"host", b"a")])
    kept = upstream([(b"host", b"a"), (b"X-Request-ID", b"mine")])
    assert [value for name, value in kept if name.lower() == b"x-request-id"] == [b"mine"]


def test_nothing_is_added_that_the_client_did_not_send() -> None:
    added = set(names(upstream([(b"host", b"a")]))) - {b"host"}
    assert added == {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"}


def test_response_keeps_repeated_headers_and_drops_hop_by_hop() -> None:
    headers = [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"secret"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-Public", b"yes"),
    ]
    assert create_client_headers(headers, date=b"now", request_id=b"rid") == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Public", b"yes"),
        (b"date", b"now"),
        (b"x-request-id", b"rid"),
    ]


def test_response_keeps_the_apps_date_and_request_id() -> None:
    headers = [(b"Date", b"Sun, 06 Nov 1994 08:49:37 GMT"), (b"X-Request-ID", b"app")]
    assert create_client_headers(headers, date=b"now", request_id=b"rid") == headers


def test_response_drops_x_accel_buffering() -> None:
    headers = [(b"X-Accel-Buffering", b"no")]
    assert create_client_headers(headers, date=b"d", request_id=b"r") == [
        (b"date", b"d"),
        (b"x-request-id", b"r"),
    ]


ORIGINS = (b"http://localhost:3000", b"http://127.0.0.1:3000")


@pytest.mark.parametrize(
    ("location", "rewritten"),
    [
        (b"http://localhost:3000/x?y=1", b"/x?y=1"),
        (b"HTTP://LOCALHOST:3000/x", b"/x"),
        (b"http://127.0.0.1:3000", b"/"),
        (b"http://127.0.0.1:3000?q", b"/?q"),
        (b"http://localhost:30001/x", b"http://localhost:30001/x"),  # another port
        (b"http://localhost:3000.evil.test/x", b"http://localhost:3000.evil.test/x"),
        (b"https://example.test/x", b"https://example.test/x"),
        (b"/already/relative", b"/already/relative"),
        # never a network-path (//host) or backslash reference: a browser goes to that host
        (b"http://127.0.0.1:3000//evil.example/x", b"/evil.example/x"),
        (b"http://127.0.0.1:3000/\\evil.example", b"/evil.example"),
        (b"http://127.0.0.1:3000/\t/evil.example", b"/evil.example"),
        (b"http://localhost:3000///\\/evil.example?q", b"/evil.example?q"),
    ],
)
def test_location_on_the_apps_origin_becomes_a_path(location: bytes, rewritten: bytes) -> None:
    assert rewrite_location(location, ORIGINS) == rewritten


NETWORKS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [("10.1.2.3", True), ("::1", True), ("11.0.0.1", False), (None, False), ("junk", False)],
)
def test_is_trusted(peer: str | None, trusted: bool) -> None:
    assert is_trusted(peer, NETWORKS) is trusted


def test_trusted_peer_keeps_the_chain_and_appends_itself() -> None:
    headers = [
        (b"host", b"a.test"),
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"x-forwarded-proto", b"https"),
        (b"forwarded", b"for=1.1.1.1"),
    ]
    forwarded = create_upstream_headers(
        headers, client_host="10.1.2.3", scheme="http", request_id="r", trusted=True
    )
    assert (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.1.2.3") in forwarded
    assert (b"x-forwarded-proto", b"https") in forwarded
    assert (b"forwarded", b"for=1.1.1.1") in forwarded
    assert names(forwarded).count(b"x-forwarded-proto") == 1


@pytest.mark.parametrize(
    "connection", [b"content-length", b"keep-alive, Content-Length", b"transfer-encoding"]
)
def test_client_framing_never_passes_whatever_connection_names(connection: bytes) -> None:
    # offload writes the framing of what it sends itself: the client's is never copied, so a
    # Connection option can neither remove it nor leave a stale one behind
    headers = [
        (b"host", b"a.test"),
        (b"connection", connection),
        (b"content-length", b"5"),
        (b"transfer-encoding", b"chunked"),
    ]
    forwarded = names(upstream(headers))
    assert b"content-length" not in forwarded
    assert b"transfer-encoding" not in forwarded
    assert b"host" in forwarded
