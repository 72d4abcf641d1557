"""Who may use the admin API's control endpoints: the rules one by one (the answers the admin
API gives with them are in test_admin.py)."""

from __future__ import annotations

import pytest

from offload.admin_access import (
    ControlAccess,
    bearer_token,
    is_from_browser,
    is_local_host,
    is_local_peer,
    is_loopback_address,
)

TOKEN = "s3cret-admin-token-0123456789"


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.6", True),  # all of 127.0.0.0/8
        ("127.255.255.254", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 peer on a dual-stack socket
        ("10.1.2.3", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::ffff:10.1.2.3", False),
        ("128.0.0.1", False),
        ("localhost", False),  # a peer is an address, never a name
        ("", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback_address(address) is loopback


@pytest.mark.parametrize(
    ("host", "local"),
    [
        (None, True),  # HTTP/1.0 without Host
        (b"localhost", True),
        (b"localhost:9901", True),
        (b"LOCALHOST:9901", True),
        (b"127.0.0.1", True),
        (b"127.0.0.1:9901", True),
        (b"127.0.0.2:9901", True),
        (b"[::1]", True),
        (b"[::1]:9901", True),
        (b"[::ffff:127.0.0.1]:9901", True),
        # DNS rebinding: a name the attacker controls, now resolving to 127.0.0.1
        (b"evil.example", False),
        (b"evil.example:9901", False),
        (b"localhost.evil.example", False),
        (b"127.0.0.1.nip.io", False),
        (b"10.1.2.3:9901", False),
        (b"[::2]:9901", False),
        (b"localhost:http", False),
        (b"[::1]x", False),
        (b"[::1", False),
        (b"", False),
    ],
)
def test_local_host_headers(host: bytes | None, local: bool) -> None:
    assert is_local_host(host) is local


@pytest.mark.parametrize(
    ("headers", "browser"),
    [
        ([], False),
        ([(b"user-agent", b"curl/8.5.0")], False),
        ([(b"sec-fetch-mode", b"cors")], False),  # Node's fetch: the example preStop hook
        ([(b"origin", b"https://evil.example")], True),
        ([(b"origin", b"null")], True),  # a sandboxed frame or a redirect
        ([(b"sec-fetch-site", b"cross-site")], True),
        ([(b"sec-fetch-site", b"same-origin")], True),
        ([(b"sec-fetch-mode", b"no-cors"), (b"sec-fetch-dest", b"empty")], True),
        ([(b"sec-fetch-user", b"?1")], True),
    ],
)
def test_browser_requests(headers: list[tuple[bytes, bytes]], browser: bool) -> None:
    assert is_from_browser(headers) is browser


@pytest.mark.parametrize(
    ("values", "token"),
    [
        ([], None),
        ([b"Bearer abc"], b"abc"),
        ([b"bearer abc"], b"abc"),  # RFC 9110 §11.1: the scheme is case-insensitive
        ([b"BEARER   abc  "], b"abc"),
        ([b"Basic YWRtaW46YWRtaW4="], None),
        ([b"Bearer"], b""),
        ([b"Bearer abc", b"Bearer abc"], None),  # two credentials: neither is taken
    ],
)
def test_bearer_token(values: list[bytes], token: bytes | None) -> None:
    headers = [(b"authorization", value) for value in values]
    assert bearer_token(headers) == token


@pytest.mark.parametrize(
    ("client", "server", "local"),
    [
        (("127.0.0.1", 50000), ("127.0.0.1", 9901), True),
        (("::1", 50000), ("::1", 9901), True),
        (("10.1.2.3", 50000), ("10.1.2.4", 9901), False),
        (None, ("/tmp/offload-workers-x/worker-0.sock", None), True),  # a Unix socket
        (None, None, False),  # nothing known: not local
    ],
)
def test_local_peers(
    client: tuple[str, int] | None, server: tuple[str, int | None] | None, local: bool
) -> None:
    assert is_local_peer({"client": client, "server": server}) is local


def _scope(client: str, *headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"client": (client, 50000), "server": ("0.0.0.0", 9901), "headers": list(headers)}


def test_a_wrong_token_is_refused_even_from_loopback() -> None:
    scope = _scope("127.0.0.1", (b"host", b"localhost"), (b"authorization", b"Bearer wrong"))
    refusal = ControlAccess(TOKEN).refusal(scope)
    assert refusal is not None
    assert refusal.status == 401
    assert dict(refusal.headers)[b"www-authenticate"] == b'Bearer error="invalid_token"'


def test_the_token_never_appears_in_a_refusal_or_a_repr() -> None:
    access = ControlAccess(TOKEN)
    refusal = access.refusal(_scope("10.1.2.3", (b"authorization", b"Bearer nope")))
    assert TOKEN not in repr(access)
    assert TOKEN not in repr(refusal)
