"""``python -m bench``: offload against nginx and the Python peers, in one run, with wrk.

Servers run one worker each, pinned to core 0; the load generators run on core 1. Every case is
measured in alternation (A B C A B C …) for several rounds, and the median of the rounds is
reported, with ratios against nginx and the other references measured in the same run, and each
server's peak RSS in each case. Loopback only; every run is bounded. ``--smoke`` runs every case
once, briefly and small, to prove each path works end to end: its numbers are not results.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time

from bench.options import Options
from bench.proxy import proxy_suite
from bench.servers import raise_open_files_limit
from bench.startup import startup_suite
from bench.static import static_suite

SUITES = {
    "static": (static_suite, startup_suite),
    "proxy": (proxy_suite,),
    "startup": (startup_suite,),
    "all": (static_suite, startup_suite, proxy_suite),
}


def parse_connections(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"connection counts must be 1 or more: {text}")
    return counts


def parse_options(argv: list[str] | None) -> tuple[str, Options]:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--suite", choices=tuple(SUITES), default="all")
    parser.add_argument(
        "--seconds", type=int, default=defaults.seconds, help="length of one wrk run"
    )
    parser.add_argument(
        "--rounds", type=int, default=defaults.rounds, help="alternating rounds per case"
    )
    parser.add_argument(
        "--connections",
        type=parse_connections,
        default=defaults.connections,
        help="wrk connection counts for the static cases and small JSON (default: 1,64)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every case once: 1 s runs, 1 round, 64 connections (small JSON at 1 too), "
        "100 fan-out clients, a 1,000-file tree; overrides the options above",
    )
    arguments = parser.parse_args(argv)
    if arguments.smoke:
        return arguments.suite, Options.smoke()
    options = dataclasses.replace(
        defaults,
        seconds=arguments.seconds,
        rounds=arguments.rounds,
        connections=arguments.connections,
    )
    return arguments.suite, options


def main(argv: list[str] | None = None) -> int:
    suite, options = parse_options(argv)
    missing = [tool for tool in ("wrk", "nginx", "node") if not shutil.which(tool)]
    if missing:
        print(f"missing: {', '.join(missing)} (bench/run.sh installs them)", file=sys.stderr)
        return 1
    raise_open_files_limit()
    started = time.monotonic()
    for run_suite in SUITES[suite]:
        print(run_suite(options), end="\n\n", flush=True)
    print(f"benchmark took {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0
