"""Storing responses in a shared cache: RFC 9111 Section 3 (with 3.5 Authorization,
5.2.2.3 must-understand, 5.2.2.5 no-store, 5.2.2.7 private, 4.1 Vary: *) and the
targeted fields of RFC 9213 Section 2.1.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import (
    HEURISTICALLY_CACHEABLE,
    UNDERSTOOD_STATUS,
    Decision,
    is_storable,
    parse_cache_control,
    request_cache_control,
    response_policy,
    strip_private_fields,
)


def storable(
    response: list[tuple[str, str]] | None = None,
    *,
    method: str = "GET",
    status: int = 200,
    request: list[tuple[str, str]] | None = None,
    surrogate_targets: tuple[str, ...] = (),
    set_cookie: str | None = None,
) -> Decision:
    request_headers = CIMultiDict(request or [])
    response_headers = CIMultiDict(response or [])
    modes = {} if set_cookie is None else {"set_cookie": set_cookie}
    return is_storable(
        method,
        status,
        request_cache_control(request_headers),
        request_headers,
        response_policy(response_headers, surrogate_targets=surrogate_targets),
        response_headers,
        **modes,
    )


MAX_AGE = [("Cache-Control", "max-age=60")]

# ------------------------------------------------------------------------ methods


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_cacheable_methods_are_storable(method: str) -> None:
    """Section 3: the request method is understood by the cache (GET and HEAD here)."""
    assert storable(MAX_AGE, method=method).ok is True


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get", "FOO"])
def test_other_methods_are_not_stored(method: str) -> None:
    """Section 3: methods are case-sensitive; only GET and HEAD are cached."""
    decision = storable(MAX_AGE, method=method)
    assert decision.ok is False
    assert decision.section == "3"
    assert decision.reason == f"method {method} is not cached"


# ------------------------------------------------------------------------ status codes


@pytest.mark.parametrize("status", [100, 101, 103, 199, 206, 304])
def test_non_final_or_incomplete_status_is_not_stored(status: int) -> None:
    """Section 3: the status must be final; 206 and 304 are not complete responses."""
    decision = storable([("Cache-Control", "max-age=60, public")], status=status)
    assert decision.ok is False
    assert decision.reason == f"status {status} is not a complete response"


@pytest.mark.parametrize("status", sorted(HEURISTICALLY_CACHEABLE - {206}))
def test_heuristically_cacheable_status_needs_no_freshness(status: int) -> None:
    """Section 3 / RFC 9110 Section 15.1: heuristically cacheable codes are storable
    without explicit freshness information."""
    assert storable([], status=status).ok is True


def test_heuristically_cacheable_set_is_rfc_9110() -> None:
    """RFC 9110 Section 15.1 lists exactly these codes."""
    expected = {200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501}
    assert sorted(HEURISTICALLY_CACHEABLE) == sorted(expected)


@pytest.mark.parametrize("status", [201, 202, 302, 303, 307, 400, 403, 500, 502, 503, 504])
def test_other_status_without_explicit_freshness_is_not_stored(status: int) -> None:
    """Section 3: otherwise an explicit freshness or `public` is needed."""
    decision = storable([], status=status)
    assert decision.ok is False
    assert decision.reason == f"status {status} has no explicit freshness"


@pytest.mark.parametrize(
    "response",
    [
        [("Cache-Control", "max-age=60")],
        [("Cache-Control", "s-maxage=60")],
        [("Cache-Control", "public")],
        [("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")],
        [("Expires", "0")],
    ],
    ids=["max-age", "s-maxage", "public", "expires", "invalid-expires"],
)
@pytest.mark.parametrize("status", [302, 307, 500])
def test_explicit_freshness_makes_other_status_storable(
    status: int, response: list[tuple[str, str]]
) -> None:
    """Section 3: Expires (even an invalid one, Section 5.3), max-age, s-maxage or
    public allow storing a status that is not heuristically cacheable."""
    assert storable(response, status=status).ok is True


# ----------------------------------------------------------------------- no-store


@pytest.mark.parametrize(
    "value", ["no-store", "NO-STORE", "max-age=60, no-store", 'no-store="x"', "public, no-store"]
)
def test_response_no_store(value: str) -> None:
    """Section 5.2.2.5: a cache must not store a response with no-store."""
    decision = storable([("Cache-Control", value)])
    assert decision.ok is False
    assert decision.section == "5.2.2.5"


def test_request_no_store() -> None:
    """Section 5.2.1.5: no-store in the request forbids storing the response."""
    decision = storable(MAX_AGE, request=[("Cache-Control", "no-store")])
    assert decision.ok is False
    assert decision.section == "5.2.1.5"


def test_request_no_cache_does_not_prevent_storing() -> None:
    """Section 5.2.1.4: request no-cache is about reuse, not storage."""
    assert storable(MAX_AGE, request=[("Cache-Control", "no-cache")]).ok is True


def test_response_no_cache_is_storable() -> None:
    """Section 5.2.2.4: no-cache allows storing; it only requires validation on reuse."""
    assert storable([("Cache-Control", "no-cache")]).ok is True


# ------------------------------------------------------------------------ private


@pytest.mark.parametrize("value", ["private", "private, max-age=60", "Private", "public, private"])
def test_unqualified_private_is_not_stored_by_a_shared_cache(value: str) -> None:
    """Section 5.2.2.7: a shared cache must not store a private response."""
    decision = storable([("Cache-Control", value)])
    assert decision.ok is False
    assert decision.section == "5.2.2.7"


def test_qualified_private_is_storable() -> None:
    """Section 5.2.2.7: `private="Set-Cookie"` only keeps the named fields out."""
    assert storable([("Cache-Control", 'private="Set-Cookie", max-age=60')]).ok is True


def test_strip_private_fields_removes_named_fields_case_insensitively() -> None:
    """Section 5.2.2.7: the named fields are not stored, all their lines included."""
    headers = [
        ("Cache-Control", 'private="set-cookie, X-User", max-age=60'),
        ("Set-Cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("X-USER", "alice"),
        ("Content-Type", "text/plain"),
    ]
    rp = response_policy(CIMultiDict(headers))
    assert strip_private_fields(headers, rp) == [
        ("Cache-Control", 'private="set-cookie, X-User", max-age=60'),
        ("Content-Type", "text/plain"),
    ]


@pytest.mark.parametrize("value", ["max-age=60", "private", "no-cache=Set-Cookie"])
def test_strip_private_fields_without_qualified_private_keeps_everything(value: str) -> None:
    """Only a qualified private names fields to strip."""
    headers = [("Cache-Control", value), ("Set-Cookie", "a=1")]
    rp = response_policy(CIMultiDict(headers))
    assert strip_private_fields(headers, rp) == headers


def test_strip_private_fields_uses_the_targeted_field() -> None:
    """RFC 9213 Section 2.1: the targeted field replaces Cache-Control."""
    headers = [
        ("Cache-Control", 'private="X-A"'),
        ("CDN-Cache-Control", 'private="X-B", max-age=60'),
        ("X-A", "1"),
        ("X-B", "2"),
    ]
    rp = response_policy(CIMultiDict(headers))
    assert strip_private_fields(headers, rp) == headers[:3]


# ------------------------------------------------------------------ Authorization


@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION"])
def test_authorization_without_permission_is_not_stored(name: str) -> None:
    """Section 3.5: a shared cache must not store a response to an authorized request
    unless the response allows it."""
    decision = storable(MAX_AGE, request=[(name, "Basic YTpi")])
    assert decision.ok is False
    assert decision.section == "3.5"


@pytest.mark.parametrize(
    "value", ["public", "must-revalidate, max-age=60", "s-maxage=60", "max-age=60, Public"]
)
def test_authorization_with_public_must_revalidate_or_s_maxage(value: str) -> None:
    """Section 3.5: public, must-revalidate or s-maxage permit it."""
    assert storable([("Cache-Control", value)], request=[("Authorization", "x")]).ok is True


@pytest.mark.parametrize("value", ["proxy-revalidate, max-age=60", "max-age=60, no-cache"])
def test_authorization_with_other_directives_is_not_stored(value: str) -> None:
    """Section 3.5 names only public, must-revalidate and s-maxage."""
    assert storable([("Cache-Control", value)], request=[("Authorization", "x")]).ok is False


def test_proxy_authorization_is_not_authorization() -> None:
    """Section 3.5 is about Authorization; Proxy-Authorization is hop-by-hop."""
    assert storable(MAX_AGE, request=[("Proxy-Authorization", "x")]).ok is True


def test_authorization_permission_from_targeted_field() -> None:
    """RFC 9213 Section 2.1: a targeted `public` counts, Cache-Control is then ignored."""
    response = [("Cache-Control", "public"), ("CDN-Cache-Control", "max-age=60")]
    assert storable(response, request=[("Authorization", "x")]).ok is False
    response = [("Cache-Control", "max-age=60"), ("CDN-Cache-Control", "max-age=60, public")]
    assert storable(response, request=[("Authorization", "x")]).ok is True


# --------------------------------------------------------------------- Set-Cookie

#: Responses that set a cookie, by what their origin said about sharing them.
COOKIE_CASES = {
    "public": [("Cache-Control", "public, max-age=60")],
    "s-maxage": [("Cache-Control", "s-maxage=60")],
    "targeted": [("Cache-Control", "no-cache"), ("CDN-Cache-Control", "max-age=60")],
    "max-age": [("Cache-Control", "max-age=60")],
    "expires": [
        ("Date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("Expires", "Sun, 06 Nov 1994 09:49:37 GMT"),
    ],
    "heuristic": [("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")],
}


@pytest.mark.parametrize(
    ("mode", "shared"),
    [
        (None, set()),
        ("never", set()),
        ("public", {"public", "s-maxage", "targeted"}),
        ("explicit", {"public", "s-maxage", "targeted", "max-age", "expires"}),
        ("rfc", set(COOKIE_CASES)),
    ],
    ids=["default", "never", "public", "explicit", "rfc"],
)
@pytest.mark.parametrize("name", ["Set-Cookie", "set-cookie", "Set-Cookie2"])
def test_a_response_that_sets_a_cookie_is_shared_only_on_opt_in(
    mode: str | None, shared: set[str], name: str
) -> None:
    """Section 3 would store these; edge shares a response that sets a cookie only when
    the node opts in (set_cookie), as nginx, Varnish and Cloudflare do not share it by
    default. Each opt-in then asks the origin to have said so, least to most."""
    stored = set()
    for case, fields in COOKIE_CASES.items():
        assert storable(fields, set_cookie=mode).ok is True, case  # without a cookie
        decision = storable([*fields, (name, "sid=alice")], set_cookie=mode)
        if decision.ok:
            stored.add(case)
        else:
            assert decision.section == "3"
            assert "cookie" in decision.reason
    assert stored == shared


# ---------------------------------------------------------------- must-understand


@pytest.mark.parametrize("status", sorted(UNDERSTOOD_STATUS))
def test_must_understand_overrides_no_store_for_understood_status(status: int) -> None:
    """Section 5.2.2.3: with must-understand, no-store is ignored when the status code
    is understood."""
    decision = storable([("Cache-Control", "must-understand, no-store, max-age=60")], status=status)
    assert decision.ok is True


@pytest.mark.parametrize("status", [299, 418, 599, 226])
def test_must_understand_with_unknown_status_is_not_stored(status: int) -> None:
    """Section 5.2.2.3 / Section 3: the status code must be understood."""
    decision = storable([("Cache-Control", "must-understand, no-store, max-age=60")], status=status)
    assert decision.ok is False
    assert decision.section == "5.2.2.3"
    decision = storable([("Cache-Control", "must-understand, max-age=60")], status=status)
    assert decision.ok is False
    assert decision.section == "5.2.2.3"


def test_must_understand_still_needs_freshness_or_heuristic_status() -> None:
    """must-understand does not itself make a response storable."""
    assert storable([("Cache-Control", "must-understand, no-store")], status=302).ok is False
    assert storable([("Cache-Control", "must-understand, no-store")], status=200).ok is True


def test_must_understand_does_not_override_request_no_store() -> None:
    """Section 5.2.1.5 still applies."""
    response = [("Cache-Control", "must-understand, no-store, max-age=60")]
    assert storable(response, request=[("Cache-Control", "no-store")]).ok is False


def test_must_understand_does_not_override_private() -> None:
    """Section 5.2.2.3 only relaxes no-store."""
    response = [("Cache-Control", "must-understand, private, max-age=60")]
    assert storable(response).ok is False


# ------------------------------------------------------------------------- Vary


@pytest.mark.parametrize(
    "vary", [[("Vary", "*")], [("Vary", "Accept, *")], [("Vary", "Accept"), ("Vary", "*")]]
)
def test_vary_star_is_not_stored(vary: list[tuple[str, str]]) -> None:
    """Section 4.1: a Vary containing `*` never matches, so it is not worth storing."""
    decision = storable([*MAX_AGE, *vary])
    assert decision.ok is False
    assert decision.section == "4.1"


def test_vary_with_names_is_storable() -> None:
    """Section 4.1: a listed Vary only adds a secondary key."""
    assert storable([*MAX_AGE, ("Vary", "Accept-Encoding, Accept-Language")]).ok is True


# ------------------------------------------------------------ targeted (RFC 9213)


def test_targeted_field_overrides_cache_control_no_store() -> None:
    """RFC 9213 Section 2.1: a valid targeted field replaces Cache-Control."""
    response = [("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=600")]
    assert storable(response).ok is True


def test_targeted_no_store_overrides_cache_control() -> None:
    """RFC 9213 Section 2.1: and the other way round."""
    response = [("Cache-Control", "max-age=600, public"), ("CDN-Cache-Control", "no-store")]
    decision = storable(response)
    assert decision.ok is False
    assert decision.section == "5.2.2.5"


def test_targeted_field_overrides_cache_control_private() -> None:
    """RFC 9213 Section 2.1: `Cache-Control: private` for browsers, stored by the CDN."""
    response = [("Cache-Control", "private"), ("CDN-Cache-Control", "max-age=60")]
    assert storable(response).ok is True


def test_targeted_field_makes_expires_ignored_for_storability() -> None:
    """RFC 9213 Section 2.1: Expires is ignored when a targeted field is used."""
    response = [("CDN-Cache-Control", "no-transform"), ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")]
    assert storable(response, status=302).ok is False
    assert storable([("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")], status=302).ok is True


def test_invalid_targeted_field_falls_back_to_cache_control() -> None:
    """RFC 9213 Section 2.1: an empty targeted field is ignored."""
    response = [("Cache-Control", "no-store"), ("CDN-Cache-Control", "")]
    assert storable(response).ok is False


def test_cdn_cache_control_wins_over_surrogate_control() -> None:
    """RFC 9213 Section 2.1: the first field of the target list that is valid is used."""
    response = [("Surrogate-Control", "no-store"), ("CDN-Cache-Control", "max-age=60")]
    assert storable(response).ok is True
    response = [("Surrogate-Control", "max-age=60"), ("CDN-Cache-Control", "no-store")]
    assert storable(response).ok is False


def test_surrogate_control_for_this_node() -> None:
    """Surrogate-Control `;target` for this node applies, for another node does not."""
    response = [("Cache-Control", "max-age=60"), ("Surrogate-Control", "no-store;edge1")]
    assert storable(response, surrogate_targets=("edge1",)).ok is False
    assert storable(response, surrogate_targets=("edge2",)).ok is True
    assert storable(response).ok is True


def test_response_policy_picks_targeted_field() -> None:
    """RFC 9213 Section 2.1: response_policy exposes both, `effective` is the targeted."""
    rp = response_policy(
        CIMultiDict([("Cache-Control", "no-store"), ("CDN-Cache-Control", "max-age=5")])
    )
    assert rp.cc == parse_cache_control(["no-store"])
    assert rp.targeted == parse_cache_control(["max-age=5"])
    assert rp.effective is rp.targeted


def test_response_policy_custom_target_list_order() -> None:
    """RFC 9213 Section 2.1: the target list order decides, not the header order."""
    headers = CIMultiDict([("CDN-Cache-Control", "max-age=5"), ("Example-CC", "max-age=9")])
    rp = response_policy(headers, targeted_fields=("Example-CC", "CDN-Cache-Control"))
    assert rp.effective.delta("max-age") == 9
    rp = response_policy(headers, targeted_fields=())
    assert rp.targeted is None
    assert rp.effective == parse_cache_control([])


def test_decision_is_truthy_only_when_ok() -> None:
    """Decision carries the reason and the section behind it."""
    assert bool(Decision(True, "storable", "3")) is True
    assert bool(Decision(False, "no", "3")) is False
    assert storable(MAX_AGE) == Decision(True, "storable", "3")


def test_qualified_no_cache_fields_are_withheld_unless_validated() -> None:
    """RFC 9111 Section 5.2.2.4: `no-cache="Set-Cookie, X-Secret"` names fields that
    must not be reused without revalidation; an unqualified no-cache names none."""
    from edge.rfc.policy import response_policy, withheld_unless_validated

    qualified = response_policy(
        CIMultiDict([("Cache-Control", 'max-age=60, no-cache="Set-Cookie, X-Secret"')])
    )
    assert withheld_unless_validated(qualified) == frozenset({"set-cookie", "x-secret"})
    plain = response_policy(CIMultiDict([("Cache-Control", "no-cache")]))
    assert withheld_unless_validated(plain) == frozenset()
