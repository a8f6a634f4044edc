"""Byte ranges: RFC 9110 Section 14.1 (Range, byte-ranges-specifier), 14.2 (handling
Range), 13.1.5 (If-Range), 8.8.2.2 (when a Last-Modified is a strong validator) and
14.4 (Content-Range); and the parts a cache keeps, RFC 9111 Sections 3.3 and 3.4.
"""

from __future__ import annotations

from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from edge.rfc.ranges import (
    ASSUMED_CONTENT_TYPE_LENGTH,
    MAX_RANGES,
    ByteRange,
    Unsatisfiable,
    completes,
    completion,
    first_position,
    forwardable,
    if_range_allows,
    multipart_length,
    parse_content_range,
    parse_range,
    within,
)

NOW = 1_700_000_000.0
LM = NOW - 86_400


def date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def spans(value: str | None, length: int = 1000) -> list[tuple[int, int]] | None:
    ranges = parse_range(value, length)
    return None if ranges is None else [(r.start, r.end) for r in ranges]


# ------------------------------------------------------------------- parse_range


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-499", [(0, 499)]),
        ("bytes=500-999", [(500, 999)]),
        ("bytes=0-0", [(0, 0)]),
        ("bytes=999-999", [(999, 999)]),
        ("bytes=0-", [(0, 999)]),
        ("bytes=900-", [(900, 999)]),
        ("bytes=-500", [(500, 999)]),
        ("bytes=-1", [(999, 999)]),
        ("bytes=-1000", [(0, 999)]),
        ("bytes=-5000", [(0, 999)]),
        ("bytes=500-5000", [(500, 999)]),
        ("bytes=0-999999999999999999999", [(0, 999)]),
        ("Bytes=0-1", [(0, 1)]),
        (" bytes = 0 - 1 ", [(0, 1)]),
        ("bytes=007-010", [(7, 10)]),
    ],
    ids=[
        "first-half",
        "second-half",
        "first-byte",
        "last-byte",
        "open",
        "open-tail",
        "suffix",
        "suffix-one",
        "suffix-whole",
        "suffix-beyond-length",
        "end-clipped",
        "huge-end-clipped",
        "unit-case-insensitive",
        "whitespace",
        "leading-zeros",
    ],
)
def test_single_range(value: str, expected: list[tuple[int, int]]) -> None:
    """RFC 9110 Section 14.1.2: int-range, open range and suffix-range; a last-pos past
    the end is clipped; a suffix longer than the representation is all of it."""
    assert spans(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-99,200-299", [(0, 99), (200, 299)]),
        ("bytes=200-299,0-99", [(0, 99), (200, 299)]),
        ("bytes=0-99,100-199", [(0, 199)]),
        ("bytes=0-150,100-199", [(0, 199)]),
        ("bytes=100-199,0-999", [(0, 999)]),
        ("bytes=0-0,-1", [(0, 0), (999, 999)]),
        ("bytes=-100,0-99", [(0, 99), (900, 999)]),
        ("bytes=-100,850-", [(850, 999)]),
        ("bytes=0-9,20-29,10-19", [(0, 29)]),
        ("bytes=0-1, 5-6 ,", [(0, 1), (5, 6)]),
        ("bytes=5000-6000,0-1", [(0, 1)]),
        ("bytes=0-1,-0", [(0, 1)]),
    ],
    ids=[
        "two",
        "unsorted",
        "adjacent",
        "overlapping",
        "contained",
        "first-and-last-byte",
        "suffix-and-int",
        "suffix-overlapping-open",
        "three-chained",
        "spaces-and-trailing-comma",
        "unsatisfiable-member-dropped",
        "zero-suffix-member-dropped",
    ],
)
def test_multiple_ranges_sorted_and_coalesced(value: str, expected: list[tuple[int, int]]) -> None:
    """RFC 9110 Section 14.2: ranges are sorted and overlapping or adjacent ones
    coalesced; unsatisfiable members are dropped when another is satisfiable."""
    assert spans(value) == expected


