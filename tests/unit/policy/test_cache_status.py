"""The Cache-Status response field: RFC 9211 Section 2 (parameters hit, fwd,
fwd-status, ttl, stored, collapsed, detail), Structured Fields per RFC 8941.
"""

from __future__ import annotations

import pytest

from edge.rfc.cachestatus import CacheStatus


def test_bare_node() -> None:
    """RFC 9211 Section 2: the cache identifier alone (no hit, no fwd)."""
    assert CacheStatus("edge1").render() == "edge1"


def test_hit_with_ttl() -> None:
    """Section 2.1 hit and 2.6 ttl."""
    assert CacheStatus("edge1", hit=True, ttl=42).render() == "edge1; hit; ttl=42"


def test_negative_ttl() -> None:
    """Section 2.6: ttl may be negative for a stale response."""
    assert CacheStatus("edge1", hit=True, ttl=-5).render() == "edge1; hit; ttl=-5"


def test_ttl_zero_is_rendered() -> None:
    assert CacheStatus("edge1", hit=True, ttl=0).render() == "edge1; hit; ttl=0"


def test_miss_forwarded_and_stored() -> None:
    """Section 2.2 fwd, 2.3 fwd-status, 2.5 stored."""
    status = CacheStatus("edge1", fwd="uri-miss", fwd_status=200, stored=True)
    assert status.render() == "edge1; fwd=uri-miss; fwd-status=200; stored"


def test_all_parameters_in_order() -> None:
    status = CacheStatus(
        "edge1",
        hit=True,
        fwd="stale",
        fwd_status=304,
        stored=True,
        collapsed=True,
        ttl=60,
        detail="revalidated",
    )
    assert status.render() == (
        "edge1; hit; fwd=stale; fwd-status=304; stored; collapsed; ttl=60; detail=revalidated"
    )


@pytest.mark.parametrize(
    "fwd", ["bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"]
)
def test_fwd_values_are_tokens(fwd: str) -> None:
    """Section 2.2: the fwd reasons are tokens."""
    assert CacheStatus("e", fwd=fwd).render() == f"e; fwd={fwd}"


@pytest.mark.parametrize(
    ("detail", "rendered"),
    [
        ("upstream-timeout", "detail=upstream-timeout"),
        ("stale-while-revalidate", "detail=stale-while-revalidate"),
        ("a/b:c", "detail=a/b:c"),
        ("stale-if-error upstream-502", 'detail="stale-if-error upstream-502"'),
        ("502", 'detail="502"'),
        ("a,b", 'detail="a,b"'),
        ("a;b", 'detail="a;b"'),
        ("a=b", 'detail="a=b"'),
        ('say "hi"', 'detail="say \\"hi\\""'),
        ("back\\slash", 'detail="back\\\\slash"'),
    ],
    ids=[
        "token",
        "token-2",
        "token-with-colon-slash",
        "space",
        "leading-digit",
        "comma",
        "semicolon",
        "equals",
        "quotes-escaped",
        "backslash-escaped",
    ],
)
def test_detail_is_token_or_string(detail: str, rendered: str) -> None:
    """Section 2.8: detail is an sf-token or an sf-string; anything that is not a valid
    token (RFC 8941 Section 3.3.4) is quoted, with `"` and `\\` escaped (3.3.3)."""
    assert CacheStatus("edge1", detail=detail).render() == f"edge1; {rendered}"


def test_empty_detail_is_omitted() -> None:
    assert CacheStatus("edge1", detail="").render() == "edge1"


@pytest.mark.parametrize(
    ("node", "rendered"),
    [("edge-test", "edge-test"), ("cdn.example.net", "cdn.example.net"), ("edge 1", '"edge 1"')],
)
def test_node_is_token_or_string(node: str, rendered: str) -> None:
    """Section 2: the cache identifier is an sf-token or an sf-string."""
    assert CacheStatus(node, hit=True).render() == f"{rendered}; hit"


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (CacheStatus("e", hit=True), "hit"),
        (CacheStatus("e", hit=True, detail="upstream-timeout"), "hit"),
        (CacheStatus("e", fwd="uri-miss", detail="upstream-unreachable"), "error"),
        (CacheStatus("e", fwd="stale"), "stale"),
        (CacheStatus("e", fwd="bypass"), "bypass"),
        (CacheStatus("e", detail="internal-error"), "synth"),
        (CacheStatus("e"), "synth"),
    ],
)
def test_label(status: CacheStatus, label: str) -> None:
    """A short name for logs and metrics."""
    assert status.label == label
