"""The pure parts of scenarios.bench_h2: h2load's summary and per-request log, the
percentiles taken from it, the nginx reference's config and the edge/nginx ratios."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scenarios import bench_h2, harness

# h2load 1.52 (Debian 12) against an h2c listener, trimmed of its progress lines.
H2LOAD_OUTPUT = "\n".join(
    [
        "starting benchmark...",
        "spawning thread #0: 50 total client(s). Timing-based test with 1s of warm-up time "
        "and 3s of main duration for measurements.",
        "Application protocol: h2c",
        "Warm-up phase is over for thread #0.",
        "Main benchmark duration is over for thread #0. Stopping all clients.",
        "",
        "finished in 3.00s, 87094.33 req/s, 92.71MB/s",
        "requests: 261283 total, 261783 started, 261283 done, 261280 succeeded, 2 failed, "
        "1 errored, 0 timeout",
        "status codes: 261279 2xx, 1 3xx, 3 4xx, 0 5xx",
        "traffic: 278.12MB (291631928) total, 5.24MB (5494023) headers (space savings "
        "91.01%), 267.56MB (280561920) data",
        "                     min         max         mean         sd        +/- sd",
        "time for request:      212us     31.07ms      5.66ms      1.52ms    79.13%",
        "req/s           :    1671.32     1830.40     1741.88       38.63    72.00%",
    ]
)


def test_summary_reads_rate_duration_counts_and_status_classes() -> None:
    s = bench_h2.parse_h2load_summary(H2LOAD_OUTPUT)
    assert s["requests_per_s"] == pytest.approx(87094.33)
    assert s["seconds"] == pytest.approx(3.0)
    assert (s["succeeded"], s["failed"], s["errored"], s["timeout"]) == (261280, 2, 1, 0)
    assert s["status_2xx"] == 261279
    assert s["non_2xx"] == 4


def test_summary_converts_milliseconds() -> None:
    s = bench_h2.parse_h2load_summary(
        H2LOAD_OUTPUT.replace("finished in 3.00s", "finished in 67.14ms")
    )
    assert s["seconds"] == pytest.approx(0.06714)


def test_summary_without_the_requests_line_is_an_error() -> None:
    text = "\n".join(
        line for line in H2LOAD_OUTPUT.splitlines() if not line.startswith("requests:")
    )
    with pytest.raises(ValueError):
        bench_h2.parse_h2load_summary(text)


def test_log_gives_latencies_of_answered_requests_only() -> None:
    log = (
        "1733600000000000\t200\t1500\n"
        "1733600000000100\t-1\t90000\n"
        "not a line\n"
        "1733600000000200\t304\t250\n"
    )
    assert bench_h2.parse_h2load_log(log) == [1.5, 0.25]


def test_percentiles_from_the_log() -> None:
    # 1..100 ms: p50 is 50.5 by interpolation, p99 99.01.
    log = "".join(f"{i}\t200\t{i * 1000}\n" for i in range(1, 101))
    r = bench_h2.h2load_result(H2LOAD_OUTPUT, log)
    assert r.p50_ms == pytest.approx(50.5)
    assert r.p99_ms == pytest.approx(99.01)
    assert r.errors == 3
    assert bench_h2.percentile([], 99) == 0.0
    assert bench_h2.percentile([7.0], 99) == 7.0


def test_h1_runs_one_request_in_flight_h2_the_streams_asked() -> None:
    log = Path("/tmp/x.log")
    h1 = bench_h2.h2load_argv(
        "h2load", "http://a/", "h1", clients=5, streams=10, duration=3, log=log
    )
    h2 = bench_h2.h2load_argv(
        "h2load", "http://a/", "h2", clients=5, streams=10, duration=3, log=log
    )
    assert "--h1" in h1 and "-m1" in h1
    assert "--h1" not in h2 and "-m10" in h2
    assert h1[-1] == h2[-1] == "http://a/"


def test_nginx_reference_serves_h2c_and_http11_from_one_cache() -> None:
    conf = bench_h2.nginx_h2_config(Path("/run/x"), 8002, 8001, 9000)
    assert "listen 127.0.0.1:8002 http2;" in conf
    assert "listen 127.0.0.1:8001;" in conf
    assert conf.count("proxy_cache edge_ref;") == 1
    assert "server 127.0.0.1:9000;" in conf
    assert "worker_processes 1;" in conf
    # Without it nginx sends GOAWAY after 1000 requests and h2load stops that client.
    assert "keepalive_requests 100000000;" in conf


def _row(server: str, protocol: str, rps: float, p99: float) -> bench_h2.Row:
    result = bench_h2.H2loadResult(rps, 3.0, 10, 0, 0, 0, 10, 0, 1.0, p99)
    return bench_h2.Row(server, protocol, 1024, result, 1)


def test_ratios_are_per_protocol_and_size() -> None:
    rows = [
        _row("edge", "h2", 500.0, 4.0),
        _row("nginx", "h2", 1000.0, 2.0),
        _row("edge", "h1", 1200.0, 1.0),
        _row("nginx", "h1", 1000.0, 2.0),
    ]
    ratios = bench_h2.ratios_of(rows)
    assert ratios == {
        "HTTP/2 1 KiB edge/nginx": {"throughput": 0.5, "p99": 2.0},
        "HTTP/1.1 1 KiB edge/nginx": {"throughput": 1.2, "p99": 0.5},
    }
    table = bench_h2.render(rows, ratios)
    assert "HTTP/2 1 KiB edge/nginx: throughput 0.500, p99 2.000" in table


def test_http3_is_compared_with_h2_over_tls_on_the_same_node() -> None:
    rows = [
        _row(bench_h2.TLS_SERVER, "h2tls", 4000.0, 50.0),
        _row(bench_h2.TLS_SERVER, "h3", 400.0, 500.0),
        _row("nginx", "h2", 1000.0, 2.0),
    ]
    assert bench_h2.ratios_of(rows) == {
        "1 KiB on the TLS edge, HTTP/3 / h2+TLS": {"throughput": 0.1, "p99": 10.0}
    }


def test_h3_load_report_becomes_a_result() -> None:
    report = {
        "succeeded": 100,
        "failed": 1,
        "timeout": 2,
        "non_2xx": 3,
        "seconds": 4.0,
        "latencies_ms": [float(i) for i in range(1, 101)],
        "cpu_s": 1.5,
    }
    r = bench_h2.h3_load_result(report)
    assert r.requests_per_s == pytest.approx(25.0)
    assert (r.succeeded, r.failed, r.timeout, r.non_2xx) == (100, 1, 2, 3)
    assert r.errors == 3
    assert r.p50_ms == pytest.approx(50.5)
    with pytest.raises(KeyError):
        bench_h2.h3_load_result({"succeeded": 1})


def test_children_import_this_checkout_first() -> None:
    root = str(harness.REPO_ROOT)
    env = harness.child_env({"PATH": "/bin", "PYTHONPATH": f"/elsewhere{os.pathsep}{root}"})
    assert env["PATH"] == "/bin"
    assert env["PYTHONPATH"].split(os.pathsep) == [root, "/elsewhere"]
    assert harness.child_env({})["PYTHONPATH"] == root
