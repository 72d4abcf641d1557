"""Runs the public and admin listeners in one event loop and stops both on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import math
import signal
import socket
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, Protocol

import uvicorn
import uvloop

from offload.admin import (
    ADMIN_MAX_CONNECTIONS,
    UNCAPPED_PATHS,
    AdminApp,
    AppHealthCheck,
    EdgeSubject,
    Subject,
    SupervisedSubject,
)
from offload.app import Edge, create_app
from offload.config import Config, ConfigError
from offload.observe import JsonFormatter
from offload.protocol import Limits, enforce_deadlines, with_limits
from offload.supervise import Supervisor
from offload.workers import Workers

logger = logging.getLogger("offload")
GC_YOUNG_THRESHOLD = 10_000  # CPython's default is 700
LINGER_SECONDS = 1.0  # at shutdown, for keep-alive connections to end by themselves


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signals to `serve` (one signal must stop both listeners)
    and stops without losing a request it could have answered:

    1. It stops accepting, then takes in the connections the kernel had already completed
       (closing the listening socket would reset them) and serves them too. uvloop closes the
       socket it listens on, so it is given a duplicate: the original keeps the kernel's
       queue alive until offload has emptied it.
    2. For up to `LINGER_SECONDS` it lets keep-alive connections end by themselves: while
       draining, every response carries ``Connection: close``, so a busy client learns to go
       elsewhere from its next response instead of losing a request to a closed connection.
    3. uvicorn's own shutdown follows: idle connections are closed, and requests in flight get
       the rest of ``--drain-timeout`` to finish; then what is still open is closed.
    """

    def __init__(
        self, config: uvicorn.Config, listening: socket.socket, *, drain_seconds: float
    ) -> None:
        super().__init__(config)
        self.listening = listening
        self.drain_seconds = drain_seconds

    async def run(self) -> None:  # type: ignore[override]  # serves its own socket
        await self.serve(sockets=[self.listening.dup()])

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._deadlines = asyncio.create_task(enforce_deadlines(self.server_state))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._deadlines.cancel()
        for server in self.servers:
            server.close()  # closes the duplicate
        waiting = _accept_waiting(self.listening)
        self.listening.close()
        for connection in waiting:
            await self._serve_accepted(connection)
        linger = min(LINGER_SECONDS, self.drain_seconds)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(linger):
                while self.server_state.connections:  # noqa: ASYNC110  (a set: no event to wait on)
                    await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        cut = loop.call_later(max(0.0, self.drain_seconds - linger), self._cut_connections)
        try:
            await super().shutdown()
        finally:
            cut.cancel()

    def _cut_connections(self) -> None:
        """--drain-timeout is over: close what is still open. Each request then ends as a
        client that left (the proxy stops reading the app), rather than uvicorn cancelling
        its task a little later with a traceback in the log."""
        connections = list(self.server_state.connections)
        if connections:
            logger.warning("drain timeout: closing %d connections still open", len(connections))
        for connection in connections:
            connection.transport.close()

    async def _serve_accepted(self, connection: socket.socket) -> None:
        config = self.config
        loop = asyncio.get_running_loop()

        def create_protocol() -> asyncio.Protocol:  # as uvicorn's startup makes them
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
            )

        try:
            await loop.connect_accepted_socket(create_protocol, connection)
        except OSError:
            connection.close()


def _accept_waiting(listening: socket.socket) -> list[socket.socket]:
    """The connections queued on a listening socket, accepted without waiting."""
    accepted: list[socket.socket] = []
    try:
        listening.setblocking(False)
        while True:
            connection, _ = listening.accept()
            accepted.append(connection)
    except OSError:  # BlockingIOError once the queue is empty
        pass
    return accepted


