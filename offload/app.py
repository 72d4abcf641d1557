"""create_app(): the public edge. One rule routes every request: canonical path check, then
the static engine for GET/HEAD of a file, then the app (DESIGN.md, "Routing")."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from offload.config import Config
from offload.proxy.http import HttpProxy
from offload.responses import send_plain_text
from offload.static.catalog import Catalog, CatalogSettings
from offload.static.paths import BadPath, canonical_path
from offload.static.responder import StaticResponder

STATIC_METHODS = frozenset({"GET", "HEAD"})


class Edge:
    """The ASGI app offload serves on its public port. Its lifespan scans the static root and
    starts the watcher, and opens the connection pool to the app; shutdown closes both."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.catalog: Catalog | None = None
        self.static: StaticResponder | None = None
        self.proxy: HttpProxy | None = None
        if config.static is not None:
            self.catalog = Catalog(config.static, _catalog_settings(config))
            self.static = StaticResponder(self.catalog, spa=config.spa)
        if (upstream := config.upstream_address) is not None:
            self.proxy = HttpProxy(
                upstream.base_url,
                connect_timeout_seconds=config.connect_timeout_seconds,
                read_timeout_seconds=config.read_timeout_seconds,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._route(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # bridged in a later release
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        try:
            if not path.startswith("/"):
                raise BadPath("the path must start with /")
            scope = {**scope, "path": canonical_path(path)}
        except BadPath as error:
            await send_plain_text(send, 400, str(error))
            return
        if (
            self.static is not None
            and scope["method"] in STATIC_METHODS
            and await self.static.respond(scope, receive, send)
        ):
            return
        if self.proxy is not None:
            await self.proxy(scope, receive, send)
        else:
            await send_plain_text(send, 404)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.catalog is not None:
                    await self.catalog.start()
                if self.proxy is not None:
                    await self.proxy.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.catalog is not None:
                    await self.catalog.close()
                if self.proxy is not None:
                    await self.proxy.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _catalog_settings(config: Config) -> CatalogSettings:
    return CatalogSettings(
        in_memory_max_bytes=config.in_memory_max_bytes,
        cache_max_age_seconds=config.cache_max_age_seconds,
        cache_control_rules=config.cache_control_rules,
        compress=config.compress_static,
    )


def create_app(config: Config) -> Edge:
    """The edge as an ASGI app, for offload's own server or any other ASGI server.

    >>> app = create_app(Config(static=Path("public"), upstream="localhost:3000"))  # doctest: +SKIP
    >>> uvicorn.run(app, port=8080)  # doctest: +SKIP
    """
    return Edge(config)
