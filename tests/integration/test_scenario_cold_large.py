"""The cold large-object scenario: its pure parts on their own (the nginx slice config,
aria2c's command line and report, ratios and the table), then a small run end to end with
real processes (marked `system`: .ci/run's system stage installs nginx and aria2).

Here the parts with real processes or sockets; tests/unit/test_scenario_cold_large.py has
the pure ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios import harness

# --- nginx and aria2c -------------------------------------------------------------------


# --- ratios and the table ---------------------------------------------------------------


# --- a small run ------------------------------------------------------------------------


@pytest.mark.system
@pytest.mark.timeout(180)
def test_small_cold_object_by_aria2c_and_curl_through_edge_and_nginx(tmp_path: Path) -> None:
    assert harness.find_tool("aria2c"), "aria2 is installed by .ci/run"
    out = tmp_path / "cold.json"
    done = subprocess.run(
        [sys.executable, "-m", "scenarios.cold_large", "--size", "32M", "--out", str(out)],
        cwd=harness.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert out.is_file(), done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert done.returncode == 0, report["problems"]
    assert "edge/nginx MB/s" in done.stdout
    got = {(d["client"], d["server"]): d for d in report["downloads"]}
    assert set(got) == {(c, s) for c in ("aria2", "curl") for s in ("edge", "nginx")}
    for key, d in got.items():
        # Whole and unchanged (checked by SHA-256), and the origin sent it at least once.
        assert d["error"] is None and d["mb_per_s"] > 0, key
        assert d["origin"]["requests"] >= 1 and d["origin"]["object_factor"] >= 0.99, key
    assert set(report["ratios_edge_nginx"]) == {"aria2", "curl"}
