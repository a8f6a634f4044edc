"""Short real runs of the scenarios that start the whole CDN with `edge up`: geo
steering, edge failover and origin outage; and the parts they parse."""

from __future__ import annotations

import json
from pathlib import Path

from scenarios import edge_failover, geo_steering, origin_outage
from scenarios.cdn import parse_table, with_free_ports

TABLE = """edge is up:
  name          role         region  address                   log
  origin        origin       core    http://127.0.1.10:41001   /w/logs/origin.log
  edge-eu-1     edge         eu      http://127.1.0.1:41002    /w/logs/edge-eu-1.log
  dns           dns          core    udp+tcp 127.0.1.53:41003  /w/logs/dns.log

Try:
"""


def test_parse_table_reads_roles_regions_and_addresses() -> None:
    nodes = parse_table(TABLE)
    assert set(nodes) == {"origin", "edge-eu-1", "dns"}
    assert nodes["edge-eu-1"].region == "eu" and nodes["edge-eu-1"].port == 41002
    assert nodes["dns"].listen == "127.0.1.53:41003" and nodes["dns"].role == "dns"


def test_with_free_ports_changes_ports_only() -> None:
    text = 'listen = "127.1.0.1:8080"\nname = "x"\n'
    out = with_free_ports(text)
    assert out.startswith('listen = "127.1.0.1:') and ":8080" not in out and 'name = "x"' in out


def test_origin_outage_summary_drops_names_and_ttl() -> None:
    got = origin_outage.summarise("shield-1; hit; ttl=-3, edge-eu-1; fwd=stale; fwd-status=304")
    assert got == "hit | fwd=stale; fwd-status=304"


def test_geo_steering_short_run(tmp_path: Path) -> None:
    out = tmp_path / "geo.json"
    assert geo_steering.main(["--clients", "3", "--out", str(out)]) == 0
    regions = json.loads(out.read_text())["regions"]
    assert set(regions) == {"eu", "us", "ap"}
    assert all(r["served_in_region"] == r["clients"] == 3 for r in regions.values())


def test_edge_failover_short_run(tmp_path: Path) -> None:
    out = tmp_path / "failover.json"
    assert edge_failover.main(["--duration", "8", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["moved_after_s"] is not None and report["back_after_s"] is not None
    # Errors only in the window before GeoDNS noticed (probe interval 1 s, fall 1).
    if report["errors"]:
        assert report["error_window_s"][1] < 2.5
    assert any(name.startswith("edge-eu") for name in report["served_by"])


def test_origin_outage_short_run(tmp_path: Path) -> None:
    out = tmp_path / "outage.json"
    assert origin_outage.main(["--duration", "2", "--objects", "2", "--out", str(out)]) == 0
    classes = json.loads(out.read_text())["classes"]
    for cls in ("fresh", "stale"):
        assert classes[cls]["requests"] == classes[cls]["2xx"] > 0
    assert classes["never cached"].get("5xx", 0) == classes["never cached"]["requests"]


def test_large_files_short_run(tmp_path: Path) -> None:
    """The large archive download, small: a crowd of 5 on a 64 MiB object (sliced), one
    origin request, every body whole, RSS under the target."""
    from scenarios import large_files

    out = tmp_path / "large.json"
    argv = ["--size", "64M", "--crowd", "5", "--clients", "3", "--rounds", "1"]
    argv += ["--parallel", "2", "--skip-nginx", "--out", str(out)]
    assert large_files.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["problems"] == [] and report["rss_target_met"]
    cold = report["phases"][0]
    assert cold["origin"]["requests"] == 1 and cold["origin"]["object_factor"] == 1.0
