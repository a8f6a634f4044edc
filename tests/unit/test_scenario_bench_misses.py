"""The miss benchmark: its pure parts on their own (wrk's Lua script, the origin's nginx
config, counting the origin's log, the miss check, ratios and the table), then the script
and config as wrk and nginx themselves read them, and one brief run end to end with real
processes (marked `system`: .ci/run's system stage installs nginx and wrk).

Here the parts that open no socket and start no process;
tests/integration/test_scenario_bench_misses.py has the ones with real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios import bench_misses
from scenarios.bench_hits import WrkResult
from scenarios.bench_misses import OriginCount, Row


def wrk_result(rps: float, p50: float, p99: float, requests: int = 1000) -> WrkResult:
    return WrkResult(requests_per_s=rps, p50_ms=p50, p99_ms=p99, requests=requests, seconds=1.0)


# --- paths and wrk's script -------------------------------------------------------------


def test_run_prefix_starts_with_the_size_the_origin_answers_by() -> None:
    assert bench_misses.run_prefix(1024, "edge", "ab12") == "/1024/edge-ab12/"
    # A server's check path is not under its run's prefix: it is not counted in the run.
    check = bench_misses.run_prefix(1024, "check-edge", "ab12")
    assert not check.startswith(bench_misses.run_prefix(1024, "edge", "ab12"))


def test_lua_script_makes_a_new_path_per_request_and_thread() -> None:
    script = bench_misses.lua_script("/1024/edge-ab12/")
    assert 'local prefix = "/1024/edge-ab12/"' in script
    # Threads numbered in setup() (the main state), each thread's prefix its own.
    assert 'thread:set("id", threads)' in script
    assert 'prefix = prefix .. id .. "/"' in script
    # request() counts up and formats a GET for the new path every time.
    assert "function request()" in script
    assert "n = n + 1" in script
    assert 'return wrk.format("GET", prefix .. n)' in script
    # No response() or done(): wrk would call into Lua per answer or print more.
    assert "function response" not in script and "function done" not in script


# --- the origin -------------------------------------------------------------------------


def test_origin_config_serves_bodies_by_size_cacheable_and_logs_each_uri(tmp_path: Path) -> None:
    bodies = tmp_path / "bodies"
    conf = bench_misses.origin_config(tmp_path, 8090, bodies)
    assert "worker_processes 1;" in conf and "daemon off;" in conf
    assert "listen 127.0.0.1:8090;" in conf
    assert f"root {bodies};" in conf
    assert 'location ~ "^/(?<size>[0-9]+)/"' in conf
    assert "try_files /$size =404;" in conf
    assert 'add_header Cache-Control "public, max-age=3600";' in conf
    assert "log_format uri '$request_uri $status';" in conf
    assert f"access_log {tmp_path}/access.log uri" in conf
    # From memory: file descriptors kept open, sendfile, no per-connection request cap.
    assert "open_file_cache max=64" in conf and "sendfile on;" in conf
    assert "keepalive_requests 10000000;" in conf
    words = [w.rstrip(";") for line in conf.splitlines() for w in line.split()]
    paths = [w for w in words if w[:1] == "/" and w not in ("/", "/$size")]
    assert paths and all(p.startswith(str(tmp_path)) for p in paths), paths


def test_count_origin_counts_a_runs_lines_paths_and_failures() -> None:
    log = "\n".join(
        [
            "/1024/edge-ab12/1/1 200",
            "/1024/edge-ab12/1/2 200",
            "/1024/edge-ab12/1/2 200",  # the same path twice
            "/1024/edge-ab12/2/1 404",
            "/1024/nginx-ab12/1/1 200",  # another server's run
            "/1024/check-edge-ab12/1 200",  # the check by hand
            "",
        ]
    )
    assert bench_misses.count_origin(log, "/1024/edge-ab12/") == OriginCount(4, 3, 1)
    assert bench_misses.count_origin(log, "/1024/nginx-ab12/") == OriginCount(1, 1, 0)
    assert bench_misses.count_origin("", "/1024/edge-ab12/") == OriginCount(0, 0, 0)


# --- the miss check ---------------------------------------------------------------------


def test_miss_check_holds_when_every_answer_reached_the_origin() -> None:
    wrk = wrk_result(1000, 1, 2, requests=1000)
    assert bench_misses.miss_problems(wrk, OriginCount(1000, 1000, 0), 50) == []
    # Up to one request per connection still in flight when wrk stopped.
    assert bench_misses.miss_problems(wrk, OriginCount(1050, 1050, 0), 50) == []


def test_miss_check_names_hits_extra_paths_and_failures() -> None:
    wrk = wrk_result(1000, 1, 2, requests=1000)
    (hits,) = bench_misses.miss_problems(wrk, OriginCount(990, 990, 0), 50)
    assert hits == "origin saw 990 paths for 1000 answered requests (10 not misses)"
    # A repeated path is not a second miss: distinct paths are what count.
    (repeats,) = bench_misses.miss_problems(wrk, OriginCount(1100, 999, 0), 50)
    assert "999 paths" in repeats
    (extra,) = bench_misses.miss_problems(wrk, OriginCount(1051, 1051, 0), 50)
    assert "more than 1000 answered requests + 50 in flight" in extra
    bad = WrkResult(1000, 1, 2, 1000, 1.0, non_2xx_3xx=3)
    assert bench_misses.miss_problems(bad, OriginCount(1000, 1000, 2), 50) == [
        "origin answered 2 requests with other than 200",
        "3 non-2xx answers",
    ]


# --- ratios, added latency, the table, JSON ---------------------------------------------


def rows() -> list[Row]:
    ok = OriginCount(100, 100, 0)
    return [
        Row("edge", 1024, wrk_result(500, 90.0, 300.0), ok, []),
        Row("nginx", 1024, wrk_result(4000, 12.0, 40.0), ok, []),
        Row("origin", 1024, wrk_result(40000, 1.0, 5.0), ok, []),
        Row("nginx", 102400, wrk_result(2000, 20.0, 60.0), ok, []),
        Row("edge", 102400, wrk_result(0, 0.0, 0.0), OriginCount(0, 0, 0), ["no answers"]),
    ]


def test_summarize_gives_ratios_and_the_latency_a_miss_adds() -> None:
    summary = bench_misses.summarize(rows())
    assert summary["1 KiB"] == {
        "throughput": 0.125,
        "p99": 7.5,
        "edge_added_p50_ms": 89.0,
        "edge_added_p99_ms": 295.0,
        "nginx_added_p50_ms": 11.0,
        "nginx_added_p99_ms": 35.0,
    }
    # No direct run for 100 KiB: no added latency; a zero edge rate is a ratio of 0.
    assert summary["100 KiB"] == {"throughput": 0.0, "p99": 0.0}
    assert bench_misses.summarize([r for r in rows() if r.server == "nginx"]) == {
        "1 KiB": {},
        "100 KiB": {},
    }


def test_render_shows_each_run_and_the_ratios() -> None:
    text = bench_misses.render(rows(), bench_misses.summarize(rows()), "shield")
    lines = text.splitlines()
    assert lines[0].split() == [
        "object",
        "server",
        "req/s",
        "p50",
        "ms",
        "p99",
        "ms",
        "errors",
        "non-2xx",
        "origin",
        "reqs",
        "misses",
    ]
    assert lines[1].split() == [
        "1",
        "KiB",
        "edge",
        "shield",
        "500",
        "90.00",
        "300.00",
        "0",
        "0",
        "100",
        "all",
    ]
    assert lines[3].split()[2:4] == ["origin", "40,000"]
    assert lines[5].split()[-1] == "NO"
    assert (
        "1 KiB: edge/nginx throughput 0.125 (must hold: at least 0.5), edge p99 / nginx p99 "
        "7.500; p99 a miss adds over the origin: edge +295.00 ms, nginx +35.00 ms"
    ) in lines
    assert "100 KiB: edge/nginx throughput 0.000" in text
    assert "edge serve" in bench_misses.render(rows(), {}, "edge")


def test_row_json_says_whether_it_was_all_misses() -> None:
    good, *_, bad = rows()
    assert good.as_json() | {"socket_errors": {}} == {
        "server": "edge",
        "size": 1024,
        "requests_per_s": 500,
        "p50_ms": 90.0,
        "p99_ms": 300.0,
        "requests": 1000,
        "seconds": 1.0,
        "socket_errors": {},
        "non_2xx_3xx": 0,
        "origin_requests": 100,
        "origin_paths": 100,
        "misses_only": True,
        "problems": [],
    }
    assert bad.as_json()["misses_only"] is False


def test_bad_options_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--tier", "middle"], ["--servers", "squid"], ["--sizes", "1x"]):
        assert bench_misses.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("bench_misses: ") and len(err.strip().splitlines()) == 1, err


# --- with wrk and nginx themselves --------------------------------------------------------
