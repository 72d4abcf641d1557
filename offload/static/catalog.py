"""The static root held in memory: a scan maps every servable URL path to its `Asset`, a watcher
rescans when the volume changes, and a background task builds compressed variants.

A request costs a dictionary lookup. The rules about what may be served (no dot-names in the
path, inside the root, regular files only) are applied here, once per scan; the last two again
when a file not held in memory is opened (`open_representation`), so a race cannot widen them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import watchfiles

from offload.static import compress, media
from offload.static.assets import (
    Asset,
    AssetFacts,
    FileIdentity,
    Redirect,
    Representation,
    Source,
    create_asset,
)
from offload.static.files import open_inside, read_exactly, read_source, resolve_inside
from offload.static.paths import is_hidden

logger = logging.getLogger("offload.static")

INDEX_FILE = "index.html"
HOT_BUDGET_BYTES = 64 * 1024 * 1024
VARIANT_BUDGET_BYTES = 64 * 1024 * 1024
WATCH_DEBOUNCE_MS = 200
POLL_SECONDS = 2.0
ATTACH_EVERY_SECONDS = 0.5


@dataclass(frozen=True)
class CatalogSettings:
    """How assets are described: see `offload.Config` for each setting's meaning."""

    in_memory_max_bytes: int = 64 * 1024
    cache_max_age_seconds: int | None = None
    cache_control_rules: tuple[tuple[str, str], ...] = ()
    compress: bool = True


