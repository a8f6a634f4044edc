"""The flash-crowd scenario: its parsers and counting on their own (Cache-Status chains,
access logs of the origin and of nginx, Prometheus counters, tier sums, percentiles, the
nginx config), then one small run with real processes: 3 edges x 50 clients on one cold
object through `edge shield`, judged from the JSON report; and the same run beside nginx
in the same two tiers (marked `system`: .ci/run's system stage installs nginx).

Here the parts with real processes or sockets; tests/unit/test_scenario_flash_crowd.py has
the pure ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scenarios import flash_crowd, harness

# --- Cache-Status chains ----------------------------------------------------------------


# --- access logs ------------------------------------------------------------------------


# --- counting ---------------------------------------------------------------------------


# --- a real run -------------------------------------------------------------------------


def small_crowd(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "flash.json"
    argv = ["--edges", "3", "--clients", "50", "--objects", "1", "--out", str(out), *extra]
    status = flash_crowd.main(argv)
    report = json.loads(out.read_text())
    assert status == 0, report["problems"]
    return report


@pytest.mark.timeout(120)
def test_small_flash_crowd_makes_one_origin_request(tmp_path: Path) -> None:
    report = small_crowd(tmp_path, "--skip-nginx")
    assert set(report["systems"]) == {"edge"}
    assert (tmp_path / "flash-logs" / "origin.log").is_file()

    edge = report["systems"]["edge"]
    (obj,) = edge["objects"]
    # Every client got the whole body (length checked by each, SHA-256 by one).
    assert (obj["clients"], obj["complete"], obj["errors"], obj["sha256_ok"]) == (
        150,
        150,
        {},
        True,
    )
    # The origin saw the object once; the shield tier fetched it once.
    assert obj["origin_requests"] == 1
    assert edge["origin_requests_per_object"] == 1
    shield, tier = obj["shield_tier"], obj["edge_tier"]
    assert shield["miss"] == 1 and shield["forwarded"] == 1
    # The tiers add up: 150 answers at the edges, one shield request per edge fill.
    assert tier["requests"] == 150
    assert tier["hit"] + tier["miss"] + tier["collapsed"] + tier["other"] == 150
    assert tier["by_node"] == {"edge-1": 50, "edge-2": 50, "edge-3": 50}
    assert tier["miss"] == tier["forwarded"] == shield["requests"] == 3
    assert shield["hit"] + shield["miss"] + shield["collapsed"] + shield["other"] == 3
    assert sum(shield["by_node"].values()) == 3
    assert obj["inconsistencies"] == []
    assert edge["latency_s"]["p50"] is not None


@pytest.mark.system
@pytest.mark.timeout(240)
def test_small_flash_crowd_beside_nginx(tmp_path: Path) -> None:
    assert harness.find_tool("nginx"), "nginx is installed by .ci/run's system stage"
    report = small_crowd(tmp_path)
    (obj,) = report["systems"]["edge"]["objects"]
    assert obj["origin_requests"] == 1 and obj["complete"] == 150
    for system in ("nginx-lock-on", "nginx-lock-off"):
        (nobj,) = report["systems"][system]["objects"]
        assert nobj["edge_tier"]["requests"] == 150, system
        assert nobj["origin_requests"] >= 1, system
    assert set(report["origin_ratio_edge_to"]) == {"nginx-lock-on", "nginx-lock-off"}
