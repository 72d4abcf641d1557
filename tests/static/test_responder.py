"""Ranges, content negotiation and the cache switches, over real loopback sockets."""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import brotli
import httpx
import pytest

from tests.servers import Offload, run_offload

TEXT = b"".join(b"line %05d of a compressible stylesheet\n" % n for n in range(2000))
BINARY = os.urandom(300 * 1024)  # larger than the in-memory limit: read from disk
SMALL = b"0123456789abcdefghij"


@dataclass
class Site:
    root: Path
    url: str

    def get(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("site")
    (root / "small.txt").write_bytes(SMALL)
    (root / "data.bin").write_bytes(BINARY)
    (root / "empty.txt").write_bytes(b"")
    (root / "built.css").write_bytes(TEXT)
    (root / "tiny.css").write_bytes(b"a{b:c}")
    (root / "side.js").write_bytes(TEXT)
    (root / "side.js.br").write_bytes(brotli.compress(TEXT))
    (root / "side.js.gz").write_bytes(gzip.compress(TEXT))
    (root / "stale.js").write_bytes(TEXT)
    (root / "stale.js.gz").write_bytes(gzip.compress(b"an older build"))
    os.utime(root / "stale.js.gz", (1_000_000_000, 1_000_000_000))
    (root / "pixel.png").write_bytes(b"\x89PNG" + bytes(2000))
    (root / "ünïcödé name.txt").write_bytes(b"unicode")
    with run_offload("--static", root) as server:
        yield Site(root=root, url=server.url)


def ranged(site: Site, path: str, value: str, **headers: str) -> httpx.Response:
    return site.get(path, range=value, **headers)


class TestRanges:
    @pytest.mark.parametrize("path", ["/small.txt", "/data.bin"])
    @pytest.mark.parametrize(
        ("value", "start", "end"),
        [
            ("bytes=0-0", 0, 0),
            ("bytes=-1", -1, -1),
            ("bytes=5-", 5, -1),
            ("bytes=3-99999999", 3, -1),
        ],
    )
    def test_single_range_is_206_with_inclusive_end(
        self, site: Site, path: str, value: str, start: int, end: int
    ) -> None:
        whole = SMALL if path == "/small.txt" else BINARY
        first = start % len(whole)
        last = end % len(whole)
        response = ranged(site, path, value)
        assert response.status_code == 206
        assert response.content == whole[first : last + 1]
        assert response.headers["content-range"] == f"bytes {first}-{last}/{len(whole)}"
        assert response.headers["content-length"] == str(last - first + 1)

    @pytest.mark.parametrize("path", ["/small.txt", "/data.bin"])
    def test_unsatisfiable_range_is_416_with_the_size(self, site: Site, path: str) -> None:
        size = len(SMALL if path == "/small.txt" else BINARY)
        response = ranged(site, path, f"bytes={size}-")
        assert response.status_code == 416
        assert response.headers["content-range"] == f"bytes */{size}"

    @pytest.mark.parametrize(
        "value", ["bytes=5-1", "lines=0-1", "bytes=x-", "bytes=" + "0-0," * 20]
    )
    def test_malformed_or_abusive_range_gets_the_whole_file(self, site: Site, value: str) -> None:
        response = ranged(site, "/small.txt", value)
        assert response.status_code == 200
        assert response.content == SMALL

    def test_empty_file_ignores_range(self, site: Site) -> None:
        response = ranged(site, "/empty.txt", "bytes=0-0")
        assert response.status_code == 200
        assert response.content == b""

    def test_head_ignores_range(self, site: Site) -> None:
        response = httpx.head(site.url + "/small.txt", headers={"range": "bytes=0-0"})
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(SMALL))

    @pytest.mark.parametrize("path", ["/small.txt", "/data.bin"])
    def test_several_ranges_are_multipart_byteranges_in_the_order_requested(
        self, site: Site, path: str
    ) -> None:
        # RFC 9110 §15.3.7.2: the parts SHOULD come in the order requested, as from nginx and
        # Caddy (issue 15: they were sorted)
        whole = SMALL if path == "/small.txt" else BINARY
        response = ranged(site, path, "bytes=10-12, 0-1, 15-16")
        assert response.status_code == 206
        content_type = response.headers["content-type"]
        assert content_type.startswith("multipart/byteranges; boundary=")
        boundary = content_type.split("boundary=")[1].encode()
        parts = response.content.split(b"--" + boundary)
        assert parts[0] == b""
        assert parts[-1] == b"--\r\n"
        bodies = [part.split(b"\r\n\r\n", 1) for part in parts[1:-1]]
        assert [body[:-2] for _, body in bodies] == [whole[10:13], whole[0:2], whole[15:17]]
        size = str(len(whole)).encode()
        assert b"Content-Range: bytes 10-12/" + size in bodies[0][0]
        assert b"Content-Range: bytes 0-1/" + size in bodies[1][0]
        assert int(response.headers["content-length"]) == len(response.content)

    def test_overlapping_ranges_merge_into_one(self, site: Site) -> None:
        response = ranged(site, "/small.txt", "bytes=0-5, 3-8")
        assert response.status_code == 206
        assert response.headers["content-range"] == f"bytes 0-8/{len(SMALL)}"
        assert response.content == SMALL[0:9]

    def test_if_range_with_current_etag_gives_206_and_other_gives_200(self, site: Site) -> None:
        etag = site.get("/small.txt").headers["etag"]
        assert ranged(site, "/small.txt", "bytes=0-0", **{"if-range": etag}).status_code == 206
        stale = ranged(site, "/small.txt", "bytes=0-0", **{"if-range": '"stale"'})
        assert stale.status_code == 200
        assert stale.content == SMALL
        weak = ranged(site, "/small.txt", "bytes=0-0", **{"if-range": f"W/{etag}"})
        assert weak.status_code == 200

    def test_if_range_with_last_modified_date_gives_206(self, site: Site) -> None:
        last_modified = site.get("/small.txt").headers["last-modified"]
        response = ranged(site, "/small.txt", "bytes=0-0", **{"if-range": last_modified})
        assert response.status_code == 206

    def test_range_is_answered_from_identity_bytes(self, site: Site) -> None:
        identity_etag = site.get("/side.js", **{"accept-encoding": "identity"}).headers["etag"]
        response = ranged(site, "/side.js", "bytes=0-9", **{"accept-encoding": "br, gzip"})
        assert response.status_code == 206
        assert response.content == TEXT[:10]
        assert "content-encoding" not in response.headers
        assert response.headers["etag"] == identity_etag
        assert response.headers["vary"] == "Accept-Encoding"


