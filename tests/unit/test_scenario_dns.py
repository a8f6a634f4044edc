"""scenarios/dns_throughput: its dnsperf parser (on output dnsperf 2.10.0 really printed),
the query file, the ECS option, Knot's config and zone, the answer comparison, and a short
real run of edge dns and Knot DNS under dnsperf (marked `system`: both are installed by
.ci/run's system stage).

Here the parts that open no socket and start no process;
tests/integration/test_scenario_dns.py has the ones with real processes."""

from __future__ import annotations

import ipaddress
import tomllib
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from scenarios import dns_throughput
from scenarios.harness import ScenarioError

# dnsperf 2.10.0 against edge dns, the ECS pass of the scenario.
ECS_PASS = """\
DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15355 -d mix.txt -l 2 -n 10000 -c 4 -T 1 -q 100 -e -E 8:00011800cb0071
[Status] Sending queries (to 127.0.0.1:15355)
[Status] Started at: Mon Nov 23 05:00:19 2026
[Status] Stopping after 2.000000 seconds or 10000 runs through file
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         2806
  Queries completed:    2806 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 2666 (95.01%), NXDOMAIN 140 (4.99%)
  Average packet size:  request 54, response 75
  Run time (s):         2.088667
  Queries per second:   1343.440577

  Average Latency (s):  0.072615 (min 0.001347, max 0.166313)
  Latency StdDev (s):   0.026659

"""  # noqa: E501

# dnsperf 2.10.0 against a port where nothing listens: every query lost.
ALL_LOST = """\
DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15399 -d mix.txt -l 1 -t 1 -c 1 -T 1 -q 3
[Status] Sending queries (to 127.0.0.1:15399)
[Status] Started at: Mon Nov 23 05:00:21 2026
[Status] Stopping after 1.000000 seconds
[Timeout] Query timed out: msg id 0
[Timeout] Query timed out: msg id 1
[Timeout] Query timed out: msg id 2
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         3
  Queries completed:    0 (0.00%)
  Queries lost:         3 (100.00%)

  Response codes:       
  Average packet size:  request 33, response 0
  Run time (s):         1.000273
  Queries per second:   0.000000

  Average Latency (s):  0.000000 (min 0.000000, max 0.000000)
"""  # noqa: W291


def test_parse_dnsperf_reads_counts_rate_latency_and_rcodes() -> None:
    r = dns_throughput.parse_dnsperf(ECS_PASS)
    assert (r["sent"], r["completed"], r["lost"]) == (2806, 2806, 0)
    assert r["lost_pct"] == 0.0
    assert r["qps"] == pytest.approx(1343.440577)
    assert r["run_s"] == pytest.approx(2.088667)
    assert r["latency_avg_s"] == pytest.approx(0.072615)
    assert r["latency_min_s"] == pytest.approx(0.001347)
    assert r["latency_max_s"] == pytest.approx(0.166313)
    assert r["latency_stddev_s"] == pytest.approx(0.026659)
    assert r["rcodes"] == {"NOERROR": 2666, "NXDOMAIN": 140}
    assert (r["request_bytes"], r["response_bytes"]) == (54, 75)
    assert r["stopped_by"] == "time limit"
    assert r["dnsperf_version"] == "2.10.0"


def test_parse_dnsperf_with_every_query_lost() -> None:
    r = dns_throughput.parse_dnsperf(ALL_LOST)
    assert (r["sent"], r["completed"], r["lost"]) == (3, 0, 3)
    assert r["lost_pct"] == 100.0
    assert r["qps"] == 0.0
    assert r["rcodes"] == {}  # the empty line is not read as the next one
    assert "latency_stddev_s" not in r


def test_parse_dnsperf_without_statistics_names_the_last_line() -> None:
    text = "DNS Performance Testing Tool\nVersion 2.10.0\n\nError: unable to open file: q.txt\n"
    with pytest.raises(ScenarioError, match="no statistics: Error: unable to open file"):
        dns_throughput.parse_dnsperf(text)


def test_query_file_has_the_mix_interleaved(tmp_path: Path) -> None:
    path = tmp_path / "queries.txt"
    assert dns_throughput.write_queries(path) == 40
    lines = path.read_text().splitlines()
    assert Counter(lines) == dict(dns_throughput.QUERY_MIX)
    counts = Counter(line.split()[-1] for line in lines)
    assert counts["A"] == 33 and counts["AAAA"] == 5  # www 80% + 10%, and the missing names
    # Spread, not blocks: no rare query follows another rare one.
    rare = [line != "www.cdn.example A" for line in lines]
    assert not any(a and b for a, b in pairwise(rare))
    for line in lines:  # dnsperf's format: name, type
        name, rdtype = line.split()
        assert name.endswith("cdn.example") and rdtype in {"A", "AAAA", "SOA", "NS"}


