"""Validators and conditional requests (RFC 9110 §8.8, §13), as tables."""

from __future__ import annotations

import pytest

from offload.static.http import (
    UNSATISFIABLE,
    evaluate_preconditions,
    format_http_date,
    is_range_fresh,
    is_strong_match,
    is_weak_match,
    parse_entity_tags,
    parse_http_date,
    parse_range,
)

ETAG = '"abc"'
MODIFIED = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
MODIFIED_DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER_DATE = "Sun, 06 Nov 1994 08:49:36 GMT"


@pytest.mark.parametrize(
    "value",
    [MODIFIED_DATE, "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"],
)
def test_parse_http_date_reads_all_three_forms(value: str) -> None:
    assert parse_http_date(value) == MODIFIED


@pytest.mark.parametrize(
    "value", ["", "yesterday", "Sun, 99 Foo 1994 08:49:37 GMT", "12345", "01 Jan 2099 00:00"]
)
def test_parse_http_date_returns_none_for_garbage(value: str) -> None:
    assert parse_http_date(value) is None


def test_format_http_date_writes_imf_fixdate() -> None:
    assert format_http_date(MODIFIED) == MODIFIED_DATE


@pytest.mark.parametrize(
    ("header", "tags"),
    [
        ('"a"', ['"a"']),
        ('"a", "b"', ['"a"', '"b"']),
        ('W/"a", "b"', ['W/"a"', '"b"']),
        ('"a,b", "c"', ['"a,b"', '"c"']),
        ("*", None),
        (" * ", None),
        ("", []),
        ("junk", []),
    ],
)
def test_parse_entity_tags(header: str, tags: list[str] | None) -> None:
    assert parse_entity_tags(header) == tags


@pytest.mark.parametrize(
    ("header", "weak", "strong"),
    [
        ('"abc"', True, True),
        ('W/"abc"', True, False),
        ('"x", "abc"', True, True),
        ('"x", W/"abc"', True, False),
        ("*", True, True),
        ('"abcd"', False, False),
        ("abc", False, False),
    ],
)
def test_weak_and_strong_comparison(header: str, weak: bool, strong: bool) -> None:
    assert is_weak_match(header, ETAG) is weak
    assert is_strong_match(header, ETAG) is strong


def evaluate(method: str = "GET", **headers: str) -> int | None:
    return evaluate_preconditions(
        method=method,
        etag=ETAG,
        last_modified=MODIFIED,
        if_match=headers.get("if_match"),
        if_unmodified_since=headers.get("if_unmodified_since"),
        if_none_match=headers.get("if_none_match"),
        if_modified_since=headers.get("if_modified_since"),
    )


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, None),
        ({"if_none_match": ETAG}, 304),
        ({"if_none_match": f'"x", {ETAG}'}, 304),
        ({"if_none_match": 'W/"abc"'}, 304),
        ({"if_none_match": "*"}, 304),
        ({"if_none_match": '"x"'}, None),
        ({"if_modified_since": MODIFIED_DATE}, 304),
        ({"if_modified_since": EARLIER_DATE}, None),
        ({"if_modified_since": "not a date"}, None),
        # RFC 9110 §13.1.3: If-None-Match present, If-Modified-Since is ignored
        ({"if_none_match": '"x"', "if_modified_since": MODIFIED_DATE}, None),
        ({"if_match": ETAG}, None),
        ({"if_match": '"x"'}, 412),
        ({"if_match": 'W/"abc"'}, 412),
        ({"if_match": "*"}, None),
        ({"if_unmodified_since": EARLIER_DATE}, 412),
        ({"if_unmodified_since": MODIFIED_DATE}, None),
        ({"if_unmodified_since": "garbage"}, None),
        # If-Match present, If-Unmodified-Since is ignored
        ({"if_match": ETAG, "if_unmodified_since": EARLIER_DATE}, None),
        # the 412 preconditions come first
        ({"if_match": '"x"', "if_none_match": ETAG}, 412),
    ],
)
def test_preconditions_follow_rfc_9110_order(headers: dict[str, str], status: int | None) -> None:
    assert evaluate(**headers) == status