class TestNegotiation:
    @pytest.mark.parametrize(("accept", "coding"), [("br, gzip", "br"), ("gzip", "gzip")])
    def test_sidecar_files_are_served_as_encodings(
        self, site: Site, accept: str, coding: str
    ) -> None:
        suffix = {"br": ".br", "gzip": ".gz"}[coding]
        sidecar = (site.root / f"side.js{suffix}").read_bytes()
        response = httpx.get(site.url + "/side.js", headers={"accept-encoding": accept})
        assert response.headers["content-encoding"] == coding
        assert response.headers["content-length"] == str(len(sidecar))
        assert response.headers["vary"] == "Accept-Encoding"
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        assert response.content == TEXT  # httpx decoded it

    @pytest.mark.parametrize("accept", ["gzip;q=0.8", "br;q=0.5, gzip;q=0.9", "br;q=0, gzip;q=0.8"])
    def test_identity_the_header_does_not_name_ranks_below_its_codings(
        self, site: Site, accept: str
    ) -> None:
        # RFC 9110 §12.5.3; nginx and Caddy send gzip for these (issue 15)
        response = site.get("/side.js", **{"accept-encoding": accept})
        assert response.headers["content-encoding"] == "gzip"
        assert response.content == TEXT

    def test_each_encoding_has_its_own_etag(self, site: Site) -> None:
        tags = {
            site.get("/side.js", **{"accept-encoding": accept}).headers["etag"]
            for accept in ("br", "gzip", "identity")
        }
        assert len(tags) == 3

    def test_identity_response_of_a_negotiable_asset_carries_vary(self, site: Site) -> None:
        response = site.get("/side.js", **{"accept-encoding": "identity"})
        assert "content-encoding" not in response.headers
        assert response.headers["vary"] == "Accept-Encoding"

    def test_304_of_an_encoding_keeps_its_etag_and_vary(self, site: Site) -> None:
        etag = site.get("/side.js", **{"accept-encoding": "br"}).headers["etag"]
        response = site.get("/side.js", **{"accept-encoding": "br", "if-none-match": etag})
        assert response.status_code == 304
        assert response.headers["etag"] == etag
        assert response.headers["vary"] == "Accept-Encoding"

    def test_sidecar_older_than_its_source_is_not_used(self, site: Site) -> None:
        response = site.get("/stale.js", **{"accept-encoding": "gzip"})
        assert response.content == TEXT

    def test_variants_are_built_for_compressible_files_without_sidecars(self, site: Site) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            response = site.get("/built.css", **{"accept-encoding": "br"})
            if response.headers.get("content-encoding") == "br":
                break
            assert response.content == TEXT  # identity until the variant is ready
            time.sleep(0.05)
        assert response.headers.get("content-encoding") == "br"
        assert response.content == TEXT
        assert int(response.headers["content-length"]) < len(TEXT) // 5
        gzipped = site.get("/built.css", **{"accept-encoding": "gzip"})
        assert gzipped.headers["content-encoding"] == "gzip"
        assert gzipped.content == TEXT

    @pytest.mark.parametrize("path", ["/tiny.css", "/pixel.png"])
    def test_tiny_and_precompressed_types_are_never_compressed(self, site: Site, path: str) -> None:
        response = site.get(path, **{"accept-encoding": "br, gzip"})
        assert "content-encoding" not in response.headers
        assert "vary" not in response.headers

    def test_unicode_and_space_names_are_served(self, site: Site) -> None:
        response = site.get("/%C3%BCn%C3%AFc%C3%B6d%C3%A9%20name.txt")
        assert response.status_code == 200
        assert response.content == b"unicode"


