"""Property-based tests of the header parsers: for any text a client or an origin can
send, no exception escapes and the result is well-formed; where a field can be built
from known parts, it parses back to them.

Cache-Control (and its targeted fields), delta-seconds, lists, dates, Age, Range and
If-Range, Vary and its secondary keys, ETags, preconditions, Accept-Encoding, and the
guard's target normaliser. Plain example tests of each bug these found live beside each
parser's own tests.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import string
from datetime import UTC, datetime, timedelta
from email.utils import formatdate

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.features import compress, guard
from edge.rfc import policy
from edge.rfc.ranges import (
    MAX_RANGES,
    ByteRange,
    Unsatisfiable,
    first_position,
    if_range_allows,
    multipart_length,
    parse_range,
)

#: Arbitrary text at every parser: 300 examples each. Round trips and semantic
#: properties draw from narrower spaces: 150. The file stays near 20 s of CPU.
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LIGHT = settings(SETTINGS, max_examples=150)

#: Characters that fool str methods: whitespace that is not OWS (str.strip() takes it),
#: C0 controls and DEL, digits that are not DIGIT (str.isdigit() and int() take them),
#: letters whose case folds onto ASCII (KELVIN SIGN, LONG S, DOTTED CAPITAL I).
TRICKY = [
    *"\x00\x08\x0b\x0c\x0e\x1c\x1d\x1e\x1f\x7f\x85\xa0\u1680\u2028\u2029\u3000\ufeff",
    *"\u0660\u0665\u06f1\u0966\uff10\uff19\u00b2\u00b9\u2070",
    *"\u212a\u017f\u0130\u0131\u212b",
]
#: The grammar's own punctuation and whitespace.
PUNCT = list(" \t,;=\"'\\-*/.:()<>@[]{}?")
WORDS = [
    *("max-age", "s-maxage", "no-cache", "no-store", "private", "public", "must-revalidate"),
    *("bytes", "gzip", "br", "zstd", "identity", "q", "W/", "Sun", "Nov", "GMT", "en"),
    *("0", "1", "9", "60", "0.5", "1.000", "2147483648", "9" * 40, "4294967296"),
]
tricky_text = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.sampled_from(PUNCT), st.sampled_from(WORDS)),
    max_size=30,
).map("".join)
anything = st.text(max_size=200)
tokenish = st.text(alphabet=string.ascii_letters + string.digits + "-=,;\"' \t*/", max_size=120)
#: Numbers of thousands of digits (int() refuses more than 4300), built, not drawn.
huge_digits = st.builds(
    lambda head, n, tail: head + "9" * n + tail,
    st.text(alphabet=string.digits, max_size=5),
    st.integers(0, 6000),
    st.text(alphabet=string.digits, min_size=1, max_size=5),
)
#: A member repeated many times, and very long values.
repeated = st.builds(
    lambda member, n, sep: sep.join([member] * n),
    st.one_of(tricky_text, st.sampled_from(WORDS)),
    st.integers(0, 500),
    st.sampled_from([",", ", ", ",\t", " "]),
)
values = st.one_of(anything, tokenish, tricky_text, repeated, huge_digits)
field_lines = st.lists(values, max_size=4)

OWS_TEXT = st.sampled_from(["", "", " ", "\t", "  ", " \t "])
TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
TCHAR = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
TOKEN = st.text(alphabet=TCHAR, min_size=1, max_size=12)


ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def lower_token(name: str) -> bool:
    return bool(TOKEN_RE.fullmatch(name)) and name == name.lower()


# ----------------------------------------------------------------- Cache-Control


@SETTINGS
@given(field_lines)
@example(["\u212aeep=1, no-\u017ftore"])
@example(["max-age=60\xa0, s-maxage=\x1c5"])
def test_cache_control_never_raises_and_is_well_formed(lines: list[str]) -> None:
    """RFC 9111 Section 5.2: directive names are tokens (compared lower-cased), and a
    delta-seconds argument is an int in [0, 2^31] (Section 1.2.2)."""
    cc = policy.parse_cache_control(lines)
    ascii_lowered = "".join(lines).translate(ASCII_LOWER)
    for name, arg in cc.directives.items():
        assert lower_token(name), name
        assert name in ascii_lowered  # not made by lower-casing a non-ASCII letter
        assert arg is None or isinstance(arg, str)
        delta = cc.delta(name)
        assert delta is None or (type(delta) is int and 0 <= delta <= policy.MAX_DELTA)
        if delta is not None:
            assert arg is not None and arg.isascii() and arg.isdigit()
        names = cc.field_names(name)
        assert names is None or all(n == n.lower() and n for n in names)
    assert cc.conflicts <= set(cc.directives)
    assert cc.quoted <= set(cc.directives)
    # One field in several lines is the same list (RFC 9110 Section 5.3), when no
    # quoted string is left open across the line end.
    if all(line.count('"') % 2 == 0 and "\\" not in line for line in lines):
        assert policy.parse_cache_control([", ".join(lines)]).directives == cc.directives


@SETTINGS
@given(field_lines, st.one_of(st.none(), st.lists(tokenish, max_size=3)))
@example(['max-age="5', "public"], None)
@example(['no-cache="a;b";edge, max-age=5;other'], ["edge"])
def test_targeted_never_raises_and_is_well_formed(
    lines: list[str], targets: list[str] | None
) -> None:
    """RFC 9213 Section 2 and Surrogate-Control: None or directives that are tokens."""
    cc = policy.parse_targeted(lines, targets)
    if cc is not None:
        assert cc.directives and all(lower_token(n) for n in cc.directives)
        for name in cc.directives:
            delta = cc.delta(name)
            assert delta is None or 0 <= delta <= policy.MAX_DELTA
    policy.is_sf_dictionary(lines)


@SETTINGS
@given(st.lists(st.one_of(tokenish, tricky_text, st.sampled_from(WORDS)), max_size=6))
@example(['max-age="5', "public"])
def test_targeted_without_repeats_or_parameters_is_cache_control(lines: list[str]) -> None:
    """RFC 9213 Section 2: without parameters or repeated directives, a targeted field
    means what the same Cache-Control would, line by line."""
    cc = policy.parse_cache_control(lines)
    members = policy.split_list(lines)
    names = [m.partition("=")[0].strip(" \t").translate(ASCII_LOWER) for m in members]
    if any(";" in line for line in lines) or len(set(names)) < len(names):
        return
    targeted = policy.parse_targeted(lines)
    assert (targeted.directives if targeted else {}) == cc.directives


WHITESPACE = [" ", "\t", "\xa0", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u2028", "\u3000"]


@LIGHT
@given(
    st.lists(st.sampled_from(WHITESPACE), max_size=2).map("".join),
    st.lists(st.sampled_from(WHITESPACE), max_size=2).map("".join),
    st.integers(0, 10**6),
)
@example("", "\xa0", 60)
def test_only_ows_may_surround_a_value(left: str, right: str, value: int) -> None:
    """RFC 9110 Section 5.6.3: OWS is SP and HTAB. With only those around it, a value
    parses; with any other whitespace (which str.strip() would remove) it does not:
    delta-seconds in Cache-Control and Age, a qvalue, a Range, an HTTP-date."""
    ows = not (left + right).strip(" \t")
    cc = policy.parse_cache_control([f"{left}max-age={value}{right}"])
    assert (cc.delta("max-age") == value) == ows
    cc = policy.parse_cache_control([f"max-age={left}{value}{right}"])
    assert (cc.delta("max-age") == value) == ows
    assert (policy.parse_age(CIMultiDict(Age=f"{left}{value}{right}")) == value) == ows
    weights = compress.parse_accept_encoding([f"gzip;q={left}0.5{right}"])
    assert (weights.get("gzip") == 0.5) == ows
    ranges = parse_range(f"{left}bytes=0-{value}{right}", 10**7)
    assert (ranges == [ByteRange(0, value)]) == ows
    date = formatdate(value, usegmt=True)
    assert (policy.parse_http_date(f"{left}{date}{right}") == value) == ows


@LIGHT
@given(field_lines, field_lines)
def test_request_cache_control_and_pragma(cc_lines: list[str], pragma: list[str]) -> None:
    """RFC 9111 Section 5.4: Pragma: no-cache counts only without Cache-Control."""
    headers = CIMultiDict(
        [*(("Cache-Control", v) for v in cc_lines), *(("Pragma", v) for v in pragma)]
    )
    cc = policy.request_cache_control(headers)
    if cc_lines:
        assert cc.directives == policy.parse_cache_control(cc_lines).directives
    else:
        said = any(m.lower() == "no-cache" for m in policy.split_list(pragma))
        assert ("no-cache" in cc) == said


FLAGS = [
    *("no-cache", "no-store", "public", "private", "must-revalidate", "proxy-revalidate"),
    *("no-transform", "immutable", "must-understand", "only-if-cached"),
]
DELTAS = ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "min-fresh"]
#: Any case of a name: directive names are case-insensitive (RFC 9111 Section 5.2).
any_case = st.sampled_from(FLAGS).flatmap(
    lambda name: st.lists(st.booleans(), min_size=len(name), max_size=len(name)).map(
        lambda upper: (
            name,
            "".join(c.upper() if u else c for c, u in zip(name, upper, strict=True)),
        )
    )
)


@LIGHT
@given(
    st.lists(any_case, unique_by=lambda pair: pair[0], max_size=6),
    st.dictionaries(
        st.sampled_from(DELTAS),
        st.tuples(st.integers(0, 2**70), st.integers(0, 3), st.booleans()),
        max_size=5,
    ),
    st.lists(st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=10), max_size=3),
    st.lists(OWS_TEXT, min_size=40, max_size=40),
    st.integers(1, 3),
)
def test_cache_control_round_trip(
    flags: list[tuple[str, str]],
    deltas: dict[str, tuple[int, int, bool]],
    qualified: list[str],
    spaces: list[str],
    lines: int,
) -> None:
    """A Cache-Control built from known directives, in any case, with OWS anywhere it
    may be, quoted or token arguments, leading zeros, split over several field lines,
    parses back to the same directives (RFC 9111 Section 5.2, RFC 9110 Section 5.6)."""
    members = [written for _, written in flags]
    for name, (value, zeros, quote) in deltas.items():
        arg = "0" * zeros + str(value)
        members.append(f'{name}="{arg}"' if quote else f"{name}={arg}")
    if qualified:
        members.append(f'X-Fields="{", ".join(qualified)}"')
    pad = iter(spaces)
    padded = [f"{next(pad)}{m}{next(pad)}" for m in members]
    chunks = [padded[i::lines] for i in range(lines)]
    cc = policy.parse_cache_control([",".join(chunk) for chunk in chunks])
    expected = {name for name, _ in flags} | set(deltas) | ({"x-fields"} if qualified else set())
    assert set(cc.directives) == expected
    assert not cc.conflicts
    for name, (value, _, _) in deltas.items():
        assert cc.delta(name) == min(value, policy.MAX_DELTA)
    if qualified:
        assert cc.field_names("x-fields") == [q.lower() for q in qualified]


@LIGHT
@given(st.lists(st.tuples(st.sampled_from(DELTAS), st.integers(0, 10**6)), min_size=1, max_size=6))
def test_cdn_cache_control_last_value_wins(members: list[tuple[str, int]]) -> None:
    """RFC 9213 Section 2.1 with RFC 8941 Section 4.2.2: a repeated key takes its last
    value (where Cache-Control keeps the first and marks a conflict)."""
    cc = policy.parse_targeted([", ".join(f"{n}={v}" for n, v in members)])
    assert cc is not None
    assert {n: cc.delta(n) for n in cc.directives} == dict(members)


@SETTINGS
@given(st.one_of(values, huge_digits, st.integers(0, 2**80).map(str)))
@example("9" * 5000)
@example("-1")
@example("\u0661\u0662\u0663")  # ARABIC-INDIC digits: isdigit() but not DIGIT
@example("\u00b2")  # SUPERSCRIPT TWO: isdigit(), and int() raises
@example("0" * 5000 + "7")
def test_delta_seconds(value: str) -> None:
    """RFC 9111 Section 1.2.2: 1*DIGIT, a non-negative int; beyond 2^31 it is 2^31."""
    delta = policy.parse_delta_seconds(value)
    if value and value.isascii() and value.isdigit():
        significant = value.lstrip("0") or "0"
        big = len(significant) > 10  # past 2^31 whatever the digits say
        assert delta == (policy.MAX_DELTA if big else min(int(significant), policy.MAX_DELTA))
        assert type(delta) is int and 0 <= delta <= policy.MAX_DELTA
    else:
        assert delta is None


# ------------------------------------------------------------------------- lists


@LIGHT
@given(field_lines)
@example(["\x85"])
@example(['"a,b", c'])
def test_split_list_members_are_trimmed_and_non_empty(lines: list[str]) -> None:
    """RFC 9110 Section 5.6.1: empty members are dropped, OWS (SP, HTAB) is not part of
    a member; nothing else is removed."""
    members = policy.split_list(lines)
    for member in members:
        assert member and member == member.strip(" \t")

    def bare(text: str) -> str:
        return text.translate({ord(c): None for c in ", \t"})

    # Nothing but separating commas and OWS is ever dropped.
    assert bare("".join(members)) == bare("".join(lines))


@LIGHT
@given(
    st.lists(
        st.one_of(TOKEN, st.text(alphabet=TCHAR + ", ;=", max_size=8).map(lambda s: f'"{s}"')),
        max_size=20,
    ),
    st.lists(OWS_TEXT, min_size=42, max_size=42),
    st.integers(0, 3),
)
def test_split_list_round_trip(members: list[str], spaces: list[str], empties: int) -> None:
    """Members (tokens and quoted strings, which may hold commas) joined with commas,
    OWS and empty members split back to themselves, repeats and order kept."""
    pad = iter(spaces)
    text = ",".join([f"{next(pad)}{m}{next(pad)}" for m in members] + [""] * empties)
    assert policy.split_list([text]) == members


# ------------------------------------------------------------------------- dates


@SETTINGS
@given(st.one_of(anything, tricky_text, st.sampled_from(TRICKY).map(lambda c: c + "Sun")))
@example("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT")
@example("\u017fun, 06 Nov 1994 08:49:37 GMT")
@example("Sun, 06 Nov 1994 08:49:37 GMT\x1c")
def test_dates_never_raise_and_are_finite(value: str) -> None:
    """RFC 9110 Section 5.6.7: None, or a finite time from ASCII text."""
    moment = policy.parse_http_date(value)
    if moment is not None:
        assert isinstance(moment, float) and math.isfinite(moment)
        assert value.isascii()


moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))


@LIGHT
@given(moments, st.sampled_from(TRICKY), st.integers(0, 28))
def test_imf_fixdate_round_trip(moment: datetime, odd: str, where: int) -> None:
    """IMF-fixdate as written (and in any case) is the moment it names; RFC 850 and
    asctime of the same moment agree; any tricky character in it makes it invalid."""
    moment = moment.replace(microsecond=0, tzinfo=UTC)
    text = f"{moment:%a}, {moment.day:02d} {moment:%b} {moment.year:04d} {moment:%H:%M:%S} GMT"
    expected = moment.timestamp()
    assert policy.parse_http_date(text) == expected
    assert policy.parse_http_date(text.upper()) == expected
    assert policy.parse_http_date(f" \t{text}\t ") == expected
    asctime = f"{moment:%a %b} {moment.day:2d} {moment:%H:%M:%S} {moment.year:04d}"
    assert policy.parse_http_date(asctime) == expected
    rfc850 = (
        f"{moment:%A}, {moment.day:02d}-{moment:%b}-{moment.year % 100:02d} {moment:%H:%M:%S} GMT"
    )
    # RFC 9110 Section 5.6.7: a two-digit year is read within 50 years of now.
    assert policy.parse_http_date(rfc850, now=expected) == expected
    assert policy.parse_http_date(text[:where] + odd + text[where:]) is None


@LIGHT
@given(st.integers(0, 253402300799))
def test_formatdate_round_trip(ts: int) -> None:
    """What edge writes (email.utils.formatdate, usegmt) reads back to the second."""
    assert policy.parse_http_date(formatdate(ts, usegmt=True)) == ts


@LIGHT
@given(moments)
def test_leap_second_is_the_next_second(moment: datetime) -> None:
    """RFC 5322 Section 3.3: second 60 is a leap second, read as the next second."""
    moment = moment.replace(second=59, microsecond=0, tzinfo=UTC)
    text = f"{moment:%a}, {moment.day:02d} {moment:%b} {moment.year:04d} {moment:%H:%M}:60 GMT"
    parsed = policy.parse_http_date(text)
    if moment + timedelta(seconds=1) <= datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC):
        assert parsed == moment.timestamp() + 1


# --------------------------------------------------------------------------- Age


@SETTINGS
@given(st.lists(st.one_of(values, huge_digits), max_size=3))
@example(["5\xa0"])
@example(["\u0665"])
def test_age_never_raises(lines: list[str]) -> None:
    """RFC 9111 Section 5.1: the first member's delta-seconds, or None when invalid."""
    headers = CIMultiDict(("Age", v) for v in lines)
    age = policy.parse_age(headers)
    assert age is None or (type(age) is int and 0 <= age <= policy.MAX_DELTA)
    assert policy.has_invalid_age(headers) == (age is None)
    if not lines:
        assert age == 0


