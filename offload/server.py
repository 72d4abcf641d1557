"""Runs the public and admin listeners in one event loop and stops both on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from typing import Literal

import uvicorn
import uvloop

from offload.admin import admin_app
from offload.app import create_app
from offload.config import Config

logger = logging.getLogger("offload")
SHUTDOWN_GRACE_SECONDS = 10


class _Listener(uvicorn.Server):
    """A uvicorn server that leaves signals to `serve`: one signal must stop both listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _create_listener(
    config: Config, app: object, *, port: int, lifespan: Literal["on", "off"]
) -> _Listener:
    return _Listener(
        uvicorn.Config(
            app,  # type: ignore[arg-type]  # uvicorn types apps as its own ASGI protocol union
            host=config.host,
            port=port,
            http="httptools",
            lifespan=lifespan,
            access_log=False,
            server_header=False,  # the app's Server header passes through untouched
            date_header=False,
            # uvicorn trusts X-Forwarded-For from loopback by default; trust is offload's call
            proxy_headers=False,  # offload writes Date itself: see responses.HttpDateClock
            log_config=None,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
    )


async def _serve(config: Config) -> None:
    public = _create_listener(config, create_app(config), port=config.port, lifespan="on")
    admin = _create_listener(config, admin_app, port=config.admin_port, lifespan="off")
    listeners = (public, admin)

    def stop() -> None:
        for listener in listeners:
            listener.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    logger.info(
        "offload listening on %s:%d (admin :%d), static %s, upstream %s",
        config.host,
        config.port,
        config.admin_port,
        config.static or "off",
        config.upstream_address or "off",
    )
    tasks = [asyncio.create_task(listener.serve()) for listener in listeners]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop()  # one listener ended (a signal, or it could not bind): the other follows
    await asyncio.gather(*tasks)


def serve(config: Config) -> None:
    """Run offload until a signal stops it."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(config))