def test_if_modified_since_applies_only_to_get_and_head() -> None:
    assert evaluate("HEAD", if_modified_since=MODIFIED_DATE) == 304
    assert evaluate("POST", if_modified_since=MODIFIED_DATE) is None


@pytest.mark.parametrize(
    ("header", "size", "ranges"),
    [
        ("bytes=0-0", 100, [(0, 0)]),  # end offsets are inclusive: one byte
        ("bytes=-1", 100, [(99, 99)]),
        ("bytes=0-99", 100, [(0, 99)]),
        ("bytes=10-", 100, [(10, 99)]),
        ("bytes=90-200", 100, [(90, 99)]),  # an end past the file clamps
        ("bytes=-200", 100, [(0, 99)]),
        ("Bytes = 1-2", 100, [(1, 2)]),
        ("bytes=0-1, 5-6", 100, [(0, 1), (5, 6)]),
        # RFC 9110 §15.3.7.2: the parts in the order requested, not sorted (issue 15)
        ("bytes=5-6, 0-1", 100, [(5, 6), (0, 1)]),
        ("bytes=90-99, 0-1, 50-59", 100, [(90, 99), (0, 1), (50, 59)]),
        ("bytes=-10, 0-9", 100, [(90, 99), (0, 9)]),
        ("bytes=0-10, 5-20", 100, [(0, 20)]),  # overlapping parts merge
        ("bytes=0-9, 10-19", 100, [(0, 19)]),  # and adjacent ones
        ("bytes=10-19, 0-9", 100, [(0, 19)]),
        # a merged part takes the place of the first of its ranges requested
        ("bytes=50-59, 0-9, 55-70", 100, [(50, 70), (0, 9)]),
        ("bytes=80-89, 55-70, 0-9, 50-59", 100, [(80, 89), (50, 70), (0, 9)]),
        ("bytes=80-89, 0-4, 20-29, 5-19", 100, [(80, 89), (0, 29)]),
        ("bytes=0-1, 200-300", 100, [(0, 1)]),  # an unsatisfiable part is dropped
        ("bytes=200-300, 7-8, 0-1", 100, [(7, 8), (0, 1)]),
        ("bytes=0-1,,2-3", 100, [(0, 3)]),
    ],
)
def test_parse_range_returns_inclusive_ranges_merged_in_the_order_requested(
    header: str, size: int, ranges: list[tuple[int, int]]
) -> None:
    parsed = parse_range(header, size)
    assert isinstance(parsed, list)
    assert [(part.start, part.end) for part in parsed] == ranges


@pytest.mark.parametrize(
    ("header", "size"),
    [("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=200-300, 150-", 100)],
)
def test_parse_range_unsatisfiable(header: str, size: int) -> None:
    assert parse_range(header, size) is UNSATISFIABLE


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=5-1", 100),  # last before first: invalid, so the header is ignored
        ("bytes=a-b", 100),
        ("bytes=-", 100),
        ("bytes=1-2-3", 100),
        ("bytes=²-3", 100),
        ("bytes=", 100),
        ("items=0-1", 100),  # unknown unit
        ("0-1", 100),
        ("bytes=0-0", 0),  # an empty file is sent whole
        (", ".join(["bytes=0-0"] + [f"{i}-{i}" for i in range(2, 40, 2)]), 100),  # too many
        ("bytes=0-99, 0-99", 100),  # adds up past the size: Apache Killer
        ("bytes=0-60, 40-99", 100),
    ],
)
def test_parse_range_ignores_malformed_and_abusive_headers(header: str, size: int) -> None:
    assert parse_range(header, size) is None


@pytest.mark.parametrize(
    ("if_range", "fresh"),
    [
        (None, True),
        (ETAG, True),
        ('"other"', False),
        ('W/"abc"', False),  # a weak validator never allows a range
        (MODIFIED_DATE, True),
        (EARLIER_DATE, False),
        ("garbage", False),
    ],
)
def test_if_range_requires_a_strong_match(if_range: str | None, fresh: bool) -> None:
    assert is_range_fresh(if_range, etag=ETAG, last_modified=MODIFIED) is fresh