class TestCacheSwitches:
    def test_max_age_and_glob_rules(
        self, tmp_path: Path, start_offload: Callable[..., Offload]
    ) -> None:
        (tmp_path / "downloads").mkdir()
        (tmp_path / "downloads" / "report.pdf").write_bytes(b"%PDF")
        (tmp_path / "style.css").write_bytes(b"a{}")
        (tmp_path / "index.html").write_bytes(b"<p>hi")
        rule = "/downloads/*=no-store"
        server = start_offload(
            "--static", tmp_path, "--cache-max-age", "300", "--cache-control", rule
        )
        cache_control = {
            path: httpx.get(server.url + path).headers["cache-control"]
            for path in ("/downloads/report.pdf", "/style.css", "/index.html", "/")
        }
        assert cache_control == {
            "/downloads/report.pdf": "no-store",
            "/style.css": "public, max-age=300",
            "/index.html": "no-cache",
            "/": "no-cache",
        }


class TestSinglePageApp:
    def test_navigation_paths_get_index_and_missing_assets_stay_404(
        self, tmp_path: Path, start_offload: Callable[..., Offload]
    ) -> None:
        (tmp_path / "index.html").write_bytes(b"<div id=app></div>")
        (tmp_path / "docs").mkdir()
        (tmp_path / "docs" / "index.html").write_bytes(b"docs")
        server = start_offload("--static", tmp_path, "--spa")
        route = httpx.get(server.url + "/users/42/settings")
        assert route.status_code == 200
        assert route.content == b"<div id=app></div>"
        assert route.headers["cache-control"] == "no-cache"
        assert httpx.get(server.url + "/missing.js").status_code == 404
        assert httpx.get(server.url + "/docs").status_code == 308
        assert httpx.post(server.url + "/users/42").status_code == 404
