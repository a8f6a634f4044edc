"""Tests of the scenarios' own pure parts: wrk's report parser, sizes, conformance scoring
and floors, the nginx reference config, the large-file scenario's parsers (origin access
log, /proc fields, curl's write-out, the object's stamped bytes), and the process/origin
plumbing on loopback.

The proxies themselves are not started here; `python -m scenarios.conformance` and
`python -m scenarios.bench_hits` do that.
Here the parts that open no socket and start no process;
tests/integration/test_scenarios_static.py has the ones with real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios import bench_hits, conformance, harness, large_files
from scenarios.conformance import CacheTest, KindScore

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8080/obj/1024
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.72ms  812.00us  21.30ms   91.02%
    Req/Sec    23.18k     1.01k   25.11k    71.00%
  Latency Distribution
     50%    1.61ms
     75%    1.90ms
     90%    2.30ms
     99%    9.83ms
  230571 requests in 10.00s, 278.60MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  23057.10
Transfer/sec:     27.86MB
"""


# --- bench_hits: wrk output, sizes ------------------------------------------------------


def test_parse_wrk_reads_throughput_percentiles_and_errors() -> None:
    r = bench_hits.parse_wrk(WRK_OUTPUT)
    assert r.requests_per_s == pytest.approx(23057.10)
    assert r.p50_ms == pytest.approx(1.61)
    assert r.p99_ms == pytest.approx(9.83)
    assert r.requests == 230571
    assert r.seconds == pytest.approx(10.0)
    assert r.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 3}
    assert r.errors == 5
    assert r.non_2xx_3xx == 7


def test_parse_wrk_without_error_lines_reports_none() -> None:
    clean = "\n".join(
        line
        for line in WRK_OUTPUT.splitlines()
        if not line.lstrip().startswith(("Socket errors", "Non-2xx"))
    )
    r = bench_hits.parse_wrk(clean)
    assert r.errors == 0
    assert r.non_2xx_3xx == 0


def test_parse_wrk_converts_microseconds_and_seconds() -> None:
    text = (
        WRK_OUTPUT.replace("     50%    1.61ms", "     50%  812.00us")
        .replace("     99%    9.83ms", "     99%    1.20s")
        .replace("requests in 10.00s", "requests in 1.00m")
    )
    r = bench_hits.parse_wrk(text)
    assert r.p50_ms == pytest.approx(0.812)
    assert r.p99_ms == pytest.approx(1200.0)
    assert r.seconds == pytest.approx(60.0)


def test_parse_wrk_rejects_output_without_latency_distribution() -> None:
    without = WRK_OUTPUT.split("  Latency Distribution")[0]
    with pytest.raises(ValueError):
        bench_hits.parse_wrk(without)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1k", 1024), ("100k", 102400), ("100KiB", 102400), ("512", 512), ("1m", 1048576)],
)
def test_parse_size(text: str, size: int) -> None:
    assert bench_hits.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "1.5k", "10x", "-1k"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        bench_hits.parse_size(text)


def test_size_label() -> None:
    assert bench_hits.size_label(1024) == "1 KiB"
    assert bench_hits.size_label(100 * 1024) == "100 KiB"
    assert bench_hits.size_label(1024**2) == "1 MiB"
    assert bench_hits.size_label(1000) == "1000 B"


def test_ratio_handles_zero_reference() -> None:
    assert bench_hits.ratio(1.0, 4.0) == 0.25
    assert bench_hits.ratio(1.0, 0.0) is None


# --- conformance: scoring ---------------------------------------------------------------

FAKE_TESTS = [
    CacheTest("a", "A must", "required"),
    CacheTest("b", "B must, needs a", "required", depends_on=("a",)),
    CacheTest("c", "C must, browser only", "required", browser_only=True),
    CacheTest("d", "D optimal", "optimal"),
    CacheTest("e", "E optimal, needs failing f", "optimal", depends_on=("f",)),
    CacheTest("f", "F check", "check"),
    CacheTest("g", "G check", "check"),
]


def test_score_counts_kinds_over_all_tests_and_honours_dependencies() -> None:
    results = {
        "a": True,
        "b": True,
        "d": True,
        "e": True,
        "f": ["Assertion", "Response 2 comes from cache"],
        "g": True,
    }
    scores = conformance.score(FAKE_TESTS, results)
    assert scores["required"] == KindScore(passed=2, total=3, runnable=2)
    # e's own result is true, but it depends on f, which failed.
    assert scores["optimal"] == KindScore(passed=1, total=2, runnable=2)
    assert scores["check"] == KindScore(passed=1, total=2, runnable=2)


