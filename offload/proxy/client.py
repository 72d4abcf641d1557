"""The aiohttp session the WebSocket bridge uses to reach the app, over TCP or a Unix socket.
(Plain HTTP goes through `offload.proxy.upstream`, a leaner client.)"""

from __future__ import annotations

import aiohttp

from offload.config import Upstream

# Node's http server closes idle keep-alive sockets after 5 s (server.keepAliveTimeout). A pool
# must give a socket up first, or a request may race the app's close. The rule: keep this below
# the app's idle timeout. A request that still meets a closed socket before any response byte is
# retried once when idempotent and without a body (RFC 9112 §9.3.1).
POOL_KEEPALIVE_SECONDS = 4.0
MAX_RESPONSE_HEADER_FIELD_BYTES = 32 * 1024


def create_session(
    upstream: Upstream, *, connect_timeout_seconds: float, max_connections: int
) -> aiohttp.ClientSession:
    """The one client for the app. It adds nothing the client did not send and changes no bytes:
    no default headers, no decompression, no cookie jar, no proxy from the environment."""
    connector: aiohttp.BaseConnector
    if upstream.unix_path is not None:
        connector = aiohttp.UnixConnector(
            upstream.unix_path, limit=max_connections, keepalive_timeout=POOL_KEEPALIVE_SECONDS
        )
    else:
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=POOL_KEEPALIVE_SECONDS
        )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_seconds),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        max_field_size=MAX_RESPONSE_HEADER_FIELD_BYTES,
    )
