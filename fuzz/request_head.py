"""Coverage-guided fuzzing of offload's request-head handling with atheris: each input is the
bytes a client sends on one connection to offload's own protocol (`EdgeHttpProtocol` over
httptools) in front of the real edge app, which serves a small static root and proxies the rest
to a stub app on a Unix socket, all on one uvloop event loop (tests/edge_harness.py).

    pip install atheris
    python fuzz/request_head.py -dict=fuzz/request_head.dict -max_total_time=60 CORPUS fuzz/seeds

Per input it checks: no exception escapes the protocol, the app or a loop callback (uvicorn
logs an app's exception and answers 500: both count); every connection ends once the client
leaves; what is written is nothing or starts with ``HTTP/1.1 `` and a status of 100-599; no
byte of a file outside the static root is ever sent; and what reached the stub app parses, and
is one request per whole client request, with its method and body bytes. See fuzz/README.md.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests/

with atheris.instrument_imports(include=["offload", "uvicorn.protocols"]):
    from tests.edge_harness import SECRET, EdgeHarness, Finding, check_forwarded

STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] ")


def is_known_denial_error(record: logging.LogRecord, written: bytes) -> bool:
    """uvicorn's websockets-sansio never marks the handshake done after a denial response
    (the ``websocket.http.response`` extension offload refuses upgrades with), so it logs this
    for every upgrade the app refuses; the client gets the right answer (Kludex/uvicorn#3138).
    Had offload really returned without answering, uvicorn would have sent a 500."""
    return (
        record.getMessage() == "ASGI callable returned without completing handshake."
        and STATUS_LINE.match(written) is not None
        and not written.startswith(b"HTTP/1.1 500 ")
    )


def run(harness: EdgeHarness, data: bytes) -> bytes:
    """What offload writes back for one input, with everything logged at ERROR judged."""
    written = harness.run(split(data))
    for record in harness.error_log.records:
        if is_known_denial_error(record, written):
            continue
        raise Finding(f"logged at ERROR: {record.getMessage()}") from (
            record.exc_info[1] if record.exc_info else None
        )
    return written


def split(data: bytes) -> list[bytes]:
    """The first byte says how the rest arrives: whole, or in up to eight pieces."""
    if not data:
        return [b""]
    pieces, rest = data[0] % 8 + 1, data[1:]
    size = max(1, -(-len(rest) // pieces))
    return [rest[index : index + size] for index in range(0, len(rest), size)] or [b""]


def check(written: bytes) -> None:
    if written and not STATUS_LINE.match(written):
        raise Finding(f"the answer does not start with a status line: {written[:80]!r}")
    if SECRET in written:
        raise Finding("a file outside the static root was sent")


def main() -> None:
    harness = EdgeHarness()

    def test_one_input(data: bytes) -> None:
        check(run(harness, data))
        check_forwarded(data[1:], harness.received, harness.malformed)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
