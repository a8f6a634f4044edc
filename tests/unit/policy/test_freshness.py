"""Freshness lifetime: RFC 9111 Section 4.2.1 (explicit), 4.2.2 (heuristic), 5.3
(Expires), RFC 9110 Section 5.6.7 (HTTP-date), and RFC 9213 Section 2.1 (targeted
fields replace Cache-Control and Expires).
"""

from __future__ import annotations

from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import (
    MAX_DELTA,
    freshness_lifetime,
    heuristic_lifetime,
    parse_cache_control,
    parse_http_date,
    response_policy,
)

NOW = 1_700_000_000.0


def date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def lifetime(
    response: list[tuple[str, str]],
    *,
    status: int = 200,
    response_time: float = NOW,
    **kwargs: float,
) -> tuple[float, bool]:
    headers = CIMultiDict(response)
    return freshness_lifetime(status, headers, response_policy(headers), response_time, **kwargs)


# -------------------------------------------------------------------- HTTP-date


@pytest.mark.parametrize(
    "value",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"],
    ids=["IMF-fixdate", "rfc850", "asctime"],
)
def test_parse_http_date_three_forms(value: str) -> None:
    """RFC 9110 Section 5.6.7: recipients accept all three formats."""
    assert parse_http_date(value) == 784111777.0


@pytest.mark.parametrize("value", [None, "", "0", "-1", "yesterday", "Sun, 99 Foo 1994"])
def test_parse_http_date_invalid(value: str | None) -> None:
    """An invalid HTTP-date is None."""
    assert parse_http_date(value) is None


def test_parse_http_date_round_trips_formatdate() -> None:
    assert parse_http_date(date(NOW)) == NOW
    assert parse_http_date("  " + date(NOW) + " ") == NOW


# ------------------------------------------------------------- explicit (4.2.1)


def test_max_age() -> None:
    """Section 4.2.1: max-age gives the lifetime."""
    assert lifetime([("Cache-Control", "max-age=60")]) == (60.0, False)


def test_max_age_zero() -> None:
    assert lifetime([("Cache-Control", "max-age=0")]) == (0.0, False)


def test_s_maxage_over_max_age_in_a_shared_cache() -> None:
    """Section 4.2.1: a shared cache uses s-maxage first."""
    assert lifetime([("Cache-Control", "max-age=60, s-maxage=600")]) == (600.0, False)
    assert lifetime([("Cache-Control", "s-maxage=5, max-age=600")]) == (5.0, False)


def test_max_age_over_expires() -> None:
    """Section 5.3: with max-age present, Expires is ignored (even an invalid one)."""
    response = [
        ("Cache-Control", "max-age=60"),
        ("Date", date(NOW)),
        ("Expires", date(NOW + 3600)),
    ]
    assert lifetime(response) == (60.0, False)
    assert lifetime([("Cache-Control", "max-age=60"), ("Expires", "0")]) == (60.0, False)


def test_s_maxage_over_expires() -> None:
    response = [("Cache-Control", "s-maxage=7"), ("Expires", date(NOW + 3600))]
    assert lifetime(response) == (7.0, False)


def test_max_age_saturates_at_two_to_the_31() -> None:
    """Section 1.2.2: a delta-seconds past 2^31 is 2^31."""
    assert lifetime([("Cache-Control", "max-age=99999999999")]) == (float(MAX_DELTA), False)


def test_expires_minus_date() -> None:
    """Section 4.2.1: Expires minus Date."""
    response = [("Date", date(NOW - 100)), ("Expires", date(NOW + 500))]
    assert lifetime(response) == (600.0, False)


def test_expires_minus_response_time_without_date() -> None:
    """Section 4.2.1: without Date, the time the response was received is used."""
    assert lifetime([("Expires", date(NOW + 500))], response_time=NOW) == (500.0, False)


def test_expires_minus_response_time_with_invalid_date() -> None:
    """An invalid Date counts as absent."""
    response = [("Date", "not a date"), ("Expires", date(NOW + 500))]
    assert lifetime(response, response_time=NOW + 100) == (400.0, False)


def test_expires_before_date_is_zero() -> None:
    """An Expires earlier than Date means already stale."""
    response = [("Date", date(NOW)), ("Expires", date(NOW - 3600))]
    assert lifetime(response) == (0.0, False)


def test_expires_and_date_at_the_epoch_are_valid_dates() -> None:
    """RFC 9110 Section 5.6.7: 1 Jan 1970 is a valid HTTP-date, not a missing one."""
    response = [("Date", date(0)), ("Expires", date(100))]
    assert lifetime(response, response_time=NOW) == (100.0, False)


@pytest.mark.parametrize("value", ["0", "-1", "", "tomorrow", "Thu, 32 Jan 2099 00:00:00 GMT"])
def test_invalid_expires_is_stale(value: str) -> None:
    """Section 5.3: an invalid Expires (e.g. "0") represents a time in the past, and
    no heuristic applies (Section 4.2.2)."""
    response = [("Expires", value), ("Last-Modified", date(NOW - 100_000)), ("Date", date(NOW))]
    assert lifetime(response) == (0.0, False)


