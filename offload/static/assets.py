"""What the catalog knows about a file: its representations (identity and encoded), each with
its own ETag, length and response headers, precomputed once (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from offload.static.http import format_http_date

Header = tuple[bytes, bytes]
FileIdentity = tuple[int, int, int, int]  # device, inode, size, mtime in ns


@dataclass(frozen=True)
class Representation:
    """One coding of an asset's content: in memory (``body``) or read from ``path``."""

    coding: str
    size: int
    etag: str
    headers: tuple[Header, ...]
    not_modified_headers: tuple[Header, ...]
    body: bytes | None = None
    path: str | None = None
    file_identity: FileIdentity | None = None  # what ``path`` must still be when opened


@dataclass(frozen=True)
class Asset:
    """A file under the static root as offload serves it: ``path`` is its URL path (for a
    directory index, the index file's), ``digest`` names its content."""

    path: str
    digest: str
    media_type: str
    cache_control: str
    last_modified: int
    negotiable: bool
    identity: Representation
    encoded: Mapping[str, Representation] = field(default_factory=dict)

    @property
    def codings(self) -> tuple[str, ...]:
        return tuple(self.encoded)

    @property
    def facts(self) -> AssetFacts:
        return AssetFacts(self.media_type, self.cache_control, self.last_modified, self.negotiable)

    def representation(self, coding: str) -> Representation:
        return self.identity if coding == "identity" else self.encoded[coding]

    def range_headers(self) -> tuple[Header, ...]:
        """Headers of a 206 or 416: the identity's, less the length of the whole."""
        return tuple(header for header in self.identity.headers if header[0] != b"content-length")

    def with_encoded(self, sources: Mapping[str, Source], *, order: tuple[str, ...]) -> Asset:
        """This asset with more encoded representations (those it has win)."""
        added = {
            coding: create_representation(
                coding, source, asset=self.facts, identity_digest=self.digest
            )
            for coding, source in sources.items()
            if coding not in self.encoded
        }
        merged = {**self.encoded, **added}
        return replace(
            self, encoded={coding: merged[coding] for coding in order if coding in merged}
        )


@dataclass(frozen=True)
class Redirect:
    """A directory named without its trailing slash: ``location`` is relative, query excluded."""

    location: str


@dataclass(frozen=True)
class Source:
    """Bytes of one representation and where they live: what the catalog read or built."""

    digest: str
    size: int
    body: bytes | None
    path: str | None
    file_identity: FileIdentity | None


def create_representation(
    coding: str, source: Source, *, asset: AssetFacts, identity_digest: str
) -> Representation:
    """The representation of ``source`` with every header a 200 and a 304 carry.

    The ETag of an encoded representation is the identity digest plus the coding, so replicas
    agree whatever encoder built it, and no two codings ever share a tag (HTTP.md)."""
    etag = f'"{identity_digest}"' if coding == "identity" else f'"{identity_digest}-{coding}"'
    vary = ((b"vary", b"Accept-Encoding"),) if asset.negotiable else ()
    validators = ((b"etag", etag.encode()), (b"cache-control", asset.cache_control.encode()))
    encoding = () if coding == "identity" else ((b"content-encoding", coding.encode()),)
    headers = (
        (b"content-type", asset.media_type.encode()),
        (b"content-length", str(source.size).encode()),
        *encoding,
        (b"last-modified", format_http_date(asset.last_modified).encode()),
        (b"accept-ranges", b"bytes"),
        (b"x-content-type-options", b"nosniff"),
        *validators,
        *vary,
    )
    return Representation(
        coding=coding,
        size=source.size,
        etag=etag,
        headers=headers,
        not_modified_headers=(*validators, *vary),  # RFC 9110 §15.4.5
        body=source.body,
        path=source.path,
        file_identity=source.file_identity,
    )


@dataclass(frozen=True)
class AssetFacts:
    """What the headers of every representation share."""

    media_type: str
    cache_control: str
    last_modified: int
    negotiable: bool


def create_asset(
    facts: AssetFacts,
    identity: Source,
    encoded: Mapping[str, Source],
    *,
    order: tuple[str, ...],
    path: str,
) -> Asset:
    """An asset with its representations, encoded ones in the server's preference ``order``."""
    digest = identity.digest

    def represent(coding: str, source: Source) -> Representation:
        return create_representation(coding, source, asset=facts, identity_digest=digest)

    return Asset(
        path=path,
        digest=digest,
        media_type=facts.media_type,
        cache_control=facts.cache_control,
        last_modified=facts.last_modified,
        negotiable=facts.negotiable,
        identity=represent("identity", identity),
        encoded={
            coding: represent(coding, encoded[coding]) for coding in order if coding in encoded
        },
    )
