"""The guard soak scenario: its request builders and judges on their own, then one quick
run as a subprocess (`python -m scenarios.guard_soak --quick`), judged from its JSON
report: the report's shape, the well-behaved clients losing nothing, and every abuser
refused (429s for the flood, slowloris connections closed by the edge, smuggled requests
never reaching the origin). The p99 ratio is reported, not asserted here: on a shared
2-core machine it moves with whatever else runs.

Here the parts that open no socket and start no process;
tests/integration/test_scenario_guard_soak.py has the ones with real processes."""

from __future__ import annotations

from typing import Any

from scenarios import guard_soak

# --- parts ------------------------------------------------------------------------------


def test_status_of_and_response_count() -> None:
    assert guard_soak.status_of(b"HTTP/1.1 408 Request Timeout\r\n\r\n") == 408
    assert guard_soak.status_of(b"") is None
    assert guard_soak.outcome_of(b"") == "closed"
    assert guard_soak.outcome_of(b"HTTP/1.1 431 Too Large\r\n") == "431"
    two = b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    assert guard_soak.response_count(two) == 2
    assert guard_soak.response_count(b"HTTP/1.1 400 Bad\r\n\r\n") == 1


def test_percentiles_in_ms() -> None:
    assert guard_soak.percentiles([]) == {"p50": None, "p99": None, "max": None}
    got = guard_soak.percentiles([i / 1000 for i in range(1, 101)])
    assert got == {"p50": 50.0, "p99": 99.0, "max": 100.0}


def test_range_bombs_exceed_or_fill_the_object() -> None:
    bombs = guard_soak.range_bombs()
    assert bombs["200x 0-"].count("0-") == 200
    assert len(bombs["400 tiny"].split(",")) == 400
    assert all(b.startswith("bytes=") for b in bombs.values())


def test_smuggling_requests_hide_a_request_naming_the_marker() -> None:
    reqs = guard_soak.smuggling_requests("h", "mark")
    assert set(reqs) == {"CL.TE", "TE.CL", "TE.TE", "TE obfuscated", "CL.CL"}
    for kind, data in reqs.items():
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"POST "), kind
        assert b"/mark-" in rest, kind


def test_oversize_requests_pass_the_limits() -> None:
    reqs = guard_soak.oversize_requests("h")
    line = reqs["request line 16 KiB"][0].split(b"\r\n")[0]
    assert len(line) > 8190
    assert reqs["150 header fields"][0].count(b"X-Many-") == 150
    assert len(reqs["80 KiB of fields"][0]) > 64 << 10


def _flood(**changes: Any) -> dict[str, Any]:
    rec = {
        "from": "127.0.0.70",
        "offered_rate": 1000.0,
        "requests": 5000,
        "statuses": {"200": 1400, "429": 3600},
        "retry_after": {"1": 3600},
        "errors": {},
        "span_s": 5.0,
    }
    return rec | changes


def test_judge_flood() -> None:
    assert guard_soak.judge_flood(_flood()) == []
    assert guard_soak.judge_flood(_flood(statuses={"200": 5000}))  # no 429, too many 200s
    assert guard_soak.judge_flood(_flood(retry_after={"none": 3600}))


def test_judge_slowloris_and_slow_post_bound_the_time_held() -> None:
    ok = {
        "outcomes": {"408": 10, "closed": 5},
        "longest_held_s": {"408": 2.1, "closed": 0.01},
        "longest_open_at_end_s": 1.0,
    }
    assert guard_soak.judge_slowloris(ok) == []
    held = ok | {"longest_held_s": {"408": 9.0}}
    assert "lived 9.0s" in guard_soak.judge_slowloris(held)[0]
    assert guard_soak.judge_slowloris(ok | {"outcomes": {"closed": 5}})  # never a 408
    assert guard_soak.judge_slowloris(ok | {"longest_held_s": {"200": 0.5}})
    assert guard_soak.judge_slow_post(ok | {"longest_held_s": {"408": 4.2}}) == []


def test_judge_range_bombs_and_one_shots() -> None:
    kind = {"statuses": {"206": 3}, "max_body_bytes": 16 * guard_soak.LARGE_SIZE}
    rec = {"kinds": {"16x 0-": kind | {"max_amplification": 16.0}}}
    assert "16.00x" in guard_soak.judge_range_bombs(rec)[0]
    smuggled = {
        "kinds": {"CL.TE": {"statuses": {"400": 3}, "left_open": 0, "answered_twice": 1}},
        "origin_saw_marker": 1,
    }
    assert len(guard_soak.judge_smuggling(smuggled)) == 2


# --- a quick run ------------------------------------------------------------------------