class Catalog:
    """URL path → `Asset` or `Redirect`, for every file offload may serve under ``root``.

    >>> catalog = Catalog(Path("public"), CatalogSettings())  # doctest: +SKIP
    >>> await catalog.start()  # doctest: +SKIP
    >>> catalog.entries["/style.css"].identity.etag  # doctest: +SKIP
    '"9f86d081884c7d659a2feaa0c55ad015"'
    """

    def __init__(self, root: Path, settings: CatalogSettings) -> None:
        self.root = os.path.realpath(root)
        self.settings = settings
        self.entries: dict[str, Asset | Redirect] = {}
        self.generation = 0  # scans completed
        self.variants = compress.VariantCache(VARIANT_BUDGET_BYTES)
        self.hot = HotFiles(HOT_BUDGET_BYTES)
        self._sources: dict[str, Source] = {}  # real path -> what the last scan read
        self._scan_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._variants_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Scan the root, then keep watching it and building variants until `close`."""
        await self.rescan()
        self._tasks = [asyncio.create_task(self._watch())]
        if self.settings.compress:
            self._tasks.append(asyncio.create_task(self._build_variants()))

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def rescan(self, *, unless_newer_than: int | None = None) -> None:
        """Describe the root anew, reusing what is unchanged; swap the result in at once.

        ``unless_newer_than``: skip it if a scan finished since that `generation`, so many
        requests finding the same stale file cause one rescan, not one each.
        """
        async with self._scan_lock:
            if unless_newer_than is not None and self.generation > unless_newer_than:
                return
            scan = _Scan(self, previous=self._sources)
            await asyncio.to_thread(scan.run)
            self.entries, self._sources = scan.entries, scan.sources
            self.generation += 1
        self._variants_wanted.set()

    async def read_small(self, representation: Representation) -> bytes | None:
        """Read a file small enough to hold (``in_memory_max_bytes``) and keep it in `hot`,
        which serves it from then on without a system call; ``None`` if the file is no longer
        the one described. Callers look in `hot` first."""
        body = await asyncio.to_thread(self._read_whole, representation)
        if body is not None:
            self.hot.put(representation, body)
        return body

    def is_small(self, representation: Representation) -> bool:
        return representation.size <= self.settings.in_memory_max_bytes

    def open_representation(self, representation: Representation) -> int | None:
        """A descriptor for a representation not held in memory, if the file is still the one
        described (same inode, size and mtime) and still inside the root; else ``None``.
        Blocking: call it from a worker thread."""
        assert representation.path is not None
        opened = open_inside(self.root, representation.path)
        if opened is None:
            return None
        fd, identity = opened
        if identity != representation.file_identity:
            os.close(fd)
            return None
        return fd

    async def _watch(self) -> None:
        """Rescan on every batch of changes; inotify costs nothing while nothing changes."""
        try:
            async for _ in watchfiles.awatch(
                self.root,
                watch_filter=None,
                debounce=WATCH_DEBOUNCE_MS,
                step=50,
                stop_event=self._stop,
                ignore_permission_denied=True,
            ):
                await self.rescan()
        except (OSError, RuntimeError) as error:  # inotify limits, a vanished root
            logger.warning(
                "watching %s failed (%s): rescanning every %s s", self.root, error, POLL_SECONDS
            )
            while not self._stop.is_set():
                await asyncio.sleep(POLL_SECONDS)
                await self.rescan()

    async def _build_variants(self) -> None:
        """Compress what is worth it, one file at a time on a worker thread, and attach the
        results every half second, so the first requests go out identity and later ones
        compressed."""
        while True:
            await self._variants_wanted.wait()
            self._variants_wanted.clear()
            last_attach = time.monotonic()
            for asset in {id(a): a for a in self.entries.values() if isinstance(a, Asset)}.values():
                await self._build_missing(asset)
                if time.monotonic() - last_attach > ATTACH_EVERY_SECONDS:
                    self._attach_variants()
                    last_attach = time.monotonic()
            self._attach_variants()

    async def _build_missing(self, asset: Asset) -> None:
        missing = [
            coding
            for coding in compress.BUILT_CODINGS
            if coding not in asset.encoded and not self.variants.has_tried(asset.digest, coding)
        ]
        identity = asset.identity
        if (
            not missing
            or self.variants.is_full()
            or identity.size > compress.RUNTIME_MAX_SOURCE_BYTES
            or not compress.should_compress(asset.media_type, identity.size)
        ):
            return
        data = identity.body
        if data is None:
            data = await asyncio.to_thread(self._read_whole, identity)
            if data is None:
                return  # changed since the scan: the next scan brings it back
        for coding in missing:
            encoded = await asyncio.to_thread(compress.encode, data, coding, best=False)
            keep = compress.is_worth_keeping(len(data), len(encoded))
            self.variants.put(asset.digest, coding, encoded if keep else None)

    def _read_whole(self, representation: Representation) -> bytes | None:
        fd = self.open_representation(representation)
        if fd is None:
            return None
        try:
            return read_exactly(fd, 0, representation.size)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _attach_variants(self) -> None:
        attached: dict[int, Asset] = {}
        entries = dict(self.entries)
        for path, entry in entries.items():
            if isinstance(entry, Asset):
                if id(entry) not in attached:
                    attached[id(entry)] = self._with_built_variants(entry)
                entries[path] = attached[id(entry)]
        self.entries = entries

    def _with_built_variants(self, asset: Asset) -> Asset:
        built = {
            coding: Source(asset.digest, len(body), body, None, None)
            for coding in compress.BUILT_CODINGS
            if coding not in asset.encoded
            and (body := self.variants.get(asset.digest, coding)) is not None
        }
        return asset.with_encoded(built, order=compress.CODINGS_BY_PREFERENCE) if built else asset


class _Scan:
    """One pass over the root. Runs on a worker thread; touches no shared state until done."""

    def __init__(self, catalog: Catalog, *, previous: dict[str, Source]) -> None:
        self.catalog = catalog
        self.previous = previous
        self.entries: dict[str, Asset | Redirect] = {}
        self.sources: dict[str, Source] = {}
        self.visited: set[str] = set()
        self.now = int(time.time())

    def run(self) -> None:
        self._walk(self.catalog.root, ())

    def _walk(self, directory: str, segments: tuple[str, ...]) -> None:
        if directory in self.visited:
            return  # a symlink loop, or a second link to the same directory
        self.visited.add(directory)
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:
            return
        names = frozenset(entry.name for entry in entries)
        for entry in entries:
            child = (*segments, entry.name)
            if is_hidden(child):
                continue
            # ``directory`` is already resolved: only a symlink needs resolving again
            real_path = (
                resolve_inside(self.catalog.root, entry.path) if entry.is_symlink() else entry.path
            )
            if real_path is None:
                continue
            try:
                status = os.stat(real_path)
            except OSError:
                continue
            if stat.S_ISDIR(status.st_mode):
                self._walk(real_path, child)
            elif stat.S_ISREG(status.st_mode):
                self._add_file(real_path, status, child, names)
        self._add_index(segments)

    def _add_file(
        self,
        real_path: str,
        status: os.stat_result,
        segments: tuple[str, ...],
        names: frozenset[str],
    ) -> None:
        identity = self._read(real_path, status)
        if identity is None:
            return
        url_path = "/" + "/".join(segments)
        settings = self.catalog.settings
        media_type = media.media_type_for(segments[-1])
        sidecars = self._sidecars(segments[-1], real_path, identity, names)
        facts = AssetFacts(
            media_type=media_type,
            cache_control=media.cache_control_for(
                url_path,
                max_age_seconds=settings.cache_max_age_seconds,
                rules=settings.cache_control_rules,
            ),
            # RFC 9110 §8.8.2.1: never later than the Date sent with it (same clock, read later)
            last_modified=min(identity.file_identity[3] // 1_000_000_000, self.now)
            if identity.file_identity
            else self.now,
            negotiable=bool(sidecars) or compress.should_compress(media_type, identity.size),
        )
        asset = create_asset(
            facts, identity, sidecars, order=compress.CODINGS_BY_PREFERENCE, path=url_path
        )
        self.entries[url_path] = self.catalog._with_built_variants(asset)

    def _sidecars(
        self, name: str, real_path: str, identity: Source, names: frozenset[str]
    ) -> dict[str, Source]:
        """``app.js.br`` and friends, when they are at least as new as ``app.js``."""
        found: dict[str, Source] = {}
        assert identity.file_identity is not None
        directory = os.path.dirname(real_path)
        for coding, suffix in compress.SIDECAR_SUFFIXES.items():
            if name + suffix not in names:
                continue
            sidecar = resolve_inside(self.catalog.root, os.path.join(directory, name + suffix))
            try:
                status = os.stat(sidecar) if sidecar is not None else None
            except OSError:
                continue
            if sidecar is None or status is None or not stat.S_ISREG(status.st_mode):
                continue
            source = self._read(sidecar, status)
            if (
                source is not None
                and source.file_identity is not None
                and source.file_identity[3] >= identity.file_identity[3]
            ):
                found[coding] = source
        return found

    def _read(self, real_path: str, status: os.stat_result) -> Source | None:
        """The file's digest, and its bytes if small enough to hold. What an earlier scan read
        is reused while the file's identity (device, inode, size, mtime) is unchanged, so a
        rescan costs a stat per file."""
        identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        source = self.previous.get(real_path)
        if source is None or source.file_identity != identity:
            source = self._read_anew(real_path)
        if source is None:
            return None
        self.sources[real_path] = source
        return source

    def _read_anew(self, real_path: str) -> Source | None:
        opened = open_inside(self.catalog.root, real_path)
        if opened is None:
            return None
        fd, file_identity = opened
        try:
            return read_source(fd, real_path, file_identity)
        finally:
            os.close(fd)

    def _add_index(self, segments: tuple[str, ...]) -> None:
        prefix = "/" + "/".join(segments) if segments else ""
        index = self.entries.get(f"{prefix}/{INDEX_FILE}")
        if index is None:
            return
        self.entries[f"{prefix}/"] = index
        if segments:
            self.entries[prefix] = directory_redirect(segments[-1])


def directory_redirect(name: str) -> Redirect:
    """RFC 9110 §15.4.9: 308 keeps the method. The relative reference keeps working behind a
    path-rewriting proxy; "./" stops a name with ":" reading as a scheme."""
    return Redirect(location="./" + quote(name, safe="!$&'()*+,;=@") + "/")


class HotFiles:
    """Bodies of small files, kept after their first request while ``budget_bytes`` allows;
    the least recently served goes first. Keyed by path and file identity, so a changed file is
    never served from an old copy; the copy simply ages out."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self._bodies: OrderedDict[tuple[str | None, FileIdentity | None], bytes] = OrderedDict()

    def get(self, representation: Representation) -> bytes | None:
        key = (representation.path, representation.file_identity)
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
        return body

    def put(self, representation: Representation, body: bytes) -> None:
        key = (representation.path, representation.file_identity)
        if key in self._bodies or len(body) > self.budget_bytes:
            return
        while self.bytes + len(body) > self.budget_bytes:
            _, evicted = self._bodies.popitem(last=False)
            self.bytes -= len(evicted)
        self._bodies[key] = body
        self.bytes += len(body)
