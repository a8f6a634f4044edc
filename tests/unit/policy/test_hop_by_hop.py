"""Hop-by-hop fields: RFC 9111 Section 3.1 (what a cache stores) and RFC 9110
Section 7.6.1 (Connection and the fields it nominates).
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import HOP_BY_HOP, connection_listed, end_to_end


@pytest.mark.parametrize(
    "name",
    [
        "Connection",
        "Proxy-Connection",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Proxy-Authenticate",
        "Proxy-Authentication-Info",
        "Proxy-Authorization",
        "transfer-encoding",
        "KEEP-ALIVE",
    ],
)
def test_hop_by_hop_fields_are_dropped(name: str) -> None:
    """RFC 9110 Section 7.6.1 / RFC 9111 Section 3.1: these apply to one hop only."""
    headers = CIMultiDict([(name, "x"), ("Content-Type", "text/plain")])
    assert end_to_end(headers) == [("Content-Type", "text/plain")]


def test_hop_by_hop_set() -> None:
    assert sorted(HOP_BY_HOP) == [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ]


def test_connection_listed_fields_are_dropped() -> None:
    """RFC 9110 Section 7.6.1: fields named in Connection are hop-by-hop too."""
    headers = CIMultiDict(
        [
            ("Connection", "X-Hop, close"),
            ("Connection", "x-other"),
            ("X-Hop", "1"),
            ("x-HOP", "2"),
            ("X-Other", "3"),
            ("X-Kept", "4"),
        ]
    )
    assert connection_listed(headers) == {"x-hop", "close", "x-other"}
    assert end_to_end(headers) == [("X-Kept", "4")]


def test_end_to_end_keeps_order_and_duplicates() -> None:
    headers = CIMultiDict(
        [
            ("Set-Cookie", "a=1"),
            ("Keep-Alive", "timeout=5"),
            ("Cache-Control", "max-age=60"),
            ("Set-Cookie", "b=2"),
        ]
    )
    assert end_to_end(headers) == [
        ("Set-Cookie", "a=1"),
        ("Cache-Control", "max-age=60"),
        ("Set-Cookie", "b=2"),
    ]


def test_end_to_end_drop_is_case_insensitive() -> None:
    headers = CIMultiDict([("Content-Length", "5"), ("ETag", '"a"'), ("Date", "d")])
    assert end_to_end(headers, drop=("content-length", "ETAG")) == [("Date", "d")]


def test_end_to_end_without_connection() -> None:
    headers = CIMultiDict([("Content-Type", "text/plain"), ("Vary", "Accept")])
    assert connection_listed(headers) == set()
    assert end_to_end(headers) == [("Content-Type", "text/plain"), ("Vary", "Accept")]
