"""Finds the file a request names under the static root, opens it safely, and describes it as an
`Asset`: size, validators, media type, cache policy and precomputed response headers.

Descriptions are cached by file identity (device, inode, size, mtime), so a file's content is
hashed once per version, and a file replaced on the volume is seen on the next request.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from offload.static import media
from offload.static.http import format_http_date
from offload.static.paths import is_hidden, is_within

INDEX_FILE = "index.html"
HASH_CHUNK_BYTES = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW
_PROC_FD = Path("/proc/self/fd")


@dataclass(frozen=True)
class Asset:
    """One version of one file, with the headers every response for it carries."""

    relative_path: str
    size: int
    etag: str
    last_modified: int
    headers: tuple[tuple[bytes, bytes], ...]
    not_modified_headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True)
class OpenAsset:
    """An asset and the descriptor it will be read from: bytes sent come from this open file,
    whatever happens to the path meanwhile. The responder closes ``fd``."""

    asset: Asset
    fd: int


@dataclass(frozen=True)
class Redirect:
    """A directory named without its trailing slash: ``location`` is relative, query excluded."""

    location: str


class Catalog:
    """The static root as offload sees it.

    >>> catalog = Catalog(Path("static_fixtures"), default_max_age_seconds=60)  # doctest: +SKIP
    >>> catalog.find(("index.html",), trailing_slash=False)  # doctest: +SKIP
    OpenAsset(asset=Asset(relative_path='index.html', ...), fd=7)

    `find` does blocking file-system work: call it from a worker thread.
    """

    def __init__(
        self, root: Path, *, default_max_age_seconds: int, max_cached_assets: int = 10_000
    ):
        self.root = os.path.realpath(root)
        self.default_max_age_seconds = default_max_age_seconds
        self.max_cached_assets = max_cached_assets
        self._assets: dict[tuple[int, int, int, int, str], Asset] = {}

    def find(
        self, segments: tuple[str, ...], *, trailing_slash: bool
    ) -> OpenAsset | Redirect | None:
        """The open asset a canonical path names, a redirect to its directory form, or ``None``."""
        if is_hidden(segments):
            return None
        real_path = self._resolve(os.path.join(self.root, *segments))
        if real_path is None:
            return None
        try:
            status = os.stat(real_path)
        except OSError:
            return None
        if stat.S_ISDIR(status.st_mode):
            return self._find_index(real_path, segments, trailing_slash=trailing_slash)
        if trailing_slash or not stat.S_ISREG(status.st_mode):
            return None  # "/style.css/" names no file, as in nginx
        return self._open(real_path)

    def _find_index(
        self, directory: str, segments: tuple[str, ...], *, trailing_slash: bool
    ) -> OpenAsset | Redirect | None:
        index_path = self._resolve(os.path.join(directory, INDEX_FILE))
        if index_path is None or not os.path.isfile(index_path):
            return None
        if segments and not trailing_slash:
            # RFC 9110 §15.4.9: 308 keeps the method. The relative reference keeps working
            # behind a path-rewriting proxy; "./" stops a name with ":" reading as a scheme.
            return Redirect(location="./" + quote(segments[-1], safe="!$&'()*+,;=@") + "/")
        return self._open(index_path)

    def _resolve(self, path: str) -> str | None:
        """The symlink-free path, if it stays inside the root and hides in no dot-directory."""
        real_path = os.path.realpath(path)
        if not is_within(self.root, real_path):
            return None
        relative = real_path[len(self.root) :].strip("/")
        if relative and is_hidden(tuple(relative.split("/"))):
            return None
        return real_path

    def _open(self, real_path: str) -> OpenAsset | None:
        try:
            fd = os.open(real_path, _OPEN_FLAGS)
        except OSError:
            return None  # gone, unreadable, or swapped for a symlink since it was resolved
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or not self._is_open_inside_root(fd):
                os.close(fd)
                return None
            return OpenAsset(asset=self._describe(real_path, fd, status), fd=fd)
        except BaseException:
            os.close(fd)
            raise

    def _is_open_inside_root(self, fd: int) -> bool:
        """Check the file actually opened: a directory swapped for a symlink between resolving
        and opening must not lead outside the root."""
        try:
            return is_within(self.root, os.readlink(_PROC_FD / str(fd)))
        except FileNotFoundError:
            return not _PROC_FD.is_dir()  # no /proc here: the resolve checks stand alone

    def _describe(self, real_path: str, fd: int, status: os.stat_result) -> Asset:
        relative = real_path[len(self.root) :].lstrip("/")
        key = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, relative)
        asset = self._assets.get(key)
        if asset is None:
            if len(self._assets) >= self.max_cached_assets:
                self._assets.pop(next(iter(self._assets)))
            asset = self._assets[key] = self._create_asset(relative, fd, status)
        return asset

    def _create_asset(self, relative: str, fd: int, status: os.stat_result) -> Asset:
        etag = f'"{_content_digest(fd, status.st_size)}"'
        # RFC 9110 §8.8.2.1: never a Last-Modified later than the Date sent with it, which
        # comes from the same clock, read later
        last_modified = min(int(status.st_mtime), int(time.time()))
        cache_control = media.cache_control_for(
            "/" + relative, default_max_age_seconds=self.default_max_age_seconds
        )
        validators = (
            (b"etag", etag.encode()),
            (b"cache-control", cache_control.encode()),
        )
        headers = (
            (b"content-type", media.media_type_for(relative).encode()),
            (b"content-length", str(status.st_size).encode()),
            (b"last-modified", format_http_date(last_modified).encode()),
            (b"x-content-type-options", b"nosniff"),
            *validators,
        )
        return Asset(
            relative_path=relative,
            size=status.st_size,
            etag=etag,
            last_modified=last_modified,
            headers=headers,
            not_modified_headers=validators,
        )


def _content_digest(fd: int, size: int) -> str:
    """A digest of the bytes themselves, so every replica and rebuild of the same file agrees."""
    digest = hashlib.blake2b(digest_size=16)
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(HASH_CHUNK_BYTES, size - offset), offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
