"""The demo in a real browser: headless Chromium loads the example app's page through offload and
shows its stylesheet, its script's API data and live updates over server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from tests.servers import ROOT, Offload, free_port, poll, run_offload

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package "chromium"
EXAMPLE_APP = ROOT / "examples" / "node-app"
FIRST_NOTE = "offload served the page; Node answered this list"
WAIT_SECONDS = 15.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    # without these Chromium dials Google's services at start, and a closed network refuses them
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",  # any free port, written to DevToolsActivePort in the profile
)


@dataclass
class Chromium:
    """A running browser: its DevTools HTTP and WebSocket endpoints are on ``devtools_port``."""

    process: subprocess.Popen[bytes]
    devtools_port: int
    log: IO[bytes]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


class Page:
    """One tab driven over the DevTools protocol: each command is answered by its id, and the
    events in between are not needed here."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.last_id = 0

    async def call(self, method: str, **params: object) -> dict[str, Any]:
        self.last_id += 1
        await self.socket.send_json({"id": self.last_id, "method": method, "params": params})
        async for message in self.socket:
            reply: dict[str, Any] = json.loads(message.data)
            if reply.get("id") == self.last_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                result: dict[str, Any] = reply["result"]
                return result
        raise AssertionError(f"the DevTools connection closed during {method}")

    async def evaluate(self, expression: str) -> Any:
        reply = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['result'].get('description')}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """The first truthy value of ``expression`` in the page, within WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not (value := await self.evaluate(expression)):
            if time.monotonic() > deadline:
                shown = await self.evaluate("document.body?.innerText")
                raise AssertionError(f"still false: {expression}\nthe page shows: {shown!r}")
            await asyncio.sleep(0.05)
        return value


@pytest.fixture(scope="module", autouse=True)
def chromium_installed() -> None:
    """Without Chromium these tests skip, unless OFFLOAD_REQUIRE_BROWSER=1 (CI) wants them run."""
    if CHROMIUM.exists():
        return
    message = f"no {CHROMIUM}: install Debian's package, apt-get install chromium"
    if os.environ.get("OFFLOAD_REQUIRE_BROWSER") == "1":
        pytest.fail(f"OFFLOAD_REQUIRE_BROWSER=1 and {message}", pytrace=False)
    pytest.skip(message)


def _wait_for_devtools_port(browser: Chromium, profile: Path) -> None:
    active_port = profile / "DevToolsActivePort"  # "PORT\n/devtools/browser/ID", once listening
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and browser.process.poll() is None:
        with contextlib.suppress(FileNotFoundError, IndexError, ValueError):
            browser.devtools_port = int(active_port.read_text().splitlines()[0])
            return
        time.sleep(0.05)
    raise RuntimeError(f"Chromium did not open its DevTools port:\n{browser.output()}")


@contextlib.contextmanager
def run_chromium() -> Iterator[Chromium]:
    """Headless Chromium with a fresh profile until the block ends; then it is killed, with
    every process it started, and the profile is removed."""
    profile = Path(tempfile.mkdtemp(prefix="offload-chromium-"))
    command = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        browser = Chromium(process=process, devtools_port=0, log=log)
        try:
            _wait_for_devtools_port(browser, profile)
            yield browser
        finally:
            process.terminate()  # the browser ends its helper processes, then itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError):  # its own session: whatever is left
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Chromium]:
    with run_chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def demo() -> Iterator[Offload]:
    """The demo as examples/demo.sh runs it: offload serving public/, the example app its child."""
    app_port = free_port()
    public, app = EXAMPLE_APP / "public", EXAMPLE_APP / "server.js"
    with run_offload(
        *("--upstream", f"127.0.0.1:{app_port}", "--static", public, "--", "node", app),
        env={"PORT": str(app_port), "HOST": "127.0.0.1"},
    ) as server:
        ready = poll(server.admin_url + "/readyz", lambda response: response.status_code == 200)
        assert ready.status_code == 200, server.output()
        yield server


@contextlib.asynccontextmanager
async def open_page(chromium: Chromium, url: str) -> AsyncIterator[Page]:
    """A new tab loading ``url``, closed when the block ends."""
    devtools = f"http://127.0.0.1:{chromium.devtools_port}"
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{devtools}/json/new?{url}") as response:
            target = await response.json()
        try:
            async with session.ws_connect(target["webSocketDebuggerUrl"]) as socket:
                page = Page(socket)
                # the tab starts on an empty document; wait for the page and what it links to
                loaded = (
                    f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
                )
                await page.wait_for(loaded)
                yield page
        finally:
            async with session.get(f"{devtools}/json/close/{target['id']}"):
                pass


def text_of(selector: str) -> str:
    """A JavaScript expression: the text of the element ``selector`` names (undefined if none)."""
    return f"document.querySelector({json.dumps(selector)})?.textContent"


async def notes_shown(page: Page) -> list[str]:
    await page.wait_for("document.querySelectorAll('#notes li').length > 0")
    notes: list[str] = await page.evaluate(
        "[...document.querySelectorAll('#notes li')].map((item) => item.textContent)"
    )
    return notes


async def clock_shown(page: Page) -> str:
    """The app's clock once the page shows it: "2026-01-31T12:00:00.000Z (node v20.11.0)"."""
    clock: str = await page.wait_for(f"/node v/.test({text_of('#time')}) && {text_of('#time')}")
    return clock


