"""Reusing a stored response: RFC 9111 Section 4 (constructing responses from caches),
4.2.4 (serving stale), 5.2.1 (request directives), 5.2.2 (response directives),
5.4 (Pragma), and RFC 5861 (stale-while-revalidate, stale-if-error).
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import (
    CacheControl,
    Reuse,
    evaluate_reuse,
    may_serve_stale_on_error,
    parse_cache_control,
    request_cache_control,
    response_policy,
    stale_forbidden,
)


def reuse(
    age: float,
    lifetime: float,
    request: str | None = None,
    response: str | None = None,
    *,
    targeted: str | None = None,
) -> Reuse:
    req = CIMultiDict([("Cache-Control", request)] if request is not None else [])
    resp: CIMultiDict[str] = CIMultiDict()
    if response is not None:
        resp.add("Cache-Control", response)
    if targeted is not None:
        resp.add("CDN-Cache-Control", targeted)
    return evaluate_reuse(age, lifetime, request_cache_control(req), response_policy(resp))


def kind(
    age: float,
    lifetime: float,
    request: str | None = None,
    response: str | None = None,
    *,
    targeted: str | None = None,
) -> str:
    return reuse(age, lifetime, request, response, targeted=targeted).kind


# --------------------------------------------------------------------- fresh / stale


def test_fresh_response_is_served() -> None:
    """Section 4.2: fresh when freshness_lifetime > current_age."""
    assert reuse(10, 60) == Reuse("fresh", 10, 60, "fresh")


def test_age_equal_to_lifetime_is_stale() -> None:
    """Section 4.2: response_is_fresh = (freshness_lifetime > current_age)."""
    assert reuse(60, 60) == Reuse("revalidate", 60, 60, "stale")
    assert kind(59.999, 60) == "fresh"


def test_zero_lifetime_is_stale_at_age_zero() -> None:
    assert kind(0, 0) == "revalidate"


def test_ttl_is_lifetime_minus_age() -> None:
    assert reuse(10, 60).ttl == 50
    assert reuse(70, 60).ttl == -10


# ----------------------------------------------------------------------- no-cache


@pytest.mark.parametrize("value", ["no-cache", "no-cache, max-age=600", "NO-CACHE"])
def test_response_no_cache_always_revalidates(value: str) -> None:
    """Section 5.2.2.4: no-cache: must not be used without successful validation."""
    assert reuse(0, 600, response=value) == Reuse("revalidate", 0, 600, "response no-cache")


def test_qualified_no_cache_allows_reuse() -> None:
    """Section 5.2.2.4: with field names, the response may be reused (the named fields
    must not be sent without revalidation, which is the caller's job)."""
    assert kind(0, 600, response='no-cache="Set-Cookie", max-age=600') == "fresh"


def test_request_no_cache_revalidates() -> None:
    """Section 5.2.1.4: the client asks for validation of a stored response."""
    assert reuse(0, 600, request="no-cache") == Reuse("revalidate", 0, 600, "request no-cache")


def test_pragma_no_cache_without_cache_control_is_no_cache() -> None:
    """Section 5.4: Pragma: no-cache is no-cache when there is no request Cache-Control."""
    cc = request_cache_control(CIMultiDict([("Pragma", "no-cache")]))
    assert cc == CacheControl({"no-cache": None})
    rp = response_policy(CIMultiDict([("Cache-Control", "max-age=600")]))
    assert evaluate_reuse(0, 600, cc, rp).kind == "revalidate"


@pytest.mark.parametrize("pragma", ["No-Cache", "foo, no-cache", "x=1,no-cache"])
def test_pragma_no_cache_member_case_insensitive(pragma: str) -> None:
    """Pragma is a list; the no-cache member is matched case-insensitively."""
    assert "no-cache" in request_cache_control(CIMultiDict([("Pragma", pragma)]))


def test_pragma_is_ignored_when_cache_control_is_present() -> None:
    """Section 5.4: when Cache-Control is present, Pragma is ignored."""
    headers = CIMultiDict([("Pragma", "no-cache"), ("Cache-Control", "max-age=60")])
    cc = request_cache_control(headers)
    assert "no-cache" not in cc
    assert cc.delta("max-age") == 60


@pytest.mark.parametrize("pragma", ["foo", "no-cache=1", ""])
def test_other_pragma_is_not_no_cache(pragma: str) -> None:
    assert request_cache_control(CIMultiDict([("Pragma", pragma)])) == CacheControl()


# -------------------------------------------------------------- request max-age


def test_request_max_age_older_revalidates() -> None:
    """Section 5.2.1.1: the client is unwilling to accept a response older than this."""
    assert reuse(31, 600, request="max-age=30") == Reuse(
        "revalidate", 31, 600, "older than request max-age"
    )


def test_request_max_age_equal_is_acceptable() -> None:
    """Section 5.2.1.1: age less than or equal to the value is acceptable."""
    assert kind(30, 600, request="max-age=30") == "fresh"


def test_request_max_age_zero_with_age_zero_is_fresh() -> None:
    assert kind(0, 600, request="max-age=0") == "fresh"
    assert kind(1, 600, request="max-age=0") == "revalidate"


@pytest.mark.parametrize("value", ["max-age=abc", "max-age=-1", "max-age='5'"])
def test_invalid_request_max_age_is_ignored(value: str) -> None:
    assert kind(100, 600, request=value) == "fresh"


def test_quoted_request_max_age_is_honoured() -> None:
    """Section 5.2: the quoted form is accepted from recipients' side too."""
    assert kind(100, 600, request='max-age="5"') == "revalidate"


def test_request_max_age_limits_max_stale() -> None:
    """Section 5.2.1.1 with 5.2.1.2: max-age still bounds the age when stale is allowed."""
    assert kind(70, 60, request="max-age=65, max-stale") == "revalidate"
    assert kind(65, 60, request="max-age=65, max-stale") == "stale-ok"


# ------------------------------------------------------------------- min-fresh


def test_min_fresh_not_enough_remaining() -> None:
    """Section 5.2.1.3: the response must stay fresh for at least this long."""
    assert reuse(50, 60, request="min-fresh=20") == Reuse(
        "revalidate", 50, 60, "less fresh than request min-fresh"
    )


def test_min_fresh_exactly_enough() -> None:
    """lifetime - age == min-fresh is acceptable."""
    assert kind(40, 60, request="min-fresh=20") == "fresh"


def test_min_fresh_zero() -> None:
    assert kind(59, 60, request="min-fresh=0") == "fresh"


# ------------------------------------------------------------------- max-stale


def test_max_stale_without_value_accepts_any_staleness() -> None:
    """Section 5.2.1.2: without a value, any stale response is acceptable."""
    assert reuse(10_000, 60, request="max-stale") == Reuse(
        "stale-ok", 10_000, 60, "within request max-stale"
    )


@pytest.mark.parametrize(
    ("age", "expected"), [(89, "stale-ok"), (90, "stale-ok"), (91, "revalidate")]
)
def test_max_stale_with_value(age: float, expected: str) -> None:
    """Section 5.2.1.2: stale by no more than the value (inclusive)."""
    assert kind(age, 60, request="max-stale=30") == expected


@pytest.mark.parametrize("value", ["max-stale=abc", "max-stale=-1", "max-stale=1.5"])
def test_invalid_max_stale_value_allows_nothing(value: str) -> None:
    assert kind(61, 60, request=value) == "revalidate"


def test_max_stale_on_a_fresh_response_is_just_fresh() -> None:
    assert kind(10, 60, request="max-stale=30") == "fresh"


@pytest.mark.parametrize(
    "response",
    [
        "max-age=60, must-revalidate",
        "max-age=60, proxy-revalidate",
        "s-maxage=60",
        "max-age=60, Must-Revalidate",
    ],
)
def test_revalidation_directives_forbid_stale_even_with_max_stale(response: str) -> None:
    """Section 5.2.2.2 / 5.2.2.8 / 5.2.2.10: a shared cache must not serve these stale,
    whatever the client allows."""
    assert reuse(61, 60, request="max-stale", response=response) == Reuse(
        "revalidate", 61, 60, "stale and must revalidate"
    )


def test_must_revalidate_does_not_affect_fresh() -> None:
    assert kind(59, 60, response="max-age=60, must-revalidate") == "fresh"


# ---------------------------------------------------- stale-while-revalidate (5861)


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (59, "fresh"),
        (60, "stale-while-revalidate"),
        (90, "stale-while-revalidate"),
        (91, "revalidate"),
    ],
)
def test_stale_while_revalidate_window(age: float, expected: str) -> None:
    """RFC 5861 Section 3: stale for up to the value, served while refreshing."""
    assert kind(age, 60, response="max-age=60, stale-while-revalidate=30") == expected


