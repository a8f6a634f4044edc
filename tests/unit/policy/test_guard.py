"""edge.features.guard's pure checks: framing left to it, targets, key queries, rate limits,
and the bounded body reader."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from edge.features import guard
from edge.features.guard import Refusal, Refused, Target

MAX = {"max_body": 1000, "max_header_bytes": 4096}


def framing(method: str = "POST", version: tuple[int, int] = (1, 1), **fields: str):
    headers = CIMultiDict({"Host": "a", **{k.replace("_", "-"): v for k, v in fields.items()}})
    return guard.check_framing(version, method, headers, **MAX)


def test_plain_requests_pass() -> None:
    assert framing("GET") is None
    assert framing("POST", Content_Length="10") is None
    assert framing("POST", Transfer_Encoding="chunked") is None
    assert framing("GET", Content_Length="0") is None
    assert framing("GET", version=(1, 0)) is None
    # HTTP/2 (edge.server.http2): framed by h2, a Content-Length checked against DATA.
    assert framing("GET", version=(2, 0)) is None
    assert framing("POST", version=(2, 0), Content_Length="10") is None


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"version": (4, 0)}, 505),
        ({"version": (0, 9)}, 400),
        ({"version": (1, 0), "Transfer_Encoding": "chunked"}, 400),
        ({"Transfer_Encoding": "gzip, chunked"}, 501),
        ({"Transfer_Encoding": "chunked, identity"}, 501),
        ({"Content_Length": "1001"}, 413),
        ({"Expect": "200-ok"}, 417),
    ],
)
def test_framing_refusals(kwargs: dict, status: int) -> None:
    refusal = framing(**kwargs)
    assert refusal is not None and refusal.status == status


def test_get_and_head_with_a_body_are_refused_and_closed() -> None:
    for method in ("GET", "HEAD"):
        for field in ({"Content_Length": "5"}, {"Transfer_Encoding": "chunked"}):
            refusal = framing(method, **field)
            assert refusal == Refusal(400, f"a {method} request must not have a body", close=True)
    assert framing("DELETE", Content_Length="5") is None


def test_duplicated_length_or_length_with_chunked_is_ambiguous() -> None:
    headers = CIMultiDict([("Content-Length", "3"), ("Content-Length", "3")])
    refusal = guard.check_framing((1, 1), "POST", headers, **MAX)
    assert refusal is not None and refusal.status == 400 and refusal.close
    headers = CIMultiDict([("Content-Length", "3"), ("Transfer-Encoding", "chunked")])
    refusal = guard.check_framing((1, 1), "POST", headers, **MAX)
    assert refusal is not None and refusal.status == 400


def test_all_header_bytes_are_bounded() -> None:
    headers = CIMultiDict((f"X-{i}", "v" * 100) for i in range(40))
    refusal = guard.check_framing((1, 1), "GET", headers, **MAX)
    assert refusal is not None and refusal.status == 431


def test_method_allow_list_gives_405_with_allow() -> None:
    allowed = ("GET", "HEAD")
    assert guard.check_method("GET", allowed) is None
    refusal = guard.check_method("DELETE", allowed)
    assert refusal == Refusal(405, "method DELETE is not allowed", allow="GET, HEAD")
    assert guard.check_method("M-SEARCH", ("*",)) is None
    assert guard.check_method("TRACE", ("*",)) is not None
    assert guard.check_method("CONNECT", ("GET", "*")) is not None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", Target("/", None)),
        ("/a/b?x=1&y", Target("/a/b", "x=1&y")),
        ("/a?", Target("/a", "")),
        ("/%7euser/%41%62", Target("/~user/Ab", None)),  # unreserved escapes decoded
        ("/a%2fb%3f", Target("/a%2Fb%3F", None)),  # reserved ones kept, upper-cased
        ("/q?a=%7e%2f", Target("/q", "a=~%2F")),
        ("/a..b/...", Target("/a..b/...", None)),  # not dot-segments
        ("/caf\u00e9", Target("/caf%C3%A9", None)),  # raw non-ASCII: escaped
        ("/caf%c3%a9", Target("/caf%C3%A9", None)),
    ],
)
def test_targets_are_normalised(raw: str, expected: Target) -> None:
    assert guard.normalise_target(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/../etc/passwd",
        "/a/../../b",
        "/a/./b",
        "/a/%2e%2e/b",
        "/a/%2E%2e/b",
        "/a/.%2e/b",
        "/a/..%2fb",
        "/a/%2e%2e%2fb",
        "/a\\..\\b",
        "/a%5c..%5cb",
        "/a%00b",
        "/a%0ab",
        "/a%zz",
        "/a%2",
        "*",
        "a/b",
    ],
)
def test_traversal_and_bad_targets_are_refused(raw: str) -> None:
    refusal = guard.normalise_target(raw)
    assert isinstance(refusal, Refusal) and refusal.status == 400


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("archive.test", "archive.test"),
        ("Archive.Test:8080", "Archive.Test:8080"),
        ("archive.test:", "archive.test"),  # RFC 3986 Section 6.2.3: empty port
        ("[2001:db8::1]:443", "[2001:db8::1]:443"),
        ("127.0.0.1", "127.0.0.1"),
        ("under_score.test", "under_score.test"),
    ],
)
def test_authorities_pass(host: str, expected: str) -> None:
    assert guard.check_authority(host) == expected


@pytest.mark.parametrize(
    "host", ["a b", "h/a", "h?a", "h#a", "user@h", "", ":80", "h:99999", "h:x", "h:123456", "h%41"]
)
def test_anything_but_an_authority_is_a_400(host: str) -> None:
    refusal = guard.check_authority(host)
    assert isinstance(refusal, Refusal) and refusal.status == 400 and refusal.close


def test_host_field_lines() -> None:
    """RFC 9112 Section 3.2: one Host in HTTP/1.1; none allowed in HTTP/1.0; never two."""
    assert guard.check_host(["a"], (1, 1)) == "a"
    assert guard.check_host([], (1, 0)) == ""
    for values, version in (([], (1, 1)), (["a", "a"], (1, 1)), (["a", "b"], (1, 0))):
        refusal = guard.check_host(values, version)
        assert isinstance(refusal, Refusal) and refusal.status == 400


def test_fields_named_with_underscores_are_left_out() -> None:
    fields = [("X-Original-URL", "/a"), ("X_Original_URL", "/b"), ("Accept", "*/*")]
    assert guard.without_underscores(fields) == [("X-Original-URL", "/a"), ("Accept", "*/*")]


def test_key_query_modes() -> None:
    assert guard.key_query("b=2&a=1", "keep", ()) == "b=2&a=1"
    assert guard.key_query("b=2&a=1", "sort", ()) == "a=1&b=2"
    assert guard.key_query("b=2&a=1", "ignore", ()) is None
    assert guard.key_query(None, "keep", ()) is None
    ignored = ("utm_*", "fbclid")
    assert guard.key_query("id=3&utm_source=x&fbclid=y&utm_medium=z", "keep", ignored) == "id=3"
    assert guard.key_query("utm_source=x", "keep", ignored) is None
    assert guard.key_query("b=1&utm_a=2&a=1", "sort", ignored) == "a=1&b=1"


def test_token_bucket_allows_burst_then_refills_at_rate() -> None:
    limiter = guard.RateLimiter(guard.rate_classes(10, 5, ()))
    now = 1000.0
    assert [limiter.take("1.2.3.4", "h", "/", now) for _ in range(5)] == [0.0] * 5
    wait = limiter.take("1.2.3.4", "h", "/", now)
    assert wait == pytest.approx(0.1)
    assert limiter.take("5.6.7.8", "h", "/", now) == 0.0  # another client, its own bucket
    assert limiter.take("1.2.3.4", "h", "/", now + 0.1) == 0.0
    assert limiter.take("1.2.3.4", "h", "/", now + 0.1) > 0


def test_rate_classes_match_host_and_path_first() -> None:
    classes = guard.rate_classes(
        100,
        100,
        ({"name": "api", "host": "*.example.org", "path": "^/api/", "rate": 1, "burst": 1},),
    )
    limiter = guard.RateLimiter(classes)
    assert limiter.take("c", "www.example.org", "/api/x", 0) == 0
    assert limiter.take("c", "www.example.org", "/api/x", 0) == pytest.approx(1.0)
    assert limiter.take("c", "www.example.org", "/books/1", 0) == 0  # default class
    assert limiter.take("c", "other.net", "/api/x", 0) == 0


def test_rate_class_mistakes_name_the_problem() -> None:
    with pytest.raises(ValueError, match="rate must be a number"):
        guard.rate_classes(0, 0, ({"name": "x"},))
    with pytest.raises(ValueError, match="unknown rate class setting"):
        guard.rate_classes(0, 0, ({"rate": 1, "limit": 2},))
    with pytest.raises(ValueError, match="bad path pattern"):
        guard.rate_classes(0, 0, ({"rate": 1, "path": "("},))


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = guard.RateLimiter(guard.rate_classes(1, 1, ()), max_clients=100)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}", "h", "/", 0)
    assert len(limiter._buckets) == 100


def test_too_many_rounds_retry_after_up() -> None:
    assert guard.too_many(0.01) == Refusal(429, "too many requests", retry_after=1)
    assert guard.too_many(2.2).retry_after == 3


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_read_body_reads_whole_body() -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(b"abc")
    stream.feed_data(b"def")
    stream.feed_eof()
    reader = _Reader(stream)
    assert await guard.read_body(reader, max_size=10, timeout=1, min_rate=1) == b"abcdef"


async def test_read_body_refuses_too_large() -> None:
    stream = asyncio.StreamReader()
    stream.feed_data(b"x" * 11)
    stream.feed_eof()
    with pytest.raises(Refused) as info:
        await guard.read_body(_Reader(stream), max_size=10, timeout=1, min_rate=1)
    assert info.value.refusal.status == 413


async def test_read_body_times_out_a_trickle() -> None:
    stream = asyncio.StreamReader()

    async def trickle() -> None:
        for _ in range(100):
            stream.feed_data(b"x")
            await asyncio.sleep(0.02)

    task = asyncio.create_task(trickle())
    try:
        with pytest.raises(Refused) as info:
            # 0.2 s plus one second per 1000 bytes: 1 byte per 20 ms cannot keep up.
            await guard.read_body(_Reader(stream), max_size=1000, timeout=0.2, min_rate=1000)
        assert info.value.refusal.status == 408 and info.value.refusal.close
    finally:
        task.cancel()


class _Reader:
    """asyncio.StreamReader with aiohttp's `readany` (what read_body calls)."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.stream = stream

    async def readany(self) -> bytes:
        return await self.stream.read(65536)
