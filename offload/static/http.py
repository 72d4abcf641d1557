"""HTTP rules for static responses as pure functions over header values: validators and
conditional requests (RFC 9110 §8.8 and §13)."""

from __future__ import annotations

from email.utils import formatdate, mktime_tz, parsedate_tz

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412


def format_http_date(epoch_seconds: float) -> str:
    """IMF-fixdate, the one form RFC 9110 §5.6.7 lets a sender generate."""
    return formatdate(epoch_seconds, usegmt=True)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch for any of the three HTTP date forms; ``None`` if unparseable.

    RFC 9110 §13.1.3: a conditional with an invalid date is ignored, never an error.
    """
    try:
        parsed = parsedate_tz(value)
        return None if parsed is None else mktime_tz(parsed)
    except (ValueError, OverflowError, TypeError):
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