# ------------------------------------------------------------------------- Range


def spec_text(pair: tuple[int | None, int | None]) -> str:
    a, b = pair
    return f"{'' if a is None else a}-{'' if b is None else b}"


position = st.one_of(st.integers(0, 5000), st.integers(0, 2**70), st.none())
range_text = st.one_of(
    anything,
    tricky_text,
    st.text(alphabet="bytes=0123456789-, \t", max_size=200),
    st.lists(st.tuples(position, position), min_size=1, max_size=40).map(
        lambda rs: "bytes=" + ",".join(spec_text(r) for r in rs)
    ),
    st.builds(
        lambda spec, n: "bytes=" + ",".join([spec] * n),
        st.sampled_from(["0-", "0-0", "-1"]),
        st.integers(1, 2000),
    ),
)
content_types = st.one_of(st.none(), st.just(""), st.text(min_size=1, max_size=120))


@SETTINGS
@given(range_text, st.integers(0, 4000) | st.integers(0, 2**62), content_types)
@example("bytes=" + "9" * 5000 + "-", 100, None)
@example("bytes=0-" + "9" * 5000, 100, None)
@example("bytes=-" + "9" * 5000, 100, None)
@example("bytes=" + ",".join(["0-"] * 1000), 100, None)
@example("bytes=" + ",".join(f"{i}-{i}" for i in range(0, 32, 2)), 10_000, "text/plain")
@example("bytes=0-1\xa0", 100, None)
def test_ranges_lie_inside_and_never_cost_more_than_the_object(
    value: str, length: int, ctype: str | None
) -> None:
    """RFC 9110 Section 14.1.2 and 14.2: satisfiable ranges inside the representation,
    sorted, neither overlapping nor adjacent (coalesced), at most MAX_RANGES, and never
    more bytes than the whole, framing included."""
    try:
        ranges = parse_range(value, length, ctype)
    except Unsatisfiable:
        return
    if ranges is None:
        return
    assert 1 <= len(ranges) <= MAX_RANGES
    for r in ranges:
        assert type(r.start) is int and 0 <= r.start <= r.end < length
    for a, b in itertools.pairwise(ranges):
        assert a.end + 1 < b.start
    assert sum(r.length for r in ranges) <= length
    if len(ranges) > 1:
        assert multipart_length(ranges, length, ctype) <= length