def _create_listener(
    config: Config, app: object, listening: socket.socket, *, admin: bool = False
) -> _Listener:
    """The public listener, or with ``admin`` the admin one: its own connection budget, and no
    lifespan (the edge's start-up and shutdown belong to the public listener)."""
    limits = Limits(
        header_timeout_seconds=config.client_header_timeout_seconds,
        body_timeout_seconds=config.client_body_timeout_seconds,
        max_connections=ADMIN_MAX_CONNECTIONS if admin else config.max_connections,
        uncapped_paths=UNCAPPED_PATHS if admin else frozenset(),
    )
    return _Listener(
        uvicorn.Config(
            app,  # type: ignore[arg-type]  # uvicorn types apps as its own ASGI protocol union
            http=with_limits(limits),
            # websockets' Sans-I/O protocol: about 1.5x the echo rate of uvicorn's default
            # (the legacy websockets protocol) through offload, measured with bench.wsecho
            ws="websockets-sansio",
            lifespan="off" if admin else "on",
            access_log=False,
            server_header=False,  # the app's Server header passes through untouched
            date_header=False,  # offload writes Date itself: see responses.HttpDateClock
            # uvicorn trusts X-Forwarded-For from loopback by default; trust is offload's call
            proxy_headers=False,
            log_config=None,
            # a backstop: offload closes what is left at --drain-timeout (see _cut_connections)
            timeout_graceful_shutdown=math.ceil(config.drain_timeout_seconds) + 2,
        ),
        listening,
        drain_seconds=config.drain_timeout_seconds,
    )


def bind(host: str, port: int, *, setting: str, host_setting: str = "host") -> socket.socket:
    """A bound socket for a listener, or a `ConfigError` naming what is wrong: an address that
    does not resolve or is not on this machine (``host_setting``), or a port in use
    (``setting``)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, protocol)
    except OSError as error:
        raise ConfigError(host_setting, host, f"cannot listen there: {_reason(error)}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        listener.close()
        wrong = host_setting if error.errno == errno.EADDRNOTAVAIL else setting
        value = host if wrong == host_setting else port
        raise ConfigError(
            wrong, value, f"cannot listen on {host}:{port}: {_reason(error)}"
        ) from None
    return listener


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower()


class Front(Protocol):
    """What serves the public port: one edge in this process, or the workers."""

    async def run(self) -> None: ...

    def begin_shutdown(self) -> None: ...


class _EdgeFront:
    def __init__(self, edge: Edge, listener: _Listener, subject: EdgeSubject) -> None:
        self.edge = edge
        self.listener = listener
        self.subject = subject
        self.health = subject.health

    async def run(self) -> None:
        """Serve, and ask the app's ``--app-ready-path`` meanwhile."""
        asking = asyncio.create_task(self.health.watch()) if self.health is not None else None
        try:
            await self.listener.run()
        finally:
            if asking is not None:
                asking.cancel()

    def begin_shutdown(self) -> None:
        self.subject.stopping = True  # this drain is not for DELETE /drain to undo
        self.edge.begin_shutdown()
        self.listener.should_exit = True


async def _serve(front: Front, admin: _Listener, child: Supervisor | None = None) -> int:
    """Serve until a signal, a listener failing, or the supervised app exiting for good (its
    restart policy let it go); the exit status: 0, or the app's failure status when it died
    first.

    Stopping goes in the order that loses nothing: the front drains (responses close their
    connections, WebSockets get 1001) while the admin listener still answers ``/readyz`` with
    503; the supervised app gets SIGTERM once no new request can reach it; the admin listener
    stops last."""
    if child is not None:
        await child.start()
    signalled = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled.set)
    serving = asyncio.create_task(front.run())
    answering = asyncio.create_task(admin.run())
    watched: list[asyncio.Future[Any]] = [serving, answering]
    watched.append(asyncio.create_task(signalled.wait()))
    if child is not None:
        watched.append(asyncio.create_task(child.wait()))
    done, pending = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    # the app ending of its own accord, not because offload passed it a signal to stop
    app_died = child is not None and watched[-1] in done and not signalled.is_set()
    front.begin_shutdown()  # a signal, a listener that could not bind, or the app gone
    if child is not None:
        child.begin_shutdown()  # from now on no restart: offload is going away
        # Once offload takes no new request (the linger is over), the app is told to stop: it
        # finishes what is in flight and can end its own streams, which would otherwise hold
        # the drain for all of --drain-timeout.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(serving), LINGER_SECONDS + 0.25)
        child.terminate()
    await serving
    admin.should_exit = True
    await answering
    for task in pending - {serving, answering}:
        task.cancel()
    if child is None:
        return 0
    status = await child.stop()
    if app_died and status:
        logger.error("the app exited with status %s: offload stops with it", status)
        return status if status > 0 else 128 - status  # killed by a signal: 128 + its number
    return 0


