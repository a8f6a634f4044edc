"""edge.rfc.pseudo: an HTTP/3 (or HTTP/2) request's field section read as the request
edge serves (RFC 9114 Section 4.2-4.3, RFC 9113 Section 8.2-8.3)."""

from __future__ import annotations

import pytest

from edge.rfc.pseudo import Head, Malformed, read_request

GET = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"archive.test"),
    (b":path", b"/books/1?x=2"),
]


def read(fields: list[tuple[bytes, bytes]], max_fields: int = 100) -> Head | Malformed:
    return read_request(fields, scheme="https", max_fields=max_fields)


def test_a_plain_get_becomes_an_origin_form_request_with_host_first() -> None:
    head = read([*GET, (b"accept", b"*/*")])
    assert head == Head(
        method="GET",
        target="/books/1?x=2",
        authority="archive.test",
        fields=((b"host", b"archive.test"), (b"accept", b"*/*")),
        content_length=None,
    )


def test_cookie_lines_are_joined_for_http1() -> None:
    # RFC 9114 Section 4.2.1: compressed apart, joined with "; " for HTTP/1.1.
    head = read([*GET, (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")])
    assert isinstance(head, Head)
    assert head.fields[-1] == (b"cookie", b"a=1; b=2")
    assert [n for n, _ in head.fields].count(b"cookie") == 1


def test_host_alone_stands_for_the_authority_and_must_agree_with_it() -> None:
    no_authority = [f for f in GET if f[0] != b":authority"]
    head = read([*no_authority, (b"host", b"archive.test")])
    assert isinstance(head, Head) and head.authority == "archive.test"
    assert head.fields[0] == (b"host", b"archive.test")
    # RFC 9114 Section 4.3.1: both present, they must be the same: one key.
    assert read([*GET, (b"host", b"other.test")]) == Malformed(400, ":authority and Host disagree")
    assert read([*GET, (b"host", b"archive.test")]) == read(GET)
    assert read(no_authority) == Malformed(400, "no :authority")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([(b":method", b"GET"), (b":authority", b"a"), (b":path", b"/")], ":scheme must be https"),
        ([*GET[:3], (b":path", b"")], ":path must be a path"),
        ([*GET[:3], (b":path", b"http://a/x")], ":path must be a path"),
        ([*GET, (b":path", b"/again")], "repeated pseudo-header field :path"),
        ([*GET, (b":protocol", b"websocket")], "unknown pseudo-header field :protocol"),
        ([*GET, (b":status", b"200")], "unknown pseudo-header field :status"),
        ([*GET[:3], (b"accept", b"*/*"), GET[3]], "a pseudo-header field after the ordinary ones"),
        (GET[1:], "no valid :method"),
        ([(b":method", b"G T"), *GET[1:]], "no valid :method"),
        ([*GET, (b"Accept", b"*/*")], "a field name that is not a lowercase token"),
        ([*GET, (b"x y", b"1")], "a field name that is not a lowercase token"),
        ([*GET, (b"x-a", b"1\r\nx-b: 2")], "CR, LF or NUL in a field value"),
        ([*GET, (b"te", b"gzip")], "TE other than trailers"),
        (
            [*GET, (b"content-length", b"5"), (b"content-length", b"6")],
            "Content-Length values disagree",
        ),
        ([*GET, (b"content-length", b"-1")], "Content-Length is not a number"),
        ([*GET, (b"host", b"a"), (b"host", b"a")], "more than one Host field"),
    ],
)
def test_malformed_requests_are_refused(fields: list[tuple[bytes, bytes]], reason: str) -> None:
    assert read(fields) == Malformed(400, reason)


@pytest.mark.parametrize(
    "name", [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"]
)
def test_connection_specific_fields_are_refused(name: bytes) -> None:
    # RFC 9114 Section 4.2: these are HTTP/1.1's; a request carrying one is malformed.
    assert read([*GET, (name, b"chunked")]) == Malformed(
        400, f"connection-specific field {name.decode()}"
    )


def test_te_trailers_is_the_one_te_allowed() -> None:
    assert isinstance(read([*GET, (b"te", b"trailers")]), Head)


def test_too_many_fields_is_a_431() -> None:
    fields = [*GET, *((b"x-%d" % i, b"v") for i in range(11))]
    assert read(fields, max_fields=10) == Malformed(431, "too many request header fields")
    assert isinstance(read(fields, max_fields=11), Head)


def test_content_length_is_read_and_repeats_of_one_value_are_one() -> None:
    post = [(b":method", b"POST"), *GET[1:]]
    head = read([*post, (b"content-length", b"12"), (b"content-length", b"12")])
    assert isinstance(head, Head) and head.content_length == 12
    assert [f for f in head.fields if f[0] == b"content-length"] == [(b"content-length", b"12")]


def test_options_asterisk_and_connect_targets() -> None:
    star = read([(b":method", b"OPTIONS"), *GET[1:3], (b":path", b"*")])
    assert isinstance(star, Head) and star.target == "*"
    assert read([(b":method", b"GET"), *GET[1:3], (b":path", b"*")]) == Malformed(
        400, ":path must be a path"
    )
    # RFC 9114 Section 4.4: CONNECT has only :method and :authority (edge refuses it later).
    connect = read([(b":method", b"CONNECT"), (b":authority", b"a.test:443")])
    assert isinstance(connect, Head) and connect.target == "a.test:443"
    assert read([(b":method", b"CONNECT"), *GET[1:]]) == Malformed(
        400, "CONNECT with :scheme or :path"
    )
