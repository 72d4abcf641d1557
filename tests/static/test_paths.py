"""The canonical path and the never-served rules, as tables."""

from __future__ import annotations

import pytest

from offload.static.paths import BadPath, canonical_path, is_hidden, is_within, parse_request_path


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/", "/"),
        ("/index.html", "/index.html"),
        ("//docs//guide/", "/docs/guide/"),
        ("/docs/", "/docs/"),
        ("///", "/"),
        ("/a/%2e%2e", "/a/%2e%2e"),  # already decoded once: a literal name, not a dot segment
        ("/.well-known/x", "/.well-known/x"),
        ("/...", "/..."),
        ("/a..b", "/a..b"),
    ],
)
def test_canonical_path_collapses_slashes_and_keeps_trailing_one(path: str, canonical: str) -> None:
    assert canonical_path(path) == canonical


@pytest.mark.parametrize(
    "path",
    ["/..", "/../etc/passwd", "/a/../b", "/./a", "/a/.", "/a/..", "/a\\b", "/a\x00b", "/a/../../"],
)
def test_dot_segments_nul_and_backslash_are_bad_paths(path: str) -> None:
    with pytest.raises(BadPath):
        parse_request_path(path)


@pytest.mark.parametrize(
    ("segments", "hidden"),
    [
        ((".env",), True),
        (("a", ".git", "config"), True),
        ((".well-known", "security.txt"), False),
        ((".well-known", ".secret"), True),
        (("a", ".well-known", "x"), True),  # RFC 8615: only at the top
        (("index.html",), False),
        ((), False),
    ],
)
def test_dot_files_and_directories_are_hidden_except_well_known(
    segments: tuple[str, ...], hidden: bool
) -> None:
    assert is_hidden(segments) is hidden


@pytest.mark.parametrize(
    ("root", "path", "inside"),
    [
        ("/srv", "/srv", True),
        ("/srv", "/srv/a.txt", True),
        ("/srv", "/srv2/a.txt", False),  # a sibling sharing the prefix
        ("/srv", "/sr", False),
        ("/srv", "/etc/passwd", False),
        ("/", "/etc/passwd", True),
    ],
)
def test_is_within_compares_whole_path_components(root: str, path: str, inside: bool) -> None:
    assert is_within(root, path) is inside
