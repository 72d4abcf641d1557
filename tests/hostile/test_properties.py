"""Properties that hold for any input, checked with hypothesis: canonical paths and resolved
files never leave the root, ranges stay within the file, Accept-Encoding never picks a refused
coding, dates never raise, the header parsers take time linear in the header's length; and a
client that leaves mid-upload leaves nothing running in the proxy."""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import itertools
import os
import posixpath
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from offload.config import Upstream
from offload.negotiation import IDENTITY, parse_accept_encoding, select_encoding
from offload.proxy.http import HttpProxy, ProxySettings
from offload.static.files import open_inside, resolve_inside
from offload.static.http import (
    MAX_RANGES,
    UNSATISFIABLE,
    ByteRange,
    Unsatisfiable,
    format_http_date,
    parse_http_date,
    parse_range,
)
from offload.static.paths import BadPath, canonical_path, is_within, parse_request_path

ROOT = "/srv/static"
# No example database in the work tree, and no per-example deadline: CI machines vary
PROPERTY = settings(database=None, deadline=None)
PROC_FD = Path("/proc/self/fd")


def best_seconds(function: Callable[[], object], *, repeat: int = 3) -> float:
    """The fastest of a few runs: the least noisy estimate of a function's own cost."""
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return min(timings)


def assert_linear(make_input: Callable[[int], str], parse: Callable[[str], object]) -> None:
    """10x the input costs well under a second and, loosely, nowhere near 100x the time."""
    small, large = make_input(1_000), make_input(10_000)
    small_seconds = best_seconds(lambda: parse(small))
    large_seconds = best_seconds(lambda: parse(large))
    assert large_seconds < 1.0
    assert large_seconds / max(small_seconds, 1e-4) < 30  # the floor absorbs timer noise


# -- Paths ---------------------------------------------------------------------------------

TRAVERSAL_PIECES = ("/", "//", ".", "..", "...", ".well-known", "%", "%2e", "%2F", "\\", "\x00")
LOOKALIKE_PIECES = ("a", "é", "\u2024", "\uff0e", "~", " ", "\r\n", "index.html")
PATH_PIECES = st.sampled_from((*TRAVERSAL_PIECES, *LOOKALIKE_PIECES))
PATHS = st.one_of(
    st.lists(PATH_PIECES, max_size=16).map("".join),
    st.lists(PATH_PIECES, max_size=8).map("/".join),
    st.text(max_size=40),
)


@settings(PROPERTY, max_examples=1000)
@given(path=PATHS)
def test_canonical_path_is_refused_or_plain_idempotent_and_inside_any_root(path: str) -> None:
    """Either `BadPath`, or a path that starts with "/" and holds no "//", no "." or ".."
    segment, no NUL and no backslash; canonical again is itself; joined onto a root and
    normalised, it is still inside that root."""
    try:
        canonical = canonical_path(path)
    except BadPath:
        return
    assert canonical.startswith("/")
    assert "//" not in canonical
    assert "\x00" not in canonical
    assert "\\" not in canonical
    assert not {".", ".."} & set(canonical.split("/"))
    assert canonical_path(canonical) == canonical
    for joined in (ROOT + canonical, os.path.join(ROOT, *canonical.split("/"))):
        normalised = posixpath.normpath(joined)
        assert is_within(ROOT, normalised)
        assert posixpath.commonpath([ROOT, normalised]) == ROOT


@settings(PROPERTY, max_examples=600)
@given(path=PATHS.map(lambda path: "/" + path))
def test_canonical_path_fast_path_agrees_with_the_segment_parser(path: str) -> None:
    """The shortcut for plain paths answers exactly what splitting into segments would."""
    try:
        segments = parse_request_path(path)
    except BadPath:
        with pytest.raises(BadPath):
            canonical_path(path)
        return
    trailing = "/" if segments and path.endswith("/") else ""
    assert canonical_path(path) == "/" + "/".join(segments) + trailing


NAMES = st.sampled_from(["srv", "srv2", "static", "static-old", "a", ".."])