def test_multiple_expires_lines_are_stale() -> None:
    """Section 4.2.1: several Expires lines may be treated as stale (this cache does)."""
    response = [("Date", date(NOW)), ("Expires", date(NOW + 60)), ("Expires", date(NOW + 60))]
    assert lifetime(response) == (0.0, False)


@pytest.mark.parametrize(
    "value",
    [
        "max-age=60, max-age=120",
        "max-age=abc",
        "max-age=-5",
        "max-age=1.5",
        "max-age",
        "max-age='60'",
    ],
    ids=["conflict", "non-numeric", "negative", "float", "no-argument", "single-quoted"],
)
def test_invalid_or_conflicting_max_age_is_stale(value: str) -> None:
    """Section 4.2.1: conflicting duplicates and invalid freshness information make the
    response stale; Expires and the heuristic are then not used."""
    response = [
        ("Cache-Control", value),
        ("Date", date(NOW)),
        ("Expires", date(NOW + 3600)),
        ("Last-Modified", date(NOW - 100_000)),
    ]
    assert lifetime(response) == (0.0, False)


def test_conflicting_max_age_on_two_lines_is_stale() -> None:
    """The conflict is the same across field lines."""
    response = [("Cache-Control", "max-age=60"), ("Cache-Control", "max-age=120")]
    assert lifetime(response) == (0.0, False)


def test_duplicate_equal_max_age_is_fine() -> None:
    response = [("Cache-Control", "max-age=60"), ("Cache-Control", "max-age=60")]
    assert lifetime(response) == (60.0, False)


def test_invalid_s_maxage_is_stale_even_with_valid_max_age() -> None:
    """Section 4.2.1: s-maxage is consulted first; invalid means stale."""
    assert lifetime([("Cache-Control", "s-maxage=x, max-age=60")]) == (0.0, False)


# ----------------------------------------------------------- targeted (RFC 9213)


def test_targeted_max_age_replaces_cache_control() -> None:
    """RFC 9213 Section 2.1: the targeted field's max-age wins over Cache-Control."""
    response = [("Cache-Control", "max-age=60, s-maxage=90"), ("CDN-Cache-Control", "max-age=600")]
    assert lifetime(response) == (600.0, False)


def test_targeted_field_ignores_expires() -> None:
    """RFC 9213 Section 2.1: Expires is ignored too, and the heuristic applies."""
    response = [
        ("CDN-Cache-Control", "public"),
        ("Date", date(NOW)),
        ("Expires", date(NOW + 3600)),
        ("Last-Modified", date(NOW - 1000)),
    ]
    assert lifetime(response) == (100.0, True)


def test_targeted_field_ignores_invalid_expires() -> None:
    """An invalid Expires does not make a targeted response stale."""
    response = [("CDN-Cache-Control", "max-age=30"), ("Expires", "0")]
    assert lifetime(response) == (30.0, False)


def test_targeted_without_freshness_falls_to_heuristic_not_cache_control() -> None:
    """RFC 9213 Section 2.1: Cache-Control's max-age is not consulted."""
    response = [("Cache-Control", "max-age=600"), ("CDN-Cache-Control", "must-revalidate")]
    assert lifetime(response) == (0.0, False)


def test_targeted_parameters_are_ignored() -> None:
    """RFC 9213 Section 2: `max-age=60;x=1` is max-age=60."""
    response = [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=60;x=1")]
    assert lifetime(response) == (60.0, False)


# ------------------------------------------------------------ heuristic (4.2.2)


def test_heuristic_is_ten_percent_of_date_minus_last_modified() -> None:
    """Section 4.2.2: typically 10% of the time since Last-Modified."""
    response = [("Date", date(NOW)), ("Last-Modified", date(NOW - 36_000))]
    assert lifetime(response) == (3600.0, True)


def test_heuristic_uses_response_time_without_date() -> None:
    response = [("Last-Modified", date(NOW - 1000))]
    assert lifetime(response, response_time=NOW) == (100.0, True)


def test_heuristic_is_capped() -> None:
    """The heuristic is capped (one day by default, configurable)."""
    response = [("Date", date(NOW)), ("Last-Modified", date(NOW - 10_000_000))]
    assert lifetime(response) == (86400.0, True)
    assert lifetime(response, heuristic_max=600.0) == (600.0, True)


def test_heuristic_fraction_is_configurable() -> None:
    response = [("Date", date(NOW)), ("Last-Modified", date(NOW - 1000))]
    assert lifetime(response, heuristic_fraction=0.5) == (500.0, True)


def test_heuristic_last_modified_after_date_is_zero() -> None:
    response = [("Date", date(NOW)), ("Last-Modified", date(NOW + 1000))]
    assert lifetime(response) == (0.0, True)


@pytest.mark.parametrize(
    "response",
    [[("Date", date(NOW))], [("Date", date(NOW)), ("Last-Modified", "yesterday")]],
    ids=["no-last-modified", "invalid-last-modified"],
)
def test_no_heuristic_without_last_modified(response: list[tuple[str, str]]) -> None:
    assert lifetime(response) == (0.0, False)


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
def test_heuristic_for_heuristically_cacheable_status(status: int) -> None:
    """Section 4.2.2: heuristics apply to heuristically cacheable status codes."""
    response = [("Date", date(NOW)), ("Last-Modified", date(NOW - 1000))]
    assert lifetime(response, status=status) == (100.0, True)


@pytest.mark.parametrize("status", [201, 302, 303, 307, 403, 500, 503])
def test_no_heuristic_for_other_status(status: int) -> None:
    """Section 4.2.2: ... or responses marked public; otherwise no heuristic."""
    response = [("Date", date(NOW)), ("Last-Modified", date(NOW - 1000))]
    assert lifetime(response, status=status) == (0.0, False)
    assert lifetime([*response, ("Cache-Control", "public")], status=status) == (100.0, True)


def test_heuristic_lifetime_directly() -> None:
    """heuristic_lifetime takes the effective directives."""
    headers = CIMultiDict([("Date", date(NOW)), ("Last-Modified", date(NOW - 50))])
    cc = parse_cache_control(["public"])
    assert heuristic_lifetime(302, headers, cc, NOW) == (5.0, True)
    assert heuristic_lifetime(302, headers, parse_cache_control([]), NOW) == (0.0, False)
    assert heuristic_lifetime(200, headers, cc, NOW, 0.2, 4.0) == (4.0, True)


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Sun,  06 Nov 1994 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:49:37 GMT",
    ],
)
def test_parse_http_date_rejects_other_forms(value: str) -> None:
    """RFC 9110 Section 5.6.7: only the three grammars; other zones, a two-digit year in
    IMF-fixdate, a missing comma, extra or missing padding and impossible dates are
    invalid."""
    assert parse_http_date(value) is None


