"""Media types from offload's own table and the cache policy names imply, as tables."""

from __future__ import annotations

import pytest

from offload.static.media import (
    IMMUTABLE,
    REVALIDATE,
    cache_control_for,
    is_fingerprinted,
    media_type_for,
)


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("index.html", "text/html; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("mod.mjs", "text/javascript; charset=utf-8"),
        ("data.json", "application/json; charset=utf-8"),
        ("app.js.map", "application/json; charset=utf-8"),
        ("logo.svg", "image/svg+xml; charset=utf-8"),
        ("site.webmanifest", "application/manifest+json; charset=utf-8"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.JPG", "image/jpeg"),
        ("a.jpeg", "image/jpeg"),
        ("a.gif", "image/gif"),
        ("a.webp", "image/webp"),
        ("a.avif", "image/avif"),
        ("favicon.ico", "image/vnd.microsoft.icon"),
        ("f.woff", "font/woff"),
        ("f.woff2", "font/woff2"),
        ("m.wasm", "application/wasm"),
        ("README", "application/octet-stream"),
        (".bashrc", "application/octet-stream"),
        ("x.unknown", "application/octet-stream"),
    ],
)
def test_media_type_for(name: str, media_type: str) -> None:
    assert media_type_for(name) == media_type


@pytest.mark.parametrize(
    ("path", "fingerprinted"),
    [
        ("/assets/app-3f2a1b9c.js", True),  # Vite, Rollup
        ("/main.3f2a1b9c5d.css", True),  # webpack
        ("/static/css/base.a1b2c3d4e5f6.css", True),  # Django ManifestStaticFilesStorage
        ("/_next/static/chunks/main.js", True),
        ("/jquery-carousel.js", False),  # a word, not a hash
        ("/app.js", False),
        ("/app-12.js", False),  # too short
        ("/v1.2.3/app.js", False),
    ],
)
def test_is_fingerprinted(path: str, fingerprinted: bool) -> None:
    assert is_fingerprinted(path) is fingerprinted


@pytest.mark.parametrize(
    ("path", "cache_control"),
    [
        ("/index.html", REVALIDATE),
        ("/docs/page.htm", REVALIDATE),
        ("/site.webmanifest", REVALIDATE),
        ("/sw.js", REVALIDATE),
        ("/service-worker.js", REVALIDATE),
        ("/assets/app-3f2a1b9c.js", IMMUTABLE),
        ("/style.css", REVALIDATE),
        ("/jquery-carousel.js", REVALIDATE),
    ],
)
def test_cache_control_follows_the_file_served(path: str, cache_control: str) -> None:
    assert cache_control_for(path, max_age_seconds=None) == cache_control


def test_max_age_applies_to_unfingerprinted_non_html_only() -> None:
    assert cache_control_for("/style.css", max_age_seconds=300) == "public, max-age=300"
    assert cache_control_for("/index.html", max_age_seconds=300) == REVALIDATE
    assert cache_control_for("/app-3f2a1b9c.js", max_age_seconds=300) == IMMUTABLE


@pytest.mark.parametrize(
    ("path", "cache_control"),
    [
        ("/downloads/report.pdf", "no-store"),
        ("/index.html", "public, max-age=5"),
        ("/app-3f2a1b9c.js", "private"),
        ("/style.css", REVALIDATE),
    ],
)
def test_glob_rules_win_in_order(path: str, cache_control: str) -> None:
    rules = (
        ("/downloads/*", "no-store"),
        ("/index.html", "public, max-age=5"),
        ("*.js", "private"),
        ("*.js", "never reached"),
    )
    assert cache_control_for(path, max_age_seconds=None, rules=rules) == cache_control
