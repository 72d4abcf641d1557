"""The report: markdown tables of the medians of the rounds, ratios against the reference servers
measured in the same run, and the machine they ran on."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
from pathlib import Path

from bench.wrk import Run, Sample


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    system = f"Linux {platform.release()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}"


def table(header: list[str], rows: list[list[str]], *, left: tuple[int, ...] = (0,)) -> list[str]:
    """A markdown table: numbers right-aligned, the columns in `left` (text) left-aligned."""
    text = {index % len(header) for index in left}
    aligns = ["---" if n in text else "---:" for n in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def number(value: float, digits: int = 0) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def median_samples(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.requests_per_second for s in samples),
        statistics.median(s.p50_ms for s in samples),
        statistics.median(s.p99_ms for s in samples),
        statistics.median(s.megabytes_per_second for s in samples),
    )


def ratio(medians: dict[str, Sample], server: str, against: str) -> str:
    reference = medians.get(against)
    if reference is None or not reference.requests_per_second:
        return "n/a"
    return f"{medians[server].requests_per_second / reference.requests_per_second:.2f}"


def wrk_table(run: Run) -> str:
    """One row per case and server: req/s, MB/s, p50, p99, the case's peak RSS, the ratios of
    req/s against `run.ratio_columns`, and what the probe saw the server send."""
    ratios = [f"x {name}" for name in run.ratio_columns]
    header = ["case", "server", "req/s", "MB/s", "p50 ms", "p99 ms", "peak RSS MB"]
    rows = []
    for case in run.cases:
        medians = {
            server: median_samples(samples)
            for (case_name, server), samples in run.samples.items()
            if case_name == case.name
        }
        for server, sample in medians.items():
            megabytes = sample.megabytes_per_second
            if case.upload_bytes:  # wrk counts what it reads; an upload's load is what it sends
                megabytes = sample.requests_per_second * case.upload_bytes / 2**20
            rows.append(
                [
                    case.name,
                    server,
                    number(sample.requests_per_second),
                    number(megabytes, 1),
                    number(sample.p50_ms, 2),
                    number(sample.p99_ms, 2),
                    number(run.peak_rss_mb.get((case.name, server), math.nan)),
                    *(ratio(medians, server, name) for name in run.ratio_columns),
                    run.probes[(case.name, server)].sent,
                ]
            )
    lines = table([*header, *ratios, "sent"], rows, left=(0, 1, -1))
    if not run.peaks_reset:
        lines += ["", "Peak RSS could not be reset between cases: each runs from start-up."]
    return "\n".join(lines)


def header_line(description: str) -> str:
    return f"Machine: {machine()}; {description}"
