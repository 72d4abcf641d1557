"""The catalog under a running server: the volume changing, a file truncated mid-response,
and start-up over 10,000 files."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from offload.static.assets import Representation
from offload.static.catalog import HotFiles
from tests.servers import Offload, poll, run_offload

IDENTITY = {"accept-encoding": "identity"}  # compare the bytes on disk, not a variant


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Offload]]:
    root = tmp_path_factory.mktemp("volume")
    with run_offload("--static", root) as server:
        yield root, server


def test_added_file_is_served(volume: tuple[Path, Offload]) -> None:
    root, server = volume
    (root / "added.txt").write_bytes(b"new")
    assert (
        poll(server.url + "/added.txt", lambda r: r.status_code == 200, headers=IDENTITY).content
        == b"new"
    )


def test_modified_file_gets_new_content_and_etag(volume: tuple[Path, Offload]) -> None:
    root, server = volume
    (root / "changing.css").write_bytes(b"a{color:red}")
    before = poll(server.url + "/changing.css", lambda r: r.status_code == 200, headers=IDENTITY)
    (root / "changing.css").write_bytes(b"a{color:blue}")
    after = poll(
        server.url + "/changing.css", lambda r: r.content == b"a{color:blue}", headers=IDENTITY
    )
    assert after.content == b"a{color:blue}"
    assert after.headers["etag"] != before.headers["etag"]


def test_deleted_file_is_no_longer_served(volume: tuple[Path, Offload]) -> None:
    root, server = volume
    (root / "doomed.txt").write_bytes(b"bye")
    poll(server.url + "/doomed.txt", lambda r: r.status_code == 200, headers=IDENTITY)
    (root / "doomed.txt").unlink()
    assert (
        poll(
            server.url + "/doomed.txt", lambda r: r.status_code == 404, headers=IDENTITY
        ).status_code
        == 404
    )


def test_added_directory_with_index_is_served(volume: tuple[Path, Offload]) -> None:
    root, server = volume
    (root / "section").mkdir()
    (root / "section" / "index.html").write_bytes(b"<p>section")
    page = poll(server.url + "/section/", lambda r: r.status_code == 200, headers=IDENTITY)
    assert page.content == b"<p>section"


def test_large_file_replaced_behind_the_watchers_back_is_served_fresh(
    volume: tuple[Path, Offload],
) -> None:
    root, server = volume
    first, second = os.urandom(200_000), os.urandom(200_000)
    (root / "swap.bin").write_bytes(first)
    poll(server.url + "/swap.bin", lambda r: r.content == first, headers=IDENTITY)
    staging = root / ".swap.tmp"
    staging.write_bytes(second)
    staging.replace(root / "swap.bin")
    # on disk, not in memory: the open finds a new inode and describes the file anew at once
    response = httpx.get(server.url + "/swap.bin")
    assert response.content == second
    assert response.headers["content-length"] == str(len(second))


def test_file_truncated_while_sent_ends_the_connection(volume: tuple[Path, Offload]) -> None:
    root, server = volume
    size = 64 * 1024 * 1024
    path = root / "shrinking.bin"
    with path.open("wb") as file:
        file.truncate(size)
    poll(
        server.url + "/shrinking.bin",
        lambda r: r.headers.get("content-length") == str(size),
        method="HEAD",
        headers=IDENTITY,
    )
    received: list[int] = []
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", server.url + "/shrinking.bin") as response,
    ):
        assert response.headers["content-length"] == str(size)
        chunks = response.iter_raw()
        received.append(len(next(chunks)))
        os.truncate(path, 1024 * 1024)
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(len(chunk) for chunk in chunks)
    assert sum(received) < size


def test_ten_thousand_files_start_and_are_served(tmp_path: Path) -> None:
    for directory in range(100):
        folder = tmp_path / f"d{directory:03d}"
        folder.mkdir()
        for number in range(100):
            (folder / f"f{number:03d}.css").write_bytes(b"a{b:%d}" % (directory * 100 + number))
    started = time.monotonic()
    with run_offload("--static", tmp_path) as server:
        elapsed = time.monotonic() - started
        print(f"10,000 files: offload serving after {elapsed:.2f} s")
        assert httpx.get(server.url + "/d099/f099.css").content == b"a{b:9999}"
        assert httpx.get(server.url + "/d000/f000.css").content == b"a{b:0}"


def test_client_leaving_mid_download_stops_the_file_reads(volume: tuple[Path, Offload]) -> None:
    root, server = volume
    size = 256 * 1024 * 1024
    with (root / "huge.bin").open("wb") as file:
        file.truncate(size)  # sparse: costs no disk
    poll(
        server.url + "/huge.bin",
        lambda r: r.headers.get("content-length") == str(size),
        method="HEAD",
        headers=IDENTITY,
    )
    before = _bytes_read(server)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", server.url + "/huge.bin") as response,
    ):
        chunks = response.iter_raw()
        next(chunks)
        del chunks  # the client leaves here
    time.sleep(1)  # what is still read after the client left would show up here
    assert _bytes_read(server) - before < size // 4


def _bytes_read(server: Offload) -> int:
    """Bytes the offload process has read with read-like calls (Linux /proc/PID/io)."""
    io = Path(f"/proc/{server.process.pid}/io").read_text()
    return int(next(line for line in io.splitlines() if line.startswith("rchar:")).split()[1])


def test_hot_files_keep_the_most_recently_served_within_the_budget() -> None:
    def representation(name: str, size: int) -> Representation:
        return Representation(
            coding="identity", size=size, etag='"x"', headers=(), not_modified_headers=(),
            body=None, path=f"/srv/{name}", file_identity=(1, hash(name), size, 0),
        )  # fmt: skip

    hot = HotFiles(budget_bytes=10)
    a, b, c = representation("a", 4), representation("b", 4), representation("c", 4)
    hot.put(a, b"aaaa")
    hot.put(b, b"bbbb")
    assert hot.get(a) == b"aaaa"  # a is now the most recent
    hot.put(c, b"cccc")  # over budget: b, the least recent, goes
    assert (hot.get(a), hot.get(b), hot.get(c)) == (b"aaaa", None, b"cccc")
    assert hot.bytes == 8
    hot.put(representation("huge", 11), b"h" * 11)  # larger than the whole budget: not kept
    assert hot.bytes == 8
    changed = Representation(
        coding="identity", size=4, etag='"y"', headers=(), not_modified_headers=(),
        body=None, path="/srv/a", file_identity=(1, hash("a"), 4, 1),
    )  # fmt: skip
    assert hot.get(changed) is None  # same path, new mtime: never the old bytes