def test_stale_while_revalidate_zero() -> None:
    assert kind(60, 60, response="max-age=60, stale-while-revalidate=0") == "stale-while-revalidate"
    assert kind(60.5, 60, response="max-age=60, stale-while-revalidate=0") == "revalidate"


@pytest.mark.parametrize(
    "extra", ["must-revalidate", "proxy-revalidate", "s-maxage=60", "no-cache"]
)
def test_stale_while_revalidate_yields_to_revalidation_directives(extra: str) -> None:
    """Section 4.2.4: must-revalidate and friends forbid serving stale at all."""
    assert kind(61, 60, response=f"max-age=60, stale-while-revalidate=30, {extra}") == "revalidate"


@pytest.mark.parametrize("value", ["stale-while-revalidate=abc", "stale-while-revalidate"])
def test_invalid_stale_while_revalidate_is_ignored(value: str) -> None:
    assert kind(61, 60, response=f"max-age=60, {value}") == "revalidate"


def test_request_max_stale_preferred_over_stale_while_revalidate() -> None:
    """The client's permission answers without a background refresh."""
    assert kind(61, 60, request="max-stale=5", response="stale-while-revalidate=30") == "stale-ok"
    assert kind(70, 60, request="max-stale=5", response="stale-while-revalidate=30") == (
        "stale-while-revalidate"
    )


