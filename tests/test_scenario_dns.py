"""scenarios/dns_throughput: its dnsperf parser, and a short real run of edge dns and
Knot DNS under dnsperf (both installed by .ci/run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scenarios import dns_throughput
from scenarios.harness import ScenarioError

SAMPLE = """
Statistics:

  Queries sent:         13976
  Queries completed:    13976 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 13278 (95.01%), NXDOMAIN 698 (4.99%)
  Average packet size:  request 33, response 77
  Run time (s):         5.001092
  Queries per second:   2794.589655

  Average Latency (s):  0.017783 (min 0.000395, max 0.051094)
  Latency StdDev (s):   0.004114
"""


def test_parse_dnsperf_reads_the_statistics() -> None:
    got = dns_throughput.parse_dnsperf(SAMPLE)
    assert got["sent"] == 13976 and got["completed"] == 13976 and got["lost"] == 0
    assert got["qps"] == pytest.approx(2794.589655)
    assert got["latency_avg_s"] == pytest.approx(0.017783)


def test_parse_dnsperf_without_statistics_is_a_scenario_error() -> None:
    with pytest.raises(ScenarioError, match="no statistics"):
        dns_throughput.parse_dnsperf("Error: could not open datafile")


def test_knot_config_keeps_everything_in_its_folder(tmp_path: Path) -> None:
    text = dns_throughput.knot_config(tmp_path, 5353)
    assert "listen: 127.0.0.1@5353" in text and f'rundir: "{tmp_path}"' in text


def test_a_short_run_measures_both_servers(tmp_path: Path) -> None:
    out = tmp_path / "dns.json"
    code = dns_throughput.main(["--duration", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, report["problems"]
    for name in ("edge dns", "edge dns (ECS)", "knot (reference)"):
        assert report["results"][name]["qps"] > 0
    assert report["ratio_edge_to_knot"] > 0
