"""The variant encoders, their bounded cache, and ``offload compress DIR``."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import brotli
import pytest

from offload.static.compress import VariantCache, encode, is_worth_keeping, should_compress
from tests.servers import ROOT

TEXT = b"".join(b"body { margin: %dpx }\n" % n for n in range(500))


@pytest.mark.parametrize("coding", ["br", "gzip"])
def test_encode_round_trips(coding: str) -> None:
    encoded = encode(TEXT, coding, best=False)
    decoded = brotli.decompress(encoded) if coding == "br" else gzip.decompress(encoded)
    assert decoded == TEXT
    assert len(encoded) < len(TEXT)


def test_gzip_output_is_the_same_every_time() -> None:
    assert encode(TEXT, "gzip", best=True) == encode(TEXT, "gzip", best=True)


@pytest.mark.parametrize(
    ("media_type", "size", "expected"),
    [
        ("text/css; charset=utf-8", 10_000, True),
        ("text/css; charset=utf-8", 100, False),  # tiny
        ("image/png", 10_000, False),  # already compressed
    ],
)
def test_should_compress(media_type: str, size: int, expected: bool) -> None:
    assert should_compress(media_type, size) is expected


def test_variant_must_save_five_percent() -> None:
    assert is_worth_keeping(1000, 950)
    assert not is_worth_keeping(1000, 951)


def test_variant_cache_stops_keeping_past_its_bound() -> None:
    cache = VariantCache(max_bytes=10)
    cache.put("a", "br", b"12345678")
    cache.put("b", "br", b"12345678")
    assert cache.get("a", "br") == b"12345678"
    assert cache.get("b", "br") is None
    assert cache.has_tried("b", "br")
    assert cache.used_bytes == 8


def run_compress(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", "compress", *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_compress_writes_sidecars_once_and_skips_what_would_not_shrink(tmp_path: Path) -> None:
    (tmp_path / "app.css").write_bytes(TEXT)
    (tmp_path / "tiny.css").write_bytes(b"a{}")
    (tmp_path / "noise.txt").write_bytes(os.urandom(4096))
    (tmp_path / "photo.png").write_bytes(bytes(4096))
    (tmp_path / ".hidden.css").write_bytes(TEXT)
    first = run_compress(str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[-1] == (
        "offload compress: 2 written, 0 up to date, 2 skipped (would not shrink)"
    )
    assert brotli.decompress((tmp_path / "app.css.br").read_bytes()) == TEXT
    assert gzip.decompress((tmp_path / "app.css.gz").read_bytes()) == TEXT
    assert (tmp_path / "app.css.br").stat().st_mtime_ns == (tmp_path / "app.css").stat().st_mtime_ns
    for never in ("tiny.css.br", "noise.txt.br", "photo.png.gz", ".hidden.css.br"):
        assert not (tmp_path / never).exists()
    second = run_compress(str(tmp_path))
    assert second.stdout.splitlines()[-1].startswith("offload compress: 0 written, 2 up to date")


def test_compress_of_a_missing_directory_exits_2() -> None:
    result = run_compress("/no/such/dir")
    assert result.returncode == 2
    assert result.stderr.startswith("offload: error: compress:")
