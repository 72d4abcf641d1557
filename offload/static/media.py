"""Media types from offload's own table, fingerprinted-name detection, and the cache policy that
follows from a file's name (pure: the host's ``mimetypes`` database differs between machines)."""

from __future__ import annotations

import fnmatch
import re

TEXT_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",  # RFC 9239: text/javascript is the one current type
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".xml": "application/xml",
    ".rss": "application/rss+xml",
    ".atom": "application/atom+xml",
    ".ics": "text/calendar",
    ".vtt": "text/vtt",
}

BINARY_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".bmp": "image/bmp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".br": "application/octet-stream",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
}

DEFAULT_TYPE = "application/octet-stream"

# name.<hex≥8>.ext (webpack, Django's ManifestStaticFilesStorage)
_DOTTED_HASH = re.compile(r"\.[0-9a-f]{8,}\.[^./]+$", re.IGNORECASE)
# name-<8+ url-safe chars, at least one digit>.ext (Vite, Rollup); "jquery-carousel.js" is not one
_DASHED_HASH = re.compile(r"-(?=[A-Za-z0-9_]*\d)[A-Za-z0-9_]{8,}\.[^./]+$")

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


def media_type_for(name: str) -> str:
    """The ``Content-Type`` value for a file name, with ``charset=utf-8`` on text types."""
    extension = _extension(name)
    if extension in TEXT_TYPES:
        return f"{TEXT_TYPES[extension]}; charset=utf-8"
    return BINARY_TYPES.get(extension, DEFAULT_TYPE)


def is_fingerprinted(path: str) -> bool:
    """Whether a path names content that never changes under that name."""
    name = path.rsplit("/", 1)[-1]
    return "/_next/static/" in path or bool(_DOTTED_HASH.search(name) or _DASHED_HASH.search(name))


def cache_control_for(
    path: str, *, max_age_seconds: int | None, rules: tuple[tuple[str, str], ...] = ()
) -> str:
    """``Cache-Control`` decided from the path of the file actually served.

    The first ``(glob, value)`` rule whose glob matches wins. Otherwise fingerprinted names are
    immutable; HTML, web manifests and service workers are revalidated every time so a deploy is
    seen at once; everything else is revalidated too (``no-cache``) unless a max-age is given.
    """
    for glob, value in rules:
        if fnmatch.fnmatchcase(path, glob):
            return value
    name = path.rsplit("/", 1)[-1]
    extension = _extension(name)
    if extension in (".html", ".htm", ".webmanifest") or name in ("sw.js", "service-worker.js"):
        return REVALIDATE
    if is_fingerprinted(path):
        return IMMUTABLE
    return REVALIDATE if max_age_seconds is None else f"public, max-age={max_age_seconds}"


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""