def union(pairs: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The coalesced union of inclusive spans clipped to `length`, the slow way."""
    covered = sorted({i for a, b in pairs for i in range(a, min(b, length - 1) + 1)})
    out: list[tuple[int, int]] = []
    for i in covered:
        if out and out[-1][1] + 1 == i:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


specs = st.one_of(
    st.tuples(st.integers(0, 1200), st.integers(0, 1200)).map(lambda p: (min(p), max(p))),
    st.tuples(st.integers(0, 1200), st.none()),
    st.tuples(st.none(), st.integers(0, 1300)),
)


@SETTINGS
@given(
    st.lists(specs, min_size=1, max_size=20),
    st.integers(0, 1000),
    st.randoms(use_true_random=False),
    st.sampled_from(["", "text/plain", "application/octet-stream"]),
)
def test_valid_ranges_parse_to_their_coalesced_union(
    raw: list[tuple[int | None, int | None]], length: int, rnd: random.Random, ctype: str
) -> None:
    """A Range built from valid range-specs (int, open and suffix ranges), in any order,
    is their coalesced union (Section 14.2) -- or the whole 200 exactly when there are
    more than MAX_RANGES specs or the multipart body would outweigh the object; or
    416 exactly when no spec is satisfiable (Section 14.1.1)."""
    pairs: list[tuple[int, int]] = []
    for a, b in raw:
        if a is None:  # suffix-range
            assert b is not None
            if b > 0 and length > 0:
                pairs.append((max(0, length - b), length - 1))
        elif a < length:
            pairs.append((a, length - 1 if b is None else b))
    text = "bytes=" + ",".join(spec_text(p) for p in raw)
    shuffled = list(raw)
    rnd.shuffle(shuffled)
    other = "bytes=" + ",\t".join(spec_text(p) for p in shuffled)
    empty_suffix = length == 0 and any(a is None and b for a, b in raw)
    if len(raw) > MAX_RANGES or empty_suffix:
        assert parse_range(text, length, ctype) is None
        return
    if not pairs:
        for t in (text, other):
            try:
                parse_range(t, length, ctype)
            except Unsatisfiable:
                continue
            raise AssertionError(f"{t!r} is satisfiable")
        return
    expected = union(pairs, length)
    ranges = parse_range(text, length, ctype)
    assert parse_range(other, length, ctype) == ranges  # order does not matter
    framed = multipart_length([ByteRange(a, b) for a, b in expected], length, ctype)
    if len(expected) > 1 and framed > length:
        assert ranges is None
    else:
        assert ranges is not None and [(r.start, r.end) for r in ranges] == expected


@LIGHT
@given(
    st.integers(0, 2**90),
    st.integers(1, 2**90),
    st.integers(0, 10**6),
    st.lists(specs, max_size=4),
)
def test_a_reversed_int_range_makes_the_field_invalid(
    last: int, more: int, length: int, others: list[tuple[int | None, int | None]]
) -> None:
    """RFC 9110 Section 14.1.1: an int-range whose last-pos is less than its first-pos
    is invalid, and so is the whole field (ignored, Section 14.2), wherever the two
    positions lie."""
    members = [spec_text(p) for p in others] + [f"{last + more}-{last}"]
    assert parse_range("bytes=" + ",".join(members), length) is None


@LIGHT
@given(st.lists(st.integers(1, 10**6), min_size=1, max_size=MAX_RANGES), st.integers(1, 200))
def test_many_small_ranges_cost_no_more_than_the_object(gaps: list[int], length: int) -> None:
    """Section 14.2: one-byte ranges two apart (`bytes=0-0,2-2,...`) on objects of any
    size: a 206 only when its body is smaller than the whole."""
    starts = list(itertools.accumulate(g + 1 for g in gaps))
    text = "bytes=" + ",".join(f"{s}-{s}" for s in starts)
    size = starts[-1] + length
    try:
        ranges = parse_range(text, size, "application/octet-stream")
    except Unsatisfiable:
        raise AssertionError(text) from None
    if ranges is not None and len(ranges) > 1:
        assert multipart_length(ranges, size, "application/octet-stream") <= size


@SETTINGS
@given(range_text)
@example("bytes=" + "9" * 5000 + "-")
@example("bytes=\u00b2-")
def test_first_position_never_raises(value: str) -> None:
    first = first_position(value)
    assert first is None or (type(first) is int and first >= 0)


@SETTINGS
@given(values, values, values, values)
def test_if_range_never_raises(if_range: str, etag: str, last_modified: str, date: str) -> None:
    request = CIMultiDict({"If-Range": if_range, "Range": "bytes=0-1"})
    stored = CIMultiDict({"ETag": etag, "Last-Modified": last_modified, "Date": date})
    assert if_range_allows(request, stored) in (True, False)


opaque = st.text(alphabet="".join(chr(c) for c in range(0x21, 0x7F) if c != 0x22), max_size=12)


@LIGHT
@given(opaque, opaque, st.integers(-5, 5), st.sampled_from(["", " ", "\t"]))
def test_if_range_semantics(tag: str, other: str, offset: int, pad: str) -> None:
    """RFC 9110 Section 13.1.5: a strong entity tag matches by strong comparison, a
    weak one never; a date matches only Last-Modified exactly, and only when that is
    strong (the stored Date at least a second later, Section 8.8.2.2)."""
    lm = 1_600_000_000
    stored = CIMultiDict(
        {"ETag": f'"{tag}"', "Last-Modified": formatdate(lm, usegmt=True)}
        | {"Date": formatdate(lm + 1, usegmt=True)}
    )

    def allows(value: str) -> bool:
        return if_range_allows(CIMultiDict({"If-Range": pad + value + pad}), stored)

    assert allows(f'"{tag}"')
    assert not allows(f'W/"{tag}"')
    assert allows(f'"{other}"') == (other == tag)
    assert allows(formatdate(lm + offset, usegmt=True)) == (offset == 0)
    weak = CIMultiDict({"ETag": f'W/"{tag}"'})
    assert not if_range_allows(CIMultiDict({"If-Range": f'"{tag}"'}), weak)


# -------------------------------------------------------------------------- Vary


@SETTINGS
@given(st.lists(values, max_size=3), st.dictionaries(tokenish, values, max_size=5))
@example(["\u212aey"], {"key": "a"})
@example(["Accept, a b"], {})
def test_vary_keys_are_deterministic_and_order_insensitive(
    vary_lines: list[str], request: dict[str, str]
) -> None:
    """RFC 9110 Section 12.5.5: Vary names are field names (tokens, case-insensitive)
    or "*"; RFC 9111 Section 4.1: the order of the names does not matter."""
    headers = CIMultiDict(request)
    names = policy.vary_field_names(CIMultiDict(("Vary", v) for v in vary_lines))
    assert all(n == "*" or lower_token(n) for n in names)
    key = policy.vary_key(names, headers)
    assert key == policy.vary_key(list(reversed(names)), headers)
    assert key == policy.vary_key(names + names, headers)
    assert key == policy.vary_key(names, CIMultiDict(request))  # deterministic
    assert [n for n, _ in key] == sorted(set(names))
    assert policy.vary_matches(key, headers) == ("*" not in names)


@LIGHT
@given(
    st.lists(st.sampled_from(["Accept", "Accept-Language", "X-Device", "Cookie"]), max_size=4),
    st.dictionaries(
        st.sampled_from(["Accept", "Accept-Language", "X-Device", "Cookie"]),
        tokenish,
        max_size=4,
    ),
    st.sampled_from(["Accept", "Accept-Language", "X-Device", "Cookie"]),
    tokenish,
)
def test_vary_matches_only_the_same_selecting_values(
    names: list[str], request: dict[str, str], changed: str, value: str
) -> None:
    """RFC 9111 Section 4.1: a stored response is selected only when every selecting
    field has the same (normalised) value, absent matching absent."""
    lower = [n.lower() for n in names]
    key = policy.vary_key(lower, CIMultiDict(request))
    assert policy.vary_matches(key, CIMultiDict(request))
    other = dict(request) | {changed: value}
    same = policy.normalise_selecting(
        changed.lower(), [request[changed]] if changed in request else []
    ) == policy.normalise_selecting(changed.lower(), [value])
    matched = policy.vary_matches(key, CIMultiDict(other))
    assert matched == (same or changed.lower() not in lower)


#: A language range with a valid weight, written in any of its forms (None: no weight).
language = st.tuples(
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=8) | st.just("*"),
    st.sampled_from([None, "0", "0.5", "0.50", "1", "1.000", "0.001", "0.8"]),
)
#: A weight that is not a qvalue; not quotes, commas or semicolons, which would change
#: how the members are cut, not how they are weighed.
odd_weight = st.sampled_from(["nan", "inf", "1e0", "-1", "1.5", ".5"]) | st.text(
    alphabet=string.ascii_letters + string.digits + ".-+", min_size=1, max_size=6
).filter(lambda w: not re.fullmatch(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?", w))


def written(members: list[tuple[str, str | None]]) -> list[str]:
    return [tag if q is None else f"{tag};q={q}" for tag, q in members]


def ranking(members: list[tuple[str, str | None]]) -> dict[float, list[str]]:
    """What a client prefers: for each weight, its ranges in the order written (RFC
    9110 Section 12.4.2: the weight ranks; between equal weights the order can)."""
    out: dict[float, list[str]] = {}
    for tag, q in members:
        out.setdefault(1.0 if q is None else float(q), []).append(tag.lower())
    return out


def as_sent(members: list[str], lines: int, upper: bool) -> list[str]:
    """The members as field lines, in order: upper-cased if asked, cut into `lines`
    runs (RFC 9110 Section 5.3: lines combine in order)."""
    text = [m.upper() if upper else m for m in members]
    step = -(-len(text) // lines) or 1
    return [", ".join(text[i : i + step]) for i in range(0, len(text), step)]


@LIGHT
@given(
    st.lists(language, max_size=8, unique_by=lambda m: m[0].lower()),
    st.randoms(use_true_random=False),
    st.integers(1, 3),
    st.booleans(),
)
@example([("de", None), ("en", None)], None, 1, False)
@example([("de", "0.8"), ("fr", "0.8"), ("en", None)], None, 1, True)
def test_accept_language_keys_differ_exactly_when_preferences_differ(
    members: list[tuple[str, str | None]], rnd: random.Random | None, lines: int, upper: bool
) -> None:
    """RFC 9111 Section 4.1: Accept-Language may be normalised only so far as the
    choice cannot change. Another order of the same members gives the same key
    exactly when, weight by weight, the ranges come in the same order (`de, en` and
    `en, de` differ); case, spacing and field lines never matter."""
    base = policy.normalise_selecting("accept-language", [", ".join(written(members))])
    if rnd is None:
        other = list(reversed(members))
    else:
        other = list(members)
        rnd.shuffle(other)
    key = policy.normalise_selecting("accept-language", as_sent(written(other), lines, upper))
    if not members:
        assert key is None and base == ""
        return
    assert (key == base) == (ranking(other) == ranking(members))


@LIGHT
@given(
    st.lists(language, min_size=1, max_size=6, unique_by=lambda m: m[0].lower()),
    st.integers(0, 5),
    odd_weight,
    st.randoms(use_true_random=False),
)
def test_accept_language_with_an_odd_weight_is_only_ever_itself(
    members: list[tuple[str, str | None]], at: int, weight: str, rnd: random.Random
) -> None:
    """RFC 9110 Section 12.4.2: a weight that is not a qvalue is no preference edge
    can rank, so such a value keeps its order: another order is another key, the
    same members in the same order (any case) the same key."""
    odd = [*written(members)]
    odd.insert(at % (len(odd) + 1), f"zz;q={weight}")
    key = policy.normalise_selecting("accept-language", [", ".join(odd)])
    assert key == policy.normalise_selecting("accept-language", as_sent(odd, 2, True))
    shuffled = list(odd)
    rnd.shuffle(shuffled)
    other = policy.normalise_selecting("accept-language", [", ".join(shuffled)])
    assert (other == key) == ([m.lower() for m in shuffled] == [m.lower() for m in odd])


@LIGHT
@given(st.text(alphabet=string.printable, max_size=40), st.lists(values, max_size=3))
def test_selecting_values_normalise_without_raising(name: str, field_values: list[str]) -> None:
    normalised = policy.normalise_selecting(name.lower(), field_values)
    assert (normalised is None) == (not field_values)
    if field_values:
        again = policy.normalise_selecting(name.lower(), list(field_values))
        assert again == normalised


@LIGHT
@given(st.lists(TOKEN, min_size=1, max_size=6), st.lists(OWS_TEXT, min_size=14, max_size=14))
def test_selecting_values_ignore_ows_and_line_splits(members: list[str], spaces: list[str]) -> None:
    """RFC 9111 Section 4.1: whitespace around list separators and field lines joined
    or split do not change a selecting field's value."""
    pad = iter(spaces)
    spaced = ",".join(f"{next(pad)}{m}{next(pad)}" for m in members)
    tight = policy.normalise_selecting("accept", [",".join(members)])
    assert policy.normalise_selecting("accept", [spaced]) == tight
    assert policy.normalise_selecting("accept", members) == tight


# ------------------------------------------------------------------------- ETags


entity_tag = st.tuples(st.booleans(), opaque).map(lambda t: ('W/"' if t[0] else '"') + t[1] + '"')


@SETTINGS
@given(values)
def test_etag_lists_never_raise(value: str) -> None:
    tags = policy.parse_etag_list(value)
    if tags is None:
        assert value.strip(" \t") == "*"
        return
    for tag in tags:
        assert re.fullmatch(r'(W/)?"[^"]*"', tag)
        assert policy.weak_etag_equal(tag, tag)


@LIGHT
@given(st.lists(entity_tag, max_size=10), st.lists(OWS_TEXT, min_size=20, max_size=20))
def test_etag_list_round_trip(tags: list[str], spaces: list[str]) -> None:
    """RFC 9110 Section 8.8.3: a list of entity-tags parses back to them."""
    pad = iter(spaces)
    text = ",".join(f"{next(pad)}{t}{next(pad)}" for t in tags)
    assert policy.parse_etag_list(text) == tags


@LIGHT
@given(entity_tag, entity_tag)
def test_etag_comparison(a: str, b: str) -> None:
    """RFC 9110 Section 8.8.3.2: weak comparison ignores W/; strong comparison needs
    both strong and equal; both are symmetric, and strong implies weak."""
    assert policy.weak_etag_equal(a, a)
    assert policy.weak_etag_equal(a, b) == policy.weak_etag_equal(b, a)
    assert policy.strong_etag_equal(a, b) == policy.strong_etag_equal(b, a)
    if policy.strong_etag_equal(a, b):
        assert policy.weak_etag_equal(a, b)
    assert policy.strong_etag_equal(a, a) == (not a.startswith("W/"))
    assert policy.weak_etag_equal(a, b) == (a.removeprefix("W/") == b.removeprefix("W/"))


# ----------------------------------------------------------------- preconditions


precondition_fields = st.dictionaries(
    st.sampled_from(["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"]),
    values,
    max_size=4,
)


@SETTINGS
@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]),
    precondition_fields,
    st.dictionaries(st.sampled_from(["ETag", "Last-Modified", "Date"]), values, max_size=3),
)
def test_preconditions_give_a_verdict(method: str, request: dict, stored: dict) -> None:
    verdict = policy.evaluate_preconditions(
        method, CIMultiDict(request), CIMultiDict(stored), 1_700_000_000.0
    )
    assert verdict in (None, 304, 412)
    if not request:
        assert verdict is None
    if verdict == 304:
        assert method in ("GET", "HEAD")