@pytest.mark.parametrize(
    "value", ["bytes=1000-", "bytes=1000-2000", "bytes=-0", "bytes=5000-,1000-1001", "bytes=-0,-0"]
)
def test_unsatisfiable(value: str) -> None:
    """RFC 9110 Section 14.1.1: an int-range is satisfiable if first-pos < length; a
    suffix-range if its length is not zero. None satisfiable: 416."""
    with pytest.raises(Unsatisfiable):
        parse_range(value, 1000)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes= , ",
        "items=0-1",
        "0-1",
        "bytes=abc",
        "bytes=1",
        "bytes=-",
        "bytes=5-3",
        "bytes=-5-3",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=1.5-2",
        "bytes=0x10-20",
        "bytes=0-1,abc",
        "bytes=0-1,5-3",
        "bytes=\u0661-\u0662",
        "bytes=\u00b2-",
        "bytes=0-\uff19",
        "bytes=0-1\xa0",
        "\x1cbytes=0-1",
        "bytes=0\x0b-1",
        "byte\u017f=0-1",
    ],
    ids=[
        "absent",
        "empty",
        "no-equals",
        "no-ranges",
        "only-commas",
        "other-unit",
        "no-unit",
        "word",
        "no-dash",
        "only-dash",
        "last-before-first",
        "negative-suffix-range",
        "two-dashes",
        "plus-sign",
        "fraction",
        "hex",
        "one-bad-member",
        "one-reversed-member",
        "arabic-indic-digits",
        "superscript-two",
        "fullwidth-nine",
        "nbsp-after",
        "separator-before",
        "vertical-tab-inside",
        "long-s-in-unit",
    ],
)
def test_invalid_range_is_ignored(value: str | None) -> None:
    """RFC 9110 Section 14.2: an invalid Range (or other unit) is ignored: full 200.
    Positions are ASCII DIGITs only (Section 14.1.1), and only OWS (SP, HTAB; Section
    5.6.3) may surround the parts."""
    assert parse_range(value, 1000) is None


def test_too_many_ranges_are_ignored() -> None:
    """RFC 9110 Section 14.2: a server may ignore a Range with many ranges."""
    at_limit = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES))
    assert spans(at_limit, 100_000) == [(i * 10, i * 10 + 1) for i in range(MAX_RANGES)]
    over = "bytes=" + ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(MAX_RANGES + 1))
    assert parse_range(over, 100_000) is None


def test_parts_costing_more_than_the_whole_are_not_sent() -> None:
    """RFC 9110 Section 14.2: many small ranges whose multipart framing would cost more
    than the representation get the whole 200 instead."""
    small = "bytes=0-0,2-2,4-4,6-6"
    assert spans(small, 300) is None
    assert spans(small, 100_000) == [(0, 0), (2, 2), (4, 4), (6, 6)]
    assert spans("bytes=0-0", 10) == [(0, 0)]  # one part has no multipart framing


def delivered(ranges: list[ByteRange], length: int, ctype: str | None) -> bytes:
    """A multipart/byteranges body written as edge.pipeline.transaction writes it (boundary of 32
    hex digits, the representation's Content-Type in each part when it has one)."""
    boundary = "0123456789abcdef" * 2
    out = b""
    for r in ranges:
        head = f"\r\n--{boundary}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        head += f"Content-Range: bytes {r.start}-{r.end}/{length}\r\n\r\n"
        out += head.encode() + b"x" * r.length
    return out + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("ctype", [None, "", "text/plain", "application/octet-stream"])
def test_multipart_length_is_what_delivery_writes(ctype: str | None) -> None:
    ranges = [ByteRange(0, 0), ByteRange(10, 99), ByteRange(12345, 99999)]
    assert multipart_length(ranges, 100_000, ctype) == len(delivered(ranges, 100_000, ctype))


def test_parts_are_costed_with_the_content_type_they_repeat() -> None:
    """RFC 9110 Section 14.6: every part repeats Content-Type. Two one-byte parts cost
    about 240 bytes with a short type, 420 with a long one."""
    value = "bytes=0-0,-1"
    assert spans_typed(value, 300, "text/plain") == [(0, 0), (299, 299)]
    assert spans_typed(value, 300, "application/" + "x" * 90) is None
    assert spans_typed(value, 300, None) is None  # unknown: assumed long
    framing = multipart_length([ByteRange(0, 0), ByteRange(199, 199)], 200, "")
    assert spans_typed(value, framing, "") == [(0, 0), (framing - 1, framing - 1)]
    assert spans_typed(value, framing - 1, "") is None
    assumed = "x" * ASSUMED_CONTENT_TYPE_LENGTH
    assert multipart_length([ByteRange(0, 0)], 10, None) < multipart_length(
        [ByteRange(0, 0)], 10, assumed
    )


