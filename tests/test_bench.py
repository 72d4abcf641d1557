"""The benchmark harness end to end: ``python -m bench --smoke`` runs every case once, briefly
and small, and every row its tables should have is there with a number above zero. The numbers
themselves are not checked: a smoke run on a shared machine proves paths, not speed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT_SECONDS = 240
STATIC_SERVERS = ("offload", "nginx", "starlette", "servestatic", "ceiling")
STATIC_CASES = ("1 KB CSS", "50 KB JS, br", "5 MB binary", "304 revalidation")
STARTUP_SERVERS = ("offload", "offload --no-compress-static", "nginx", "starlette", "servestatic")
PROXY_SERVERS = ("node", "nginx", "aiohttp", "offload", "offload, no breaker")
FANOUT_SERVERS = ("node", "nginx", "aiohttp", "offload")  # the breaker's cost is in PROXY_SERVERS
PROXY_CASES = (
    "small JSON, 64 conn",
    "small JSON, 1 conn",
    "1 MB download, 64 conn",
    "10 MB upload, 8 conn",
)
FANOUT_CLIENTS = 100

Table = list[dict[str, str]]


def missing_requirements() -> list[str]:
    missing = [tool for tool in ("wrk", "nginx", "node") if shutil.which(tool) is None]
    modules = ("servestatic", "httpx")
    return missing + [name for name in modules if importlib.util.find_spec(name) is None]


def parse_tables(output: str) -> list[Table]:
    """Each markdown table in the output as rows keyed by its header."""
    tables: list[Table] = []
    lines: list[list[str]] = []
    for line in [*output.splitlines(), ""]:
        if line.startswith("|"):
            lines.append([cell.strip() for cell in line.strip("|").split("|")])
        elif lines:
            header, _, *rows = lines
            tables.append([dict(zip(header, row, strict=True)) for row in rows])
            lines = []
    return tables


def find_row(tables: list[Table], first_header: str, *leading: str) -> dict[str, str]:
    """The row of the table whose first header starts with `first_header`, whose first cells
    are `leading`."""
    for table in tables:
        for row in table:
            first_cells = list(row.values())[: len(leading)]
            if next(iter(row)).startswith(first_header) and first_cells == list(leading):
                return row
    raise AssertionError(f"no row {leading} in a table headed {first_header!r}")


def value(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.fixture(scope="module")
def tables() -> list[Table]:
    missing = missing_requirements()
    if missing:
        message = f"the benchmark needs {', '.join(missing)} (bench/run.sh installs them)"
        if os.environ.get("OFFLOAD_REQUIRE_BENCH") == "1":
            pytest.fail(f"{message}; OFFLOAD_REQUIRE_BENCH=1 forbids skipping")
        pytest.skip(message)
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return parse_tables(result.stdout)


@pytest.mark.parametrize("server", STATIC_SERVERS)
@pytest.mark.parametrize("case", STATIC_CASES)
def test_static_case_moves_data_and_reports_peak_rss(
    tables: list[Table], case: str, server: str
) -> None:
    row = find_row(tables, "case", f"{case}, 64 conn", server)
    assert value(row["MB/s"]) > 0  # ServeStatic finishes no 5 MB file at 64 connections in 1 s
    assert value(row["peak RSS MB"]) > 0


@pytest.mark.parametrize("server", STATIC_SERVERS)
def test_revalidation_gets_304_from_servers_with_validators(
    tables: list[Table], server: str
) -> None:
    row = find_row(tables, "case", "304 revalidation, 64 conn", server)
    assert row["sent"].startswith("304 to If-")


@pytest.mark.parametrize("server", ["offload", "nginx", "servestatic", "ceiling"])
def test_precompressed_script_is_sent_as_br(tables: list[Table], server: str) -> None:
    assert find_row(tables, "case", "50 KB JS, br, 64 conn", server)["sent"] == "200 br"


@pytest.mark.parametrize("server", STARTUP_SERVERS)
def test_startup_reports_time_to_first_file_and_rss(tables: list[Table], server: str) -> None:
    row = find_row(tables, "server", server)
    assert value(row["first file ms"]) > 0
    assert value(row["RSS started MB"]) > 0
    assert value(row["RSS after 1 request MB"]) > 0
    if server.startswith("offload"):
        assert 0 < value(row["/readyz ms"]) <= value(row["first file ms"])


@pytest.mark.parametrize("server", PROXY_SERVERS)
@pytest.mark.parametrize("case", PROXY_CASES)
def test_proxied_case_completes_requests(tables: list[Table], case: str, server: str) -> None:
    row = find_row(tables, "case", case, server)
    assert value(row["req/s"]) > 0
    assert value(row["peak RSS MB"]) > 0
    assert row["sent"] == "200 identity"


@pytest.mark.parametrize("server", FANOUT_SERVERS)
def test_fanout_reaches_every_client(tables: list[Table], server: str) -> None:
    row = find_row(tables, "SSE fan-out", server)
    assert row["received"] == f"{FANOUT_CLIENTS}/{FANOUT_CLIENTS}"
    assert value(row["median ms"]) > 0


@pytest.mark.parametrize("server", ["node", "offload"])
def test_websocket_echo_counts_messages(tables: list[Table], server: str) -> None:
    assert value(find_row(tables, "WebSocket echo", server)["messages/s"]) > 0
