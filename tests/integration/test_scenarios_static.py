"""Tests of the scenarios' own pure parts: wrk's report parser, sizes, conformance scoring
and floors, the nginx reference config, the large-file scenario's parsers (origin access
log, /proc fields, curl's write-out, the object's stamped bytes), and the process/origin
plumbing on loopback.

The proxies themselves are not started here; `python -m scenarios.conformance` and
`python -m scenarios.bench_hits` do that.
Here the parts with real processes or sockets; tests/unit/test_scenarios_static.py has
the pure ones."""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

import pytest

from scenarios import bench_hits, harness
from tests.support.proctable import in_group

# --- bench_hits: wrk output, sizes ------------------------------------------------------


# --- conformance: scoring ---------------------------------------------------------------


# --- harness: nginx config, edge command, processes, origin ------------------------------


def test_processes_reaps_children_and_their_groups(tmp_path: Path) -> None:
    # A shell with a grandchild: stopping must reach the whole process group.
    with harness.Processes(tmp_path) as procs:
        child = procs.start("sleeper", ["sh", "-c", "sleep 60 & wait"])
        time.sleep(0.2)
        assert child.alive()
    assert child.proc.returncode is not None
    # The grandchild is reparented when the shell exits; give init a moment to reap it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = in_group(child.proc.pid)
        if not left:
            break
        time.sleep(0.1)
    assert left == [], "a process of the child's group outlived it"


def test_wait_tcp_fails_fast_when_the_child_dies(tmp_path: Path) -> None:
    with harness.Processes(tmp_path) as procs:
        child = procs.start(
            "dies", [sys.executable, "-c", "print('bad flag'); raise SystemExit(3)"]
        )
        with pytest.raises(harness.ScenarioError, match="status 3"):
            harness.wait_tcp(child, harness.free_port(), timeout=10)


def test_counting_origin_serves_cacheable_objects_and_counts() -> None:
    with bench_hits.OriginThread() as origins:
        port = origins.add("nginx", [1024])
        url = f"http://127.0.0.1:{port}{bench_hits.object_path(1024)}"
        for _ in range(2):
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read()
                assert resp.headers["Cache-Control"] == "public, max-age=3600"
        assert len(body) == 1024
        assert body == bench_hits.object_body(1024)
        assert origins.count("nginx", bench_hits.object_path(1024)) == 2


# --- large_files: sizes, the object's bytes, origin log, /proc, curl, nginx ---------------
