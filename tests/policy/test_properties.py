"""Property-based tests of the header parsers: for any text a client or an origin can
send, no exception escapes and the result is well-formed.

Cache-Control, delta-seconds, list splitting, dates, Age, Range and If-Range, Vary
and its secondary keys, ETags, preconditions, Accept-Encoding, and the guard's target
normaliser. Plain example tests live beside each parser's own tests.
"""

from __future__ import annotations

import itertools
import string
from datetime import UTC, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge import compress, guard, policy
from edge.ranges import MAX_RANGES, Unsatisfiable, if_range_allows, parse_range

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Field values as they arrive: any text, and text made of the parsers' own tokens.
TOKEN_CHARS = string.ascii_letters + string.digits + "-=,;\"' \t*/"
anything = st.text(max_size=200)
tokenish = st.text(alphabet=TOKEN_CHARS, max_size=120)
values = st.one_of(anything, tokenish)
digits = st.text(alphabet=string.digits, min_size=1, max_size=6000)


@SETTINGS
@given(st.lists(values, max_size=4))
def test_cache_control_never_raises_and_names_are_lower_case(lines: list[str]) -> None:
    cc = policy.parse_cache_control(lines)
    for name, arg in cc.directives.items():
        assert name == name.lower() and name
        assert arg is None or isinstance(arg, str)
        delta = cc.delta(name)
        assert delta is None or 0 <= delta <= policy.MAX_DELTA
        names = cc.field_names(name)
        assert names is None or all(n == n.lower() and n for n in names)
    assert cc.conflicts <= set(cc.directives)


DIRECTIVES = st.sampled_from(
    [
        "no-cache",
        "no-store",
        "public",
        "private",
        "must-revalidate",
        "proxy-revalidate",
        "no-transform",
        "immutable",
        "must-understand",
    ]
)
DELTAS = st.sampled_from(["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"])


@SETTINGS
@given(
    st.lists(DIRECTIVES, unique=True, max_size=5),
    st.dictionaries(DELTAS, st.integers(min_value=0, max_value=2**40), max_size=4),
    st.booleans(),
)
def test_cache_control_round_trip(flags: list[str], deltas: dict[str, int], upper: bool) -> None:
    members = flags + [f"{k}={v}" for k, v in deltas.items()]
    text = ", ".join(m.upper() if upper else m for m in members)
    cc = policy.parse_cache_control([text])
    assert set(cc.directives) == set(flags) | set(deltas)
    for name, value in deltas.items():
        assert cc.delta(name) == min(value, policy.MAX_DELTA)


@SETTINGS
@given(st.one_of(anything, digits))
@example("9" * 5000)
@example("-1")
@example("١٢٣")  # Arabic-Indic digits: isdigit() but not DIGIT
def test_delta_seconds(value: str) -> None:
    delta = policy.parse_delta_seconds(value)
    if delta is not None:
        assert value.isascii() and value.isdigit()
        assert 0 <= delta <= policy.MAX_DELTA


@SETTINGS
@given(st.lists(values, max_size=4))
def test_split_list_members_are_stripped_and_non_empty(lines: list[str]) -> None:
    for member in policy.split_list(lines):
        assert member and member == member.strip()


@SETTINGS
@given(anything)
def test_dates_never_raise(value: str) -> None:
    moment = policy.parse_http_date(value)
    assert moment is None or isinstance(moment, float)


@SETTINGS
@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31)))
def test_imf_fixdate_round_trip(moment: datetime) -> None:
    moment = moment.replace(microsecond=0, tzinfo=UTC)
    text = moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert policy.parse_http_date(text) == moment.timestamp()
    assert policy.parse_http_date(text.upper()) == moment.timestamp()


@SETTINGS
@given(st.lists(st.one_of(anything, digits), max_size=3))
def test_age_never_raises(lines: list[str]) -> None:
    headers = CIMultiDict(("Age", v) for v in lines)
    age = policy.parse_age(headers)
    assert age is None or 0 <= age <= policy.MAX_DELTA
    assert policy.has_invalid_age(headers) == (age is None)


range_text = st.one_of(
    anything,
    st.text(alphabet="bytes=0123456789-, ", max_size=200),
    st.lists(
        st.tuples(st.integers(0, 5000) | st.none(), st.integers(0, 5000) | st.none()),
        min_size=1,
        max_size=40,
    ).map(
        lambda rs: (
            "bytes="
            + ",".join(f"{a if a is not None else ''}-{b if b is not None else ''}" for a, b in rs)
        )
    ),
)