def test_stale_while_revalidate_from_targeted_field() -> None:
    """RFC 9213 Section 2.1: the targeted field's directives decide."""
    assert kind(61, 60, response="stale-while-revalidate=30", targeted="max-age=60") == "revalidate"
    assert kind(61, 60, response="must-revalidate", targeted="stale-while-revalidate=30") == (
        "stale-while-revalidate"
    )


# ------------------------------------------------------------------ stale_forbidden


@pytest.mark.parametrize(
    ("response", "forbidden"),
    [
        ("max-age=60", False),
        ("must-revalidate", True),
        ("proxy-revalidate", True),
        ("s-maxage=0", True),
        ("no-cache", True),
        ('no-cache="Set-Cookie"', True),
        ("public, stale-if-error=60", False),
    ],
)
def test_stale_forbidden(response: str, forbidden: bool) -> None:
    """Section 4.2.4, with 5.2.2.10 (s-maxage implies proxy-revalidate)."""
    rp = response_policy(CIMultiDict([("Cache-Control", response)]))
    assert stale_forbidden(rp) is forbidden


# ------------------------------------------------------ may_serve_stale_on_error


def stale_on_error(
    age: float,
    lifetime: float,
    grace: float = 0.0,
    request: str | None = None,
    response: str | None = None,
) -> bool:
    req = parse_cache_control([request] if request else [])
    rp = response_policy(CIMultiDict([("Cache-Control", response)] if response else []))
    return may_serve_stale_on_error(age, lifetime, req, rp, grace)


@pytest.mark.parametrize(("age", "expected"), [(60, True), (160, True), (160.5, False)])
def test_grace_allows_stale_on_error(age: float, expected: bool) -> None:
    """Section 4.2.4: a cache may serve stale when it cannot reach the origin, here for
    up to `grace` seconds past the lifetime."""
    assert stale_on_error(age, 60, grace=100, response="max-age=60") is expected


def test_no_grace_no_stale_on_error() -> None:
    assert stale_on_error(60, 60, grace=0, response="max-age=60") is True
    assert stale_on_error(61, 60, grace=0, response="max-age=60") is False


def test_fresh_response_on_error_is_fine() -> None:
    assert stale_on_error(10, 60, grace=0) is True


@pytest.mark.parametrize(("age", "expected"), [(360, True), (361, False)])
def test_response_stale_if_error(age: float, expected: bool) -> None:
    """RFC 5861 Section 4: stale-if-error in the response extends the allowance."""
    assert stale_on_error(age, 60, grace=10, response="max-age=60, stale-if-error=300") is expected


@pytest.mark.parametrize(("age", "expected"), [(180, True), (181, False)])
def test_request_stale_if_error(age: float, expected: bool) -> None:
    """RFC 5861 Section 4: the client may ask for it in the request too."""
    assert stale_on_error(age, 60, request="stale-if-error=120", response="max-age=60") is expected


def test_largest_allowance_wins() -> None:
    """Grace, response and request stale-if-error: the largest is used."""
    assert stale_on_error(
        1060, 60, grace=1000, request="stale-if-error=5", response="stale-if-error=7"
    )
    assert not stale_on_error(
        1061, 60, grace=1000, request="stale-if-error=5", response="stale-if-error=7"
    )


def test_invalid_stale_if_error_is_ignored() -> None:
    assert stale_on_error(61, 60, response="max-age=60, stale-if-error=abc") is False


@pytest.mark.parametrize(
    "response",
    [
        "max-age=60, must-revalidate, stale-if-error=600",
        "max-age=60, proxy-revalidate, stale-if-error=600",
        "s-maxage=60, stale-if-error=600",
        "no-cache, stale-if-error=600",
    ],
)
def test_stale_on_error_forbidden(response: str) -> None:
    """Section 4.2.4: must-revalidate (and proxy-revalidate, s-maxage, no-cache) forbid
    serving stale even when the origin is unreachable."""
    assert stale_on_error(61, 60, grace=1000, request="stale-if-error=600", response=response) is (
        False
    )