def test_query_lines_follow_any_weights() -> None:
    lines = dns_throughput.query_lines([("a A", 3), ("b A", 1)])
    assert lines == ["a A", "a A", "b A", "a A"]


def test_ecs_option_is_rfc7871_wire_form() -> None:
    # family 1, source /24, scope 0, then only the prefix's three address bytes
    assert dns_throughput.ecs_option("203.0.113.0/24") == "8:00011800cb0071"
    assert dns_throughput.ecs_option("10.1.0.0/20") == "8:00011400" + "0a0100"
    assert dns_throughput.ecs_option("2001:db8::/32") == "8:00022000" + "20010db8"


def test_knot_files_stay_in_their_folder(tmp_path: Path) -> None:
    work = tmp_path / "knot"
    argv = dns_throughput.write_knot(work, 5399, "/usr/sbin/knotd")
    conf = work / "knot.conf"
    assert argv == ["/usr/sbin/knotd", "--config", str(conf)]
    text = conf.read_text()
    assert "listen: 127.0.0.1@5399" in text
    paths = [line.split(":", 1)[1].strip().strip('"') for line in text.splitlines()]
    paths = [p for p in paths if p.startswith("/")]
    assert len(paths) == 6  # rundir, pidfile, control socket, database, storage, zone
    assert all(Path(p).is_relative_to(work) for p in paths)
    assert (work / "db").is_dir()
    assert (work / "cdn.example.zone").read_text() == dns_throughput.zone_file()


def test_zone_file_holds_the_eu_edges_and_the_apex_records() -> None:
    zone = dns_throughput.zone_file()
    for v4, v6 in zip(sorted(dns_throughput.EU_V4), sorted(dns_throughput.EU_V6), strict=True):
        assert f"www IN A {v4}" in zone and f"www IN AAAA {v6}" in zone
    assert all(v4 not in zone for v4 in dns_throughput.US_V4)
    assert " IN SOA ns1.cdn.example. " in zone and " IN NS ns1.cdn.example." in zone


def test_topology_puts_loopback_clients_in_the_default_eu_region() -> None:
    topology = tomllib.loads(dns_throughput.topology_toml())
    assert topology["zone"]["name"] == "cdn.example."
    (eu,) = [r for r in topology["regions"] if r.get("default")]
    assert eu["name"] == "eu"
    loopback = ipaddress.ip_address("127.0.0.1")
    for region in topology["regions"]:
        assert not any(loopback in ipaddress.ip_network(n) for n in region["networks"])
    assert {e["ipv4"] for e in topology["edges"] if e["region"] == "eu"} == dns_throughput.EU_V4
    assert all("health" not in e for e in topology["edges"])  # no probes: all healthy


def test_differences_names_each_query_answered_otherwise() -> None:
    ours = {"www.cdn.example A": ["NOERROR aa", "an x"], "cdn.example SOA": ["NOERROR aa"]}
    ref = {"www.cdn.example A": ["NOERROR aa", "an y"], "cdn.example SOA": ["NOERROR aa"]}
    (only,) = dns_throughput.differences(ours, ref)
    assert only.startswith("`www.cdn.example A`")
    assert dns_throughput.differences(ours, ours) == []


def test_the_database_places_the_ecs_pass_subnet_in_us(tmp_path: Path) -> None:
    from origin.deploy.topology import load_topology
    from origin.geodns.geoip import GeoDatabase
    from origin.geodns.select import Selector

    (tmp_path / "topology.toml").write_text(dns_throughput.topology_toml(geoip=True))
    dns_throughput.write_database(tmp_path / "geo.mmdb")
    topo = load_topology(tmp_path / "topology.toml")
    database = GeoDatabase(Path(topo.geoip.database))
    subnet = ipaddress.ip_network(dns_throughput.GEO_SUBNET)
    assert topo.locate(subnet.network_address)[0] is None  # in no topology network
    d = Selector(topo, geo=database).decide(subnet.network_address, 4, lambda e: True, 24)
    assert d.region == "us" and d.scope == 22 and "country US listed on us" in d.why
    # The last of the database's networks is there too, in a country no region lists.
    last = ipaddress.ip_network("100.64.0.0/10").network_address + 1024 * 4095
    record = database(last)
    assert record is not None and record.country == "JP"
