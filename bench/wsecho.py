"""``python -m bench.wsecho URL``: WebSocket echo messages per second, printed as one number.
Each connection sends a 64-byte message, waits for its echo, and repeats until time is up."""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

MESSAGE = "x" * 64


async def echo_loop(session: aiohttp.ClientSession, url: str, deadline: float) -> int:
    count = 0
    async with session.ws_connect(url) as ws:
        while time.monotonic() < deadline:
            await ws.send_str(MESSAGE)
            await ws.receive()
            count += 1
    return count


async def measure(url: str, *, seconds: float, connections: int) -> float:
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        deadline = started + seconds
        counts = await asyncio.gather(
            *(echo_loop(session, url, deadline) for _ in range(connections))
        )
        return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wsecho", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    arguments = parser.parse_args()
    rate = asyncio.run(
        measure(arguments.url, seconds=arguments.seconds, connections=arguments.connections)
    )
    print(f"{rate:.1f}")


if __name__ == "__main__":
    main()
