"""The archive origin's pure parts, on their own: URL path confinement, metadata,
RFC 9110 preconditions (Section 13) and ranges (Section 14), the Cache-Control rules,
and the response delay (`--latency`): its parser, the app in this process, and the command
refusing a bad value. tests/integration/test_origin.py drives the real process for
everything else.

Here the parts that open no socket and start no process;
tests/integration/test_origin_http.py has the ones with real processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from multidict import CIMultiDict

from origin.archive.rules import (
    DEFAULT_CACHE_CONTROL,
    CacheRule,
    CacheRules,
    RuleError,
    parse_rule,
    validate_cache_control,
)
from origin.archive.server import (
    MAX_RANGES,
    BadPath,
    Unsatisfiable,
    Validators,
    coalesce,
    content_type_for,
    etag_matches,
    evaluate_preconditions,
    http_date,
    if_range_holds,
    make_app,
    multipart_heads,
    parse_http_date,
    parse_latency,
    parse_ranges,
    path_segments,
    prefers_json,
    resolve,
    surrogate_keys,
)

# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("raw", "segments", "slash"),
    [
        ("/", [], True),
        ("/books/a.txt", ["books", "a.txt"], False),
        ("/books/", ["books"], True),
        ("//books///a.txt", ["books", "a.txt"], False),
        ("/caf%C3%A9.txt", ["café.txt"], False),
        ("/a%20b.txt", ["a b.txt"], False),
        ("/books%2Fa.txt", ["books", "a.txt"], False),
        ("/...", ["..."], False),
        ("/a..b", ["a..b"], False),
    ],
)
def test_path_segments(raw: str, segments: list[str], slash: bool):
    assert path_segments(raw) == (segments, slash)


@pytest.mark.parametrize(
    "raw",
    [
        "books/a.txt",
        "*",
        "/../etc/passwd",
        "/books/../../etc/passwd",
        "/books/./a.txt",
        "/%2e%2e/etc/passwd",
        "/%2E%2E%2Fetc%2Fpasswd",
        "/.%2e/x",
        "/a%00.txt",
        "/a\x00.txt",
        "/a%5c..%5cb",
        "/a\\b",
        "/a%0d%0aX: y",
        "/%ff",
        "/%C3",
        "/a%zz",
        "/a%",
        "/a%2",
    ],
)
def test_path_segments_refuses(raw: str):
    with pytest.raises(BadPath):
        path_segments(raw)


def test_resolve_confines_to_root_and_hides_dotfiles(tmp_path: Path):
    root = tmp_path / "root"
    (root / "books").mkdir(parents=True)
    (root / "books" / "a.txt").write_text("a")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("secret")
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    (root / "books" / "out.txt").symlink_to(outside)
    (root / "books" / "up").symlink_to(tmp_path, target_is_directory=True)
    (root / "books" / "in.txt").symlink_to(root / "books" / "a.txt")
    (root / "books" / "git").symlink_to(root / ".git", target_is_directory=True)
    real = Path(os.path.realpath(root))

    assert resolve(real, ["books", "a.txt"]) == real / "books" / "a.txt"
    assert resolve(real, []) == real
    assert resolve(real, ["books", "in.txt"]) == real / "books" / "a.txt"
    assert resolve(real, ["books", "missing.txt"]) == real / "books" / "missing.txt"
    for segments in (
        ["books", "out.txt"],
        ["books", "up", "outside.txt"],
        ["books", "up"],
        [".git", "config"],
        ["books", "git", "config"],
    ):
        assert resolve(real, segments) is None, segments


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("a.txt", "text/plain; charset=utf-8"),
        ("a.html", "text/html; charset=utf-8"),
        ("a.css", "text/css; charset=utf-8"),
        ("catalogue.json", "application/json"),
        ("a.png", "image/png"),
        ("a.svg", "image/svg+xml"),
        ("a.wav", "audio/wav"),
        ("a.pdf", "application/pdf"),
        ("a.epub", "application/epub+zip"),
        ("scans.tar.gz", "application/gzip"),
        ("a.bin", "application/octet-stream"),
        ("no-extension", "application/octet-stream"),
        ("a.unknownext", "application/octet-stream"),
    ],
)
def test_content_type_for(name: str, ctype: str):
    assert content_type_for(name) == ctype


@pytest.mark.parametrize(
    ("segments", "is_dir", "keys"),
    [
        (["books", "moby-dick.txt"], False, "books books/moby-dick.txt"),
        (["books", "fr", "a.txt"], False, "books books/fr/a.txt"),
        (["catalogue.json"], False, "catalogue.json"),
        (["books"], True, "books books/"),
        ([], True, "/"),
        (["books", "a b.txt"], False, "books books/a%20b.txt"),
        (["books", "café.txt"], False, "books books/caf%C3%A9.txt"),
    ],
)
def test_surrogate_keys(segments: list[str], is_dir: bool, keys: str):
    assert surrogate_keys(segments, is_dir) == keys


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", True),
        ("application/json, text/plain, */*", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("text/html;q=0.5, application/json", True),
        ("application/json;q=0", False),
        ("text/*, application/json;q=0.9", False),
    ],
)
def test_prefers_json(accept: str | None, json: bool):
    assert prefers_json(accept) is json


def test_http_dates_round_trip_in_all_three_forms():
    # RFC 9110 Section 5.6.7: IMF-fixdate, obsolete RFC 850 and asctime forms.
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"
    for form in (
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ):
        assert parse_http_date(form) == 784111777, form
    for bad in (None, "", "yesterday", "Sun, 32 Nov 1994 08:49:37 GMT"):
        assert parse_http_date(bad) is None


# ---------------------------------------------------------------- preconditions

V = Validators('"abc"', last_modified=1_000_000, date_is_strong=True)
LM = http_date(1_000_000)
BEFORE = http_date(999_990)
AFTER = http_date(1_000_010)


def h(**fields: str) -> CIMultiDict[str]:
    return CIMultiDict((k.replace("_", "-"), v) for k, v in fields.items())


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("GET", h(), None),
        # Section 13.1.1: If-Match, strong comparison.
        ("GET", h(If_Match='"abc"'), None),
        ("GET", h(If_Match='"x", "abc"'), None),
        ("GET", h(If_Match="*"), None),
        ("GET", h(If_Match='"x"'), 412),
        ("GET", h(If_Match='W/"abc"'), 412),
        ("GET", h(If_Match="abc"), 412),
        # Section 13.1.4: If-Unmodified-Since, ignored under If-Match or when invalid.
        ("GET", h(If_Unmodified_Since=LM), None),
        ("GET", h(If_Unmodified_Since=AFTER), None),
        ("GET", h(If_Unmodified_Since=BEFORE), 412),
        ("GET", h(If_Unmodified_Since="garbage"), None),
        ("GET", h(If_Match='"abc"', If_Unmodified_Since=BEFORE), None),
        # Section 13.1.2: If-None-Match, weak comparison.
        ("GET", h(If_None_Match='"abc"'), 304),
        ("HEAD", h(If_None_Match='W/"abc"'), 304),
        ("GET", h(If_None_Match="*"), 304),
        ("GET", h(If_None_Match='"x", W/"abc"'), 304),
        ("GET", h(If_None_Match='"x"'), None),
        ("DELETE", h(If_None_Match='"abc"'), 412),
        # Section 13.1.3: If-Modified-Since, GET/HEAD only, not under If-None-Match.
        ("GET", h(If_Modified_Since=LM), 304),
        ("GET", h(If_Modified_Since=AFTER), 304),
        ("GET", h(If_Modified_Since=BEFORE), None),
        ("GET", h(If_Modified_Since="garbage"), None),
        ("DELETE", h(If_Modified_Since=LM), None),
        ("GET", h(If_None_Match='"x"', If_Modified_Since=LM), None),
        # Section 13.2.2: the order of evaluation.
        ("GET", h(If_Match='"x"', If_None_Match='"abc"'), 412),
        ("GET", h(If_Unmodified_Since=BEFORE, If_None_Match='"abc"'), 412),
        ("GET", h(If_Match='"abc"', If_None_Match='"abc"'), 304),
    ],
)
def test_evaluate_preconditions(method: str, headers: CIMultiDict[str], expected: int | None):
    assert evaluate_preconditions(method, headers, V) == expected


def test_repeated_condition_fields_are_one_list():
    headers = CIMultiDict([("If-None-Match", '"x"'), ("If-None-Match", '"abc"')])
    assert evaluate_preconditions("GET", headers, V) == 304


def test_no_last_modified_means_dates_are_ignored():
    v = Validators('"abc"')
    assert evaluate_preconditions("GET", h(If_Modified_Since=AFTER), v) is None
    assert evaluate_preconditions("GET", h(If_Unmodified_Since=BEFORE), v) is None


def test_etag_matches():
    assert etag_matches('W/"a"', '"a"', weak=True)
    assert not etag_matches('W/"a"', '"a"', weak=False)
    assert not etag_matches('"a"', 'W/"a"', weak=False)
    assert etag_matches('"b", "a"', '"a"', weak=False)
    assert etag_matches(" * ", '"a"', weak=False)
    assert not etag_matches('"a, b"', '"a"', weak=True)


@pytest.mark.parametrize(
    ("value", "holds"),
    [
        ('"abc"', True),
        ('W/"abc"', False),
        ('"other"', False),
        (LM, True),
        (BEFORE, False),
        (AFTER, False),
        ("not a validator", False),
    ],
)
def test_if_range(value: str, holds: bool):
    assert if_range_holds(value, V) is holds


def test_if_range_date_needs_a_strong_date():
    # Section 13.1.5 with 8.8.2.2: a Last-Modified less than a second old is weak.
    weak_date = Validators('"abc"', last_modified=1_000_000, date_is_strong=False)
    assert not if_range_holds(LM, weak_date)
    assert if_range_holds('"abc"', weak_date)


# ---------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes=0-99", [(0, 99)]),
        ("bytes=0-0", [(0, 0)]),
        ("bytes=999-999", [(999, 999)]),
        ("bytes=-1", [(999, 999)]),
        ("bytes=-500", [(500, 999)]),
        ("bytes=-5000", [(0, 999)]),
        ("bytes=100-", [(100, 999)]),
        ("bytes=900-5000", [(900, 999)]),
        ("BYTES=0-1", [(0, 1)]),
        ("bytes=0-1, 10-11 ,\t20-21", [(0, 1), (10, 11), (20, 21)]),
        ("bytes=20-21,0-1", [(20, 21), (0, 1)]),  # disjoint: the order asked
        ("bytes=0-1,,5-6,", [(0, 1), (5, 6)]),  # empty list elements are allowed
        ("bytes=0-99,50-149", [(0, 149)]),  # overlapping: coalesced
        ("bytes=0-9,10-19", [(0, 19)]),  # adjacent: coalesced
        ("bytes=500-599,-100,0-9", [(500, 599), (900, 999), (0, 9)]),
        ("bytes=0-0,-1,0-999", [(0, 999)]),
        ("bytes=5000-6000,0-1", [(0, 1)]),  # the unsatisfiable one is dropped
        ("bytes=0-" + "9" * 5000, [(0, 999)]),  # no int() on thousands of digits
        ("bytes=0000000000000000000000010-20", [(10, 20)]),
    ],
)
def test_parse_ranges(value: str, expected: list[tuple[int, int]]):
    assert parse_ranges(value, 1000) == expected


@pytest.mark.parametrize(
    "value",
    [
        "bytes=abc",
        "bytes=5-2",
        "bytes=",
        "bytes=,",
        "bytes=-",
        "bytes=1-2-3",
        "bytes=1",
        "bytes=+1-2",
        "bytes=0x10-20",
        "bytes=١-٢",  # non-ASCII digits are not DIGIT
        "items=0-1",
        "bytes 0-1",
        "0-1",
        "bytes=0-1," + ",".join(["5-5"] * MAX_RANGES),
    ],
)
def test_parse_ranges_ignores_invalid(value: str):
    assert parse_ranges(value, 1000) is None


@pytest.mark.parametrize(
    "value",
    ["bytes=1000-", "bytes=1000-2000", "bytes=-0", "bytes=5000-,-0", "bytes=1" + "0" * 30 + "-"],
)
def test_parse_ranges_unsatisfiable(value: str):
    with pytest.raises(Unsatisfiable):
        parse_ranges(value, 1000)


def test_empty_representation_ignores_ranges():
    assert parse_ranges("bytes=0-10", 0) is None
    assert parse_ranges("bytes=-10", 0) is None


def test_max_ranges_is_allowed():
    spec = "bytes=" + ",".join(f"{i * 10}-{i * 10}" for i in range(MAX_RANGES))
    assert len(parse_ranges(spec, 1000) or []) == MAX_RANGES


def test_coalesce():
    assert coalesce([(50, 60), (0, 10)]) == [(50, 60), (0, 10)]
    assert coalesce([(50, 60), (0, 55)]) == [(0, 60)]
    assert coalesce([(0, 5), (3, 4), (20, 30), (6, 7)]) == [(0, 7), (20, 30)]


def test_multipart_heads():
    heads, tail = multipart_heads([(0, 1), (8, 9)], 10, "text/plain; charset=utf-8", "B")
    body = heads[0] + b"01" + heads[1] + b"89" + tail
    assert body == (
        b"--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 0-1/10\r\n\r\n"
        b"01"
        b"\r\n--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 8-9/10"
        b"\r\n\r\n89\r\n--B--\r\n"
    )


# ---------------------------------------------------------------- Cache-Control rules


def test_default_rules():
    rules = CacheRules()
    assert rules.cache_control("/catalogue.json") == "public, max-age=60"
    assert rules.cache_control("/books/other.json") == "public, max-age=60"
    assert rules.cache_control("/") == "public, max-age=60"
    assert rules.cache_control("/books/") == "public, max-age=60"
    assert rules.cache_control("/books/moby-dick.txt") == "public, max-age=3600"
    assert rules.cache_control("/books/fr/a.txt") == "public, max-age=3600"
    assert rules.cache_control("/images/a.png") == "public, max-age=3600"
    assert rules.cache_control("/audio/a.wav") == "public, max-age=3600"
    assert rules.cache_control("/bundles/a.bin") == "public, max-age=86400"
    assert rules.cache_control("/README.txt") == DEFAULT_CACHE_CONTROL
    assert rules.cache_control("/bookshelf.txt") == DEFAULT_CACHE_CONTROL


def test_options_go_first_and_first_match_wins():
    rules = CacheRules.from_options(
        ["/books/the-salt-road.txt=no-cache", "books/*=public, max-age=600", "*.txt=no-store"]
    )
    assert rules.rules[0] == CacheRule("/books/the-salt-road.txt", "no-cache")
    assert rules.rules[1] == CacheRule("/books/*", "public, max-age=600")
    assert rules.cache_control("/books/the-salt-road.txt") == "no-cache"
    assert rules.cache_control("/books/other.txt") == "public, max-age=600"
    assert rules.cache_control("/README.txt") == "no-store"
    assert rules.cache_control("/bundles/a.bin") == "public, max-age=86400"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("/a/*=public, max-age=60", CacheRule("/a/*", "public, max-age=60")),
        ("/a/*=public,max-age=60", CacheRule("/a/*", "public, max-age=60")),
        (
            "*.iso = public, max-age=600, immutable",
            CacheRule("*.iso", "public, max-age=600, immutable"),
        ),
        ('/x=private, no-cache="Set-Cookie"', CacheRule("/x", 'private, no-cache="Set-Cookie"')),
        ("a.txt=no-store", CacheRule("/a.txt", "no-store")),
    ],
)
def test_parse_rule(text: str, rule: CacheRule):
    assert parse_rule(text) == rule


@pytest.mark.parametrize(
    "text",
    [
        "no-equals",
        "=public",
        "/a=",
        "/a=  ",
        "/a=max-age=60\r\nSet-Cookie: x=1",
        "/a=max age=60",
        '/a=no-cache="unterminated',
        "/a=,,",
        "/a=public;max-age=1",
    ],
)
def test_parse_rule_refuses(text: str):
    with pytest.raises(RuleError):
        parse_rule(text)


def test_validate_cache_control_normalises():
    assert validate_cache_control(" public ,max-age=60,, ") == "public, max-age=60"


# ---------------------------------------------------------------- response delay


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("0.2", 0.2), (" 1.5 ", 1.5)])
def test_parse_latency(text: str, seconds: float):
    assert parse_latency(text) == seconds


@pytest.mark.parametrize("text", ["-0.1", "-1", "abc", "", "nan", "inf", "1e400", "0.2s"])
def test_parse_latency_refuses(text: str):
    with pytest.raises(ValueError, match="latency must be"):
        parse_latency(text)


def test_make_app_refuses_a_negative_latency(tmp_path: Path):
    with pytest.raises(ValueError, match="latency"):
        make_app(tmp_path, latency=-0.5)