def _configure_logging(config: Config) -> None:
    """Start-up and error messages go where the access log goes: JSON lines on stdout by
    default, so one stream carries everything a log collector needs."""
    handler = logging.StreamHandler(sys.stdout if config.access_log != "off" else sys.stderr)
    if config.access_log == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def serve(config: Config) -> int:
    """Run offload until a signal stops it. The hooks are loaded and both ports bound first,
    so a failing hook or a port in use is a `ConfigError` before anything starts."""
    edge = create_app(config)  # with --workers, only to load the hooks: each worker has its own
    public = bind(config.host, config.port, setting="port")
    admin_socket = bind(
        config.admin_address,
        config.admin_port,
        setting="admin_port",
        host_setting="host" if config.admin_host is None else "admin_host",
    )
    _configure_logging(config)
    logger.info(
        "offload listening on %s:%d (admin %s:%d, %d worker%s), static %s, upstream %s",
        config.host,
        config.port,
        config.admin_address,
        config.admin_port,
        config.workers,
        "" if config.workers == 1 else "s",
        config.static or "off",
        config.upstream_address or "off",
    )
    front: Front
    subject: Subject
    if config.workers == 1:
        front, subject = _edge_front(config, edge, public)
    else:
        front = subject = Workers(config, public)
    child = _supervisor(config)
    upstream = config.upstream_address  # never None with a command: Config checks it
    if child is not None and upstream is not None:
        subject = SupervisedSubject(subject, child, upstream)
    admin_app = AdminApp(subject, token=config.admin_token)
    admin = _create_listener(config, admin_app, admin_socket, admin=True)
    return _run(_serve(front, admin, child))


def _edge_front(config: Config, edge: Edge, public: socket.socket) -> tuple[_EdgeFront, Subject]:
    """The edge serving ``public``, and the admin API's view of it: with --app-ready-path,
    the front asks the app's health endpoint and the view reads the answer."""
    subject = EdgeSubject(edge, AppHealthCheck.for_config(config))
    listener = _create_listener(config, edge, public)
    return _EdgeFront(edge, listener, subject), subject


def _supervisor(config: Config) -> Supervisor | None:
    """The watchdog of ``-- COMMAND``, not started yet; ``None`` without a command."""
    if not config.command:
        return None
    return Supervisor(
        config.command,
        stop_timeout_seconds=config.drain_timeout_seconds,
        restart=config.app_restart,
        json_output=config.app_log == "json",
    )


def serve_worker(config: Config, public: socket.socket, admin_socket: socket.socket) -> int:
    """One of ``--workers``: the edge on the shared public socket, and the admin API on a Unix
    socket for the primary process to ask."""
    _configure_logging(config)
    edge = create_app(config)
    front, subject = _edge_front(config, edge, public)
    admin_app = AdminApp(subject, token=config.admin_token)
    admin = _create_listener(config, admin_app, admin_socket, admin=True)
    return _run(_serve(front, admin))


def _run(main: Coroutine[Any, Any, int]) -> int:
    # Everything allocated so far lives as long as the process: take it out of the collector's
    # sight, and collect the young generation less often (each request allocates many objects).
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
