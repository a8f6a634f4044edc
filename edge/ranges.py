"""Byte ranges (RFC 9110 Section 14): parsing a Range field against a known length and
deciding If-Range. Pure functions; delivery writes the parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.policy import Headers, parse_http_date, strong_etag_equal

#: More ranges than this in one request is treated as abuse (RFC 9110 Section 14.2:
#: a server may ignore or reject such requests); the whole representation is sent.
MAX_RANGES = 16

#: What one part of a multipart/byteranges response costs beyond its bytes (boundary,
#: Content-Type, Content-Range), rounded up: parts that would cost more than the whole
#: representation are not worth sending (Section 14.2: "many small ranges").
PART_OVERHEAD = 128


def _position(digits: str, length: int) -> int:
    """A byte position; anything past the representation is as good as its length
    (and int() would refuse thousands of digits)."""
    significant = digits.lstrip("0") or "0"
    return length if len(significant) > len(str(length)) else int(significant)


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


class Unsatisfiable(Exception):
    """RFC 9110 Section 15.5.17: no range overlaps the representation: 416."""


def _digits(value: str) -> bool:
    """RFC 9110 Section 14.1.1: positions are 1*DIGIT, ASCII only."""
    return value.isascii() and value.isdigit()


def parse_range(value: str | None, length: int) -> list[ByteRange] | None:
    """RFC 9110 Section 14.1.2: byte-ranges-specifier against a representation of
    `length` bytes.

    Returns None when the field is absent, invalid or not worth honouring (serve
    200), the satisfiable ranges sorted and coalesced otherwise; raises Unsatisfiable
    when valid but none is satisfiable.
    """
    if value is None:
        return None
    unit, sep, spec = value.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    ranges: list[ByteRange] = []
    members = [m.strip() for m in spec.split(",")]
    if not any(members) or len(members) > MAX_RANGES:
        return None
    for member in members:
        if not member:
            continue
        first, dash, last = member.partition("-")
        first, last = first.strip(), last.strip()
        if not dash or (first and not _digits(first)) or (last and not _digits(last)):
            return None
        if not first:
            if not last:
                return None
            suffix = _position(last, length)
            if suffix == 0:
                continue
            if length == 0:
                # Satisfiable (Section 14.1.1) but no byte range can describe it: send
                # the whole, empty representation (a server may ignore Range, 14.2).
                return None
            ranges.append(ByteRange(max(0, length - suffix), length - 1))
            continue
        start = _position(first, length)
        end = _position(last, length) if last else length - 1
        if last and end < start:
            return None
        if start >= length:
            continue
        ranges.append(ByteRange(start, min(end, length - 1)))
    if not ranges:
        raise Unsatisfiable
    ranges.sort(key=lambda r: r.start)
    # Section 14.2: overlapping or adjacent ranges are coalesced, so a request can never
    # cost more than the representation itself.
    merged = [ranges[0]]
    for r in ranges[1:]:
        last_range = merged[-1]
        if r.start <= last_range.end + 1:
            merged[-1] = ByteRange(last_range.start, max(last_range.end, r.end))
        else:
            merged.append(r)
    if len(merged) > 1 and sum(r.length for r in merged) + PART_OVERHEAD * len(merged) > length:
        return None  # many small parts: the whole representation costs less
    return merged


def if_range_allows(request_headers: Headers, stored: Headers) -> bool:
    """RFC 9110 Section 13.1.5: If-Range. The range applies only when the validator
    matches: a strong ETag by strong comparison, or a date equal to Last-Modified that
    is a strong validator (Section 8.8.2.2: for an intermediate cache, the stored Date
    is at least one second after Last-Modified)."""
    value = request_headers.get("If-Range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        etag = stored.get("ETag")
        return etag is not None and strong_etag_equal(etag, value)
    date = parse_http_date(value)
    last_modified = parse_http_date(stored.get("Last-Modified"))
    stored_date = parse_http_date(stored.get("Date"))
    return (
        date is not None
        and last_modified is not None
        and date == last_modified
        and stored_date is not None
        and stored_date - last_modified >= 1
    )
