"""brotli and gzip variants: the encoders, the bounded cache of variants offload builds itself
off the request path, and the build step behind ``offload compress DIR``."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import brotli

from offload.negotiation import is_compressible
from offload.static import media

# Server preference when q-values tie (HTTP.md): br, then zstd, then gzip.
CODINGS_BY_PREFERENCE = ("br", "zstd", "gzip")
SIDECAR_SUFFIXES = {"br": ".br", "zstd": ".zst", "gzip": ".gz"}
BUILT_CODINGS = ("br", "gzip")  # zstd is served from .zst files only: no encoder dependency
MIN_COMPRESS_BYTES = 512  # below this, headers outweigh the saving
MAX_KEPT_RATIO = 0.95  # a variant must save at least 5 % or identity is sent instead
RUNTIME_MAX_SOURCE_BYTES = 8 * 1024 * 1024  # larger files: precompress with `offload compress`
RUNTIME_BEST_QUALITY_BYTES = 256 * 1024  # brotli 11 above this costs seconds of CPU


def should_compress(media_type: str, size: int) -> bool:
    """Whether an asset is worth negotiating: text-like and not tiny."""
    return size >= MIN_COMPRESS_BYTES and is_compressible(media_type)


def encode(data: bytes, coding: str, *, best: bool) -> bytes:
    """``data`` in ``coding``. ``best`` is for build steps; at run time brotli drops to quality
    5 on large sources, which keeps most of the saving at a small part of the CPU."""
    if coding == "br":
        quality = 11 if best or len(data) <= RUNTIME_BEST_QUALITY_BYTES else 5
        return bytes(brotli.compress(data, quality=quality))
    if coding == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)  # mtime=0: the same bytes everywhere
    raise ValueError(f"offload cannot encode {coding!r}")


def is_worth_keeping(original_size: int, encoded_size: int) -> bool:
    return encoded_size <= original_size * MAX_KEPT_RATIO


class VariantCache:
    """Variants offload built, keyed by the identity content digest and coding, so a rebuilt
    file with the same bytes reuses them and a changed one never sees stale ones. Bounded:
    once ``max_bytes`` is spent, no more are kept, and those assets are sent as they are."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._variants: dict[tuple[str, str], bytes | None] = {}

    def get(self, digest: str, coding: str) -> bytes | None:
        return self._variants.get((digest, coding))

    def has_tried(self, digest: str, coding: str) -> bool:
        return (digest, coding) in self._variants

    def is_full(self) -> bool:
        return self.used_bytes >= self.max_bytes

    def put(self, digest: str, coding: str, variant: bytes | None) -> None:
        """Keep a variant, or ``None`` to remember that it did not shrink."""
        if variant is not None and self.used_bytes + len(variant) > self.max_bytes:
            variant = None
        self._variants[(digest, coding)] = variant
        self.used_bytes += len(variant) if variant is not None else 0


@dataclass
class CompressReport:
    """What ``offload compress`` did, file by file."""

    written: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)
    not_shrinking: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.written)} written, {len(self.up_to_date)} up to date, "
            f"{len(self.not_shrinking)} skipped (would not shrink)"
        )


def compress_directory(root: Path) -> CompressReport:
    """Write ``.br`` and ``.gz`` next to every compressible file under ``root`` at maximum
    quality. A sidecar gets its source's mtime, so a second run finds it up to date and
    offload can tell a stale sidecar (older than its source) from a fresh one."""
    report = CompressReport()
    for source in _compressible_files(root):
        status = source.stat()
        data: bytes | None = None
        for coding in BUILT_CODINGS:
            target = source.with_name(source.name + SIDECAR_SUFFIXES[coding])
            if target.exists() and target.stat().st_mtime_ns == status.st_mtime_ns:
                report.up_to_date.append(str(target))
                continue
            data = source.read_bytes() if data is None else data
            encoded = encode(data, coding, best=True)
            if not is_worth_keeping(len(data), len(encoded)):
                report.not_shrinking.append(str(target))
                continue
            temporary = target.with_name(f".{target.name}.tmp")
            temporary.write_bytes(encoded)
            os.utime(temporary, ns=(status.st_atime_ns, status.st_mtime_ns))
            temporary.replace(target)
            report.written.append(f"{target} ({len(data)} -> {len(encoded)} bytes)")
    return report


def _compressible_files(root: Path) -> Iterator[Path]:
    for directory, directories, files in os.walk(root):
        directories[:] = sorted(name for name in directories if not name.startswith("."))
        for name in sorted(files):
            path = Path(directory, name)
            if name.startswith(".") or path.is_symlink() or not path.is_file():
                continue
            if should_compress(media.media_type_for(name), path.stat().st_size):
                yield path
