"""The canonical request path and the rules for which files may ever be served (pure: no I/O)."""

from __future__ import annotations

import posixpath


class BadPath(ValueError):
    """A request path offload refuses with 400 before anything else sees it."""


def parse_request_path(path: str) -> tuple[str, ...]:
    """Split an already percent-decoded path into its non-empty segments.

    Repeated slashes collapse, as in nginx's ``merge_slashes``. NUL, backslash and ``.``/``..``
    segments raise `BadPath`: they are how traversal hides, and no honest client sends them
    (RFC 3986 §5.2.4 has clients remove dot segments before sending).
    """
    if "\x00" in path or "\\" in path:
        raise BadPath("NUL or backslash in path")
    segments = tuple(segment for segment in path.split("/") if segment)
    if any(segment in (".", "..") for segment in segments):
        raise BadPath("dot segment in path")
    return segments


def is_plain(path: str) -> bool:
    """Whether `canonical_path` returns ``path`` as it is: nothing to collapse or refuse.
    ("/." also covers dot-files, which are allowed here but not plain: it only decides.)"""
    return (
        path.startswith("/")
        and "//" not in path
        and "/." not in path
        and "\\" not in path
        and "\x00" not in path
    )


def canonical_path(path: str) -> str:
    """The one form of a path that hooks, the static lookup and the access log all see.

    >>> canonical_path("//docs//guide/")
    '/docs/guide/'
    """
    if is_plain(path):
        return path  # most requests, at no cost
    segments = parse_request_path(path)
    trailing = "/" if segments and path.endswith("/") else ""
    return "/" + "/".join(segments) + trailing


def is_hidden(segments: tuple[str, ...]) -> bool:
    """Dot-files and dot-directories are never served, except under ``/.well-known/`` (RFC 8615)."""
    return any(
        segment.startswith(".") and not (index == 0 and segment == ".well-known")
        for index, segment in enumerate(segments)
    )


def is_within(root: str, real_path: str) -> bool:
    """Whether a fully resolved path is the root or inside it (``/srv2`` is not inside ``/srv``)."""
    return real_path == root or real_path.startswith(root.rstrip(posixpath.sep) + posixpath.sep)
