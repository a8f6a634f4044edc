"""scenarios/dns_throughput: its dnsperf parser (on output dnsperf 2.10.0 really printed),
the query file, the ECS option, Knot's config and zone, the answer comparison, and a short
real run of edge dns and Knot DNS under dnsperf (marked `system`: both are installed by
.ci/run's system stage).

Here the parts with real processes or sockets; tests/unit/test_scenario_dns.py has
the pure ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scenarios import dns_throughput

# dnsperf 2.10.0 against edge dns, the ECS pass of the scenario.

# dnsperf 2.10.0 against a port where nothing listens: every query lost.


@pytest.mark.system
def test_a_short_run_measures_both_servers(tmp_path: Path) -> None:
    out = tmp_path / "dns.json"
    code = dns_throughput.main(["--duration", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report["problems"]
    assert report["problems"] == []
    assert report["versions"]["knot"] and report["versions"]["dnsperf"]
    for server in ("edge dns", "Knot DNS"):
        for kind in ("plain", "ECS"):
            r = report["results"][server][kind]
            assert r["qps"] > 0 and r["lost_pct"] <= 1.0, (server, kind, r)
            assert set(r["rcodes"]) <= {"NOERROR", "NXDOMAIN"}
            assert r["rcodes"]["NXDOMAIN"] > 0  # the missing names were asked
    assert set(report["ratios"]) == {"plain", "ECS"}
    assert all(v > 0 for v in report["ratios"].values())
