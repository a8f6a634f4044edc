"""The miss benchmark: its pure parts on their own (wrk's Lua script, the origin's nginx
config, counting the origin's log, the miss check, ratios and the table), then the script
and config as wrk and nginx themselves read them, and one brief run end to end with real
processes (marked `system`: .ci/run's system stage installs nginx and wrk).

Here the parts with real processes or sockets; tests/unit/test_scenario_bench_misses.py has
the pure ones."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scenarios import bench_misses, harness
from scenarios.bench_hits import parse_wrk

# --- paths and wrk's script -------------------------------------------------------------


# --- the origin -------------------------------------------------------------------------


# --- the miss check ---------------------------------------------------------------------


# --- ratios, added latency, the table, JSON ---------------------------------------------


# --- with wrk and nginx themselves --------------------------------------------------------


@pytest.mark.system
@pytest.mark.timeout(60)
def test_wrk_runs_the_script_and_nginx_serves_its_paths(tmp_path: Path) -> None:
    """The origin config as nginx reads it, and the script as wrk runs it: two wrk threads
    make distinct paths, every one of which the origin served once."""
    wrk = harness.require_tool("wrk")
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    (bodies / "1024").write_bytes(b"x" * 1024)
    run_dir = tmp_path / "origin"
    port = harness.free_port()
    argv = harness.write_nginx_config_text(
        run_dir, bench_misses.origin_config(run_dir, port, bodies)
    )
    for folder in (tmp_path, bodies):
        folder.chmod(0o755)
    (bodies / "1024").chmod(0o644)
    with harness.Processes(tmp_path) as procs:
        child = procs.start("origin", argv)
        harness.wait_tcp(child, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/1024/a/b", timeout=5) as resp:
            assert resp.read() == b"x" * 1024
            assert resp.headers["Cache-Control"] == "public, max-age=3600"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/2048/a", timeout=5)
        script = tmp_path / "misses.lua"
        script.write_text(bench_misses.lua_script("/1024/t-1/"))
        done = subprocess.run(
            [
                wrk,
                "-t2",
                "-c4",
                "-d1s",
                "--latency",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        result = parse_wrk(done.stdout)
        origin = bench_misses.Origin(child, port, run_dir / "access.log")
        count = bench_misses.count_origin(origin.settled_log(), "/1024/t-1/")
    assert result.requests > 0 and result.non_2xx_3xx == 0
    assert count.requests == count.paths  # no path twice
    assert bench_misses.miss_problems(result, count, 4) == []
    lines = (run_dir / "access.log").read_text().splitlines()
    threads = {line.split("/")[3] for line in lines if line.startswith("/1024/t-1/")}
    assert {"1", "2"} <= threads


@pytest.mark.system
@pytest.mark.timeout(120)
def test_brief_miss_benchmark_end_to_end(tmp_path: Path) -> None:
    # Its own process: the scenario pins itself to a core, which must not outlive it here.
    out = tmp_path / "misses.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scenarios.bench_misses",
            "--duration",
            "1",
            "--sizes",
            "1k",
            "--out",
            str(out),
        ],
        cwd=harness.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.is_file(), done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert done.returncode == 0, report["problems"]
    assert "edge/nginx throughput" in done.stdout
    assert report["misses_only"] is True
    by_server = {r["server"]: r for r in report["results"]}
    assert set(by_server) == {"edge", "nginx", "origin"}
    for name, row in by_server.items():
        assert row["requests_per_s"] > 0 and row["requests"] > 0, name
        assert row["misses_only"] and row["origin_paths"] >= row["requests"], name
    assert report["summary"]["1 KiB"]["throughput"] > 0
    assert "edge_added_p99_ms" in report["summary"]["1 KiB"]