def test_dependency_failure_propagates_transitively() -> None:
    tests = [
        CacheTest("x", "x", "required"),
        CacheTest("y", "y", "required", depends_on=("x",)),
        CacheTest("z", "z", "required", depends_on=("y",)),
    ]
    by_id = {t.id: t for t in tests}
    results = {"x": ["Setup", "Response 1 status is 500, not 200"], "y": True, "z": True}
    assert not conformance.passes("z", results, by_id)
    assert conformance.score(tests, results)["required"].passed == 0


def test_dependency_cycle_does_not_recurse_forever() -> None:
    tests = [
        CacheTest("p", "p", "required", depends_on=("q",)),
        CacheTest("q", "q", "required", depends_on=("p",)),
    ]
    by_id = {t.id: t for t in tests}
    assert not conformance.passes("p", {"p": True, "q": True}, by_id)


def test_failing_lists_required_and_optimal_with_reasons() -> None:
    results = {"a": ["Assertion", "Response 2 comes from cache"], "b": True, "d": True}
    rows = conformance.failing(FAKE_TESTS, results)
    reasons = {t.id: why for t, why in rows}
    assert reasons == {
        "a": "Assertion: Response 2 comes from cache",
        "b": "depends on a",
        "e": "not run",
    }
    with_browser = conformance.failing(FAKE_TESTS, results, include_browser_only=True)
    assert ("c", "browser only") in {(t.id, why) for t, why in with_browser}


def test_check_floor() -> None:
    scores = {
        "required": KindScore(10, 20, 19),
        "optimal": KindScore(5, 9, 9),
        "check": KindScore(1, 2, 2),
    }
    assert conformance.check_floor(scores, {"required": 10, "optimal": 0}) == []
    problems = conformance.check_floor(scores, {"required": 11, "optimal": 5})
    assert problems == ["required: 10 passed, below the floor of 11"]
    assert conformance.check_floor(scores, {"bogus": 1}) == ["floor names unknown kind 'bogus'"]
    assert "not an integer" in conformance.check_floor(scores, {"required": "10"})[0]


def test_repository_floor_file_is_valid() -> None:
    import json

    floor = json.loads((harness.REPO_ROOT / ".ci" / "conformance-floor.json").read_text())
    assert set(floor) == {"required", "optimal"}
    zero = {k: KindScore(0, 0, 0) for k in conformance.KINDS}
    assert all(isinstance(v, int) and v >= 0 for v in floor.values())
    # The floor is met by a perfect score and is checked kind by kind.
    perfect = {k: KindScore(10**6, 10**6, 10**6) for k in conformance.KINDS}
    assert conformance.check_floor(perfect, floor) == []
    assert len(conformance.check_floor(zero, floor)) == sum(v > 0 for v in floor.values())


def test_parse_client_output_skips_noise_around_the_json() -> None:
    text = 'npm warn something\n{\n  "a": true,\n  "b": ["Assertion", "x"]\n}\n'
    assert conformance.parse_client_output(text) == {"a": True, "b": ["Assertion", "x"]}
    with pytest.raises(harness.ScenarioError):
        conformance.parse_client_output("Error: connect ECONNREFUSED")


def test_tests_from_json_defaults_kind_to_required() -> None:
    tests = conformance.tests_from_json(
        [{"id": "t1", "name": "n"}, {"id": "t2", "kind": "check", "depends_on": ["t1"]}]
    )
    assert tests[0].kind == "required"
    assert tests[1].depends_on == ("t1",)


def test_render_table_shows_runnable_counts_and_peers() -> None:
    scores = conformance.score(FAKE_TESTS, {"a": True})
    text = conformance.render_table("edge", scores, {"nginx 1.18": scores})
    assert "1 of 2 runnable by a proxy" in text
    assert "nginx 1.18" in text
    assert "1/3" in text


# --- harness: nginx config, edge command, processes, origin ------------------------------