@LIGHT
@given(
    st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]),
    entity_tag,
    st.lists(entity_tag, max_size=4),
)
def test_preconditions_semantics(method: str, stored_tag: str, others: list[str]) -> None:
    """RFC 9110 Section 13.2.2: If-None-Match naming the stored tag (weak comparison) is
    304 for GET/HEAD and 412 otherwise; If-Match needs a strong match (else 412);
    `*` matches any stored representation."""
    stored = CIMultiDict({"ETag": stored_tag})
    ts = 1_700_000_000.0

    def verdict(**fields: str) -> int | None:
        request = CIMultiDict((k.replace("_", "-"), v) for k, v in fields.items())
        return policy.evaluate_preconditions(method, request, stored, ts)

    listed = ", ".join([*others, stored_tag.removeprefix("W/")])
    assert verdict(If_None_Match=listed) == (304 if method in ("GET", "HEAD") else 412)
    assert verdict(If_None_Match="*") == (304 if method in ("GET", "HEAD") else 412)
    unrelated = [t for t in others if not policy.weak_etag_equal(t, stored_tag)]
    if unrelated:
        assert verdict(If_None_Match=", ".join(unrelated)) is None
    strong = not stored_tag.startswith("W/")
    assert verdict(If_Match=stored_tag) == (None if strong else 412)
    assert verdict(If_Match="*") is None
    if unrelated:
        assert verdict(If_Match=", ".join(unrelated)) == 412


