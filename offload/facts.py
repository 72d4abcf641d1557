"""What offload knows about a request, put on the scope for hooks: ``scope["state"]["offload"]``.

Set before the hooks run (``path``, ``request_id``); ``route`` and ``static_file`` are filled
in once routing has decided, so a hook reads them after calling the inner app, e.g. when the
response starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from starlette.types import Scope

STATE_KEY = "offload"


@dataclass(slots=True)
class RequestFacts:
    """>>> facts = scope["state"]["offload"]; facts.route  # "static", "proxy" or "websocket"

    ``path`` is the canonical path offload checked (before any hook rewrote it);
    ``request_id`` is the client's ``X-Request-ID`` or one offload made, sent to the app and
    echoed to the client; ``static_file`` is the URL path of the file served, if any.
    """

    path: str
    raw_path: bytes | None
    client_request_id: str | None = None
    route: str | None = None
    static_file: str | None = None
    upstream_status: int | None = None
    upstream_ms: float | None = None
    error: str | None = None  # upstream_refused, upstream_timeout, upstream_reset, client_closed…
    _made_request_id: str | None = None

    @property
    def request_id(self) -> str:
        """Made on first use: a static hit that no hook asks about never needs one."""
        if self.client_request_id is not None:
            return self.client_request_id
        if self._made_request_id is None:
            self._made_request_id = new_request_id()
        return self._made_request_id


def new_request_id() -> str:
    """32 hex digits. A correlation id, not a secret: no system call for randomness needed."""
    return f"{random.getrandbits(128):032x}"


def request_facts(scope: Scope) -> RequestFacts | None:
    """The facts offload put on this scope, if it was offload's edge that saw it first."""
    state = scope.get("state")
    facts = state.get(STATE_KEY) if isinstance(state, dict) else None
    return facts if isinstance(facts, RequestFacts) else None
