"""Fixtures: the Node test app and offload in front of it, started once per session."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import FIXTURES, NodeApp, Offload, run_offload, start_node_app


@pytest.fixture(scope="session")
def node_app() -> Iterator[NodeApp]:
    app = start_node_app()
    yield app
    app.stop()


@pytest.fixture(scope="session")
def offload(node_app: NodeApp) -> Iterator[Offload]:
    """offload in its main form: the static fixtures, and the Node app as upstream."""
    with run_offload("--upstream", node_app.address, "--static", FIXTURES) as running:
        yield running


@pytest.fixture(scope="session")
def client(offload: Offload) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=offload.url, timeout=10) as session:
        yield session


@pytest.fixture
def start_offload() -> Iterator[Callable[..., Offload]]:
    """Start an offload with other flags; it stops when the test ends."""
    with contextlib.ExitStack() as stack:

        def start(*arguments: str | Path, env: dict[str, str] | None = None) -> Offload:
            return stack.enter_context(run_offload(*arguments, env=env))

        yield start
