"""Without hooks, a static hit already in memory takes a fast path past the routing layers.
It must answer exactly as the layered path does: the same response, log line and metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import FIXTURES, ROOT, Offload, metric, run_offload

HOOKS = ROOT / "tests" / "hookmods"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Offload, Offload]]:
    """The same files served twice: by the fast path, and through a hook that changes nothing."""
    with (
        run_offload("--static", FIXTURES) as fast,
        run_offload(
            "--static", FIXTURES, "--hook-dir", HOOKS, "--hook", "probes:unchanged"
        ) as hooked,
    ):
        yield fast, hooked


def _etag(server: Offload, path: str, **headers: str) -> str:
    return httpx.get(server.url + path, headers=headers).headers["etag"]


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/style.css", {}),
    ("HEAD", "/style.css", {}),
    ("GET", "/style.css", {"accept-encoding": "gzip, br"}),
    ("GET", "/style.css", {"accept-encoding": "gzip;q=0"}),
    ("GET", "/style.css", {"if-none-match": "ETAG"}),
    ("HEAD", "/style.css", {"if-none-match": "ETAG"}),
    ("GET", "/style.css", {"if-none-match": '"other"'}),
    ("GET", "/style.css", {"if-match": '"other"'}),  # 412
    ("GET", "/style.css", {"if-modified-since": "Sun, 06 Nov 2094 08:49:37 GMT"}),
    ("GET", "/style.css", {"range": "bytes=0-9"}),
    ("GET", "/style.css", {"range": "bytes=99999-"}),  # 416
    ("GET", "/index.html", {}),
    ("GET", "/", {}),
    ("GET", "/docs", {}),  # a redirect
    ("GET", "/docs/", {}),
    ("GET", "//style.css", {}),  # not plain: canonicalised first
    ("GET", "/missing.css", {}),
    ("POST", "/style.css", {}),
    ("GET", "/pixel.png", {"accept-encoding": "br"}),
    ("GET", "/with%20space.txt", {}),
]


def _answer(server: Offload, method: str, path: str, headers: dict[str, str]) -> object:
    if headers.get("if-none-match") == "ETAG":
        headers = {**headers, "if-none-match": _etag(server, path)}
    # twice: the first read of a small file may come from disk, later ones from memory
    for _ in range(2):
        response = httpx.request(method, server.url + path, headers=headers)
    kept = sorted((name, value) for name, value in response.headers.items() if name != "date")
    return response.status_code, kept, response.content


@pytest.mark.parametrize(("method", "path", "headers"), REQUESTS)
def test_the_fast_path_answers_as_the_hooked_path_does(
    pair: tuple[Offload, Offload], method: str, path: str, headers: dict[str, str]
) -> None:
    fast, hooked = pair
    assert _answer(fast, method, path, headers) == _answer(hooked, method, path, headers)


def test_log_lines_and_metrics_are_the_same(pair: tuple[Offload, Offload]) -> None:
    """The table's requests once more on both, marked by their query: the same log lines, and
    the same counts in the metrics."""
    lines = []
    for server in pair:
        for method, path, headers in REQUESTS:
            httpx.request(method, f"{server.url}{path}?fast-path-log", headers=headers)
        time.sleep(0.4)  # log lines are written every 0.2 s
        logged = [json.loads(line) for line in server.output().splitlines() if '"route"' in line]
        unstable = ("ts", "duration_ms", "request_id")
        lines.append(
            [
                {key: value for key, value in line.items() if key not in unstable}
                for line in logged
                if line["query"] == "fast-path-log"
            ]
        )
    assert len(lines[0]) == len(REQUESTS)
    assert lines[0] == lines[1]
    counts = []
    for server in pair:
        text = httpx.get(server.admin_url + "/metrics").text
        counts.append(
            [
                metric(text, "offload_http_requests_total", route=route, method=method, code=code)
                for route in ("static", "none")
                for method in ("GET", "HEAD")
                for code in ("200", "304", "206", "404", "412", "416", "308")
            ]
        )
    assert counts[0] == counts[1]
    assert counts[0][0] > 0  # static GET 200: counted, not absent from both
