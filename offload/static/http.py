"""HTTP rules for static responses as pure functions over header values: validators,
conditional requests, ranges and content negotiation (RFC 9110 §8.8, §12.5.3, §13, §14)."""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412


def format_http_date(epoch_seconds: float) -> str:
    """IMF-fixdate, the one form RFC 9110 §5.6.7 lets a sender generate."""
    return formatdate(epoch_seconds, usegmt=True)


_MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
_TIME = r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)"
_HTTP_DATES = (  # RFC 9110 §5.6.7: IMF-fixdate, then the obsolete RFC 850 and asctime forms
    re.compile(
        rf"[A-Z][a-z]{{2}}, (?P<day>\d\d) (?P<month>{_MONTHS}) (?P<year>\d{{4}}) {_TIME} GMT"
    ),
    re.compile(
        rf"[A-Z][a-z]{{5,8}}, (?P<day>\d\d)-(?P<month>{_MONTHS})-(?P<year>\d\d) {_TIME} GMT"
    ),
    re.compile(rf"[A-Z][a-z]{{2}} (?P<month>{_MONTHS}) (?P<day>[ \d]\d) {_TIME} (?P<year>\d{{4}})"),
)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch for any of the three HTTP date forms; ``None`` otherwise.

    RFC 9110 §13.1.3: a conditional with an invalid date is ignored, never an error. Only the
    three forms count: a looser parser would read "01 Jan 2099 00:00" in local time.
    """
    for form in _HTTP_DATES:
        if match := form.fullmatch(value.strip()):
            year = int(match["year"])
            if len(match["year"]) == 2:  # §5.6.7: more than 50 years ahead is in the past
                year += 2000 if year + 2000 <= time.gmtime().tm_year + 50 else 1900
            month = _MONTHS.split("|").index(match["month"]) + 1
            fields = (int(match["day"]), int(match["hour"]), int(match["minute"]))
            try:
                moment = datetime(year, month, *fields, int(match["second"]), tzinfo=UTC)
            except ValueError:
                return None
            return calendar.timegm(moment.timetuple())
    return None


def parse_entity_tags(value: str) -> list[str] | None:
    """The entity-tags of an ``If-Match``/``If-None-Match`` list, ``W/`` kept; ``None`` for ``*``.

    Commas may appear inside a quoted tag, so this scans quotes rather than splitting on ``,``.
    Unquoted junk between tags is skipped, as nginx and Caddy do.
    """
    if value.strip() == "*":
        return None
    tags: list[str] = []
    position = 0
    while (start := value.find('"', position)) != -1:
        end = value.find('"', start + 1)
        if end == -1:
            break
        weak = value[max(0, start - 2) : start] == "W/"
        tags.append(("W/" if weak else "") + value[start : end + 1])
        position = end + 1
    return tags


def _opaque(tag: str) -> str:
    return tag.removeprefix("W/")


def is_weak_match(header: str, etag: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison against a list or ``*``, as ``If-None-Match`` uses."""
    if header == etag:  # a revalidation sends back the one tag it got: most requests
        return True
    tags = parse_entity_tags(header)
    return tags is None or any(_opaque(tag) == _opaque(etag) for tag in tags)


def is_strong_match(header: str, etag: str) -> bool:
    """Strong comparison, as ``If-Match`` uses: weak tags never match."""
    tags = parse_entity_tags(header)
    if tags is None:
        return True
    return not etag.startswith("W/") and etag in tags


def evaluate_preconditions(
    *,
    method: str,
    etag: str,
    last_modified: int,
    if_match: str | None,
    if_unmodified_since: str | None,
    if_none_match: str | None,
    if_modified_since: str | None,
) -> int | None:
    """The status a conditional request earns (304 or 412), or ``None`` to send the content.

    RFC 9110 §13.2.2 fixes the order: If-Match, else If-Unmodified-Since; then If-None-Match,
    else If-Modified-Since (which only GET and HEAD honour).
    """
    if if_match is not None:
        if not is_strong_match(if_match, etag):
            return PRECONDITION_FAILED
    elif if_unmodified_since is not None:
        since = parse_http_date(if_unmodified_since)
        if since is not None and last_modified > since:
            return PRECONDITION_FAILED
    if if_none_match is not None:
        if is_weak_match(if_none_match, etag):
            return NOT_MODIFIED if method in ("GET", "HEAD") else PRECONDITION_FAILED
    elif if_modified_since is not None and method in ("GET", "HEAD"):
        since = parse_http_date(if_modified_since)
        if since is not None and last_modified <= since:
            return NOT_MODIFIED
    return None


