"""Hooks the tests load with --hook-dir tests/hookmods: they record what they saw."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _labelled(name: str) -> object:
    def hook(app: ASGIApp) -> ASGIApp:
        async def labelled(scope: Scope, receive: Receive, send: Send) -> None:
            state = scope.setdefault("state", {})
            state["entered"] = [*state.get("entered", []), name]
            order = ",".join(state["entered"]).encode()

            async def send_labelled(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {
                        **message,
                        "headers": [*message["headers"], (f"x-{name}".encode(), order)],
                    }
                await send(message)

            await app(scope, receive, send_labelled)

        return labelled

    return hook


first = _labelled("first")
second = _labelled("second")


def facts(app: ASGIApp) -> ASGIApp:
    """Reports what offload decided, as response headers, read once the response starts."""

    async def report(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_facts(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen = scope["state"]["offload"]
                reported = [
                    (b"x-seen-path", scope["path"].encode()),
                    (b"x-route", str(seen.route).encode()),
                    (b"x-static-file", str(seen.static_file).encode()),
                    (b"x-seen-request-id", seen.request_id.encode()),
                ]
                message = {**message, "headers": [*message["headers"], *reported]}
            await send(message)

        await app(scope, receive, send_with_facts)

    return report


def short(app: ASGIApp) -> ASGIApp:
    """Answers /short itself: neither the static engine nor the app sees it."""

    async def maybe_answer(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/short":
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"short"})
            return
        await app(scope, receive, send)

    return maybe_answer


def deny_websockets(app: ASGIApp) -> ASGIApp:
    async def deny(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and b"deny" in scope.get("query_string", b""):
            await send({"type": "websocket.close", "code": 4403})
            return
        await app(scope, receive, send)

    return deny


def unchanged(app: ASGIApp) -> ASGIApp:
    """A hook that adds nothing: the edge still takes its hooked path, without the fast one."""
    return app


def faulty(app: ASGIApp) -> ASGIApp:
    """Raises on /raise before any response, and on /raise-late once its response started."""

    async def maybe_raise(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/raise":
            raise RuntimeError("the hook failed before answering")
        if path == "/raise-late":
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"10")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("the hook failed while answering")
        await app(scope, receive, send)

    return maybe_raise
