"""Age: RFC 9111 Section 5.1 (the field) and Section 4.2.3 (calculating current age).

apparent_age = max(0, response_time - date_value)
response_delay = response_time - request_time
corrected_age_value = age_value + response_delay
corrected_initial_age = max(apparent_age, corrected_age_value)
resident_time = now - response_time
current_age = corrected_initial_age + resident_time
"""

from __future__ import annotations

from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import MAX_DELTA, current_age, has_invalid_age, parse_age

NOW = 1_700_000_000.0


def date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


# ---------------------------------------------------------------- parse_age (5.1)


def test_absent_age_is_zero() -> None:
    assert parse_age(headers()) == 0
    assert has_invalid_age(headers()) is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("60", 60),
        ("0060", 60),
        (" 60 ", 60),
        ("2147483647", 2147483647),
        ("2147483648", MAX_DELTA),
        ("2147483649", MAX_DELTA),
    ],
)
def test_valid_age(value: str, expected: int) -> None:
    """Section 5.1: Age = delta-seconds (Section 1.2.2: saturating at 2^31)."""
    assert parse_age(headers(("Age", value))) == expected
    assert has_invalid_age(headers(("Age", value))) is False


@pytest.mark.parametrize(
    "value",
    [
        *("abc", "-1", "-7200", "1.5", "7200.0", "", "5;foo=bar", "5 s", "+5", "\u0665", '"5"'),
        # Not OWS (RFC 9110 Section 5.6.3), though str.strip() would remove them.
        *("5\xa0", "\x1c5", "5\x0b", "5\u2028"),
    ],
)
def test_invalid_age_value(value: str) -> None:
    """Section 5.1: anything other than a non-negative integer is invalid."""
    assert parse_age(headers(("Age", value))) is None
    assert has_invalid_age(headers(("Age", value))) is True


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["1, 2"], 1),
        (["0, 7200"], 0),
        (["7200, 0"], 7200),
        (["7200", "0"], 7200),
        (["0", "7200"], 0),
        (["5", "5"], 5),
        (["5, abc"], 5),
    ],
    ids=[
        "one-line",
        "prefix",
        "suffix",
        "two-lines-old-first",
        "two-lines-young-first",
        "two-equal-lines",
        "invalid-second-member",
    ],
)
def test_list_based_age_uses_first_member(lines: list[str], expected: int) -> None:
    """Section 5.1: "a cache encountering a message with a list-based Age field value
    SHOULD use the first member of the field value, discarding subsequent ones"."""
    assert parse_age(headers(*(("Age", line) for line in lines))) == expected


@pytest.mark.parametrize("lines", [["abc, 5"], ["-1", "5"], [", ,"]])
def test_list_based_age_with_invalid_first_member(lines: list[str]) -> None:
    """Section 5.1: validity is judged after discarding the other members."""
    assert parse_age(headers(*(("Age", line) for line in lines))) is None


# ------------------------------------------------------------ current_age (4.2.3)


def test_current_age_of_a_first_hand_response() -> None:
    """No Age, Date equal to response_time, no delay: the age is the resident time."""
    h = headers(("Date", date(NOW)))
    assert current_age(h, request_time=NOW, response_time=NOW, now=NOW) == 0.0
    assert current_age(h, request_time=NOW, response_time=NOW, now=NOW + 30) == 30.0


def test_current_age_adds_age_and_response_delay() -> None:
    """corrected_age_value = age_value + response_delay; then + resident_time."""
    h = headers(("Date", date(NOW)), ("Age", "100"))
    # delay 2, age 100 -> corrected 102; apparent 0; resident 10
    assert current_age(h, request_time=NOW - 2, response_time=NOW, now=NOW + 10) == 112.0


def test_current_age_uses_apparent_age_when_larger() -> None:
    """corrected_initial_age = max(apparent_age, corrected_age_value)."""
    h = headers(("Date", date(NOW - 500)), ("Age", "100"))
    # apparent 500 > corrected 101; resident 20
    assert current_age(h, request_time=NOW - 1, response_time=NOW, now=NOW + 20) == 520.0


def test_current_age_uses_corrected_age_when_larger() -> None:
    h = headers(("Date", date(NOW - 50)), ("Age", "100"))
    # apparent 50 < corrected 103; resident 0
    assert current_age(h, request_time=NOW - 3, response_time=NOW, now=NOW) == 103.0


def test_date_in_the_future_gives_no_negative_apparent_age() -> None:
    """apparent_age = max(0, response_time - date_value)."""
    h = headers(("Date", date(NOW + 3600)))
    assert current_age(h, request_time=NOW, response_time=NOW, now=NOW + 5) == 5.0


@pytest.mark.parametrize("date_value", [None, "garbage"], ids=["missing", "invalid"])
def test_missing_or_invalid_date_uses_response_time(date_value: str | None) -> None:
    """RFC 9110 Section 6.6.1: without a (valid) Date, the receipt time stands in."""
    h = headers(("Age", "7")) if date_value is None else headers(("Age", "7"), ("Date", date_value))
    assert current_age(h, request_time=NOW, response_time=NOW, now=NOW + 1) == 8.0


def test_date_at_the_epoch_is_a_date() -> None:
    """A valid Date of 1 Jan 1970 is used as such (apparent age = response_time)."""
    h = headers(("Date", date(0)))
    assert current_age(h, request_time=NOW, response_time=NOW, now=NOW) == NOW


def test_request_time_after_response_time_gives_no_negative_delay() -> None:
    h = headers(("Age", "10"))
    assert current_age(h, request_time=NOW + 5, response_time=NOW, now=NOW) == 10.0


def test_now_before_response_time_gives_no_negative_resident_time() -> None:
    h = headers(("Age", "10"))
    assert current_age(h, request_time=NOW, response_time=NOW, now=NOW - 5) == 10.0


def test_fractional_times() -> None:
    """Times are floats; the arithmetic is exact for these binary fractions."""
    h = headers(("Age", "1"))
    assert current_age(h, request_time=NOW - 0.25, response_time=NOW, now=NOW + 0.5) == 1.75


def test_saturated_age() -> None:
    h = headers(("Age", "99999999999"))
    assert current_age(h, request_time=NOW, response_time=NOW, now=NOW) == float(MAX_DELTA)


@pytest.mark.parametrize("value", ["abc", "-7200", "7200.0", "abc, 0"])
def test_invalid_age_makes_the_response_stale_when_configured(value: str) -> None:
    """With invalid_age_is_stale on, a response whose Age cannot be read is stale: the
    age is MAX_DELTA (2^31)."""
    h = headers(("Date", date(NOW)), ("Age", value))
    age = current_age(
        h, request_time=NOW, response_time=NOW, now=NOW + 10, invalid_age_is_stale=True
    )
    assert age == float(MAX_DELTA)


@pytest.mark.parametrize("value", ["abc", "-7200", "7200.0", "abc, 0"])
def test_invalid_age_is_ignored_by_default(value: str) -> None:
    """Section 5.1: "If the field value ... is invalid ..., a cache SHOULD ignore the
    field" -- the age is computed as if Age were absent."""
    h = headers(("Date", date(NOW - 4)), ("Age", value))
    assert current_age(h, request_time=NOW, response_time=NOW, now=NOW + 10) == 14.0


def test_valid_age_is_unaffected_by_the_invalid_age_option() -> None:
    h = headers(("Age", "30"))
    for flag in (True, False):
        assert current_age(h, NOW, NOW, NOW + 1, invalid_age_is_stale=flag) == 31.0
