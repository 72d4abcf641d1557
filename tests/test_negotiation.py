"""Content negotiation and compressibility, as tables."""

from __future__ import annotations

import tracemalloc

import pytest

from offload.negotiation import (
    MEMO_MAX_BYTES,
    is_compressible,
    parse_accept_encoding,
    select_encoding,
)

ALL = ("br", "zstd", "gzip")


@pytest.mark.parametrize(
    ("header", "available", "coding"),
    [
        (None, ALL, "identity"),
        ("", ALL, "identity"),
        ("gzip", ALL, "gzip"),
        ("gzip, br", ALL, "br"),
        ("br, gzip", ("gzip",), "gzip"),
        ("gzip, deflate, br, zstd", ALL, "br"),  # ties go to the server's order, not the header's
        ("gzip;q=1.0, br;q=0.5", ALL, "gzip"),
        ("br;q=0, gzip", ALL, "gzip"),
        ("BR", ALL, "br"),
        ("x-gzip", ALL, "gzip"),
        ("*", ALL, "br"),
        ("*;q=0.5, br;q=0", ALL, "zstd"),
        ("*;q=0", ALL, "identity"),  # nothing acceptable: identity regardless
        ("identity", ALL, "identity"),
        ("gzip;q=0.5, identity", ALL, "identity"),
        # RFC 9110 §12.5.3: identity is acceptable unless excluded, but an identity the header
        # does not name has no q of its own: any coding the header accepts ranks above it, as
        # nginx and Caddy read it (issue 15)
        ("gzip;q=0.8", ALL, "gzip"),
        ("br;q=0.5, gzip;q=0.9", ALL, "gzip"),
        ("br;q=0, gzip;q=0.8", ALL, "gzip"),
        ("gzip;q=0.001", ALL, "gzip"),
        ("br;q=0.5, gzip;q=0.5", ALL, "br"),  # a tie among codings: the server's order
        ("gzip;q=0.5, identity;q=0.5", ALL, "gzip"),  # a tie with identity: the coding
        ("gzip;q=0.5, identity;q=0.6", ALL, "identity"),  # identity weighted by name
        ("gzip;q=0.5, *;q=0.8", ("gzip",), "identity"),  # ... or by "*"
        ("gzip;q=0.5, *;q=0.8", ALL, "br"),
        ("gzip;q=0.9, *;q=0.8", ("gzip",), "gzip"),
        ("identity;q=0, gzip;q=0.1", ALL, "gzip"),
        ("identity;q=0", ALL, "identity"),  # nothing named acceptable: identity regardless
        ("*;q=0, gzip;q=0.3", ALL, "gzip"),
        ("gzip, identity;q=0", ALL, "gzip"),
        ("gzip;q=bogus, br", ALL, "br"),
        ("gzip;q=2", ALL, "identity"),
        ("gzip", (), "identity"),
        ("deflate", ALL, "identity"),
    ],
)
def test_select_encoding(header: str | None, available: tuple[str, ...], coding: str) -> None:
    assert select_encoding(header, available) == coding


@pytest.mark.parametrize(
    ("count", "padding"),
    [
        (1_000, 30_000),  # long values, each different: issue 14 pinned 32 MiB with these
        (5_000, 0),  # short ones, each different: many entries
    ],
)
def test_select_encoding_distinct_values_keep_the_memo_bounded(count: int, padding: int) -> None:
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index in range(count):
            header = f"br;q={index % 2}, gzip, x-{index}{'y' * padding}"
            assert select_encoding(header, ALL) == ("br" if index % 2 else "gzip")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - before < 2 * MEMO_MAX_BYTES  # the bound, and the dictionary's table


def test_select_encoding_answers_the_same_once_memoised() -> None:
    header = "gzip, deflate, br, zstd"
    assert [select_encoding(header, ALL) for _ in range(3)] == ["br"] * 3
    assert select_encoding(header, ("gzip",)) == "gzip"  # another table, another entry


def test_parse_accept_encoding_reads_q_values() -> None:
    assert parse_accept_encoding("gzip;q=0.5, BR, *;q=0") == {"gzip": 0.5, "br": 1.0, "*": 0.0}


@pytest.mark.parametrize(
    ("media_type", "compressible"),
    [
        ("text/css; charset=utf-8", True),
        ("text/javascript; charset=utf-8", True),
        ("application/json; charset=utf-8", True),
        ("image/svg+xml; charset=utf-8", True),
        ("application/wasm", True),
        ("image/png", False),
        ("font/woff2", False),
        ("application/zip", False),
        ("video/mp4", False),
        ("application/octet-stream", False),
    ],
)
def test_is_compressible(media_type: str, compressible: bool) -> None:
    assert is_compressible(media_type) is compressible