def test_nginx_config_keeps_every_path_in_the_run_dir(tmp_path: Path) -> None:
    conf = harness.nginx_config(tmp_path, 8081, 9091, keepalive_upstream=False)
    assert "worker_processes 1;" in conf
    assert "daemon off;" in conf
    assert "listen 127.0.0.1:8081;" in conf
    assert "server 127.0.0.1:9091;" in conf
    assert "proxy_cache edge_ref;" in conf
    assert "keepalive" not in conf
    paths = [
        w for line in conf.splitlines() for w in line.split() if w.startswith("/") and w != "/"
    ]
    assert len(paths) >= 8
    assert all(p.startswith(str(tmp_path)) for p in paths), paths
    keep = harness.nginx_config(tmp_path, 8081, 9091, keepalive_upstream=True)
    assert "keepalive 16;" in keep
    assert "proxy_http_version 1.1;" in keep


def test_nginx_config_takes_the_cache_bound_and_idle_upstream_connections(
    tmp_path: Path,
) -> None:
    conf = harness.nginx_config(
        tmp_path, 8081, 9091, keepalive_upstream=True, max_size="8g", upstream_keepalive=64
    )
    assert "max_size=8g " in conf
    assert "keepalive 64;" in conf
    # The defaults stay what the conformance and hit runs have always used.
    default = harness.nginx_config(tmp_path, 8081, 9091, keepalive_upstream=True)
    assert "max_size=1000m " in default and "keepalive 16;" in default


def test_require_tool_names_the_apt_package_that_brings_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(harness, "find_tool", lambda name: None)
    with pytest.raises(harness.ScenarioError) as aria2:
        harness.require_tool("aria2c")
    assert str(aria2.value) == "aria2c not found: install it with `apt-get install aria2`"
    with pytest.raises(harness.ScenarioError, match=r"`apt-get install knot`"):
        harness.require_tool("knotd")
    with pytest.raises(harness.ScenarioError, match=r"`apt-get install wrk`$"):
        harness.require_tool("wrk")


def test_memory_folder_is_new_and_readable_by_nginx_workers(tmp_path: Path) -> None:
    first = harness.memory_folder(tmp_path, "edge-test-")
    second = harness.memory_folder(tmp_path, "edge-test-")
    try:
        assert first != second and first.is_dir() and not any(first.iterdir())
        assert first.name.startswith("edge-test-")
        assert first.stat().st_mode & 0o777 == 0o755
    finally:
        first.rmdir()
        second.rmdir()


def test_edge_argv_follows_the_serve_contract(tmp_path: Path) -> None:
    argv = harness.edge_argv(8080, "http://127.0.0.1:9090", tmp_path, "conformance")
    i = argv.index("serve")
    assert argv[i:] == [
        "serve",
        "--listen",
        "127.0.0.1:8080",
        "--upstream",
        "http://127.0.0.1:9090",
        "--cache-dir",
        str(tmp_path),
        "--name",
        "conformance",
    ]


# --- large_files: sizes, the object's bytes, origin log, /proc, curl, nginx ---------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("1G", 1 << 30), ("64M", 64 << 20), ("64MiB", 64 << 20), ("512k", 512 << 10), ("4096", 4096)],
)
def test_large_parse_size(text: str, size: int) -> None:
    assert large_files.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "1.5G", "10x", "-1M"])
def test_large_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        large_files.parse_size(text)


def test_large_size_label() -> None:
    assert large_files.size_label(1 << 30) == "1 GiB"
    assert large_files.size_label(64 << 20) == "64 MiB"
    assert large_files.size_label(1536 << 20) == "1536 MiB"
    assert large_files.size_label(1000) == "1000 B"


def test_stamped_block_puts_the_offset_every_4k_so_no_two_blocks_match() -> None:
    base = bytes(range(256)) * 64  # 16 KiB stand-in for the 1 MiB block
    block = large_files.stamped_block(base, 1 << 20)
    assert len(block) == len(base)
    for at in range(0, len(base), large_files.STAMP):
        assert int.from_bytes(block[at : at + 8], "big") == (1 << 20) + at
        assert block[at + 8 : at + large_files.STAMP] == base[at + 8 : at + large_files.STAMP]
    assert block != large_files.stamped_block(base, 2 << 20)


