"""Content negotiation shared by the static engine and the proxy: which coding a client gets
(RFC 9110 §12.5.3) and which media types are worth compressing (pure: no I/O)."""

from __future__ import annotations

COMPRESSIBLE_TYPES = frozenset(
    {
        "application/json",
        "application/manifest+json",
        "application/xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/wasm",
        "image/svg+xml",
        "image/vnd.microsoft.icon",
        "image/bmp",
        "font/ttf",
        "font/otf",
    }
)

IDENTITY = "identity"
_CODING_ALIASES = {"x-gzip": "gzip"}


def parse_accept_encoding(header: str) -> dict[str, float]:
    """Coding → q-value. Names are case-insensitive; ``x-gzip`` is gzip; a bad q drops the item."""
    qualities: dict[str, float] = {}
    for item in header.split(","):
        name, *parameters = (part.strip() for part in item.split(";"))
        if not name:
            continue
        quality = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = -1.0
        if 0.0 <= quality <= 1.0:
            name = name.lower()
            qualities[_CODING_ALIASES.get(name, name)] = quality
    return qualities


def select_encoding(header: str | None, available: tuple[str, ...]) -> str:
    """The coding to send: highest q-value, ties to the server's order in ``available``
    (br before zstd before gzip), identity last; an identity the header does not name ranks
    below every coding it accepts (`_select`).

    No header means identity: any coding would be allowed, but old clients that omit the
    header are the ones least likely to decode it. When nothing is acceptable, identity is
    sent anyway (§12.5.3 allows disregarding the header rather than failing).
    """
    if header is None or not available:
        return IDENTITY
    key = (header, available)
    chosen = _chosen.get(key)
    if chosen is None:
        chosen = _select(header, available)
        _remember(key, chosen)
    return chosen


# Clients send a handful of distinct Accept-Encoding values (a browser's is about 25
# characters): each is parsed once. The memo is bounded in bytes, not entries, so that a client
# sending many distinct values cannot make it pin memory (issue 14: 1,000 values of 30 KB held
# 32 MiB): longer values are parsed every time, and the memo starts over when full.
MEMO_HEADER_MAX_CHARS = 256
MEMO_MAX_BYTES = 64 * 1024
# what an entry costs besides its value's characters: the key tuple, the string's header and
# the dictionary's slot (about 146 bytes on CPython 3.11, measured with tracemalloc)
MEMO_ENTRY_BYTES = 160
_chosen: dict[tuple[str, tuple[str, ...]], str] = {}
_chosen_bytes = 0


def _remember(key: tuple[str, tuple[str, ...]], chosen: str) -> None:
    global _chosen_bytes
    header = key[0]
    if len(header) > MEMO_HEADER_MAX_CHARS:
        return
    size = len(header) + MEMO_ENTRY_BYTES
    if _chosen_bytes + size > MEMO_MAX_BYTES:
        _chosen.clear()
        _chosen_bytes = 0
    _chosen[key] = chosen
    _chosen_bytes += size


def _select(header: str, available: tuple[str, ...]) -> str:
    """RFC 9110 §12.5.3: a coding the header names gets its q, one it does not gets the q of
    ``*`` or none. Identity is acceptable unless excluded, but the RFC gives an identity the
    header does not name (by itself or by ``*``) no weight: any coding with a q above 0 ranks
    above it, so ``gzip;q=0.8`` gets gzip, as from nginx and Caddy (issue 15). It is also what
    is left when nothing is acceptable."""
    qualities = parse_accept_encoding(header)
    star = qualities.get("*", 0.0)

    def quality(coding: str) -> float:
        return qualities.get(coding, star)

    best = max((*available, IDENTITY), key=quality)  # max keeps the first of equals
    return best if quality(best) > 0 else IDENTITY


def is_compressible(media_type: str) -> bool:
    """Text-like types shrink; images, fonts in woff, archives, audio and video already are."""
    essence = media_type.split(";", 1)[0]
    return essence.startswith("text/") or essence in COMPRESSIBLE_TYPES
