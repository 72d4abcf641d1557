"""Who may use the admin API's control endpoints (``POST``/``DELETE /drain``): a client on this
machine that is not a browser, or anyone with the admin token (issue 14, finding 4: the admin
listener was a kill switch for whoever reached its port)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import Scope

Headers = Iterable[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Refusal:
    """The answer to a control request that may not pass: a status and its short reason."""

    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


BROWSER = Refusal(403, "control requests are not taken from a browser")
WRONG_TOKEN = Refusal(
    401, "the admin token is wrong", ((b"www-authenticate", b'Bearer error="invalid_token"'),)
)


class ControlAccess:
    """The one check every control request passes, in this order:

    1. never from a browser: it sends ``Origin`` on a cross-origin ``POST``, and
       ``Sec-Fetch-Site`` (with ``-Dest``, ``-User``) on every request, so a page the operator
       visits cannot drain the offload on their machine (CSRF);
    2. with ``Authorization: Bearer TOKEN`` when a token is configured: from anywhere if it is
       right, from nowhere if it is wrong (401);
    3. else only from this machine: a loopback peer or a Unix socket (the workers' private
       admin sockets), whose ``Host`` is a loopback address or ``localhost``, or absent, so a
       page whose name was rebound to 127.0.0.1 is refused too (DNS rebinding).
    Everything else gets 403, or 401 with ``WWW-Authenticate: Bearer`` when a token would do.
    """

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    def refusal(self, scope: Scope) -> Refusal | None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if is_from_browser(headers):
            return BROWSER
        credentials = bearer_token(headers)
        if self._token is not None and credentials is not None:
            return None if hmac.compare_digest(credentials, self._token) else WRONG_TOKEN
        local_peer = is_local_peer(scope)
        if local_peer and is_local_host(_host(headers)):
            return None
        reason = (
            "the Host header is not a loopback address or localhost"
            if local_peer
            else "control requests are taken only from this machine"
        )
        if self._token is None:
            return Refusal(403, reason)
        return Refusal(
            401, f"{reason}, or with the admin token", ((b"www-authenticate", b"Bearer"),)
        )


def is_from_browser(headers: Headers) -> bool:
    """A browser's request: ``Origin``, or a Fetch Metadata header (W3C Fetch Metadata §2).
    A lone ``Sec-Fetch-Mode`` is not one: Node's ``fetch`` (undici) sends ``Sec-Fetch-Mode:
    cors`` and no other, and the example ``preStop`` hook drains with it; browsers send it
    with ``Sec-Fetch-Site`` (Chrome 76, Firefox 90, Safari 16.4 shipped them together)."""
    return any(
        name == b"origin" or (name.startswith(b"sec-fetch-") and name != b"sec-fetch-mode")
        for name, _ in headers
    )


def bearer_token(headers: Headers) -> bytes | None:
    """The credentials of one ``Authorization: Bearer`` header (RFC 6750 §2.1; the scheme is
    case-insensitive, RFC 9110 §11.1); ``None`` without one."""
    values = [value for name, value in headers if name == b"authorization"]
    if len(values) != 1:
        return None
    scheme, _, credentials = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip()


def is_local_peer(scope: Scope) -> bool:
    """A TCP peer on a loopback address, or a Unix socket (uvicorn gives it no client, and a
    server address without a port): only this machine reaches either."""
    client = scope.get("client")
    if client:
        return is_loopback_address(client[0])
    server = scope.get("server")
    return server is not None and server[1] is None


def is_loopback_address(text: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4 loopback address mapped into IPv6 (``::ffff:127.0.0.1``,
    as a dual-stack socket reports it)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_local_host(host: bytes | None) -> bool:
    """A ``Host`` (RFC 9110 §7.2: uri-host [":" port]) naming this machine: ``localhost`` or a
    loopback literal, with any port; an HTTP/1.0 request may have none."""
    if host is None:
        return True
    text = host.decode("latin-1").lower()
    if text.startswith("["):
        name, bracket, port = text[1:].partition("]")
        if not bracket or not (port == "" or port.startswith(":")):
            return False
        port = port[1:]
    else:
        name, _, port = text.partition(":")
    if not (port == "" or port.isdecimal()):
        return False
    return name == "localhost" or is_loopback_address(name)


def _host(headers: Headers) -> bytes | None:
    # the protocol has refused a request with more than one Host (RFC 9112 §3.2)
    return next((value for name, value in headers if name == b"host"), None)