# -- Ranges (RFC 9110 §14) ---------------------------------------------------------------------

MAX_RANGES = 16  # more parts than this is an amplification attempt, not a download manager
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")  # ASCII digits only: int() takes "²" too


@dataclass(frozen=True)
class ByteRange:
    """An inclusive byte range, as ``Content-Range`` writes it."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable:
    """No range of the request overlaps the representation: answer 416."""


UNSATISFIABLE = Unsatisfiable()


def parse_range(header: str, size: int) -> list[ByteRange] | Unsatisfiable | None:
    """The ranges to send, in the order requested, overlapping and adjacent ones merged
    (`_coalesce`); `UNSATISFIABLE`; or ``None`` to ignore the header and send the whole
    representation.

    ``None`` covers a malformed header or unknown unit (§14.2: ignore it), an empty file, and the
    Apache-Killer shapes: more than `MAX_RANGES` parts, or parts adding up past the file size.
    """
    unit, equals, specs = header.partition("=")
    if not equals or unit.strip().lower() != "bytes" or size == 0:
        return None
    requested: list[ByteRange] = []
    count = 0
    for spec in specs.split(","):
        if not (spec := spec.strip()):
            continue
        count += 1
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None or match.group(0) == "-":
            return None
        first, last = match.groups()
        if first and last and _position(first) > _position(last):
            return None  # §14.1.1: an invalid range-spec makes the whole header invalid
        if (satisfiable := _satisfiable(first, last, size)) is not None:
            requested.append(satisfiable)
    if count == 0:
        return None
    if count > MAX_RANGES or sum(part.length for part in requested) > size:
        return None
    return _coalesce(requested) if requested else UNSATISFIABLE


def _position(digits: str) -> int:
    """A byte position; any beyond 19 digits is past every file (and Python's int() refuses
    strings over 4,300 digits, which a 32 KiB header holds)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else 2**63


def _satisfiable(first: str, last: str, size: int) -> ByteRange | None:
    if not first:  # suffix: the last N bytes
        suffix = _position(last)
        return ByteRange(max(0, size - suffix), size - 1) if suffix > 0 else None
    start = _position(first)
    if start >= size:
        return None
    return ByteRange(start, min(_position(last), size - 1) if last else size - 1)


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    """The parts in the order requested: RFC 9110 §15.3.7.2 says a multipart response SHOULD
    send them so, as nginx and Caddy do (issue 15). Ranges that overlap or touch become one
    (§15.3.7.2 lets a server coalesce them, whatever their order), which takes the place of
    the first of them requested: ``bytes=50-59, 0-9, 55-70`` is sent as 50-70, then 0-9."""
    if len(ranges) == 1:
        return ranges
    groups: list[tuple[int, ByteRange]] = []  # (index of the first requested, merged range)
    for index in sorted(range(len(ranges)), key=lambda index: ranges[index].start):
        part = ranges[index]
        if groups and part.start <= groups[-1][1].end + 1:
            first, merged = groups[-1]
            groups[-1] = (min(first, index), ByteRange(merged.start, max(merged.end, part.end)))
        else:
            groups.append((index, part))
    return [part for _, part in sorted(groups, key=lambda group: group[0])]


def is_range_fresh(if_range: str | None, *, etag: str, last_modified: int) -> bool:
    """RFC 9110 §13.1.5: a range is sent only if If-Range still names this representation, by
    a strong entity-tag or by its exact Last-Modified date."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == etag and not etag.startswith("W/")
    return parse_http_date(value) == last_modified