# --------------------------------------------------------------- Accept-Encoding


coding = st.sampled_from(["gzip", "br", "zstd", "identity", "*", "deflate", "x-gzip", "GZIP"])
accept_encoding = st.one_of(
    values,
    st.lists(
        st.tuples(
            coding,
            st.one_of(
                st.none(),
                st.floats(-2, 3),
                st.text(alphabet="0123456789.q=;", max_size=8),
                st.sampled_from(TRICKY).map(lambda c: "0.5" + c),
            ),
        ),
        max_size=6,
    ).map(lambda items: ", ".join(c if q is None else f"{c};q={q}" for c, q in items)),
)
AVAILABLE = ["br", "zstd", "gzip", "identity"]


@SETTINGS
@given(st.lists(accept_encoding, max_size=3), st.permutations(AVAILABLE))
@example(["gzip;q=0.5\xa0"], AVAILABLE)
def test_accept_encoding(lines: list[str], available: list[str]) -> None:
    """RFC 9110 Section 12.5.3: codings lower-cased tokens, weights qvalues in [0, 1];
    the coding chosen is one available and acceptable (q > 0)."""
    prefs = compress.parse_accept_encoding(lines)
    for name, q in prefs.items():
        assert lower_token(name)
        assert 0.0 <= q <= 1.0 and math.isfinite(q)
    chosen = compress.negotiate(lines, available)
    assert chosen is None or chosen in available
    if chosen in ("br", "zstd", "gzip") and lines:  # no field: see negotiate's rule 1
        assert prefs.get(chosen, prefs.get("*", 0.0)) > 0
    if chosen is None:
        assert lines and all(
            prefs.get(c, prefs.get("*", 0.0 if c != "identity" else 1.0)) == 0 for c in available
        )


