"""The pure rules purges stand on: a URL keyed as a request for it is (edge.rfc.keys), the
one validation of purge bodies (edge.purge.model), and bans built with a node's query
rules (edge.purge.bans.Ban)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.features import guard
from edge.purge.bans import Ban
from edge.purge.model import (
    MAX_SELECTORS,
    Purge,
    PurgeError,
    parse_purge,
    parse_purge_body,
)
from edge.rfc.keys import (
    AS_SENT,
    BadURL,
    QueryRules,
    location_key,
    prefix_key,
    request_key,
    url_key,
)

SORT = QueryRules("sort")
IGNORE_UTM = QueryRules("keep", ("utm_*", "fbclid"))

# ---------------------------------------------------------------- URL -> key


@pytest.mark.parametrize(
    ("url", "rules", "key"),
    [
        # RFC 3986 Section 6.2.2.1/6.2.2.2: escapes upper-cased, unreserved decoded.
        ("http://h/Caf%c3%a9", AS_SENT, "http://h/Caf%C3%A9"),
        ("http://h/Caf%C3%A9", AS_SENT, "http://h/Caf%C3%A9"),
        ("http://h/Café", AS_SENT, "http://h/Caf%C3%A9"),  # raw non-ASCII escaped
        ("http://h/a%7e", AS_SENT, "http://h/a~"),
        ("http://h/%41%2f%2F", AS_SENT, "http://h/A%2F%2F"),
        # The query as the node keys it.
        ("http://h/a%7e?b=1&a=2", SORT, "http://h/a~?a=2&b=1"),
        ("http://h/a%7e?b=1&a=2", AS_SENT, "http://h/a~?b=1&a=2"),
        ("http://h/p?utm_source=x&id=%7e3", IGNORE_UTM, "http://h/p?id=~3"),
        ("http://h/p?utm_source=x", IGNORE_UTM, "http://h/p"),
        ("http://h/p?b&a", QueryRules("ignore"), "http://h/p"),
        # RFC 3986 Section 6.2.3: host case, default port, empty path.
        ("HTTP://ARCHIVE.Example:80/X", AS_SENT, "http://archive.example/X"),
        ("https://h:443", AS_SENT, "https://h/"),
        ("http://h:443/", AS_SENT, "http://h:443/"),
        ("http://h:08080/", AS_SENT, "http://h:8080/"),
        ("http://h?q=1", AS_SENT, "http://h/?q=1"),
        ("http://[::1]:80/a", AS_SENT, "http://[::1]/a"),
    ],
)
def test_url_keys(url: str, rules: QueryRules, key: str) -> None:
    assert url_key(url, rules) == key


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h/a#top", "has a fragment"),
        ("http://h/#", "has a fragment"),
        ("http://user:pw@h/a", "must not contain user information"),
        ("http://h/a b", "contains whitespace or control characters"),
        ("http://h/a\x01", "contains whitespace or control characters"),
        ("/relative", "is not an absolute http(s) URL"),
        ("ftp://h/a", "is not an absolute http(s) URL"),
        ("http:///a", "has no host"),
        ("http://h:99999/", "has a bad port"),
        ("http://h:0/", "has a bad port"),
        ("http://[::1]x/", "has a bad port"),
        ("http://café.example/", "not an ASCII name"),
        ("http://h/a/../b", "dot-segments"),
        ("http://h/a/%2e%2E/b", "dot-segments"),
        ("http://h/a%zz", "invalid percent-encoding"),
        ("http://h/a%00", "NUL or backslash"),
    ],
)
def test_urls_that_name_no_key_are_refused(url: str, reason: str) -> None:
    with pytest.raises(BadURL) as refused:
        url_key(url, AS_SENT)
    assert reason in str(refused.value)


#: Request targets a client may send (no '#': a request never carries a fragment).
TARGETS = st.text(
    st.characters(blacklist_characters="#", blacklist_categories=("Cs",)), max_size=60
).map(lambda s: "/" + s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    TARGETS,
    st.sampled_from(["h", "H", "h:80", "H:80", "h:8080"]),
    st.sampled_from([AS_SENT, SORT, IGNORE_UTM, QueryRules("ignore")]),
)
@example("/Caf%c3%a9", "h", AS_SENT)
@example("/a%7e?b=1&a=2", "H:80", SORT)
@example("/p?", "h", AS_SENT)
def test_a_url_is_keyed_as_a_request_for_it(raw: str, host: str, rules: QueryRules) -> None:
    """The property purges rely on: whatever request the pipeline keys (edge.features.guard
    normalises its target, edge.rfc.keys.request_key keys it), the URL of that request
    has the same key, and so has its canonical form (idempotence)."""
    target = guard.normalise_target(raw)
    if isinstance(target, guard.Refusal):
        # Nothing is stored under a refused target; no purge URL names it either.
        with pytest.raises(BadURL):
            url_key(f"http://{host}{raw}", rules)
        return
    key = request_key("http", host, target, rules)
    try:
        assert url_key(f"http://{host}{raw}", rules) == key
    except BadURL as exc:  # a space or control character: a request cannot hold one
        assert "whitespace or control" in str(exc)
        return
    assert url_key(key, rules) == key
    canonical = url_key(f"http://{host}{raw}", AS_SENT)
    assert url_key(canonical, rules) == key


def test_invalidated_locations_are_keyed_as_requests() -> None:
    """RFC 9111 Section 4.4: a Location after an unsafe method invalidates the key a
    GET of it is stored under, whatever its spelling; a fragment is no part of it."""
    assert location_key("http://h/Caf%c3%a9#top", SORT) == "http://h/Caf%C3%A9"
    assert location_key("http://H:80/a%7e?b=1&a=2", SORT) == "http://h/a~?a=2&b=1"
    assert location_key("http://h/a/../b", SORT) is None  # nothing is stored there


@pytest.mark.parametrize(
    ("url", "prefix"),
    [
        ("http://h/d%c3%a9p/", "http://h/d%C3%A9p/"),
        ("http://h/dép/", "http://h/d%C3%A9p/"),
        ("http://h/d%7Ep/", "http://h/d~p/"),
        ("http://H:80", "http://h/"),
        ("http://h:8080", "http://h:8080/"),  # not a prefix of h:80801
        ("http://h/p?b=1&a", "http://h/p?b=1&a"),  # part of a query: escapes only
    ],
)
def test_prefixes_are_key_prefixes(url: str, prefix: str) -> None:
    assert prefix_key(url) == prefix


def test_a_ban_keys_urls_by_the_nodes_query_rules() -> None:
    purge = parse_purge(
        {"urls": ["http://h/a%7e?b=1&a=2", "http://h/Caf%c3%a9"], "prefixes": ["http://h/d%7Ep/"]}
    )
    sorted_ban = Ban.of(0, 1.0, purge, SORT)
    kept_ban = Ban.of(0, 1.0, purge, AS_SENT)
    assert sorted_ban.matches_key("http://h/a~?a=2&b=1")
    assert not sorted_ban.matches_key("http://h/a~?a=1&b=2")
    assert kept_ban.matches_key("http://h/a~?b=1&a=2")
    assert not kept_ban.matches_key("http://h/a~?a=2&b=1")
    for ban in (sorted_ban, kept_ban):
        assert ban.matches_key("http://h/Caf%C3%A9")
        assert ban.matches_key("http://h/d~p/x")
        assert not ban.matches_key("http://h/d%7Ep/x")  # no stored key is spelled so


# ---------------------------------------------------------------- one validation


BAD: list[tuple[object, str]] = [
    ([], "body must be a JSON object"),
    ({}, "nothing to purge"),
    ({"soft": True}, "nothing to purge"),
    ({"url": ["http://a/"]}, "unknown key: 'url'"),
    ({"urls": "http://a/"}, "urls must be a list of strings"),
    ({"tags": [1]}, "tags must be a list of strings"),
    ({"all": "yes"}, "all must be true or false"),
    ({"urls": ["http://a/#x"]}, "urls[0] has a fragment, which never reaches a cache"),
    ({"urls": ["http://u@a/"]}, "urls[0] must not contain user information"),
    ({"prefixes": ["http://a/", "http://a/\x7f"]}, "prefixes[1] contains whitespace"),
    ({"urls": ["http://a/x/../y"]}, "urls[0] cannot be requested (dot-segments in the path)"),
    ({"hosts": ["a b.example"]}, "hosts[0] has a host that is not an ASCII name"),
    ({"hosts": ["a.example:0"]}, "hosts[0] has a bad port"),
    ({"tags": ["a,b"]}, "tags[0] must be non-empty, without whitespace or commas"),
    ({"tags": [""]}, "tags[0] must be non-empty"),
    ({"tags": ["t"] * 600, "hosts": ["h"] * 401}, "too many selectors (at most 1000"),
    ({"tags": ["x" * 2049]}, "tags[0] is longer than 2048 characters"),
]


@pytest.mark.parametrize(("body", "reason"), BAD)
def test_bad_purges_are_refused_with_the_reason(body: object, reason: str) -> None:
    with pytest.raises(PurgeError) as refused:
        parse_purge(body)
    assert str(refused.value).startswith(reason)
    with pytest.raises(PurgeError) as raw:
        parse_purge_body(json.dumps(body).encode())
    assert str(raw.value) == str(refused.value)


@pytest.mark.parametrize("raw", [b"", b"{nope", b"\xff", b"[" * 100_000])
def test_bodies_that_are_not_json(raw: bytes) -> None:
    with pytest.raises(PurgeError, match=r"^body is not valid JSON"):
        parse_purge_body(raw)


def test_a_purge_comes_out_canonical_and_round_trips() -> None:
    purge = parse_purge(
        {
            "urls": ["HTTP://H:80/Caf%c3%a9", "http://h/Café", "http://h/a%7e?b=1&a=2"],
            "prefixes": ["http://h"],
            "hosts": ["Archive.Example", "[::1]:8080"],
            "tags": ["x" * 2048, *(f"t{i}" for i in range(MAX_SELECTORS - 7))],
            "soft": True,
        }
    )
    assert purge.urls == ("http://h/Caf%C3%A9", "http://h/a~?b=1&a=2")  # one of two spellings
    assert purge.prefixes == ("http://h/",)
    assert purge.hosts == ("archive.example", "[::1]:8080")
    assert purge.soft and not purge.all
    assert Purge.from_json(purge.to_json()) == purge
    assert parse_purge_body(json.dumps(purge.to_json()).encode()) == purge
