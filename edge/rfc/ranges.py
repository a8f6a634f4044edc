"""Byte ranges (RFC 9110 Section 14): parsing a Range field against a known length,
deciding If-Range, and the parts a cache keeps of a representation: reading a
Content-Range, which request a stored part answers, what completes it, and whether a
new part may be combined with it (RFC 9111 Sections 3.3 and 3.4). Pure functions;
delivery writes the parts and the fetch machine stores them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.rfc.policy import OWS, Headers, parse_http_date, strong_etag_equal

#: More ranges than this in one request is treated as abuse (RFC 9110 Section 14.2:
#: a server may ignore or reject such requests); the whole representation is sent.
MAX_RANGES = 16

#: Hex digits of the multipart boundary delivery writes (uuid4().hex).
BOUNDARY_LENGTH = 32

#: What parse_range assumes of a Content-Type it is not told: longer than nearly any
#: real media type (with its parameters), so the estimate errs towards the whole 200.
ASSUMED_CONTENT_TYPE_LENGTH = 100


def _position(digits: str, length: int) -> int:
    """A byte position; anything past the representation is as good as its length
    (and int() would refuse thousands of digits)."""
    significant = digits.lstrip("0") or "0"
    return length if len(significant) > len(str(length)) else int(significant)


def _magnitude(digits: str) -> tuple[int, str]:
    """Orders 1*DIGIT strings as the numbers they write, however long: without int(),
    and without clamping first (two positions past the end clamp to the same value)."""
    significant = digits.lstrip("0")
    return len(significant), significant


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


def multipart_length(
    ranges: Sequence[ByteRange],
    length: int,
    content_type: str | None,
    boundary_length: int = BOUNDARY_LENGTH,
) -> int:
    """RFC 9110 Section 14.6: the body of a multipart/byteranges response, exactly as
    delivery (edge.pipeline.transaction) writes it: each part is CRLF, `--boundary` CRLF, the
    representation's Content-Type line when it has one, a Content-Range line and a
    blank line, then its bytes; the body ends with CRLF `--boundary--` CRLF."""
    dash = 2 + 2 + boundary_length + 2  # CRLF "--" boundary CRLF
    type_line = len(f"Content-Type: {content_type}\r\n") if content_type else 0
    total = 0
    for r in ranges:
        range_line = len(f"Content-Range: bytes {r.start}-{r.end}/{length}\r\n\r\n")
        total += dash + type_line + range_line + r.length
    return total + dash + 2  # the closing delimiter has "--" after the boundary


def parse_range(
    value: str | None, length: int, content_type: str | None = None
) -> list[ByteRange] | None:
    """RFC 9110 Section 14.1.2: byte-ranges-specifier against a representation of
    `length` bytes.

    Returns None when the field is absent, invalid or not worth honouring (serve
    200), the satisfiable ranges sorted and coalesced otherwise; raises Unsatisfiable
    when valid but none is satisfiable.

    Section 14.2 lets a server ignore a Range that is an attack rather than a request,
    and a range request must never cost more than the representation: more than
    MAX_RANGES ranges, or parts whose multipart/byteranges body would be longer than
    the representation, get the whole 200. `content_type` is the representation's
    Content-Type, which every part repeats ("" when it has none); None when the
    caller does not say, and then one of ASSUMED_CONTENT_TYPE_LENGTH is assumed.
    """
    if value is None:
        return None
    # Section 14.1: `range-unit "=" range-set`, the unit case-insensitive; OWS (SP and
    # HTAB only, Section 5.6.3) is tolerated around the parts, nothing else.
    unit, sep, spec = value.strip(OWS).partition("=")
    unit = unit.strip(OWS)
    if not sep or not unit.isascii() or unit.lower() != "bytes":
        return None
    ranges: list[ByteRange] = []
    members = [m.strip(OWS) for m in spec.split(",")]
    if not any(members) or len(members) > MAX_RANGES:
        return None
    for member in members:
        if not member:
            continue
        first, dash, last = member.partition("-")
        first, last = first.strip(OWS), last.strip(OWS)
        if not dash or (first and not _digits(first)) or (last and not _digits(last)):
            return None
        if not first:
            if not last:
                return None
            if not last.strip("0"):
                continue  # a zero suffix-length is never satisfiable (Section 14.1.1)
            if length == 0:
                # Satisfiable (Section 14.1.1) but no byte range can describe it: send
                # the whole, empty representation (a server may ignore Range, 14.2).
                return None
            ranges.append(ByteRange(max(0, length - _position(last, length)), length - 1))
            continue
        # Section 14.1.1: last-pos before first-pos makes the whole field invalid, even
        # when both are past the end (where clamping would make them equal).
        if last and _magnitude(last) < _magnitude(first):
            return None
        start = _position(first, length)
        end = _position(last, length) if last else length - 1
        if start >= length:
            continue
        ranges.append(ByteRange(start, min(end, length - 1)))
    if not ranges:
        raise Unsatisfiable
    ranges.sort(key=lambda r: r.start)
    # Section 14.2: overlapping or adjacent ranges are coalesced whatever their order,
    # so no byte is sent twice.
    merged = [ranges[0]]
    for r in ranges[1:]:
        last_range = merged[-1]
        if r.start <= last_range.end + 1:
            merged[-1] = ByteRange(last_range.start, max(last_range.end, r.end))
        else:
            merged.append(r)
    if len(merged) > 1:
        if content_type is None:
            content_type = "x" * ASSUMED_CONTENT_TYPE_LENGTH
        if multipart_length(merged, length, content_type) > length:
            return None  # many small parts: the whole representation costs less
    return merged


def first_position(value: str | None) -> int | None:
    """The first byte the first range-spec of a Range field names, when it names one
    plainly (`bytes=N-...`): where a cold range request starts. ASCII digits only
    (RFC 9110 Section 14.1.1), and thousands of them are no error."""
    if not value:
        return None
    unit, sep, spec = value.strip(OWS).partition("=")
    if not sep or not unit.strip(OWS).isascii() or unit.strip(OWS).lower() != "bytes":
        return None
    first = spec.split(",", 1)[0].partition("-")[0].strip(OWS)
    if not _digits(first):
        return None
    significant = first.lstrip("0") or "0"
    # Past 2^63 is past any object a cache holds; int() refuses 4300+ digits.
    return 1 << 63 if len(significant) > 19 else int(significant)


def if_range_allows(request_headers: Headers, stored: Headers, *, dates: bool = True) -> bool:
    """RFC 9110 Section 13.1.5: If-Range. The range applies only when the validator
    matches: a strong ETag by strong comparison, or a date equal to Last-Modified that
    is a strong validator (Section 8.8.2.2: for an intermediate cache, the stored Date
    is at least one second after Last-Modified).

    `dates` False: the representation's Last-Modified does not date its bytes (an
    encoding the cache made from it, possibly later than that date), so only an
    entity tag can validate it and a date never matches."""
    value = request_headers.get("If-Range")
    if value is None:
        return True
    value = value.strip(OWS)
    if value.startswith('"') or value.startswith("W/"):
        etag = stored.get("ETag")
        return etag is not None and strong_etag_equal(etag, value)
    if not dates:
        return False
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


# -- stored parts (RFC 9111 Sections 3.3 and 3.4) ------------------------------------------


def parse_content_range(value: str | None) -> tuple[int, int, int] | None:
    """RFC 9110 Section 14.4: `bytes first-last/complete` -> (first, last, complete)."""
    if not value:
        return None
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit.lower() != "bytes" or not (_digits(first) and _digits(last) and _digits(total)):
        return None
    a, b, n = int(first), int(last), int(total)
    return (a, b, n) if a <= b < n else None


def combinable(stored: Headers, size: int, part: Headers) -> bool:
    """RFC 9111 Section 3.4: a part may be combined with the stored parts of a
    representation only when its complete length is theirs (RFC 9110 Section 14.4)
    and both carry the same strong validator: the stored strong ETag, by strong
    comparison (RFC 9110 Section 8.8.3.2), or, when it has none, its Last-Modified
    date. An origin that ignores If-Match or If-Range answers a changed object with
    its new version: that part is another representation."""
    span = parse_content_range(part.get("Content-Range"))
    if span is None or span[2] != size:
        return False
    etag = stored.get("ETag")
    if etag and not etag.startswith("W/"):
        got = part.get("ETag")
        return got is not None and strong_etag_equal(etag, got)
    modified = parse_http_date(stored.get("Last-Modified"))
    return modified is not None and modified == parse_http_date(part.get("Last-Modified"))


def forwardable(value: str | None) -> str | None:
    """The Range field a cache may pass upstream on a miss, so that the 206 can be
    stored as the part it is (RFC 9111 Section 3.3): one syntactically valid
    byte-range-spec or suffix-range (RFC 9110 Section 14.1.1). Several ranges are
    not passed on (a multipart answer is not kept): None, and the whole is fetched."""
    if not value:
        return None
    unit, sep, spec = value.strip(OWS).partition("=")
    if not sep or not unit.strip(OWS).isascii() or unit.strip(OWS).lower() != "bytes":
        return None
    member = spec.strip(OWS)
    first, dash, last = (p.strip(OWS) for p in member.partition("-"))
    if not dash or "," in member:
        return None
    if not first:
        return value.strip(OWS) if _digits(last) and last.strip("0") else None
    if not _digits(first) or (last and not _digits(last)):
        return None
    if last and _magnitude(last) < _magnitude(first):
        return None
    return value.strip(OWS)


def within(ranges: Sequence[ByteRange], part: tuple[int, int]) -> bool:
    """Whether a stored part [first, end) holds every byte the ranges ask for, so it
    answers the request alone (RFC 9111 Section 3.3: an incomplete response may
    satisfy a range request it covers)."""
    first, end = part
    return bool(ranges) and all(first <= r.start and r.end < end for r in ranges)


def completion(part: tuple[int, int], size: int) -> str | None:
    """The Range field asking for what a stored part [first, end) of a representation
    of `size` bytes lacks, when one range can: the part is where it starts (ask for
    the rest, open-ended) or where it ends (ask for the start). None when it lies in
    the middle: two ranges would be needed, and the whole costs little more."""
    first, end = part
    if first == 0 and end < size:
        return f"bytes={end}-"
    if first > 0 and end == size:
        return f"bytes=0-{first - 1}"
    return None


def completes(part: tuple[int, int], size: int, span: tuple[int, int, int]) -> bool:
    """Whether a 206's Content-Range `span` (first, last, complete) fills exactly what
    the stored part [first, end) lacks (`completion`'s request answered as asked), so
    that the two combined are the whole representation (RFC 9111 Section 3.4)."""
    first, end = part
    a, b, n = span
    if n != size:
        return False
    if first == 0:
        return a == end and b == size - 1
    return end == size and a == 0 and b == first - 1