@SETTINGS
@given(range_text, st.integers(0, 4000))
@example("bytes=" + "9" * 5000 + "-", 100)
@example("bytes=0-" + "9" * 5000, 100)
@example("bytes=-" + "9" * 5000, 100)
def test_ranges_lie_inside_and_never_cost_more_than_the_object(value: str, length: int) -> None:
    try:
        ranges = parse_range(value, length)
    except Unsatisfiable:
        return
    if ranges is None:
        return
    assert 1 <= len(ranges) <= MAX_RANGES
    for r in ranges:
        assert 0 <= r.start <= r.end < length
    for a, b in itertools.pairwise(ranges):
        assert a.end + 1 < b.start  # sorted, disjoint and not adjacent (coalesced)
    assert sum(r.length for r in ranges) <= length


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(0, 999), st.integers(0, 999)), min_size=1, max_size=10),
)
def test_valid_ranges_parse_to_their_coalesced_union(pairs: list[tuple[int, int]]) -> None:
    pairs = [(min(a, b), max(a, b)) for a, b in pairs]
    text = "bytes=" + ",".join(f"{a}-{b}" for a, b in pairs)
    ranges = parse_range(text, 1000)
    if ranges is None:  # the whole 200 instead: allowed when parts would cost too much
        return
    covered = {i for r in ranges for i in range(r.start, r.end + 1)}
    assert covered == {i for a, b in pairs for i in range(a, b + 1)}


@SETTINGS
@given(anything, anything, anything)
def test_if_range_never_raises(if_range: str, etag: str, last_modified: str) -> None:
    request = CIMultiDict({"If-Range": if_range, "Range": "bytes=0-1"})
    stored = CIMultiDict({"ETag": etag, "Last-Modified": last_modified})
    assert if_range_allows(request, stored) in (True, False)


@SETTINGS
@given(st.lists(values, max_size=3), st.dictionaries(tokenish, values, max_size=5))
def test_vary_keys_are_deterministic_and_order_insensitive(
    vary_lines: list[str], request: dict[str, str]
) -> None:
    headers = CIMultiDict(request)
    names = policy.vary_field_names(CIMultiDict(("Vary", v) for v in vary_lines))
    assert all(n == n.lower() for n in names)
    key = policy.vary_key(names, headers)
    assert key == policy.vary_key(list(reversed(names)), headers)
    assert [n for n, _ in key] == sorted(set(names))
    if "*" not in names:
        assert policy.vary_matches(key, headers)


@SETTINGS
@given(st.text(alphabet=string.printable, max_size=40), st.lists(values, max_size=3))
def test_selecting_values_normalise_without_raising(name: str, field_values: list[str]) -> None:
    normalised = policy.normalise_selecting(name, field_values)
    assert normalised is None or isinstance(normalised, str)


@SETTINGS
@given(values)
def test_etag_lists(value: str) -> None:
    tags = policy.parse_etag_list(value)
    if tags is not None:
        for tag in tags:
            assert policy.weak_etag_equal(tag, tag)


@SETTINGS
@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT"]),
    st.dictionaries(
        st.sampled_from(["If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"]),
        values,
        max_size=4,
    ),
    st.dictionaries(st.sampled_from(["ETag", "Last-Modified"]), values, max_size=2),
)
def test_preconditions_give_a_verdict(method: str, request: dict, stored: dict) -> None:
    verdict = policy.evaluate_preconditions(
        method, CIMultiDict(request), CIMultiDict(stored), 1_700_000_000.0
    )
    assert verdict in (None, 200, 304, 412)


accept_encoding = st.one_of(
    anything,
    st.lists(
        st.tuples(
            st.sampled_from(["gzip", "br", "zstd", "identity", "*", "deflate", "x-gzip", "GZIP"]),
            st.one_of(st.none(), st.floats(-2, 3), st.text(alphabet="0123456789.q=;", max_size=8)),
        ),
        max_size=6,
    ).map(lambda items: ", ".join(c if q is None else f"{c};q={q}" for c, q in items)),
)


@SETTINGS
@given(st.lists(accept_encoding, max_size=3))
def test_accept_encoding(lines: list[str]) -> None:
    prefs = compress.parse_accept_encoding(lines)
    for coding, q in prefs.items():
        assert coding == coding.lower()
        assert 0.0 <= q <= 1.0
    chosen = compress.negotiate(lines, ["br", "zstd", "gzip"])
    assert chosen is None or chosen in ("br", "zstd", "gzip", "identity")
    if chosen in ("br", "zstd", "gzip") and lines:  # no field: see negotiate's rule 1
        q = prefs.get(chosen, prefs.get("*", 0.0))
        assert q > 0


@SETTINGS
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