@LIGHT
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["gzip", "br", "zstd", "identity", "*", "compress"]),
            st.sampled_from(["0", "0.5", "0.25", "0.001", "1", "1.000", "0.999", None]),
        ),
        unique_by=lambda pair: pair[0],
        max_size=6,
    ),
    st.lists(OWS_TEXT, min_size=30, max_size=30),
    st.booleans(),
)
def test_accept_encoding_round_trip(
    members: list[tuple[str, str | None]], spaces: list[str], upper: bool
) -> None:
    """Members built from codings and qvalues, in any case and with OWS, parse back to
    their weights; and a coding is never chosen when its weight is 0."""
    pad = iter(spaces)
    text = ",".join(
        f"{next(pad)}{c.upper() if upper else c}{'' if q is None else f'{next(pad)};q={q}'}"
        for c, q in members
    )
    expected = {c: 1.0 if q is None else float(q) for c, q in members}
    assert compress.parse_accept_encoding([text]) == expected
    chosen = compress.negotiate([text], AVAILABLE)

    def weight(c: str) -> float:
        if c in expected:
            return expected[c]
        if "*" in expected:
            return expected["*"]
        return 1.0 if c == "identity" else 0.0  # identity unless excluded (rule 2)

    if any(weight(c) > 0 for c in AVAILABLE):
        assert chosen is not None and weight(chosen) > 0
        assert weight(chosen) >= max(weight(c) for c in AVAILABLE if c != "identity")
    else:
        assert chosen is None


# ---------------------------------------------------------------- request targets


@LIGHT
@given(st.text(max_size=300))
@example("/a/%2e%2E/b")
@example("/%")
def test_targets_normalise_to_safe_paths(raw: str) -> None:
    target = guard.normalise_target("/" + raw)
    if isinstance(target, guard.Refusal):
        assert target.status == 400
        return
    decoded = target.path.replace("%2F", "/").replace("%5C", "\\")
    assert ".." not in decoded.split("/") and "\\" not in decoded and "\x00" not in decoded
    assert guard.normalise_target(target.path_qs) == target  # idempotent
