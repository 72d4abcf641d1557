"""Hooks that must stop start-up with one clear line."""

from __future__ import annotations

from starlette.types import ASGIApp

not_callable = 42


def explode(app: ASGIApp) -> ASGIApp:
    raise RuntimeError("this hook cannot be built")


def returns_nothing(app: ASGIApp) -> None:
    return None
