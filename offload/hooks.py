"""Loading ``--hook MODULE:ATTR`` specs and wrapping the edge in them (first hook outermost).

A hook is plain ASGI: a callable that takes the inner app and returns an app, such as a
function ``def hook(app): ...`` or a middleware class like Starlette's.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from starlette.types import ASGIApp

from offload.config import ConfigError

Hook = Callable[[ASGIApp], ASGIApp]


def load_hook(spec: str, *, hook_dir: Path | None = None) -> Hook:
    """The callable ``MODULE:ATTR`` names, imported from ``hook_dir``, the working directory or
    ``PYTHONPATH``; a `ConfigError` naming the hook when it cannot be had."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError("hooks", spec, "expected MODULE:ATTR, e.g. myhooks:auth")
    for directory in (hook_dir, Path.cwd()):
        if directory is not None and str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # whatever the import raises, it is a start-up failure
        raise ConfigError("hooks", spec, f"cannot import {module_name!r}: {error}") from error
    hook = module
    for name in attribute.split("."):
        try:
            hook = getattr(hook, name)
        except AttributeError:
            raise ConfigError("hooks", spec, f"{module_name!r} has no {attribute!r}") from None
    if not callable(hook):
        raise ConfigError("hooks", spec, f"{attribute!r} is not callable")
    return hook


def apply_hooks(app: ASGIApp, hooks: Sequence[Hook], *, names: Sequence[str] = ()) -> ASGIApp:
    """``app`` wrapped in ``hooks``, the first outermost. A hook that raises while being built
    is a `ConfigError` naming it."""
    for index in range(len(hooks) - 1, -1, -1):
        hook = hooks[index]
        name = names[index] if index < len(names) else repr(hook)
        try:
            app = hook(app)
        except Exception as error:  # whatever building raises, it is a start-up failure
            raise ConfigError("hooks", name, f"raised while being built: {error!r}") from error
        if not callable(app):
            raise ConfigError("hooks", name, "did not return an ASGI app")
    return app