@settings(PROPERTY)
@given(root=st.lists(NAMES, min_size=1, max_size=3), path=st.lists(NAMES, max_size=5))
def test_is_within_agrees_with_commonpath_for_normalised_paths(
    root: list[str], path: list[str]
) -> None:
    """For normalised absolute paths, inside means a common prefix of whole segments:
    ``/srv2`` is not inside ``/srv``."""
    root_path = posixpath.normpath("/" + "/".join(root))
    real_path = posixpath.normpath("/" + "/".join(path))
    expected = posixpath.commonpath([root_path, real_path]) == root_path
    assert is_within(root_path, real_path) == expected


# -- Containment on a real tree ------------------------------------------------------------

LINKS = {  # name under the root -> symlink target
    "to_inside": "inside.txt",
    "to_sub": "sub",
    "to_outside_file": "../outside/secret.txt",
    "to_outside_dir": "../outside",
    "to_sibling": "../root2",  # shares the root's name as a prefix
    "to_parent": "..",
    "to_absolute_outside": "{outside}",
    "to_root": "{root}",
    "loop_a": "loop_b",
    "loop_b": "loop_a",
    "to_self": "to_self",
    "dangling": "nowhere",
    "sub/up_inside": "..",
    "sub/up_outside": "../..",
    "sub/to_outside_file": "../../outside/secret.txt",
}
TREE_FILES = ("inside.txt", "sub", "nested.txt", "fifo", ".hidden", "outside", "root", "root2")
TREE_NAMES = st.sampled_from(
    (*(name.rsplit("/", 1)[-1] for name in LINKS), *TREE_FILES, "secret.txt", ".", "..", "")
)
RELATIVE_NAMES = st.lists(TREE_NAMES, min_size=1, max_size=6).map("/".join)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A root with files, a FIFO and symlinks in and out of it (loops too), beside an
    ``outside`` and a ``root2`` that hold the secrets."""
    base = Path(os.path.realpath(tmp_path_factory.mktemp("containment")))
    root, outside, sibling = base / "root", base / "outside", base / "root2"
    for directory in (root / "sub", outside, sibling):
        directory.mkdir(parents=True)
    (root / "inside.txt").write_bytes(b"inside")
    (root / ".hidden").write_bytes(b"hidden")
    (root / "sub" / "nested.txt").write_bytes(b"nested")
    (outside / "secret.txt").write_bytes(b"secret")
    (sibling / "secret.txt").write_bytes(b"sibling secret")
    os.mkfifo(root / "fifo")
    for name, target in LINKS.items():
        os.symlink(target.format(outside=outside, root=root), root / name)
    return str(root)


def descriptors_into(directory: str) -> list[str]:
    """What this process holds open under ``directory`` (other threads' files don't count)."""
    targets = []
    for name in os.listdir(PROC_FD):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            target = os.readlink(PROC_FD / name)
            if target.startswith(directory + os.sep):
                targets.append(target)
    return targets


needs_proc = pytest.mark.skipif(not PROC_FD.is_dir(), reason="needs /proc/self/fd")


@needs_proc
@settings(PROPERTY, max_examples=600)
@given(name=RELATIVE_NAMES)
@example(name="to_outside_dir/secret.txt")
@example(name="to_sibling/secret.txt")
@example(name="loop_a/inside.txt")
def test_resolve_inside_returns_only_real_paths_inside_the_root(root: str, name: str) -> None:
    """`resolve_inside` answers ``None`` or the symlink-free path, which is inside the root;
    and it refuses nothing whose real path is inside."""
    real_path = os.path.realpath(os.path.join(root, name))
    resolved = resolve_inside(root, os.path.join(root, name))
    if posixpath.commonpath([root, real_path]) == root:
        assert resolved == real_path
    else:
        assert resolved is None


@needs_proc
@settings(PROPERTY, max_examples=600)
@given(name=RELATIVE_NAMES)
@example(name="to_outside_dir/secret.txt")  # the ways out, each tried every run
@example(name="to_parent/outside/secret.txt")
@example(name="to_sibling/secret.txt")
@example(name="sub/up_outside/root2/secret.txt")
@example(name="to_absolute_outside/secret.txt")
@example(name="to_outside_file")
def test_open_inside_never_opens_anything_outside_the_root(root: str, name: str) -> None:
    """Whatever path it is handed, resolved or not, `open_inside` opens only a regular file
    whose real path (``/proc/self/fd``) is inside the root, and leaks no descriptor."""
    joined = os.path.join(root, name)
    tree = os.path.dirname(root)
    for candidate in {joined, resolve_inside(root, joined) or joined}:
        opened = open_inside(root, candidate)
        if opened is None:
            continue
        descriptor, identity = opened
        try:
            target = os.readlink(PROC_FD / str(descriptor))
            status = os.fstat(descriptor)
        finally:
            os.close(descriptor)
        assert posixpath.commonpath([root, target]) == root
        assert stat.S_ISREG(status.st_mode)
        assert identity[:3] == (status.st_dev, status.st_ino, status.st_size)
    assert descriptors_into(tree) == []


# -- Ranges --------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(0, 3000).map(str),
    st.integers(0, 10**60).map(str),  # past any 64-bit offset
    st.sampled_from(["", "+5", "1_0", "\uff11", "\u0663", "\u00b2", "0x10", " 5", "-1", "1e3"]),
    st.sampled_from(["0" * 40 + "7", "\t3", "5\u00a0"]),
)
SPECS = st.one_of(
    st.builds("{}-{}".format, NUMBERS, NUMBERS),
    st.sampled_from(["-", "", " ", "5", "a-b", "--5", "5--", "1-2-3", "\t0-0\t", "0-0;x"]),
)
UNITS = st.sampled_from(["bytes", "BYTES", " bytes ", "byte", "items", "", "bytes;", "none"])
RANGE_HEADERS = st.one_of(
    st.builds("{}={}".format, UNITS, st.lists(SPECS, max_size=24).map(",".join)),
    st.builds(lambda spec, count: "bytes=" + ",".join([spec] * count), SPECS, st.integers(0, 400)),
    st.text(alphabet=st.sampled_from("bytes=,-0123456789 \t+_\uff11") | st.characters()),
)
SIZES = st.one_of(st.integers(0, 3000), st.integers(0, 2**63))


def assert_within_file(result: list[ByteRange] | Unsatisfiable | None, size: int) -> None:
    if result is None or result is UNSATISFIABLE:
        return
    assert isinstance(result, list)
    assert 1 <= len(result) <= MAX_RANGES
    for part in result:
        assert 0 <= part.start <= part.end < size
    ordered = sorted(result, key=lambda part: part.start)  # sent in the order requested
    for before, after in itertools.pairwise(ordered):
        assert before.end + 1 < after.start  # overlapping or adjacent ones merged
    assert sum(part.length for part in result) <= size


@settings(PROPERTY, max_examples=700)
@given(header=RANGE_HEADERS, size=SIZES)
def test_parse_range_answers_none_unsatisfiable_or_ranges_within_the_file(
    header: str, size: int
) -> None:
    """Any header: ``None``, `UNSATISFIABLE`, or at most `MAX_RANGES` disjoint ranges, none
    touching another, each with 0 <= start <= end < size, adding up to no more than the file."""
    assert_within_file(parse_range(header, size), size)


VALID_SPECS = st.one_of(
    st.builds(
        lambda first, length: f"{first}-{first + length}", st.integers(0, 80), st.integers(0, 80)
    ),
    st.builds("{}-".format, st.integers(0, 80)),
    st.builds("-{}".format, st.integers(0, 80)),
)


@settings(PROPERTY, max_examples=500)
@given(specs=st.lists(VALID_SPECS, min_size=1, max_size=MAX_RANGES), size=st.integers(1, 64))
def test_parse_range_covers_exactly_the_requested_bytes(specs: list[str], size: int) -> None:
    """For valid specs, the ranges sent cover exactly the bytes the client asked for that
    exist (RFC 9110 §14.1.2), whenever offload does not ignore the header; and they come in
    the order requested (§15.3.7.2), a merged one in the place of its first range."""
    wanted: list[set[int]] = []  # each spec's bytes
    for spec in specs:
        first, last = spec.split("-")
        if not first:
            wanted.append(set(range(max(0, size - int(last)), size) if int(last) else ()))
        else:
            wanted.append(set(range(int(first), min(int(last) + 1, size) if last else size)))
    requested = set().union(*wanted)
    result = parse_range("bytes=" + ",".join(specs), size)
    assert_within_file(result, size)
    if isinstance(result, list):
        assert {byte for part in result for byte in range(part.start, part.end + 1)} == requested
        places = [  # the first spec inside each part
            next(i for i, spec in enumerate(wanted) if spec and part.start <= min(spec) <= part.end)
            for part in result
        ]
        assert places == sorted(places)
    elif result is UNSATISFIABLE:
        assert not requested


@settings(PROPERTY, max_examples=200)
@given(offsets=st.lists(st.integers(0, 10_000), min_size=MAX_RANGES + 1, max_size=200, unique=True))
def test_parse_range_ignores_a_header_of_more_than_max_ranges_parts(offsets: list[int]) -> None:
    """More than `MAX_RANGES` parts is an amplification attempt: the header is ignored and
    the whole file sent, however small and far apart the parts are."""
    specs = [f"{offset}-{offset}" for offset in offsets]
    size = 10**6
    assert parse_range("bytes=" + ",".join(specs), size) is None


@pytest.mark.parametrize("form", ["bytes={}-", "bytes=0-{}", "bytes=-{}", "bytes=0-1,{}-{}"])
def test_parse_range_with_numbers_past_4300_digits_stays_within_the_file(form: str) -> None:
    """A number too long for `int` is a huge offset like any other, not an exception."""
    number = "9" * 4301  # the header limit (32 KiB) lets a client send more than 4,300
    assert_within_file(parse_range(form.format(number, number), 1024), 1024)


@pytest.mark.parametrize("part", ["0-0", "1-2", "-5", "7-", " 3 - 4 ", "99999999999999999999-"])
def test_parse_range_time_is_linear_in_the_number_of_parts(part: str) -> None:
    """10,000 parts parse in well under a second, about 10x the time of 1,000."""
    assert_linear(
        lambda count: "bytes=" + ",".join([part] * count), lambda header: parse_range(header, 10**6)
    )


# -- Accept-Encoding -----------------------------------------------------------------------

CODINGS = st.sampled_from(["gzip", "br", "zstd", "deflate", "identity", "*", "x-gzip", "GZIP", ""])
QUALITIES = st.one_of(
    st.floats().map(str),
    st.sampled_from(["0", "0.000", "1", "0.5", "-0", "1_0", "\uff11", "nan", "inf", "", " 0 "]),
)
PARAMETERS = st.builds("{}={}".format, st.sampled_from(["q", "Q", " q ", "level"]), QUALITIES)
ITEMS = st.builds(
    lambda name, parameters: ";".join([name, *parameters]),
    CODINGS,
    st.lists(PARAMETERS, max_size=3),
)
ACCEPT_ENCODINGS = st.one_of(st.lists(ITEMS, max_size=10).map(", ".join), st.text(max_size=80))
OFFERED = st.lists(st.sampled_from(["br", "zstd", "gzip", "deflate"]), unique=True).map(tuple)


@settings(PROPERTY, max_examples=500)
@given(header=ACCEPT_ENCODINGS | st.none(), available=OFFERED)
@example(header="gzip;q=0.8", available=("br", "gzip"))  # issue 15: identity won
@example(header="br;q=0, gzip;q=0.8", available=("br", "gzip"))
def test_select_encoding_picks_an_offered_coding_with_the_highest_positive_q(
    header: str | None, available: tuple[str, ...]
) -> None:
    """The answer is one of the offered codings or identity, never raises; a coding other than
    identity has a q-value above 0 and no offered coding ranks higher; and identity is chosen
    over a coding the header accepts only when the header weighs identity higher, by name or
    by ``*`` (RFC 9110 §12.5.3 gives an unnamed identity no q of its own)."""
    chosen = select_encoding(header, available)
    assert chosen in (*available, IDENTITY)
    assert select_encoding(header, available) == chosen  # the cache answers the same
    if header is None:
        return
    qualities = parse_accept_encoding(header)
    assert all(0.0 <= quality <= 1.0 for quality in qualities.values())

    def quality(coding: str) -> float:
        return qualities.get(coding, qualities.get("*", 0.0))

    best = max((quality(coding) for coding in available), default=0.0)
    if chosen == IDENTITY:
        assert best == 0 or quality(IDENTITY) > best
        return
    assert quality(chosen) == best > 0
    assert quality(IDENTITY) <= best


@settings(PROPERTY, max_examples=250)
@given(header=ACCEPT_ENCODINGS, available=OFFERED.filter(bool), data=st.data())
def test_select_encoding_never_chooses_a_coding_with_q_zero(
    header: str, available: tuple[str, ...], data: st.DataObject
) -> None:
    """A coding the client's last word gives ``q=0`` (by name, alias or case) is never sent;
    and ``*;q=0`` alone refuses every coding: identity goes (RFC 9110 §12.5.3 allows it)."""
    refused = data.draw(st.sampled_from(available))
    aliases = ["x-gzip"] if refused == "gzip" else []
    spelling = data.draw(st.sampled_from([refused, refused.upper(), *aliases]))
    assert select_encoding(f"{header}, {spelling};q=0", available) != refused
    assert select_encoding("*;q=0", available) == IDENTITY


@pytest.mark.parametrize(
    "item", ["gzip;q=0.5,", "br,", ",", ";", "a", "gzip;q=;q=;", "x-gzip ; Q = 1 ,", "c{},"]
)
def test_accept_encoding_time_is_linear_in_the_header_length(item: str) -> None:
    """A 100 KB header is answered in well under a second, at about 10x the cost of 10 KB."""
    width = len(item.format(0))

    def make_header(count: int) -> str:  # count * 10 characters, give or take
        return "".join(item.format(index) for index in range(count * 10 // width))

    def choose(header: str) -> str:  # a new suffix each time: the cache must not answer
        return select_encoding(f"{header}{time.perf_counter_ns()}", ("br", "zstd", "gzip"))

    assert_linear(make_header, choose)
    assert_linear(make_header, parse_accept_encoding)


# -- Dates ---------------------------------------------------------------------------------

DAYS = st.sampled_from(["Sun", "Mon", "Sunday", "Thu", "", "sun"])
MONTHS = st.sampled_from(["Jan", "Feb", "Dec", "jan", "Foo", ""])
DIGITS = st.text(alphabet=st.sampled_from("0123456789 \uff10\u0663-+"), max_size=5)
TWO, YEAR = st.integers(0, 99), st.integers(0, 9999)
DATE_TEXTS = st.one_of(
    st.builds(
        "{}, {} {} {} {}:{}:{} GMT".format, DAYS, DIGITS, MONTHS, DIGITS, DIGITS, DIGITS, DIGITS
    ),
    st.builds(
        "{}, {}-{}-{} {}:{}:{} GMT".format, DAYS, DIGITS, MONTHS, DIGITS, DIGITS, DIGITS, DIGITS
    ),
    st.builds("{} {} {} {}:{}:{} {}".format, DAYS, MONTHS, DIGITS, DIGITS, DIGITS, DIGITS, DIGITS),
    st.text(max_size=40),
    # well-formed, with any two-digit field: 31 Feb, hour 99, second 60, year 0000
    st.builds(
        "Sun, {:02d} {} {:04d} {:02d}:{:02d}:{:02d} GMT".format, TWO, MONTHS, YEAR, TWO, TWO, TWO
    ),
    st.builds(
        "Sunday, {:02d}-{}-{:02d} {:02d}:{:02d}:{:02d} GMT".format, TWO, MONTHS, TWO, TWO, TWO, TWO
    ),
    st.builds("Sun {} {:>2} {:02d}:{:02d}:{:02d} {:04d}".format, MONTHS, TWO, TWO, TWO, TWO, YEAR),
)
FIRST_YEAR_100 = calendar.timegm(datetime(100, 1, 1, tzinfo=UTC).timetuple())
LAST_SECOND_9999 = calendar.timegm(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timetuple())
FIRST_SECOND = calendar.timegm(datetime(1, 1, 1, tzinfo=UTC).timetuple())


@settings(PROPERTY, max_examples=1000)
@given(value=DATE_TEXTS)
def test_parse_http_date_never_raises_and_answers_an_int_or_none(value: str) -> None:
    """RFC 9110 §13.1.3: a date offload cannot read is ignored, so parsing never raises."""
    parsed = parse_http_date(value)
    assert parsed is None or type(parsed) is int


@settings(PROPERTY, max_examples=800)
@given(epoch_seconds=st.integers(FIRST_YEAR_100, LAST_SECOND_9999))
def test_format_then_parse_http_date_round_trips(epoch_seconds: int) -> None:
    """What offload writes in Last-Modified reads back as the same second, in the IMF-fixdate
    and the asctime forms."""
    assert parse_http_date(format_http_date(epoch_seconds)) == epoch_seconds
    moment = time.gmtime(epoch_seconds)
    if moment.tm_year >= 1000:
        asctime = time.strftime("%a %b %e %H:%M:%S %Y", moment)
        assert parse_http_date(asctime) == epoch_seconds


@settings(PROPERTY, max_examples=50)
@given(epoch_seconds=st.integers(FIRST_SECOND, FIRST_YEAR_100 - 1))
def test_format_then_parse_http_date_round_trips_years_before_100(epoch_seconds: int) -> None:
    """A four-digit year is the year it says, even when it is below 100."""
    assert parse_http_date(format_http_date(epoch_seconds)) == epoch_seconds


# -- The proxy, when the client gives up mid-upload ----------------------------------------


class SilentApp(asyncio.Protocol):
    """An app that takes the request and never answers: the body is still going when the
    client gives up."""


async def upload_then_give_up(socket_path: str, body: bytes, *, limit: int | None) -> set[object]:
    """The tasks still pending after the proxy answered a client that sent ``body`` of a
    longer upload and then disconnected (or crossed ``limit``)."""
    app = await asyncio.get_running_loop().create_unix_server(SilentApp, socket_path)
    proxy = HttpProxy(Upstream.parse(f"unix:{socket_path}"), ProxySettings(max_body_bytes=limit))
    await proxy.start()
    messages = [{"type": "http.request", "body": body, "more_body": True}]

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: object) -> None:
        pass

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "raw_path": b"/upload",
        "query_string": b"",
        "headers": [(b"host", b"t"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "http_version": "1.1",
    }
    before = asyncio.all_tasks()
    try:
        await proxy(scope, receive, send)
        for _ in range(5):
            await asyncio.sleep(0)
        return {task for task in asyncio.all_tasks() - before if not task.done()}
    finally:
        await proxy.close()
        app.close()


@settings(PROPERTY, max_examples=20)
@given(body=st.binary(max_size=64), limit=st.none() | st.integers(0, 32))
def test_a_client_giving_up_mid_upload_leaves_no_task_behind(
    tmp_path_factory: pytest.TempPathFactory, body: bytes, limit: int | None
) -> None:
    """However much of its body a client sent before leaving (or passing the body limit),
    the proxy's answer ends every task it started for the request."""
    socket_path = str(tmp_path_factory.mktemp("app") / "app.sock")
    assert asyncio.run(upload_then_give_up(socket_path, body, limit=limit)) == set()
