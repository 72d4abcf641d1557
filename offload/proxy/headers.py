"""Which headers cross the proxy and which offload adds (pure: RFC 9110 §7.6 rules, no I/O)."""

from __future__ import annotations

import ipaddress
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
# nginx's hint to its own buffering, meant for the proxy, not the client.
CONSUMED_RESPONSE_HEADERS = frozenset({b"x-accel-buffering"})
# The request's framing is offload's own, written from what it will send (proxy/http.py): the
# client's is never passed on, so no Connection option can remove or change it.
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
# A client listing these in Connection must not make the proxy drop them.
NEVER_HOP_BY_HOP = frozenset({b"host"})
# uvicorn answered "Expect: 100-continue" already; the app gets the body without waiting.
CONSUMED_REQUEST_HEADERS = frozenset({b"expect"})

_DROPPED_FROM_TRUSTED = FRAMING_HEADERS | CONSUMED_REQUEST_HEADERS
_DROPPED_FROM_UNTRUSTED = _DROPPED_FROM_TRUSTED | FORWARDED_HEADERS


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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_trusted(peer: str | None, networks: tuple[Network, ...]) -> bool:
    """Whether the peer is a proxy whose forwarding headers may be believed."""
    if peer is None or not networks:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def create_upstream_headers(
    headers: Iterable[Header],
    *,
    client_host: str | None,
    scheme: str,
    request_id: str,
    trusted: bool = False,
) -> list[Header]:
    """The app's request headers: the client's end-to-end ones in order, then X-Forwarded-*;
    never the client's framing (`FRAMING_HEADERS`), which the caller writes itself.

    From an untrusted peer, forwarding headers are replaced; from a ``trusted`` one (listed in
    ``--trusted-proxies``) they are kept and the peer is appended to ``X-Forwarded-For``.
    ``Host`` passes unchanged; ``X-Request-ID`` is added only when the client sent none.
    """
    headers = list(headers)
    options = connection_options(headers)
    dropped = _DROPPED_FROM_TRUSTED if trusted else _DROPPED_FROM_UNTRUSTED
    kept: list[Header] = []
    seen: dict[bytes, bytes] = {}
    for name, value in headers:
        lower = name.lower()
        if is_hop_by_hop(lower, options) or lower in dropped or lower == b"x-forwarded-for":
            continue
        seen.setdefault(lower, value)
        kept.append((name, value))
    chain = [value for name, value in headers if trusted and name.lower() == b"x-forwarded-for"]
    if client_host is not None:
        chain.append(client_host.encode())
    if chain:
        kept.append((b"x-forwarded-for", b", ".join(chain)))
    if b"x-forwarded-proto" not in seen:
        kept.append((b"x-forwarded-proto", scheme.encode()))
    if b"x-forwarded-host" not in seen and b"host" in seen:
        kept.append((b"x-forwarded-host", seen[b"host"]))
    if b"x-request-id" not in seen:
        kept.append((b"x-request-id", request_id.encode()))
    return kept


def create_client_headers(
    headers: Iterable[Header],
    *,
    date: bytes,
    request_id: bytes,
    upstream_origins: tuple[bytes, ...] = (),
) -> list[Header]:
    """The client's response headers: the app's end-to-end ones, repeats (Set-Cookie) kept apart.

    The app's ``Date`` passes; ``date`` is added only when the app sent none (RFC 9110 §6.6.1).
    The request's ``X-Request-ID`` is echoed unless the app set one. A ``Location`` on the app's
    own origin becomes a path on the public one, as nginx's default ``proxy_redirect`` does.
    """
    headers = list(headers)
    options = connection_options(headers)
    kept: list[Header] = []
    names: set[bytes] = set()
    for name, value in headers:
        lower = name.lower()
        if is_hop_by_hop(lower, options) or lower in CONSUMED_RESPONSE_HEADERS:
            continue
        if lower == b"location":
            value = rewrite_location(value, upstream_origins)
        names.add(lower)
        kept.append((name, value))
    if b"date" not in names:
        kept.append((b"date", date))
    if b"x-request-id" not in names:
        kept.append((b"x-request-id", request_id))
    return kept


def rewrite_location(location: bytes, origins: tuple[bytes, ...]) -> bytes:
    """``http://localhost:3000/x?y`` → ``/x?y`` when that origin is the app's own.

    The result is always a path on this host: ``http://localhost:3000//evil.example/x`` gives
    ``/evil.example/x``, never the network-path reference ``//evil.example/x`` (RFC 3986 §4.2),
    which a browser would follow to another host; browsers also read ``\\`` as ``/`` and drop
    tabs, so those are collapsed too."""
    lowered = location.lower()
    for origin in origins:
        if lowered.startswith(origin):
            rest = location[len(origin) :]
            if rest[:1] in (b"", b"?", b"#"):
                return b"/" + rest
            if rest[:1] == b"/":
                return b"/" + rest.lstrip(b"/\\\t")
    return location
