"""Validation: RFC 9111 Section 4.3.1 (validation requests), 4.3.2 (answering a
conditional request from the cache), 4.3.4 (freshening with a 304), 3.2 (updating
stored header fields); RFC 9110 Section 8.8.3 (entity tags), 13.1 and 13.2.2
(preconditions, in order) and 15.4.5 (304 Not Modified).
"""

from __future__ import annotations

from email.utils import formatdate

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import (
    conditional_headers,
    evaluate_preconditions,
    freshen_headers,
    not_modified_from_cache,
    not_modified_headers,
    parse_etag_list,
    strong_etag_equal,
    validator_matches,
    weak_etag_equal,
)

NOW = 1_700_000_000.0
LM = NOW - 86_400


def date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


# ------------------------------------------------------------- conditional_headers


def test_conditional_headers_with_etag_and_last_modified() -> None:
    """Section 4.3.1: If-None-Match from ETag, If-Modified-Since from Last-Modified."""
    stored = headers(("ETag", '"v1"'), ("Last-Modified", date(LM)), ("Date", date(NOW)))
    assert conditional_headers(stored) == [
        ("If-None-Match", '"v1"'),
        ("If-Modified-Since", date(LM)),
    ]


def test_conditional_headers_weak_etag() -> None:
    """A weak entity tag is fine for If-None-Match (weak comparison)."""
    assert conditional_headers(headers(("ETag", 'W/"v1"'))) == [("If-None-Match", 'W/"v1"')]


def test_conditional_headers_last_modified_only() -> None:
    assert conditional_headers(headers(("Last-Modified", date(LM)))) == [
        ("If-Modified-Since", date(LM))
    ]


def test_conditional_headers_without_validators() -> None:
    """Without a validator there is nothing to make conditional (not even from Date)."""
    assert conditional_headers(headers(("Date", date(NOW)))) == []


# ----------------------------------------------------------------- entity tags


@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        ('"1"', '"1"', True, True),
        ('W/"1"', 'W/"1"', False, True),
        ('W/"1"', '"1"', False, True),
        ('"1"', '"2"', False, False),
        ('W/"1"', 'W/"2"', False, False),
        (' "1" ', '"1"', True, True),
    ],
)
def test_etag_comparison(a: str, b: str, strong: bool, weak: bool) -> None:
    """RFC 9110 Section 8.8.3.2: the comparison table."""
    assert strong_etag_equal(a, b) is strong
    assert weak_etag_equal(a, b) is weak


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        ("*", None),
        (" * ", None),
        ('"a"', ['"a"']),
        ('"a", W/"b",  "c"', ['"a"', 'W/"b"', '"c"']),
        ('"a,b"', ['"a,b"']),
        ("garbage", []),
        ("", []),
    ],
)
def test_parse_etag_list(value: str, tags: list[str] | None) -> None:
    """RFC 9110 Section 8.8.3: entity-tag lists, `*` as None."""
    assert parse_etag_list(value) == tags


# --------------------------------------------------------------- validator_matches


@pytest.mark.parametrize(
    ("stored", "new", "expected"),
    [
        ('"a"', '"a"', True),
        ('"a"', '"b"', False),
        ('W/"a"', 'W/"a"', True),
        ('"a"', 'W/"a"', True),
        ('W/"a"', '"a"', False),
    ],
    ids=["strong-same", "strong-different", "weak-same", "weak-304-strong-stored", "strong-304"],
)
def test_validator_matches_etag(stored: str, new: str, expected: bool) -> None:
    """Section 4.3.4: a strong validator selects the stored responses with the same strong
    validator; a weak one selects a stored response it corresponds to."""
    assert validator_matches(headers(("ETag", stored)), headers(("ETag", new))) is expected


def test_validator_matches_etag_requires_stored_etag() -> None:
    stored = headers(("Last-Modified", date(LM)))
    assert validator_matches(stored, headers(("ETag", '"a"'), ("Last-Modified", date(LM)))) is False