def test_parse_http_date_names_are_case_insensitive() -> None:
    """RFC 9110 Section 5.6.7: day, month and GMT names are case-sensitive in the
    grammar, but this parser accepts any case (a documented leniency)."""
    assert parse_http_date("SUN, 06 NOV 1994 08:49:37 gmt") == 784111777.0


@pytest.mark.parametrize(
    "value",
    [
        "Sun, \u0660\u0666 Nov 1994 08:49:37 GMT",  # ARABIC-INDIC digits for "06"
        "Sun, 06 Nov \uff11\uff19\uff19\uff14 08:49:37 GMT",  # FULLWIDTH digits
        "\u017fun, 06 Nov 1994 08:49:37 GMT",  # LONG S matches "s" case-insensitively
        "Sun, 06 Nov 1994 08:49:37 GM\u0422",  # CYRILLIC TE
        "Sun, 06 Nov 1994 08:49:37 GMT\x1c",  # str.strip() takes this separator
        "\xa0Sun, 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT\x0b",
    ],
)
def test_parse_http_date_is_ascii_only(value: str) -> None:
    """RFC 9110 Section 5.6.7: DIGIT and the names are ASCII (RFC 5234 Appendix B.1),
    and only OWS (SP, HTAB) may surround the field value (Section 5.5)."""
    assert parse_http_date(value) is None


def test_parse_http_date_leap_second() -> None:
    """RFC 5322 Section 3.3 (which IMF-fixdate follows) allows second 60: it is read
    as the first second of the next minute."""
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == parse_http_date(
        "Sun, 01 Jan 2017 00:00:00 GMT"
    )
    assert parse_http_date("Sat, 31 Dec 2016 23:59:61 GMT") is None


@pytest.mark.parametrize(
    ("value", "year"),
    [("Sunday, 06-Nov-94 08:49:37 GMT", 1994), ("Monday, 06-Nov-23 08:49:37 GMT", 2023)],
)
def test_rfc850_two_digit_year_relative_to_now(value: str, year: int) -> None:
    """RFC 9110 Section 5.6.7: a two-digit year more than 50 years in the future is the
    most recent past year with those digits."""
    parsed = parse_http_date(value, now=NOW)
    assert parsed is not None
    assert formatdate(parsed, usegmt=True).split()[3] == str(year)


def test_rfc850_year_just_within_fifty_years_is_future() -> None:
    """NOW is in 2023: '73' is 2073 (50 years ahead), '74' is 1974."""
    assert parse_http_date("Friday, 06-Jan-73 00:00:00 GMT", now=NOW) == 3250886400.0
    assert parse_http_date("Sunday, 06-Jan-74 00:00:00 GMT", now=NOW) == 126662400.0


def test_a_date_read_again_reads_the_same_and_no_such_day_stays_invalid() -> None:
    """parse_http_date remembers IMF-fixdate values (an origin repeats its Date within
    a second): the second reading is the first's, whatever `now` is, and a date of no
    such day (31 February) is invalid each time it is read."""
    value = "Tue, 08 Dec 2026 01:02:03 GMT"
    first = parse_http_date(value)
    assert first == parse_http_date(value) == parse_http_date(value, now=0.0)
    assert first == 1796691723.0
    assert parse_http_date("Sat, 31 Feb 2026 00:00:00 GMT") is None
    assert parse_http_date("Sat, 31 Feb 2026 00:00:00 GMT") is None