def spans_typed(value: str, length: int, ctype: str | None) -> list[tuple[int, int]] | None:
    ranges = parse_range(value, length, ctype)
    return None if ranges is None else [(r.start, r.end) for r in ranges]


@pytest.mark.parametrize(
    ("value", "first"),
    [
        ("bytes=100-", 100),
        ("bytes=007-9, 0-1", 7),
        (" Bytes = 5 - 6", 5),
        ("bytes=-100", None),
        ("bytes=" + "9" * 5000 + "-", 1 << 63),
        ("bytes=\u00b2-", None),
        ("bytes=\u0661-", None),
        ("items=1-2", None),
        ("bytes 1-2", None),
        ("", None),
        (None, None),
    ],
)
def test_first_position(value: str | None, first: int | None) -> None:
    """Where a cold range request starts: ASCII digits only (RFC 9110 Section 14.1.1);
    int() raises on "\u00b2" (which str.isdigit() accepts) and on 4300+ digits."""
    assert first_position(value) == first


def test_positions_with_thousands_of_digits() -> None:
    """Past the representation however long the number (and no int() overflow)."""
    assert spans("bytes=0-" + "9" * 5000) == [(0, 999)]
    assert spans("bytes=-" + "9" * 5000) == [(0, 999)]
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=" + "9" * 5000 + "-", 1000)


def test_zero_length_representation() -> None:
    """RFC 9110 Section 14.1.1: for an empty representation only a non-zero suffix-range
    is satisfiable -- and no byte range can describe it, so the Range is ignored."""
    assert parse_range("bytes=-5", 0) is None
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=0-", 0)
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=-0", 0)


def test_long_suffix_on_an_empty_representation_is_not_unsatisfiable() -> None:
    """RFC 9110 Section 14.1.1: any non-zero suffix-length is satisfiable, however many
    digits it has: `-10` on an empty representation was clamped to 0 and read as the
    unsatisfiable zero suffix (416)."""
    for suffix in ("5", "10", "9" * 5000, "007"):
        assert parse_range(f"bytes=-{suffix}", 0) is None
    with pytest.raises(Unsatisfiable):
        parse_range("bytes=-000", 0)


@pytest.mark.parametrize("value", ["bytes=99999-88888", "bytes=" + "9" * 50 + "-" + "8" * 50])
def test_last_before_first_past_the_end_is_invalid(value: str) -> None:
    """RFC 9110 Section 14.1.1: last-pos less than first-pos makes the field invalid
    (ignored: 200), also when both are past the end, where clamping both to the length
    had made them equal (and the request a 416)."""
    assert parse_range(value, 100) is None
    assert parse_range("bytes=0-1," + value.removeprefix("bytes="), 100) is None


def test_one_byte_representation() -> None:
    assert spans("bytes=-5", 1) == [(0, 0)]
    assert spans("bytes=0-", 1) == [(0, 0)]


def test_byte_range_length() -> None:
    assert ByteRange(0, 0).length == 1
    assert ByteRange(10, 19).length == 10


# ------------------------------------------------------------------- if_range_allows


STORED = CIMultiDict([("ETag", '"v1"'), ("Last-Modified", date(LM)), ("Date", date(NOW))])


def allows(if_range: str | None, stored: CIMultiDict[str] = STORED) -> bool:
    request = CIMultiDict([("If-Range", if_range)] if if_range is not None else [])
    return if_range_allows(request, stored)


def test_no_if_range_allows() -> None:
    assert allows(None) is True


@pytest.mark.parametrize(
    ("if_range", "expected"),
    [('"v1"', True), (' "v1" ', True), ('"v2"', False), ('W/"v1"', False)],
)
def test_if_range_entity_tag_strong_comparison(if_range: str, expected: bool) -> None:
    """RFC 9110 Section 13.1.5: a strong match only; a weak tag never matches."""
    assert allows(if_range) is expected


def test_if_range_against_weak_stored_etag_never_matches() -> None:
    stored = CIMultiDict([("ETag", 'W/"v1"')])
    assert allows('"v1"', stored) is False
    assert allows('W/"v1"', stored) is False


def test_if_range_entity_tag_without_stored_etag() -> None:
    assert allows('"v1"', CIMultiDict([("Last-Modified", date(LM))])) is False


def test_if_range_date_equal_to_strong_last_modified() -> None:
    """RFC 9110 Section 13.1.5: a date equal to Last-Modified, when that is a strong
    validator: the stored Date is at least one second later (Section 8.8.2.2)."""
    assert allows(date(LM)) is True