def test_the_stylesheet_applies(demo: Offload, chromium: Chromium) -> None:
    async def background() -> str:
        async with open_page(chromium, demo.url + "/") as page:
            color: str = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            return color

    assert asyncio.run(background()) == "rgb(246, 247, 249)"  # only style.css sets it: #f6f7f9


def test_the_script_shows_the_apps_notes_and_clock(demo: Offload, chromium: Chromium) -> None:
    async def shown() -> tuple[list[str], str]:
        async with open_page(chromium, demo.url + "/") as page:
            return await notes_shown(page), await clock_shown(page)

    notes, clock = asyncio.run(shown())
    assert notes[0] == FIRST_NOTE
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z \(node v[\d.]+\)", clock)


def test_the_clock_ticks_live_over_server_sent_events(demo: Offload, chromium: Chromium) -> None:
    async def clocks() -> tuple[str, str, str]:
        async with open_page(chromium, demo.url + "/") as page:
            first = await clock_shown(page)
            await page.wait_for(f"Number({text_of('#updates')}) >= 2")  # the clock at once, a tick
            return first, await clock_shown(page), await page.evaluate(text_of("#live"))

    first, later, state = asyncio.run(clocks())
    assert later > first  # ISO 8601 times in one zone sort as text
    assert state == "live"


def test_a_note_added_by_another_client_appears_live(demo: Offload, chromium: Chromium) -> None:
    text = f"added by another client {uuid.uuid4()}"

    async def notes_after_adding() -> list[str]:
        async with open_page(chromium, demo.url + "/") as page:
            await page.wait_for(f"{text_of('#live')} === 'live'")
            async with (
                aiohttp.ClientSession() as session,
                session.post(demo.url + "/api/notes", json={"text": text}) as response,
            ):
                assert response.status == 201
            await page.wait_for(f"{text_of('#notes')}.includes({json.dumps(text)})")
            return await notes_shown(page)

    assert asyncio.run(notes_after_adding()).count(text) == 1


def test_a_note_added_with_the_form_is_listed(demo: Offload, chromium: Chromium) -> None:
    text = f"typed in the browser {uuid.uuid4()}"

    async def notes_after_submitting() -> list[str]:
        async with open_page(chromium, demo.url + "/") as page:
            await page.evaluate(f"document.querySelector('#add input').value = {json.dumps(text)}")
            await page.evaluate("document.querySelector('#add button').click()")
            await page.wait_for(f"{text_of('#notes')}.includes({json.dumps(text)})")
            return await notes_shown(page)

    assert asyncio.run(notes_after_submitting()).count(text) == 1
