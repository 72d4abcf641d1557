"""The app the watchdog tests (tests/test_watchdog.py) run as ``offload ... -- python THIS``.

It serves HTTP on 127.0.0.1:$PORT, and says so on stdout once its signal handler is in place
(``watched app PID started at UNIX-TIME``); on stderr it writes a line that is not UTF-8, and
on stdout a 10,000-character line. ``GET /health`` answers the status set by
``PUT /health?status=N`` (200 at first); ``POST /grow`` keeps 64 MiB more in memory; any other
GET answers ``ok``. SIGUSR1 writes $LAST_WORDS, if set, without a newline, and exits with
$EXIT_CODE (default 0). With EXIT_AT_ONCE=1 it exits with $EXIT_CODE as soon as it has said it
started.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlsplit

EXIT_CODE = int(os.environ.get("EXIT_CODE", "0"))
GROW_BYTES = 64 * 1024 * 1024
health = {"status": 200}
hoard: list[bytes] = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(health["status"], b"health")
        else:
            self._answer(200, b"ok")

    def do_PUT(self) -> None:
        url = urlsplit(self.path)
        health["status"] = int(parse_qs(url.query)["status"][0])
        self._answer(200, b"set")

    def do_POST(self) -> None:
        hoard.append(b"\x01" * GROW_BYTES)  # written, so resident: not calloc's untouched pages
        self._answer(200, b"grown")

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def leave(signum: int, frame: FrameType | None) -> None:
    os.write(sys.stdout.fileno(), os.environ.get("LAST_WORDS", "").encode())
    os._exit(EXIT_CODE)


def main() -> None:
    signal.signal(signal.SIGUSR1, leave)
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"watched app {os.getpid()} started at {time.time()}", flush=True)
    if os.environ.get("EXIT_AT_ONCE"):
        sys.exit(EXIT_CODE)
    sys.stderr.buffer.write(b"not utf-8: \xff\xfe\n")
    sys.stderr.flush()
    print("x" * 10_000, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
