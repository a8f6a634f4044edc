"""The HTTP/2 benchmark end to end, briefly, with real processes: edge and nginx under
h2load over h2c and HTTP/1.1, then the TLS edge over h2 and HTTP/3 (marked `system`:
.ci/run's system stage installs nginx and nghttp2-client). The pure parts are in
tests/unit/test_scenario_bench_h2.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios import harness


@pytest.mark.system
@pytest.mark.timeout(180)
def test_brief_h2_benchmark_end_to_end(tmp_path: Path) -> None:
    # Its own process: the scenario pins itself to a core, which must not outlive it here.
    out = tmp_path / "h2.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scenarios.bench_h2",
            "--duration",
            "1",
            "--sizes",
            "1k",
            "--clients",
            "4",
            "--h3-clients",
            "2",
            "--out",
            str(out),
        ],
        cwd=harness.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=160,
    )
    assert out.is_file(), done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert done.returncode == 0, report["problems"]
    rows = {(r["server"], r["protocol"]): r for r in report["results"]}
    assert set(rows) == {
        ("edge", "h2"),
        ("nginx", "h2"),
        ("edge", "h1"),
        ("nginx", "h1"),
        ("edge-tls", "h2tls"),
        ("edge-tls", "h3"),
    }
    for key, row in rows.items():
        assert row["requests_per_s"] > 0 and row["succeeded"] > 0, key
        assert row["non_2xx"] == 0 and row["origin_requests"] <= 2, key
        assert 0 < row["p50_ms"] <= row["p99_ms"], key
    assert set(report["ratios"]) == {
        "HTTP/2 1 KiB edge/nginx",
        "HTTP/1.1 1 KiB edge/nginx",
        "1 KiB on the TLS edge, HTTP/3 / h2+TLS",
    }
    assert report["h3_client_cpu"]["1 KiB"]["cpu_s"] > 0
