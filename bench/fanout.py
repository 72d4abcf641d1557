"""``python -m bench.fanout PROXY_URL APP_URL``: Server-Sent Events fan-out. Opens `--clients`
event streams to the app's /api/fanout through the server at PROXY_URL, waits until the app
(asked directly at APP_URL) counts them all, triggers one event, and prints one JSON line: how
many subscribed, how many received the event, and the seconds from the trigger until the last
one had it. Bounded throughout by `--timeout`."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

import aiohttp
import uvloop

CONNECTING_AT_ONCE = 100  # well inside every server's listen backlog


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
EVENT_TIMEOUT_SECONDS = 30


async def subscribe(host: str, port: int, group: str) -> Stream:
    """One event stream, its response head read and checked. Accept-Encoding: identity, as
    offload compresses event streams for clients that accept br or gzip."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /api/fanout?id={group} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/event-stream\r\nAccept-Encoding: identity\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"subscribing answered {head.splitlines()[0]!r}")
    return reader, writer


async def event_arrival(reader: asyncio.StreamReader) -> float:
    """perf_counter() when the stream has delivered a whole event (the comment sent at
    subscription carries no data: line)."""
    seen = b""
    while b"data:" not in seen or b"\n\n" not in seen[seen.index(b"data:") :]:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("the stream ended before the event")
        seen += chunk
    return time.perf_counter()


async def wait_for_subscribers(session: aiohttp.ClientSession, url: str, clients: int) -> int:
    while True:
        async with session.get(url) as response:
            counted = int((await response.json())["clients"])
        if counted >= clients:
            return counted
        await asyncio.sleep(0.02)


async def fan_out(proxy: str, app: str, *, clients: int, group: str) -> dict[str, float]:
    target = urlsplit(proxy)
    host, port = target.hostname or "127.0.0.1", target.port or 80
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def bounded_subscribe() -> Stream:
        async with gate:
            return await subscribe(host, port, group)

    streams = await asyncio.gather(*(bounded_subscribe() for _ in range(clients)))
    arrivals = [asyncio.ensure_future(event_arrival(reader)) for reader, _ in streams]
    async with aiohttp.ClientSession() as session:
        subscribed = await wait_for_subscribers(
            session, f"{app}/api/fanout/clients?id={group}", clients
        )
        triggered = time.perf_counter()
        async with session.post(f"{app}/api/fanout/send?id={group}") as response:
            await response.read()
        done, pending = await asyncio.wait(arrivals, timeout=EVENT_TIMEOUT_SECONDS)
    for task in pending:
        task.cancel()
    for _, writer in streams:
        writer.close()
    times = [task.result() for task in done if task.exception() is None]
    last = max(times, default=triggered)
    received = len(times)
    return {
        "clients": clients,
        "subscribed": subscribed,
        "received": received,
        "seconds": last - triggered,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("proxy", help="the server under test, e.g. http://127.0.0.1:8080")
    parser.add_argument("app", help="the app itself, for counting and triggering")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--group", default="bench")
    parser.add_argument("--timeout", type=float, default=90, help="seconds for the whole run")
    arguments = parser.parse_args()
    run = fan_out(arguments.proxy, arguments.app, clients=arguments.clients, group=arguments.group)
    # uvloop: the client's own share of the measured time, reading 1,000 sockets, kept small
    result = uvloop.run(asyncio.wait_for(run, arguments.timeout))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
