"""Hooks around the whole edge: static, proxied and WebSocket traffic, their order, short
circuits, path rewrites, Starlette middleware as a hook, the example hooks, start-up failures,
and create_app under uvicorn and Starlette's TestClient."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from starlette.testclient import TestClient

from offload import ConfigError, create_app
from tests.servers import FIXTURES, ROOT, NodeApp, Offload, free_port, poll, start_and_fail

HOOKS = ROOT / "tests" / "hookmods"
EXAMPLES = ROOT / "examples" / "hooks"


@pytest.fixture(scope="module")
def probed(node_app: NodeApp) -> Iterator[Offload]:
    from tests.servers import run_offload

    hooks = ["--hook", "probes:first", "--hook", "probes:second", "--hook", "probes:facts"]
    hooks += ["--hook", "probes:short", "--hook", "probes:deny_websockets"]
    with run_offload(
        "--upstream", node_app.address, "--static", FIXTURES, "--hook-dir", HOOKS, *hooks
    ) as server:
        yield server


class TestHooksWrapTheEdge:
    def test_static_responses_pass_through_hooks_in_order(self, probed: Offload) -> None:
        response = httpx.get(probed.url + "/style.css")
        assert response.status_code == 200
        assert response.headers["x-first"] == "first"  # outermost: entered first
        assert response.headers["x-second"] == "first,second"
        assert response.headers["x-route"] == "static"
        assert response.headers["x-static-file"] == "/style.css"

    def test_proxied_responses_pass_through_hooks(self, probed: Offload) -> None:
        response = httpx.get(probed.url + "/api/echo", headers={"x-request-id": "trace-1"})
        assert response.headers["x-second"] == "first,second"
        assert response.headers["x-route"] == "proxy"
        assert response.headers["x-static-file"] == "None"
        assert response.headers["x-seen-request-id"] == "trace-1"

    def test_directory_index_reports_the_file_served(self, probed: Offload) -> None:
        response = httpx.get(probed.url + "/docs/")
        assert response.headers["x-static-file"] == "/docs/index.html"

    def test_hooks_see_the_canonical_path(self, probed: Offload) -> None:
        response = httpx.get(probed.url + "//docs//")
        assert response.headers["x-seen-path"] == "/docs/"

    def test_a_hook_answering_itself_short_circuits_both(self, probed: Offload) -> None:
        response = httpx.get(probed.url + "/short")
        assert response.text == "short"
        assert "x-route" in response.headers  # outer hooks still saw it
        assert response.headers["x-route"] == "None"  # routing never ran

    def test_websockets_pass_through_hooks(self, probed: Offload) -> None:
        async def exchange(query: str) -> str:
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(f"ws://127.0.0.1:{probed.port}/ws/echo{query}")
                await ws.send_str("hi")
                message = await ws.receive()
                await ws.close()
                return str(message.data)

        assert asyncio.run(exchange("")) == "hi"
        # the hook closes before accepting: the handshake is refused
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            asyncio.run(exchange("?deny=1"))
        assert refused.value.status == 403


def test_starlette_middleware_class_works_as_a_hook(
    node_app: NodeApp, start_offload: Callable[..., Offload]
) -> None:
    server = start_offload(
        "--upstream",
        node_app.address,
        "--no-compress-proxied",
        "--hook",
        "starlette.middleware.gzip:GZipMiddleware",
    )
    with httpx.stream(
        "GET", server.url + "/api/big-json", headers={"accept-encoding": "gzip"}
    ) as response:
        assert response.headers["content-encoding"] == "gzip"
        body = gzip.decompress(b"".join(response.iter_raw()))
    assert body.startswith(b'{"items":')


class TestExampleHooks:
    def test_security_headers_on_static_and_proxied(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload(
            "--upstream", node_app.address, "--static", FIXTURES,
            "--hook-dir", EXAMPLES, "--hook", "security_headers:hook",
        )  # fmt: skip
        for path in ("/style.css", "/api/echo"):
            headers = httpx.get(server.url + path).headers
            assert headers["strict-transport-security"].startswith("max-age=")
            assert headers["content-security-policy"].startswith("default-src 'self'")
            assert headers["referrer-policy"] == "strict-origin-when-cross-origin"

    def test_bearer_gate_guards_a_prefix_and_cannot_be_bypassed(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload(
            "--upstream", node_app.address, "--hook-dir", EXAMPLES, "--hook", "bearer_gate:hook",
            env={"OFFLOAD_GATE_TOKEN": "s3cret", "OFFLOAD_GATE_PREFIX": "/api/"},
        )  # fmt: skip
        assert httpx.get(server.url + "/api/echo").status_code == 401
        for sneaky in ("//api/echo", "/%61pi/echo", "/API/../api/echo", "/API/echo", "/Api/x"):
            assert httpx.get(server.url + sneaky).status_code in (400, 401)
        allowed = httpx.get(server.url + "/api/echo", headers={"authorization": "Bearer s3cret"})
        assert allowed.status_code == 200
        assert httpx.get(server.url + "/public").json()["app"] is True

    def test_rewrite_changes_the_static_lookup_and_what_the_app_receives(
        self, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload(
            "--upstream", node_app.address, "--static", FIXTURES,
            "--hook-dir", EXAMPLES, "--hook", "rewrite:hook",
        )  # fmt: skip
        assert (
            httpx.get(server.url + "/v1/style.css").content == (FIXTURES / "style.css").read_bytes()
        )
        assert httpx.get(server.url + "/v1/api/echo?x=1").json()["url"] == "/api/echo?x=1"

    def test_maintenance_switch_follows_a_file(
        self, tmp_path: Path, node_app: NodeApp, start_offload: Callable[..., Offload]
    ) -> None:
        flag = tmp_path / "maintenance.on"
        server = start_offload(
            "--upstream", node_app.address, "--hook-dir", EXAMPLES, "--hook", "maintenance:hook",
            env={"OFFLOAD_MAINTENANCE_FILE": str(flag)},
        )  # fmt: skip
        assert httpx.get(server.url + "/api/echo").status_code == 200
        flag.touch()
        response = poll(server.url + "/api/echo", lambda r: r.status_code == 503)
        assert response.headers["retry-after"] == "120"
        flag.unlink()
        assert poll(server.url + "/api/echo", lambda r: r.status_code == 200).status_code == 200


@pytest.mark.parametrize(
    ("hook", "named"),
    [
        ("unimportable:hook", "cannot import 'unimportable'"),
        ("no_such_module:hook", "cannot import 'no_such_module'"),
        ("broken:missing", "has no 'missing'"),
        ("broken:not_callable", "is not callable"),
        ("broken:explode", "raised while being built"),
        ("broken:returns_nothing", "did not return an ASGI app"),
        ("no-colon", "expected MODULE:ATTR"),
    ],
)
def test_a_hook_that_cannot_be_loaded_stops_start_up_with_one_line(hook: str, named: str) -> None:
    result = start_and_fail("--static", str(FIXTURES), "--hook-dir", str(HOOKS), "--hook", hook)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines == [lines[0]], result.stderr
    assert lines[0].startswith(f"offload: error: --hook '{hook}': ")
    assert named in lines[0]


def test_debug_shows_the_hooks_traceback() -> None:
    result = start_and_fail(
        "--static", str(FIXTURES), "--hook-dir", str(HOOKS), "--hook", "broken:explode", "--debug"
    )
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "this hook cannot be built" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("offload: error: --hook 'broken:explode'")


def test_create_app_in_process_with_starlette_test_client() -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import security_headers  # the example, as a callable
    finally:
        sys.path.remove(str(EXAMPLES))
    app = create_app(static=str(FIXTURES), hooks=[security_headers.hook])
    with TestClient(app) as client:  # runs the lifespan: the catalog scan
        response = client.get("/style.css")
        assert response.status_code == 200
        assert response.content == (FIXTURES / "style.css").read_bytes()
        assert response.headers["x-frame-options"] == "DENY"
        assert client.get("/../etc/passwd").status_code in (400, 404)
        assert client.get("/missing").status_code == 404


def test_create_app_served_by_uvicorn_in_a_subprocess() -> None:
    port = free_port()
    program = (
        "import uvicorn\n"
        "from offload import create_app\n"
        f"app = create_app(static={str(FIXTURES)!r}, hooks=['probes:facts'],"
        f" hook_dir={str(HOOKS)!r})\n"
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    process = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT)
    try:
        response = poll_until_up(f"http://127.0.0.1:{port}/style.css")
        assert response.status_code == 200
        assert response.headers["x-route"] == "static"
    finally:
        process.terminate()
        process.wait(timeout=10)


def poll_until_up(url: str) -> httpx.Response:
    import time

    deadline = time.monotonic() + 15
    while True:
        try:
            return httpx.get(url)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_create_app_rejects_bad_options_and_hooks() -> None:
    with pytest.raises(ConfigError):
        create_app(static="/no/such/dir")
    with pytest.raises(ConfigError):
        create_app(static=str(FIXTURES), hooks=["no_such_module:hook"])
