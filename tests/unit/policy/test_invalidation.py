"""Invalidating stored responses: RFC 9111 Section 4.4.

A cache must invalidate the target URI after a non-error (2xx, 3xx) response to an
unsafe method, and may invalidate Location and Content-Location, but only when they
share the target's origin.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import SAFE_METHODS, invalidated_uris

URI = "https://shop.example/cart/items?id=7"


def invalidated(
    method: str = "POST", status: int = 200, response: list[tuple[str, str]] | None = None
) -> list[str]:
    return invalidated_uris(method, status, URI, CIMultiDict(response or []))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "PURGE", "get", "X"])
def test_unsafe_or_unknown_method_invalidates_target(method: str) -> None:
    """Section 4.4: unsafe methods, including methods whose safety is unknown."""
    assert invalidated(method) == [URI]


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE"])
def test_safe_methods_invalidate_nothing(method: str) -> None:
    """RFC 9110 Section 9.2.1: safe methods."""
    assert invalidated(method, response=[("Location", "/a")]) == []


def test_safe_method_set() -> None:
    assert sorted(SAFE_METHODS) == ["GET", "HEAD", "OPTIONS", "TRACE"]


@pytest.mark.parametrize("status", [200, 201, 204, 299, 300, 301, 303, 304, 307, 399])
def test_non_error_status_invalidates(status: int) -> None:
    """Section 4.4: a non-error status code (2xx or 3xx)."""
    assert invalidated(status=status) == [URI]


@pytest.mark.parametrize("status", [100, 101, 199, 400, 404, 409, 412, 500, 503])
def test_error_or_interim_status_invalidates_nothing(status: int) -> None:
    assert invalidated(status=status, response=[("Location", "/a")]) == []


def test_location_and_content_location_same_origin() -> None:
    """Section 4.4: Location and Content-Location of the same origin are invalidated."""
    response = [
        ("Location", "https://shop.example/orders/9"),
        ("Content-Location", "https://shop.example/cart"),
    ]
    assert invalidated(response=response) == [
        URI,
        "https://shop.example/orders/9",
        "https://shop.example/cart",
    ]


@pytest.mark.parametrize(
    ("reference", "absolute"),
    [
        ("/orders/9", "https://shop.example/orders/9"),
        ("orders/9", "https://shop.example/cart/orders/9"),
        ("../x", "https://shop.example/x"),
        ("?id=8", "https://shop.example/cart/items?id=8"),
        ("//shop.example/y", "https://shop.example/y"),
        ("  /padded  ", "https://shop.example/padded"),
    ],
)
def test_relative_references_are_resolved(reference: str, absolute: str) -> None:
    """RFC 3986 Section 5: references resolve against the target URI."""
    assert invalidated(response=[("Location", reference)]) == [URI, absolute]


@pytest.mark.parametrize(
    "reference",
    [
        "https://evil.example/cart",
        "http://shop.example/cart",
        "https://shop.example:8443/cart",
        "//evil.example/x",
        "https://shop.example.evil.example/",
    ],
    ids=["other-host", "other-scheme", "other-port", "scheme-relative-other-host", "suffix"],
)
def test_other_origins_are_never_invalidated(reference: str) -> None:
    """Section 4.4: a cache must not invalidate URIs of another origin (denial of
    service against another site's entries)."""
    response = [("Location", reference), ("Content-Location", reference)]
    assert invalidated(response=response) == [URI]


def test_duplicates_are_listed_once() -> None:
    response = [("Location", URI), ("Content-Location", "/cart/items?id=7")]
    assert invalidated(response=response) == [URI]


def test_empty_location_is_ignored() -> None:
    assert invalidated(response=[("Location", ""), ("Content-Location", "")]) == [URI]


def test_works_for_delete_204_with_content_location() -> None:
    assert invalidated_uris(
        "DELETE",
        204,
        "http://a.example/doc",
        CIMultiDict([("Content-Location", "/doc?v=2")]),
    ) == ["http://a.example/doc", "http://a.example/doc?v=2"]
