"""Which headers cross the proxy and which offload adds (pure: RFC 9110 §7.6 rules, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable

Header = tuple[bytes, bytes]

# RFC 9110 §7.6.1, plus the pre-standard Keep-Alive and Proxy-Connection
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Replaced with offload's own values, or dropped: a client must not claim another address.
FORWARDED_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
    }
)
# A client listing these in Connection must not make the proxy drop them.
NEVER_HOP_BY_HOP = frozenset({b"host"})
# uvicorn answered "Expect: 100-continue" already; the app gets the body without waiting.
CONSUMED_REQUEST_HEADERS = frozenset({b"expect"})


def connection_options(headers: Iterable[Header]) -> frozenset[bytes]:
    """The header names listed in ``Connection``: they are hop-by-hop too (RFC 9110 §7.6.1)."""
    return (
        frozenset(
            token.strip().lower()
            for name, value in headers
            if name.lower() == b"connection"
            for token in value.split(b",")
            if token.strip()
        )
        - NEVER_HOP_BY_HOP
    )


def is_hop_by_hop(name: bytes, options: frozenset[bytes]) -> bool:
    """Whether a lower-case header name stops at this hop."""
    return name in HOP_BY_HOP or name.startswith(b"proxy-") or name in options


def create_upstream_headers(
    headers: Iterable[Header],
    *,
    client_host: str | None,
    scheme: str,
    request_id: str,
) -> list[Header]:
    """The app's request headers: the client's end-to-end ones in order, then X-Forwarded-*.

    ``Host`` passes unchanged; ``X-Request-ID`` is added only when the client sent none.
    """
    headers = list(headers)
    options = connection_options(headers)
    dropped = FORWARDED_HEADERS | CONSUMED_REQUEST_HEADERS
    kept: list[Header] = []
    host: bytes | None = None
    has_request_id = False
    for name, value in headers:
        lower = name.lower()
        if is_hop_by_hop(lower, options) or lower in dropped:
            continue
        if lower == b"host" and host is None:
            host = value
        has_request_id = has_request_id or lower == b"x-request-id"
        kept.append((name, value))
    if client_host is not None:
        kept.append((b"x-forwarded-for", client_host.encode()))
    kept.append((b"x-forwarded-proto", scheme.encode()))
    if host is not None:
        kept.append((b"x-forwarded-host", host))
    if not has_request_id:
        kept.append((b"x-request-id", request_id.encode()))
    return kept


def create_client_headers(headers: Iterable[Header], *, date: bytes) -> list[Header]:
    """The client's response headers: the app's end-to-end ones, repeats (Set-Cookie) kept apart.

    The app's ``Date`` passes; ``date`` is added only when the app sent none (RFC 9110 §6.6.1).
    """
    headers = list(headers)
    options = connection_options(headers)
    kept = [(name, value) for name, value in headers if not is_hop_by_hop(name.lower(), options)]
    if not any(name.lower() == b"date" for name, _ in kept):
        kept.append((b"date", date))
    return kept