def test_parse_access_log_counts_the_object_by_method_and_status() -> None:
    path = "/bundles/large-1024.bin"
    text = "\n".join(
        [
            "edge origin: serving /x on http://127.0.0.1:1",
            "2026-01-01 00:00:00,000 aiohttp.access INFO 127.0.0.1 [01/Jan/2026:00:00:00 +0000]"
            f' "GET {path} HTTP/1.1" 200 360 "-" "edge"',
            f'... "GET {path}?x=1 HTTP/1.1" 206 404 "-" "edge"',
            f'... "GET {path} HTTP/1.1" 206 404 "-" "edge"',
            f'... "HEAD {path} HTTP/1.1" 200 360 "-" "curl"',
            '... "GET /other HTTP/1.1" 404 100 "-" "edge"',
            "2026-01-01 origin.archive.server WARNING something else",
        ]
    )
    tally = large_files.parse_access_log(text, path)
    assert tally.requests == 4
    assert tally.by_status == {"GET 200": 1, "GET 206": 2, "HEAD 200": 1}
    assert tally.other_requests == 1


def test_proc_fields_and_stat() -> None:
    status = "Name:\tpython\nVmHWM:\t  81234 kB\nVmRSS:\t   70000 kB\n"
    assert large_files.proc_field(status, "VmRSS") == 70000
    assert large_files.proc_field(status, "VmHWM") == 81234
    assert large_files.proc_field(status, "VmSwap") is None
    assert large_files.proc_field("rchar: 10\nwchar: 5678\n", "wchar") == 5678
    # comm may hold spaces and parentheses; fields count from the last ')'.
    stat = "4242 (we (ird) name) S 1 4200 4200 0 -1 4194560 10 0 0 0 150 25 0 0 20 0 3"
    assert large_files.stat_pgrp(stat) == 4200
    assert large_files.stat_cpu_ticks(stat) == 175


def test_machine_cpu_counts_idle_and_iowait_as_not_busy() -> None:
    text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert large_files.machine_cpu(text) == (150, 1000)


def test_spread_and_per_second_peaks() -> None:
    assert large_files.spread([0.3, 0.1, 0.2]) == {"first": 0.1, "median": 0.2, "last": 0.3}
    assert large_files.spread([]) == {"first": None, "median": None, "last": None}
    samples = [(0.0, 10.0), (0.5, 12.0), (1.2, 11.0), (3.1, 20.0)]
    # A second without samples repeats the last peak rather than dropping to zero.
    assert large_files.per_second_peaks(samples) == [12.0, 11.0, 11.0, 20.0]


def test_condense_cache_status_drops_ttl_only() -> None:
    value = "large; fwd=uri-miss; fwd-status=200; stored; ttl=86399"
    assert large_files.condense_cache_status(value) == "large; fwd=uri-miss; fwd-status=200; stored"
    assert large_files.condense_cache_status(None) == "-"
    assert large_files.condense_cache_status("HIT") == "HIT"


def test_parse_curl_write_out_takes_the_last_line() -> None:
    text = "curl: (18) something\n200 1073741824 0.912345 0.000812\n"
    assert large_files.parse_curl_write_out(text) == (200, 1073741824, 0.912345, 0.000812)
    with pytest.raises(ValueError):
        large_files.parse_curl_write_out("curl: (7) Failed to connect")


def test_large_ratio() -> None:
    assert large_files.ratio(1.0, 4.0) == 0.25
    assert large_files.ratio(1.0, None) is None
    assert large_files.ratio(None, 2.0) is None


def test_nginx_large_config_can_hold_the_object(tmp_path: Path) -> None:
    conf = large_files.nginx_large_config(tmp_path, 8081, 9091, 1 << 30)
    assert "worker_processes 1;" in conf
    assert "sendfile on;" in conf
    assert "proxy_cache_lock on;" in conf
    assert "proxy_max_temp_file_size 0;" in conf
    assert "server 127.0.0.1:9091;" in conf
    assert "listen 127.0.0.1:8081;" in conf
    max_size = int(conf.split("max_size=", 1)[1].split("m", 1)[0])
    assert max_size * (1 << 20) > 1 << 30
    paths = [
        w.rstrip(";")
        for line in conf.splitlines()
        for w in line.split()
        if w.startswith("/") and w != "/"
    ]
    assert paths and all(p.startswith(str(tmp_path)) for p in paths), paths


def test_harness_edge_command_uses_the_same_launcher_as_edge_argv(tmp_path: Path) -> None:
    argv = harness.edge_argv(8080, "http://127.0.0.1:9090", tmp_path, "x")
    launcher = argv[: argv.index("serve")]
    assert harness.edge_command("origin", "--root", "r") == [*launcher, "origin", "--root", "r"]
