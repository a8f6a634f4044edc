"""The guard soak scenario: its request builders and judges on their own, then one quick
run as a subprocess (`python -m scenarios.guard_soak --quick`), judged from its JSON
report: the report's shape, the well-behaved clients losing nothing, and every abuser
refused (429s for the flood, slowloris connections closed by the edge, smuggled requests
never reaching the origin). The p99 ratio is reported, not asserted here: on a shared
2-core machine it moves with whatever else runs.

Here the parts with real processes or sockets; tests/unit/test_scenario_guard_soak.py has
the pure ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from scenarios import guard_soak
from scenarios.harness import REPO_ROOT

# --- parts ------------------------------------------------------------------------------


# --- a quick run ------------------------------------------------------------------------


def test_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "guard_soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scenarios.guard_soak", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.is_file(), proc.stderr
    report = json.loads(out.read_text())
    assert proc.returncode == (1 if report["problems"] else 0), proc.stdout + proc.stderr
    # The table was printed.
    assert "soak p99 / baseline p99" in proc.stdout

    # Shape.
    assert set(report["phases"]) == {"baseline", "soak"}
    for phase in report["phases"].values():
        assert set(phase["latency_ms"]) == {"p50", "p99", "max"}
        assert phase["latency_ms"]["p99"] is not None
    assert set(report["abusers"]) == {"seconds", *guard_soak.ABUSERS}
    assert set(report["goals"]) == {
        "well_behaved_lossless",
        "p99_at_most_doubled",
        "abusers_refused",
    }
    assert report["p99_ratio"] > 0

    # Well-behaved clients lost nothing and were never rate limited.
    for phase in report["phases"].values():
        assert phase["requests"] > 0
        assert phase["ok"] == phase["requests"], phase["errors"]
        assert phase["got_429"] == 0
    assert report["goals"]["well_behaved_lossless"]

    ab = report["abusers"]
    guard = report["config"]["guard"]
    # The flood was refused with 429 and Retry-After, and got no more than its bucket.
    flood = ab["flood"]
    assert flood["statuses"].get("429", 0) > 0
    assert "none" not in flood["retry_after"]
    assert flood["statuses"].get("200", 0) <= guard_soak.allowed_by_bucket(flood["span_s"])
    # Slowloris: answered 408 at header_timeout, or closed at once over the per-address
    # cap; none kept past the deadline.
    slow = ab["slowloris"]
    assert slow["outcomes"].get("408", 0) > 0
    assert slow["outcomes"].get("closed", 0) > 0
    assert set(slow["outcomes"]) <= {"408", "closed"}
    limit = guard["header_timeout"] + guard_soak.SLACK_S
    assert max(slow["longest_held_s"].values()) <= limit
    assert slow["longest_open_at_end_s"] <= limit
    # Slow bodies: 408.
    assert ab["slow_post"]["outcomes"].get("408", 0) > 0
    # Range bombs never cost more than the object.
    for rec in ab["range_bombs"]["kinds"].values():
        assert rec["max_amplification"] <= 1.05
    # Oversize heads: 414/431 and closed; smuggling: 400/501, closed, never forwarded.
    for name in ("oversize", "smuggling"):
        for rec in ab[name]["kinds"].values():
            assert rec["left_open"] == 0 and rec["answered_twice"] == 0
            assert set(rec["statuses"]) <= {"400", "414", "431", "501", "closed"}
    assert ab["smuggling"]["origin_saw_marker"] == 0
    assert report["goals"]["abusers_refused"]

    # The edge's own counters agree that it refused them.
    soak = report["metrics"]["soak"]
    assert soak["refused"].get("429", 0) >= flood["statuses"]["429"]
    assert soak["refused"].get("408", 0) >= slow["outcomes"]["408"]
    assert soak["connections_refused"] > 0
    assert report["metrics"]["baseline"]["refused"] == {}

    # Whatever failed, it was only the latency goal (judged by the scenario itself).
    assert all("p99" in p for p in report["problems"]), report["problems"]
