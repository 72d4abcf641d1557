"""Static responses over real loopback sockets: headers, validators, 304s, HEAD, indexes, and
everything that must never be served."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from offload.static.http import parse_http_date
from tests.servers import FIXTURES, Offload, free_port, poll, raw_get, run_offload


@dataclass
class Scratch:
    """A static-only offload over an empty directory the tests write into."""

    root: Path
    url: str


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    root = tmp_path_factory.mktemp("scratch")
    with run_offload("--static", root) as server:
        yield Scratch(root=root, url=server.url)


@pytest.mark.parametrize(
    ("path", "media_type", "cache_control"),
    [
        ("/index.html", "text/html; charset=utf-8", "no-cache"),
        ("/style.css", "text/css; charset=utf-8", "no-cache"),
        ("/app.js", "text/javascript; charset=utf-8", "no-cache"),
        (
            "/assets/app-3f2a1b9c.js",
            "text/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        (
            "/assets/vendor.3f2a1b9c5d.mjs",
            "text/javascript; charset=utf-8",
            "public, max-age=31536000, immutable",
        ),
        ("/data.json", "application/json; charset=utf-8", "no-cache"),
        ("/logo.svg", "image/svg+xml; charset=utf-8", "no-cache"),
        ("/manifest.webmanifest", "application/manifest+json; charset=utf-8", "no-cache"),
        ("/pixel.png", "image/png", "no-cache"),
        ("/with%20space.txt", "text/plain; charset=utf-8", "no-cache"),
    ],
)
def test_file_is_served_with_its_metadata(
    client: httpx.Client, path: str, media_type: str, cache_control: str
) -> None:
    response = client.get(path)
    on_disk = (FIXTURES / path.lstrip("/").replace("%20", " ")).read_bytes()
    assert response.status_code == 200
    assert response.content == on_disk
    assert response.headers["content-type"] == media_type
    assert response.headers["content-length"] == str(len(on_disk))
    assert response.headers["cache-control"] == cache_control
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "date" in response.headers


def test_etag_is_strong_and_derived_from_content(client: httpx.Client) -> None:
    etag = client.get("/style.css").headers["etag"]
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert etag == client.get("/style.css").headers["etag"]
    assert etag != client.get("/app.js").headers["etag"]


def test_etag_is_the_same_for_the_same_bytes_anywhere(
    scratch: Scratch, client: httpx.Client
) -> None:
    (scratch.root / "copy.css").write_bytes(data := (FIXTURES / "style.css").read_bytes())
    copied = poll(scratch.url + "/copy.css", lambda r: r.content == data).headers["etag"]
    assert copied == client.get("/style.css").headers["etag"]


def test_last_modified_is_the_file_mtime_and_never_in_the_future(scratch: Scratch) -> None:
    (scratch.root / "past.txt").write_text("past")
    (scratch.root / "future.txt").write_text("future")
    os.utime(scratch.root / "past.txt", (1_000_000_000, 1_000_000_000))
    os.utime(scratch.root / "future.txt", (4_000_000_000, 4_000_000_000))
    past = poll(scratch.url + "/past.txt", lambda r: r.content == b"past")
    future = poll(scratch.url + "/future.txt", lambda r: r.content == b"future")
    assert parse_http_date(past.headers["last-modified"]) == 1_000_000_000
    assert parse_http_date(future.headers["last-modified"]) <= parse_http_date(
        future.headers["date"]
    )


def test_head_sends_the_headers_of_get_and_no_body(client: httpx.Client) -> None:
    get = client.get("/style.css")
    head = client.head("/style.css")
    assert head.status_code == 200
    assert head.content == b""
    drop_date = {"date"}
    assert {k: v for k, v in head.headers.items() if k not in drop_date} == {
        k: v for k, v in get.headers.items() if k not in drop_date
    }


def test_empty_file_is_200_with_zero_length(client: httpx.Client) -> None:
    response = client.get("/empty.txt")
    assert response.status_code == 200
    assert response.headers["content-length"] == "0"
    assert response.content == b""


def test_head_of_a_file_not_held_in_memory_has_no_body(scratch: Scratch) -> None:
    data = os.urandom(200 * 1024)  # past --in-memory-max-bytes: it would stream from disk
    (scratch.root / "large-head.bin").write_bytes(data)
    poll(scratch.url + "/large-head.bin", lambda r: r.status_code == 200)
    with httpx.Client(base_url=scratch.url) as client:
        head = client.head("/large-head.bin")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(data))
        assert head.content == b""
    # the same connection serves on: a failure after the head would have closed it
    port = int(scratch.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        request = b"%s /large-head.bin HTTP/1.1\r\nHost: t\r\n\r\n"
        connection.sendall(request % b"HEAD")
        time.sleep(0.2)
        connection.sendall(request % b"GET")
        received = b""
        while not received.endswith(data):  # the socket's timeout bounds the wait
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert received.endswith(data)


def test_large_file_streams_exactly(scratch: Scratch) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    (scratch.root / "big.bin").write_bytes(data)
    response = poll(scratch.url + "/big.bin", lambda r: r.content == data)
    assert response.headers["content-length"] == str(len(data))
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()


def test_replaced_file_is_seen_with_a_new_etag(scratch: Scratch) -> None:
    (scratch.root / "app.css").write_text("a { color: red }")
    before = poll(
        scratch.url + "/app.css", lambda r, expected=b"a { color: red }": r.content == expected
    )
    replacement = scratch.root / "app.css.new"
    replacement.write_text("a { color: blue }")
    replacement.replace(scratch.root / "app.css")
    after = poll(
        scratch.url + "/app.css", lambda r, expected=b"a { color: blue }": r.content == expected
    )
    assert after.text == "a { color: blue }"
    assert after.headers["etag"] != before.headers["etag"]


class TestConditionalRequests:
    def test_if_none_match_exact_returns_304_keeping_validators(self, client: httpx.Client) -> None:
        full = client.get("/style.css")
        response = client.get("/style.css", headers={"if-none-match": full.headers["etag"]})
        assert response.status_code == 304
        assert response.content == b""
        assert response.headers["etag"] == full.headers["etag"]
        assert response.headers["cache-control"] == full.headers["cache-control"]
        for dropped in ("content-length", "content-type", "content-encoding"):
            assert dropped not in response.headers

    @pytest.mark.parametrize("form", ['"x", {etag}', "W/{etag}", "*", '"x",{etag} , "y"'])
    def test_if_none_match_list_weak_and_star_return_304(
        self, client: httpx.Client, form: str
    ) -> None:
        etag = client.get("/style.css").headers["etag"]
        header = form.format(etag=etag)
        assert client.get("/style.css", headers={"if-none-match": header}).status_code == 304

    def test_if_none_match_other_etag_returns_200(self, client: httpx.Client) -> None:
        response = client.get("/style.css", headers={"if-none-match": '"other"'})
        assert response.status_code == 200

    def test_if_modified_since_at_last_modified_returns_304(self, client: httpx.Client) -> None:
        last_modified = client.get("/style.css").headers["last-modified"]
        response = client.get("/style.css", headers={"if-modified-since": last_modified})
        assert response.status_code == 304

    def test_if_modified_since_is_ignored_when_if_none_match_is_present(
        self, client: httpx.Client
    ) -> None:
        last_modified = client.get("/style.css").headers["last-modified"]
        headers = {"if-modified-since": last_modified, "if-none-match": '"other"'}
        assert client.get("/style.css", headers=headers).status_code == 200

    def test_unparseable_if_modified_since_is_ignored(self, client: httpx.Client) -> None:
        response = client.get("/style.css", headers={"if-modified-since": "yesterday"})
        assert response.status_code == 200

    def test_head_revalidates_like_get(self, client: httpx.Client) -> None:
        etag = client.get("/style.css").headers["etag"]
        assert client.head("/style.css", headers={"if-none-match": etag}).status_code == 304

    def test_if_match_other_etag_returns_412(self, client: httpx.Client) -> None:
        assert client.get("/style.css", headers={"if-match": '"other"'}).status_code == 412


class TestIndexesAndDirectories:
    def test_root_serves_index_html(self, client: httpx.Client) -> None:
        response = client.get("/")
        assert response.status_code == 200
        assert response.content == (FIXTURES / "index.html").read_bytes()

    def test_directory_with_slash_serves_its_index(self, client: httpx.Client) -> None:
        response = client.get("/docs/")
        assert response.content == (FIXTURES / "docs" / "index.html").read_bytes()
        assert response.headers["content-type"] == "text/html; charset=utf-8"

    def test_directory_without_slash_redirects_308_keeping_query(
        self, client: httpx.Client
    ) -> None:
        response = client.get("/docs?page=2")
        assert response.status_code == 308
        assert response.headers["location"] == "./docs/?page=2"

    def test_redirect_location_never_starts_with_two_slashes(self, offload: Offload) -> None:
        response = raw_get(offload.port, "//docs")
        assert response.status == 308
        assert response.header("location") == "./docs/"

    def test_file_with_trailing_slash_is_not_served(self, client: httpx.Client) -> None:
        response = client.get("/style.css/")
        assert response.status_code == 404
        assert response.json()["app"] is True  # the miss went to the app


class TestNeverServed:
    @pytest.mark.parametrize(
        "target",
        [
            "/../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/%2E%2E/etc/passwd",
            "/docs/%2e%2e/%2e%2e/etc/passwd",
            "/..%2f..%2fetc/passwd",
            "/.%2e/etc/passwd",
            "/..%5c..%5cetc/passwd",
            "/a\\b",
            "/%00index.html",
            "/index.html%00.png",
            "/./index.html",
        ],
    )
    def test_traversal_attempt_is_400(self, offload: Offload, target: str) -> None:
        response = raw_get(offload.port, target)
        assert response.status == 400
        assert b"root:" not in response.body

    def test_double_encoded_dots_are_a_literal_name_not_traversal(self, offload: Offload) -> None:
        response = raw_get(offload.port, "/%252e%252e/%252e%252e/etc/passwd")
        assert response.status == 404
        assert b"root:" not in response.body

    @pytest.mark.parametrize("path", ["/.env", "/.hidden/secret.txt", "/.well-known/../.env"])
    def test_dot_files_are_never_served(self, offload: Offload, path: str) -> None:
        response = raw_get(offload.port, path)
        assert response.status in (400, 404)
        assert b"SECRET" not in response.body
        assert b"HIDDEN-CONTENT" not in response.body

    def test_well_known_is_served(self, client: httpx.Client) -> None:
        response = client.get("/.well-known/security.txt")
        assert response.status_code == 200
        assert response.text.startswith("Contact:")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Offload]:
    """offload over a root full of ways out: symlinks leaving it, a sibling sharing its prefix,
    a FIFO (opening one naively would hang the worker thread)."""
    tmp_path = tmp_path_factory.mktemp("hostile")
    root = tmp_path / "srv"
    sibling = tmp_path / "srv2"
    outside = tmp_path / "outside"
    for directory in (root, sibling, outside, root / "sub"):
        directory.mkdir()
    (root / "inside.txt").write_text("inside")
    (sibling / "secret.txt").write_text("sibling secret")
    (outside / "secret.txt").write_text("outside secret")
    (root / ".dotsecret").write_text("dot secret")
    (root / "link-inside.txt").symlink_to(root / "inside.txt")
    (root / "link-outside.txt").symlink_to(outside / "secret.txt")
    (root / "link-sibling.txt").symlink_to("../srv2/secret.txt")
    (root / "link-dir-outside").symlink_to(outside)
    (root / "sub" / "up.txt").symlink_to("../../outside/secret.txt")
    (root / "dir-link").symlink_to(root / "sub")
    (root / "loop").symlink_to(root)  # a cycle the scan must not follow forever
    (root / "app.3f2a1b9c5d.js").write_text("fingerprinted")
    (root / "latest.js").symlink_to("app.3f2a1b9c5d.js")
    # a Kubernetes ConfigMap volume: names link through ..data to a hidden timestamped folder
    (root / "..2026_11_27_08_00_00.000").mkdir()
    (root / "..2026_11_27_08_00_00.000" / "config.json").write_text('{"configmap": true}')
    (root / "..data").symlink_to("..2026_11_27_08_00_00.000")
    (root / "config.json").symlink_to("..data/config.json")
    os.mkfifo(root / "pipe.txt")
    with run_offload("--static", root) as server:
        yield server


class TestSymlinksAndSpecialFiles:
    def test_symlink_inside_the_root_is_followed(self, hostile: Offload) -> None:
        assert httpx.get(hostile.url + "/link-inside.txt").text == "inside"

    def test_configmap_layout_is_served_by_its_visible_names(self, hostile: Offload) -> None:
        assert httpx.get(hostile.url + "/config.json").json() == {"configmap": True}
        assert httpx.get(hostile.url + "/..data/config.json").status_code == 404

    def test_cache_policy_follows_the_name_requested_not_the_link_target(
        self, hostile: Offload
    ) -> None:
        target = httpx.get(hostile.url + "/app.3f2a1b9c5d.js").headers["cache-control"]
        alias = httpx.get(hostile.url + "/latest.js").headers["cache-control"]
        assert target == "public, max-age=31536000, immutable"
        assert alias == "no-cache"  # repointing latest.js must be seen at once

    @pytest.mark.parametrize(
        "path",
        [
            "/link-outside.txt",
            "/link-sibling.txt",
            "/link-dir-outside/secret.txt",
            "/sub/up.txt",
            "/dir-link/up.txt",
            "/.dotsecret",
            "/pipe.txt",
        ],
    )
    def test_file_outside_the_root_or_not_regular_is_404(self, hostile: Offload, path: str) -> None:
        response = httpx.get(hostile.url + path, timeout=5)
        assert response.status_code == 404
        assert b"secret" not in response.content


class TestStaticOnlyAndUpstreamDown:
    def test_without_upstream_a_miss_is_404(self, start_offload: Callable[..., Offload]) -> None:
        server = start_offload("--static", FIXTURES)
        assert httpx.get(server.url + "/no-such-file").status_code == 404
        assert httpx.post(server.url + "/style.css").status_code == 404
        assert httpx.get(server.url + "/style.css").status_code == 200

    def test_static_is_served_while_the_upstream_is_down(
        self, start_offload: Callable[..., Offload]
    ) -> None:
        server = start_offload("--static", FIXTURES, "--upstream", f"127.0.0.1:{free_port()}")
        assert httpx.get(server.url + "/style.css").status_code == 200
        assert httpx.get(server.url + "/api/anything").status_code == 502
