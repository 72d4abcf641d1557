"""create_app(): the public edge. One rule routes every request: canonical path check, then the
hooks, then the static engine for GET/HEAD of a file, then the app (DESIGN.md, "Routing"). This
is the one module that sees both the static engine and the proxy, so the X-Accel-Redirect
hand-off from the app to the static engine lives here too."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.types import Message, Receive, Scope, Send

from offload.admin import is_readable, watch_upstream
from offload.config import Config
from offload.facts import STATE_KEY, RequestFacts, request_facts
from offload.hooks import Hook, apply_hooks, load_hook
from offload.observe import (
    ROUTED_KEY,
    AccessLog,
    EdgeState,
    Metrics,
    ObserveMiddleware,
    ProtectionCollector,
)
from offload.proxy.headers import Header
from offload.proxy.http import HttpProxy, ProxySettings
from offload.proxy.websocket import WebSocketBridge
from offload.responses import send_plain_text
from offload.static.catalog import Catalog, CatalogSettings
from offload.static.paths import BadPath, canonical_path, is_plain
from offload.static.responder import StaticResponder
from offload.version import __version__

STATIC_METHODS = frozenset({"GET", "HEAD"})
# What the app's X-Accel-Redirect response may decide about the file it hands over (nginx
# passes the same): the download name, cookies, and its own caching policy.
ACCEL_CARRIED_HEADERS = frozenset(
    {b"content-disposition", b"set-cookie", b"cache-control", b"expires", b"x-request-id"}
)


class Edge:
    """The ASGI app offload serves on its public port. Its lifespan scans the static root and
    starts the watcher, and opens the connection pool to the app; shutdown closes both.

    Order for an HTTP or WebSocket request: the access log and metrics (`ObserveMiddleware`),
    outermost, so that what a hook answers, raises or never finishes is counted, logged and in
    flight like any other request; the path is decoded and checked once (400 for NUL,
    backslash or dot segments) and `RequestFacts` go on ``scope["state"]["offload"]``; then the
    hooks, first outermost; then routing. The lifespan does not pass through the hooks.
    """

    def __init__(self, config: Config, hooks: Sequence[Hook] = (), *, names: Sequence[str] = ()):
        self.config = config
        self.state = EdgeState()
        self.metrics = Metrics(__version__)
        self.access_log = AccessLog(config.access_log)
        self._background: list[asyncio.Task[None]] = []
        self.catalog: Catalog | None = None
        self.static: StaticResponder | None = None
        self.proxy: HttpProxy | None = None
        self.websocket: WebSocketBridge | None = None
        if config.static is not None:
            self.catalog = Catalog(config.static, _catalog_settings(config))
            self.static = StaticResponder(
                self.catalog, spa=config.spa, internal_prefix=config.internal_prefix
            )
        if (upstream := config.upstream_address) is not None:
            accel = self._serve_accel_redirect if self.static is not None else None
            self.proxy = HttpProxy(upstream, _proxy_settings(config), accel_redirect=accel)
            self.websocket = WebSocketBridge(self.proxy)
            self.metrics.registry.register(ProtectionCollector(self.proxy))
        self._hooked = apply_hooks(self._route, hooks, names=names)
        self._observed = ObserveMiddleware(
            self._enter, metrics=self.metrics, log=self.access_log, state=self.state
        )
        # With no hook to see the request, a static hit already in memory skips the layers
        self._at_once = self.static if not hooks else None

    def not_ready_because(self) -> str | None:
        """Why the edge should get no traffic now, or ``None`` when it is ready."""
        if self.state.draining:
            return "draining"
        if self.catalog is not None:
            if not is_readable(self.catalog.root):
                return "the static root is not readable"
            if self.catalog.generation == 0:
                return "the static catalog is not loaded yet"
        if self.proxy is not None and not self.state.upstream_up:
            return "the app does not accept connections"
        # Not the circuit breaker: it opens on every replica at once when the app's failures
        # come from the requests themselves, and static files are served while it is open.
        return None

    def begin_shutdown(self) -> None:
        """Start stopping: drain (readiness fails, every response closes its connection) and
        close WebSockets with 1001, Going Away. Requests in flight go on."""
        self.state.draining = True
        if self.websocket is not None:
            self.websocket.close_all()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if self._at_once is None or not await self._answer_at_once(scope, send):
                await self._observed(scope, receive, send)
        elif kind == "websocket":
            await self._observed(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _answer_at_once(self, scope: Scope, send: Send) -> bool:
        """The fast path, taken only without hooks: a plain path to a file in memory, answered
        whole (200, HEAD or 304) and observed as every request is; ``False`` when it is not
        such a request, before anything is sent. `_enter` gives the same answer, slower."""
        assert self._at_once is not None
        path: str = scope["path"]
        method: str = scope["method"]
        if method not in STATIC_METHODS or not is_plain(path):
            return False
        answer = self._at_once.answer_at_once(method, path, scope["headers"])
        if answer is None:
            return False
        asset, whole = answer

        def facts() -> RequestFacts:
            made = _facts(scope, path)
            _decide(made, "static", asset)
            return made

        await self._observed.send_whole(scope, send, whole, route="static", facts=facts)
        return True

    async def _enter(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the path once, so hooks and routing see the same canonical one."""
        path: str = scope["path"]
        try:
            if not path.startswith("/"):
                raise BadPath("the path must start with /")
            checked = canonical_path(path)
        except BadPath as error:
            await _refuse(scope, send, error)
            return
        facts = _facts(scope, checked)
        # The scope is this request's own (uvicorn makes one per request, state included)
        scope["path"] = checked
        scope.setdefault("state", {})[STATE_KEY] = facts
        await self._hooked(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        facts = request_facts(scope)
        if facts is not None:
            scope["state"][ROUTED_KEY] = True  # not answered by a hook: see observe's route label
        if facts is not None and scope["path"] != facts.path:
            rewritten = _rewritten(scope, facts)  # a hook rewrote the path
            if rewritten is None:
                await send_plain_text(send, 400, "a hook rewrote the path to an invalid one")
                return
            scope = rewritten
        if scope["type"] == "websocket":
            _decide(facts, "websocket")
            if self.websocket is not None:
                await self.websocket(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if self.static is not None and scope["method"] in STATIC_METHODS:
            served = await self.static.respond(
                scope, receive, send, on_hit=lambda entry: _decide(facts, "static", entry)
            )
            if served is not None:
                return
        _decide(facts, "proxy" if self.proxy is not None else None)
        if self.proxy is not None:
            await self.proxy(scope, receive, send)
        else:
            await send_plain_text(send, 404)

    async def _serve_accel_redirect(
        self, target: str, scope: Scope, receive: Receive, send: Send, app_headers: list[Header]
    ) -> None:
        """The app answered ``X-Accel-Redirect: /path``: serve that static file (internal
        prefix allowed) with the client's own conditionals and ranges, as nginx does."""
        assert self.static is not None
        try:
            path = canonical_path(target.split("?", 1)[0])
        except BadPath:
            await send_plain_text(send, 404)
            return
        method = "HEAD" if scope["method"] == "HEAD" else "GET"
        internal = {**scope, "path": path, "method": method}
        carried = [header for header in app_headers if header[0].lower() in ACCEL_CARRIED_HEADERS]

        async def send_with_app_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                replaced = {name.lower() for name, _ in carried}
                own = [header for header in message["headers"] if header[0] not in replaced]
                message = {**message, "headers": [*own, *carried]}
            await send(message)

        if not await self.static.respond(internal, receive, send_with_app_headers, internal=True):
            await send_plain_text(send, 404)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.catalog is not None:
                    await self.catalog.start()
                if self.proxy is not None:
                    await self.proxy.start()
                    self._background.append(asyncio.create_task(watch_upstream(self)))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._background:
                    task.cancel()
                if self.catalog is not None:
                    await self.catalog.close()
                if self.proxy is not None:
                    await self.proxy.close()
                self.access_log.flush()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _facts(scope: Scope, path: str) -> RequestFacts:
    """What offload knows of a request before routing: its checked path and request id."""
    return RequestFacts(
        path=path, raw_path=scope.get("raw_path"), client_request_id=_client_request_id(scope)
    )


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return str(value.decode("latin-1"))
    return None


def _rewritten(scope: Scope, facts: RequestFacts) -> Scope | None:
    """A hook changed ``path``: check it like the client's, and unless the hook also set
    ``raw_path``, send the app the new path rather than the client's raw one."""
    try:
        path = canonical_path(scope["path"])
    except BadPath:
        return None
    scope = {**scope, "path": path}
    if scope.get("raw_path") == facts.raw_path:
        scope["raw_path"] = quote(path).encode()
    return scope


def _decide(facts: RequestFacts | None, route: str | None, served: object = None) -> None:
    if facts is not None:
        facts.route = route
        facts.static_file = getattr(served, "path", None)


async def _refuse(scope: Scope, send: Send, error: BadPath) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
    else:
        await send_plain_text(send, 400, str(error))


def _catalog_settings(config: Config) -> CatalogSettings:
    return CatalogSettings(
        in_memory_max_bytes=config.in_memory_max_bytes,
        cache_max_age_seconds=config.cache_max_age_seconds,
        cache_control_rules=config.cache_control_rules,
        compress=config.compress_static,
    )


def _proxy_settings(config: Config) -> ProxySettings:
    return ProxySettings(
        read_timeout_seconds=config.read_timeout_seconds,
        connect_timeout_seconds=config.connect_timeout_seconds,
        compress=config.compress_proxied,
        max_body_bytes=config.max_body_bytes,
        trusted_proxies=config.trusted_networks,
        max_connections=config.upstream_max_connections,
        breaker_failures=config.breaker_failures,
        breaker_cooldown_seconds=config.breaker_cooldown_seconds,
        breaker_on_5xx=config.breaker_on_5xx,
        max_concurrency=config.upstream_max_concurrency,
        restarted_by_offload=bool(config.command) and config.app_restart != "never",
    )


def create_app(
    config: Config | None = None, /, *, hooks: Sequence[Hook | str] = (), **options: Any
) -> Edge:
    """The edge as an ASGI app, for offload's own server or any other ASGI server.

    >>> app = create_app(static="public", upstream="localhost:3000", hooks=[security_headers])
    >>> uvicorn.run(app, port=8080)  # doctest: +SKIP

    Options are `Config`'s fields (``static`` may be a string); or pass a `Config`. ``hooks``
    are callables, or ``"MODULE:ATTR"`` strings as on the command line, added after the
    config's own. A bad option or hook raises `ConfigError`.
    """
    if config is None:
        if isinstance(options.get("static"), str):
            options["static"] = Path(options["static"])
        config = Config(**options)
    elif options:
        raise TypeError("pass a Config or options, not both")
    specs = [*config.hooks, *hooks]
    loaded = [
        load_hook(spec, hook_dir=config.hook_dir) if isinstance(spec, str) else spec
        for spec in specs
    ]
    names = [spec if isinstance(spec, str) else repr(spec) for spec in specs]
    return Edge(config, loaded, names=names)