@pytest.mark.parametrize("offset", [-1, 1])
def test_if_range_date_not_equal(offset: int) -> None:
    """An exact match only: earlier or later is false."""
    assert allows(date(LM + offset)) is False


@pytest.mark.parametrize(
    "stored",
    [
        [("Last-Modified", date(LM)), ("Date", date(LM))],
        [("Last-Modified", date(LM)), ("Date", date(LM - 10))],
        [("Last-Modified", date(LM))],
        [("Last-Modified", date(LM)), ("Date", "garbage")],
    ],
    ids=["date-equals-last-modified", "date-before", "no-date", "invalid-date"],
)
def test_if_range_date_with_weak_last_modified(stored: list[tuple[str, str]]) -> None:
    """RFC 9110 Section 13.1.5 step 1: a date that is not a strong validator is false."""
    assert allows(date(LM), CIMultiDict(stored)) is False


def test_if_range_date_one_second_before_date_is_strong() -> None:
    stored = CIMultiDict([("Last-Modified", date(LM)), ("Date", date(LM + 1))])
    assert allows(date(LM), stored) is True


def test_if_range_date_without_last_modified() -> None:
    assert allows(date(LM), CIMultiDict([("ETag", '"v1"'), ("Date", date(NOW))])) is False


@pytest.mark.parametrize("if_range", ["garbage", "", "v1"])
def test_if_range_invalid_value(if_range: str) -> None:
    """Neither an entity-tag nor an HTTP-date: the condition is false (send 200)."""
    assert allows(if_range) is False


# -- stored parts: RFC 9110 Section 14.4, RFC 9111 Sections 3.3 and 3.4 ----------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 4-9/10", (4, 9, 10)),
        ("BYTES 0-0/1", (0, 0, 1)),
        ("bytes 0-9/*", None),  # the complete length unknown: no place for the part
        ("bytes */10", None),  # a 416's, no part at all
        ("bytes 5-4/10", None),
        ("bytes 0-10/10", None),  # past the complete length
        ("items 0-1/2", None),
        ("bytes \u0660-1/2", None),  # RFC 9110 Section 14.1.1: ASCII digits only
        ("", None),
        (None, None),
    ],
)
def test_parse_content_range(value: str | None, expected: tuple[int, int, int] | None) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=-5", "bytes=-5"),
        ("bytes=10-19", "bytes=10-19"),
        ("bytes=10-", "bytes=10-"),
        (" bytes = 10-19 ", "bytes = 10-19"),  # passed on as the client wrote it
        ("bytes=0-1,5-6", None),  # several: a multipart answer is not kept
        ("bytes=-0", None),  # never satisfiable
        ("bytes=9-1", None),  # invalid: last before first
        ("bytes=-", None),
        ("bytes=x-1", None),
        ("items=0-1", None),
        (None, None),
        ("", None),
    ],
)
def test_forwardable(value: str | None, expected: str | None) -> None:
    assert forwardable(value) == expected


def test_within() -> None:
    part = (4, 9)
    assert within([ByteRange(4, 8)], part)
    assert within([ByteRange(6, 8), ByteRange(4, 4)], part)
    assert not within([ByteRange(4, 9)], part)  # byte 9 is not stored
    assert not within([ByteRange(3, 5)], part)
    assert not within([ByteRange(4, 5), ByteRange(8, 9)], part)
    assert not within([], part)


@pytest.mark.parametrize(
    ("part", "size", "expected"),
    [
        ((0, 5), 10, "bytes=5-"),  # the rest, open-ended
        ((4, 10), 10, "bytes=0-3"),  # the start
        ((2, 5), 10, None),  # in the middle: two ranges; the whole is asked for
        ((0, 10), 10, None),  # nothing lacks
    ],
)
def test_completion(part: tuple[int, int], size: int, expected: str | None) -> None:
    assert completion(part, size) == expected


@pytest.mark.parametrize(
    ("part", "span", "expected"),
    [
        ((0, 5), (5, 9, 10), True),
        ((4, 10), (0, 3, 10), True),
        ((0, 5), (5, 8, 10), False),  # short of the end
        ((0, 5), (6, 9, 10), False),  # a gap
        ((0, 5), (5, 10, 11), False),  # another complete length
        ((4, 10), (0, 4, 10), False),  # overlaps: not what was asked
    ],
)
def test_completes(part: tuple[int, int], span: tuple[int, int, int], expected: bool) -> None:
    assert completes(part, 10, span) is expected