def test_validator_matches_etag_takes_precedence_over_last_modified() -> None:
    stored = headers(("ETag", '"a"'), ("Last-Modified", date(LM)))
    assert validator_matches(stored, headers(("ETag", '"b"'), ("Last-Modified", date(LM)))) is False


def test_validator_matches_last_modified() -> None:
    stored = headers(("Last-Modified", date(LM)))
    assert validator_matches(stored, headers(("Last-Modified", date(LM)))) is True
    assert validator_matches(stored, headers(("Last-Modified", date(LM + 1)))) is False


def test_304_without_validator_updates_stored_without_validator() -> None:
    """Section 4.3.4: a 304 without a validator selects a stored response that also
    lacks one."""
    assert validator_matches(headers(("Date", date(NOW))), headers(("Date", date(NOW)))) is True


@pytest.mark.parametrize(
    "stored", [[("ETag", '"a"')], [("Last-Modified", date(LM))]], ids=["etag", "last-modified"]
)
def test_304_without_validator_does_not_update_stored_with_validator(
    stored: list[tuple[str, str]],
) -> None:
    """Section 4.3.4: ... and only then."""
    assert validator_matches(headers(*stored), headers(("Date", date(NOW)))) is False


# ----------------------------------------------------------------- freshen_headers


STORED = [
    ("Date", date(NOW - 600)),
    ("Cache-Control", "max-age=60"),
    ("Content-Type", "text/html"),
    ("Content-Length", "1234"),
    ("Content-Encoding", "gzip"),
    ("Content-Range", "bytes 0-1233/1234"),
    ("Content-MD5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
    ("ETag", '"v1"'),
    ("Age", "30"),
    ("Set-Cookie", "a=1"),
    ("Set-Cookie", "b=2"),
    ("X-Kept", "yes"),
]


def test_freshen_replaces_fields_present_in_the_304() -> None:
    """Section 3.2: each field in the 304 replaces the stored field of that name."""
    not_modified = headers(
        ("Date", date(NOW)),
        ("Cache-Control", "max-age=300"),
        ("X-Kept", "new"),
        ("X-New", "1"),
    )
    assert freshen_headers(STORED, not_modified) == [
        ("Content-Type", "text/html"),
        ("Content-Length", "1234"),
        ("Content-Encoding", "gzip"),
        ("Content-Range", "bytes 0-1233/1234"),
        ("Content-MD5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
        ("ETag", '"v1"'),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Date", date(NOW)),
        ("Cache-Control", "max-age=300"),
        ("X-Kept", "new"),
        ("X-New", "1"),
    ]


@pytest.mark.parametrize("mode", ["never", "public", "explicit"])
@pytest.mark.parametrize("name", ["Set-Cookie", "set-cookie", "Set-Cookie2"])
def test_freshen_never_takes_a_cookie_from_the_304(mode: str, name: str) -> None:
    """A cookie set on a 304 is not stored (unless set_cookie is "rfc"): the 304
    answers the cache's own validation request, made for whichever clients waited on
    it, and the stored response is then served to everyone. The stored response's own
    fields, its cookies included, stay as they were."""
    not_modified = headers(("Cache-Control", "public, max-age=300"), (name, "user=bob"))
    result = freshen_headers(STORED, not_modified, set_cookie=mode)
    assert ("Cache-Control", "public, max-age=300") in result
    assert [h for h in result if h[0].lower().startswith("set-cookie")] == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert freshen_headers([], not_modified, set_cookie=mode) == [
        ("Cache-Control", "public, max-age=300")
    ]


def test_freshen_never_takes_a_cookie_by_default() -> None:
    """The default is the node's default, set_cookie = "never"."""
    result = freshen_headers([("ETag", '"v1"')], headers(("Set-Cookie", "user=bob")))
    assert result == [("ETag", '"v1"')]


def test_freshen_as_rfc_9111_alone_takes_the_cookie() -> None:
    """Section 3.2, with set_cookie = "rfc": the 304's Set-Cookie replaces the stored
    ones, as any other field does."""
    not_modified = headers(("Set-Cookie", "c=3"), ("Set-Cookie", "d=4"))
    result = freshen_headers(STORED, not_modified, set_cookie="rfc")
    assert [h for h in result if h[0] == "Set-Cookie"] == [
        ("Set-Cookie", "c=3"),
        ("Set-Cookie", "d=4"),
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Content-Length", "0"),
        ("content-encoding", "br"),
        ("Content-Range", "bytes 0-0/1"),
        ("Content-MD5", "xx"),
        ("ETag", 'W/"v1"'),
    ],
)
def test_freshen_keeps_fields_the_body_depends_on(name: str, value: str) -> None:
    """Section 3.2: fields describing the stored body are not changed by a 304."""
    result = freshen_headers(STORED, headers((name, value)))
    assert (name, value) not in result
    assert [h for h in result if h[0].lower() == name.lower()] == [
        h for h in STORED if h[0].lower() == name.lower()
    ]


def test_freshen_drops_stored_age() -> None:
    """The stored Age is dropped; the 304's own Age (if any) is taken."""
    assert ("Age", "30") not in freshen_headers(STORED, headers())
    result = freshen_headers(STORED, headers(("Age", "5")))
    assert [h for h in result if h[0] == "Age"] == [("Age", "5")]


def test_freshen_does_not_store_hop_by_hop_fields_of_the_304() -> None:
    """Section 3.1: hop-by-hop fields (and Connection-listed ones) are not stored."""
    not_modified = headers(
        ("Connection", "keep-alive, X-Hop"),
        ("Keep-Alive", "timeout=5"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Cache-Control", "max-age=5"),
    )
    result = freshen_headers([("Cache-Control", "max-age=1"), ("X-Hop", "old")], not_modified)
    assert result == [("X-Hop", "old"), ("Cache-Control", "max-age=5")]


def test_freshen_name_matching_is_case_insensitive() -> None:
    result = freshen_headers([("cache-control", "max-age=1")], headers(("CACHE-CONTROL", "x")))
    assert result == [("CACHE-CONTROL", "x")]


def test_freshen_with_empty_304_keeps_everything_but_age() -> None:
    assert freshen_headers(STORED, headers()) == [h for h in STORED if h[0] != "Age"]


# ---------------------------------------------------------- not_modified_from_cache


STORED_HEADERS = headers(("ETag", '"v1"'), ("Last-Modified", date(LM)), ("Date", date(NOW)))


def nm(
    *request: tuple[str, str], method: str = "GET", stored: CIMultiDict[str] = STORED_HEADERS
) -> bool:
    return not_modified_from_cache(method, headers(*request), stored, response_time=NOW + 5)


@pytest.mark.parametrize(
    ("inm", "expected"),
    [
        ('"v1"', True),
        ('W/"v1"', True),
        ('"v0", "v1"', True),
        ('"v0"', False),
        ("*", True),
        ("garbage", False),
    ],
)
def test_if_none_match_weak_comparison(inm: str, expected: bool) -> None:
    """RFC 9110 Section 13.1.2: weak comparison; `*` matches any current
    representation; a match means 304 for GET/HEAD."""
    assert nm(("If-None-Match", inm)) is expected


def test_if_none_match_across_field_lines() -> None:
    assert nm(("If-None-Match", '"v0"'), ("If-None-Match", '"v1"')) is True


def test_if_none_match_against_weak_stored_etag() -> None:
    stored = headers(("ETag", 'W/"v1"'))
    assert nm(("If-None-Match", '"v1"'), stored=stored) is True


def test_if_none_match_without_stored_etag() -> None:
    stored = headers(("Last-Modified", date(LM)))
    assert nm(("If-None-Match", '"v1"'), stored=stored) is False
    assert nm(("If-None-Match", "*"), stored=stored) is True


def test_if_none_match_takes_precedence_over_if_modified_since() -> None:
    """RFC 9110 Section 13.1.3: If-Modified-Since is ignored with If-None-Match."""
    assert nm(("If-None-Match", '"v0"'), ("If-Modified-Since", date(NOW))) is False
    assert nm(("If-None-Match", '"v1"'), ("If-Modified-Since", date(LM - 10))) is True


@pytest.mark.parametrize(
    ("ims", "expected"),
    [(LM, True), (LM + 1, True), (LM - 1, False)],
    ids=["equal", "later", "earlier"],
)
def test_if_modified_since_against_last_modified(ims: float, expected: bool) -> None:
    """RFC 9110 Section 13.1.3: not modified if Last-Modified <= the given date."""
    assert nm(("If-Modified-Since", date(ims))) is expected


def test_if_modified_since_against_date_without_last_modified() -> None:
    """Section 4.3.2: without Last-Modified, the stored Date is used..."""
    stored = headers(("Date", date(NOW)))
    assert nm(("If-Modified-Since", date(NOW)), stored=stored) is True
    assert nm(("If-Modified-Since", date(NOW - 1)), stored=stored) is False


def test_if_modified_since_against_response_time_without_dates() -> None:
    """... and without Date either, the time the response was received (NOW + 5)."""
    stored = headers(("Content-Type", "text/plain"))
    assert nm(("If-Modified-Since", date(NOW + 5)), stored=stored) is True
    assert nm(("If-Modified-Since", date(NOW + 4)), stored=stored) is False


def test_if_modified_since_with_invalid_last_modified_uses_date() -> None:
    stored = headers(("Last-Modified", "yesterday"), ("Date", date(NOW)))
    assert nm(("If-Modified-Since", date(NOW)), stored=stored) is True
    assert nm(("If-Modified-Since", date(NOW - 1)), stored=stored) is False


def test_last_modified_at_the_epoch_is_a_date() -> None:
    """RFC 9110 Section 5.6.7: a Last-Modified of 1 Jan 1970 is valid (not absent)."""
    stored = headers(("Last-Modified", date(0)), ("Date", date(NOW)))
    assert nm(("If-Modified-Since", date(1)), stored=stored) is True


@pytest.mark.parametrize("ims", ["yesterday", "", "0"])
def test_invalid_if_modified_since_is_ignored(ims: str) -> None:
    """RFC 9110 Section 13.1.3: an invalid HTTP-date is ignored."""
    assert nm(("If-Modified-Since", ims)) is False


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_not_modified_only_for_get_and_head(method: str) -> None:
    assert nm(("If-None-Match", '"v1"'), method=method) is False
    assert nm(("If-Modified-Since", date(NOW)), method=method) is False


def test_head_is_like_get() -> None:
    assert nm(("If-None-Match", '"v1"'), method="HEAD") is True


def test_unconditional_request() -> None:
    assert nm() is False


# ----------------------------------------------------------- evaluate_preconditions


def pre(
    *request: tuple[str, str], method: str = "GET", stored: CIMultiDict[str] = STORED_HEADERS
) -> int | None:
    return evaluate_preconditions(method, headers(*request), stored, response_time=NOW)


def test_no_preconditions() -> None:
    assert pre() is None


@pytest.mark.parametrize(
    ("if_match", "expected"),
    [
        ('"v1"', None),
        ('"v0", "v1"', None),
        ("*", None),
        ('"v0"', 412),
        ('W/"v1"', 412),
    ],
)
def test_if_match_strong_comparison(if_match: str, expected: int | None) -> None:
    """RFC 9110 Section 13.1.1: If-Match uses strong comparison; false means 412."""
    assert pre(("If-Match", if_match)) == expected


def test_if_match_against_weak_stored_etag_fails() -> None:
    stored = headers(("ETag", 'W/"v1"'))
    assert pre(("If-Match", 'W/"v1"'), stored=stored) == 412
    assert pre(("If-Match", '"v1"'), stored=stored) == 412


def test_if_match_without_stored_etag() -> None:
    stored = headers(("Last-Modified", date(LM)))
    assert pre(("If-Match", '"v1"'), stored=stored) == 412
    assert pre(("If-Match", "*"), stored=stored) is None


@pytest.mark.parametrize(
    ("ius", "expected"),
    [(LM, None), (LM + 1, None), (LM - 1, 412)],
    ids=["equal", "later", "earlier"],
)
def test_if_unmodified_since(ius: float, expected: int | None) -> None:
    """RFC 9110 Section 13.1.4: 412 if modified after the given date."""
    assert pre(("If-Unmodified-Since", date(ius))) == expected


def test_if_unmodified_since_ignored_with_if_match() -> None:
    """RFC 9110 Section 13.2.2 step 2: only when If-Match is absent."""
    assert pre(("If-Match", '"v1"'), ("If-Unmodified-Since", date(LM - 1))) is None


def test_if_unmodified_since_ignored_without_last_modified_or_when_invalid() -> None:
    """RFC 9110 Section 13.1.4: ignored if invalid or if there is no modification date."""
    assert pre(("If-Unmodified-Since", date(LM - 1)), stored=headers(("ETag", '"v1"'))) is None
    assert pre(("If-Unmodified-Since", "yesterday")) is None


def test_if_match_failure_wins_over_if_none_match() -> None:
    """RFC 9110 Section 13.2.2: If-Match is evaluated first."""
    assert pre(("If-Match", '"v0"'), ("If-None-Match", '"v1"')) == 412


def test_if_unmodified_since_failure_wins_over_if_none_match() -> None:
    assert pre(("If-Unmodified-Since", date(LM - 1)), ("If-None-Match", '"v1"')) == 412


def test_if_match_pass_then_if_none_match_304() -> None:
    assert pre(("If-Match", '"v1"'), ("If-None-Match", '"v1"')) == 304


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_false_is_304_for_get_and_head(method: str) -> None:
    """RFC 9110 Section 13.2.2 step 3: 304 for GET/HEAD."""
    assert pre(("If-None-Match", '"v1"'), method=method) == 304
    assert pre(("If-None-Match", '"v0"'), method=method) is None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_if_none_match_false_is_412_for_other_methods(method: str) -> None:
    """RFC 9110 Section 13.2.2 step 3: ... and 412 for other methods; If-Modified-Since
    is only evaluated for GET/HEAD (step 4)."""
    assert pre(("If-None-Match", '"v1"'), method=method) == 412
    assert pre(("If-None-Match", 'W/"v1"'), method=method) == 412
    assert pre(("If-None-Match", "*"), method=method) == 412
    assert pre(("If-None-Match", '"v0"'), method=method) is None
    assert pre(("If-Modified-Since", date(NOW)), method=method) is None


def test_if_modified_since_304() -> None:
    """RFC 9110 Section 13.2.2 step 4."""
    assert pre(("If-Modified-Since", date(LM))) == 304
    assert pre(("If-Modified-Since", date(LM - 1))) is None


# -------------------------------------------------------------- not_modified_headers


def test_not_modified_headers_keeps_the_listed_fields() -> None:
    """RFC 9110 Section 15.4.5: Cache-Control, Content-Location, Date, ETag, Expires,
    Vary (and Last-Modified) -- no representation metadata like Content-Type."""
    stored = [
        ("Date", date(NOW)),
        ("Content-Type", "text/html"),
        ("Content-Length", "10"),
        ("ETag", '"v1"'),
        ("cache-control", "max-age=60"),
        ("Expires", date(NOW + 60)),
        ("Vary", "Accept-Encoding"),
        ("Vary", "Accept-Language"),
        ("Content-Location", "/a.html"),
        ("Last-Modified", date(LM)),
        ("Set-Cookie", "a=1"),
        ("Content-Encoding", "gzip"),
    ]
    assert not_modified_headers(stored) == [
        ("Date", date(NOW)),
        ("ETag", '"v1"'),
        ("cache-control", "max-age=60"),
        ("Expires", date(NOW + 60)),
        ("Vary", "Accept-Encoding"),
        ("Vary", "Accept-Language"),
        ("Content-Location", "/a.html"),
        ("Last-Modified", date(LM)),
    ]
