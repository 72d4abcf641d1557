"""The wrk cases: what is requested, the probe that checks each server's answer before timing,
running and parsing wrk, and the alternating measurement loop (A B C A B C …)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.servers import Server, peak_rss_mb, pinned, reset_peak_rss


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    connections: int = 64
    accept_encoding: str | None = None
    revalidate: bool = False  # send the server's own ETag (or Last-Modified) for `path`
    upload_bytes: int = 0  # POST a body of this many bytes


@dataclass(frozen=True)
class Probe:
    """What the server sends for a case, and the request headers wrk sends it."""

    sent: str
    headers: tuple[str, ...] = ()


@dataclass
class Sample:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    megabytes_per_second: float = 0.0  # counts responses still in flight when the run ends


@dataclass
class Run:
    """One suite's wrk measurements, keyed by (case name, server name)."""

    cases: tuple[Case, ...]
    ratio_columns: tuple[str, ...]
    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)
    probes: dict[tuple[str, str], Probe] = field(default_factory=dict)
    peak_rss_mb: dict[tuple[str, str], float] = field(default_factory=dict)
    peaks_reset: bool = True  # False: clear_refs was refused, peaks run from start-up


def at_connections(case: Case, counts: tuple[int, ...]) -> list[Case]:
    """The case once for each connection count, named after it."""
    return [
        dataclasses.replace(case, name=f"{case.name}, {count} conn", connections=count)
        for count in counts
    ]


def validator_headers(url: str) -> dict[str, str]:
    """The conditional header that revalidates the server's own copy: If-None-Match with its
    ETag, else If-Modified-Since with its Last-Modified, else none."""
    response = httpx.get(url, headers={"accept-encoding": "identity"}, timeout=30)
    if etag := response.headers.get("etag"):
        return {"if-none-match": etag}
    if modified := response.headers.get("last-modified"):
        return {"if-modified-since": modified}
    return {}


def probe(server: Server, case: Case) -> Probe:
    """Checked before timing: the status (and Content-Encoding, or validator) the case gets."""
    url = f"http://127.0.0.1:{server.port}{case.path}"
    headers = {"accept-encoding": case.accept_encoding or "identity"}
    if case.revalidate:
        headers |= validator_headers(url)
    body = b"x" * case.upload_bytes if case.upload_bytes else None
    response = httpx.request(
        "POST" if body else "GET", url, headers=headers, content=body, timeout=60
    )
    allowed = (200, 304) if case.revalidate else (200,)
    if response.status_code not in allowed:
        raise RuntimeError(f"{server.name} answered {case.path} with {response.status_code}")
    if body is not None and response.json().get("bytes") != case.upload_bytes:
        raise RuntimeError(f"{server.name} passed on {response.text} of {case.upload_bytes} bytes")
    # wrk sends no Accept-Encoding of its own: identity needs no header
    wrk_headers = tuple(
        f"{name}: {value}" for name, value in headers.items() if value != "identity"
    )
    return Probe(describe(response, headers, revalidate=case.revalidate), wrk_headers)


def describe(response: httpx.Response, headers: dict[str, str], *, revalidate: bool) -> str:
    """What the report's `sent` column shows: "200 br", "304 to If-None-Match"."""
    if revalidate:
        validator = next((name.title() for name in headers if name.startswith("if-")), None)
        return f"{response.status_code} to {validator or 'no validator'}"
    return f"{response.status_code} {response.headers.get('content-encoding', 'identity')}"


def upload_script(workdir: Path, size_bytes: int) -> Path:
    """A wrk Lua script that POSTs `size_bytes` bytes (wrk sets Content-Length)."""
    script = workdir / f"upload-{size_bytes}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {size_bytes})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return script


def run_wrk(server: Server, case: Case, probe: Probe, *, seconds: int, workdir: Path) -> Sample:
    # a generous timeout, so a slow server is measured as slow rather than as failing
    command = [*pinned(1), "wrk", "-t1", f"-c{case.connections}", f"-d{seconds}s"]
    command += ["--timeout", "10s", "--latency"]
    for header in probe.headers:
        command += ["-H", header]
    if case.upload_bytes:
        command += ["-s", str(upload_script(workdir, case.upload_bytes))]
    command.append(f"http://127.0.0.1:{server.port}{case.path}")
    output = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 30
    )
    return parse_wrk(output.stdout)


def parse_wrk(output: str) -> Sample:
    def latency_ms(percentile: str) -> float:
        match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if match is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    requests = re.search(r"Requests/sec:\s+([\d.]+)", output)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", output)
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if requests is None or errors is not None:
        raise RuntimeError(f"wrk failed or saw errors:\n{output}")
    megabytes = float(transfer.group(1)) * scale[transfer.group(2)] if transfer else float("nan")
    return Sample(float(requests.group(1)), latency_ms("50"), latency_ms("99"), megabytes)


def measure(servers: list[Server], run: Run, *, seconds: int, rounds: int, workdir: Path) -> None:
    """Each case, each round, each server in turn: A B C A B C, so drift hits all alike. After
    a case's rounds, each server's peak RSS is read and reset, so the next case's is its own."""
    run.probes = {(case.name, s.name): probe(s, case) for case in run.cases for s in servers}
    resets = [reset_peak_rss(server) for server in servers]  # every one, no short circuit
    run.peaks_reset = all(resets)
    for case in run.cases:
        for _ in range(rounds):
            for server in servers:
                sample = run_wrk(
                    server,
                    case,
                    run.probes[(case.name, server.name)],
                    seconds=seconds,
                    workdir=workdir,
                )
                run.samples.setdefault((case.name, server.name), []).append(sample)
                rate = f"{sample.requests_per_second:10,.0f} req/s"
                print(f"{case.name:28} {server.name:12} {rate}", file=sys.stderr, flush=True)
        for server in servers:
            run.peak_rss_mb[(case.name, server.name)] = peak_rss_mb(server)
            run.peaks_reset = reset_peak_rss(server) and run.peaks_reset
