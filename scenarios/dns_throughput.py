"""Scenario: GeoDNS throughput — `edge dns` against Knot DNS, both measured by dnsperf.

    python -m scenarios.dns_throughput                 # 10 s per server
    python -m scenarios.dns_throughput --duration 3

Starts `edge dns` with a small topology (two regions) and, as the reference, Knot DNS
(`knotd`, Debian's knot package) serving the same names as a static zone, each on a
free loopback port with all its files in a temporary folder. For each, dnsperf (Debian)
sends a query mix for a fixed time at its fastest: 80% www A, 10% www AAAA, 5% apex
SOA/NS, 5% names that do not exist; edge dns is also measured with an EDNS Client
Subnet option on every query (its geographic path). The server and dnsperf run on
different cores where taskset allows. Answers are spot-checked with dnspython first.

Prints a table (queries/s, lost %, mean latency) and the ratio edge/reference, and
writes scenarios/out/dns_throughput.json. Exit 1 when a spot check fails or edge dns
loses more than 1% of the queries.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode

from scenarios.harness import (
    OUT_DIR,
    Processes,
    ScenarioError,
    can_pin,
    edge_command,
    free_port,
    pinned,
    require_tool,
    run_main,
)

TOPOLOGY = """
[zone]
name = "cdn.example."
ttl = 30
negative_ttl = 60
ns = ["ns1.cdn.example."]
glue = { "ns1.cdn.example." = ["127.0.0.53"] }
names = ["@", "www"]
answer_count = 2

[[regions]]
name = "eu"
lat = 50.1
lon = 8.7
networks = ["127.0.0.0/8", "198.51.100.0/24"]
default = true

[[regions]]
name = "us"
lat = 40.7
lon = -74.0
networks = ["203.0.113.0/24"]

[[edges]]
name = "edge-eu-1"
region = "eu"
ipv4 = "192.0.2.1"
ipv6 = "2001:db8::1"

[[edges]]
name = "edge-us-1"
region = "us"
ipv4 = "192.0.2.2"
"""

ZONE = """$ORIGIN cdn.example.
$TTL 30
@        3600 IN SOA ns1.cdn.example. hostmaster.cdn.example. 1 3600 600 604800 60
@        3600 IN NS  ns1
ns1      3600 IN A   127.0.0.53
@             IN A   192.0.2.1
www           IN A   192.0.2.1
www           IN AAAA 2001:db8::1
"""

QUERIES = (
    ["www.cdn.example A"] * 16
    + ["www.cdn.example AAAA"] * 2
    + ["cdn.example SOA", "nope.cdn.example A"]
)

#: RFC 7871 option 8 for dnsperf -E: family 1, source /24, scope 0, 203.0.113.
ECS_OPTION = "8:00011800cb0071"


def knot_config(work: Path, port: int) -> str:
    return f"""server:
    rundir: "{work}"
    listen: 127.0.0.1@{port}
    background-workers: 1
    udp-workers: 1
    tcp-workers: 1
database:
    storage: "{work}/db"
template:
  - id: default
    storage: "{work}"
    semantic-checks: off
zone:
  - domain: cdn.example.
    file: "{work}/cdn.example.zone"
"""


def parse_dnsperf(text: str) -> dict[str, float]:
    """The figures of a dnsperf run's statistics block."""
    out: dict[str, float] = {}
    patterns = {
        "sent": r"Queries sent:\s+(\d+)",
        "completed": r"Queries completed:\s+(\d+)",
        "lost": r"Queries lost:\s+(\d+)",
        "qps": r"Queries per second:\s+([\d.]+)",
        "latency_avg_s": r"Average Latency \(s\):\s+([\d.]+)",
        "latency_stddev_s": r"Latency StdDev \(s\):\s+([\d.]+)",
    }
    for key, pattern in patterns.items():
        m = re.search(pattern, text)
        if m:
            out[key] = float(m.group(1))
    if "qps" not in out:
        raise ScenarioError(f"dnsperf printed no statistics: {text.strip()[-200:]}")
    return out


def wait_dns(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            q = dns.message.make_query("cdn.example.", "SOA")
            dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5)
            return
        except (dns.exception.Timeout, OSError):
            time.sleep(0.1)
    raise ScenarioError(f"no DNS server answered on 127.0.0.1:{port}")


def spot_checks(port: int) -> list[str]:
    """A few answers that must be right before throughput means anything."""
    problems = []

    def ask(name: str, rdtype: str, subnet: str | None = None) -> dns.message.Message:
        options = None
        if subnet:
            address, prefix = subnet.split("/")
            options = [dns.edns.ECSOption(address, int(prefix))]
        q = dns.message.make_query(name, rdtype, use_edns=0 if subnet else None, options=options)
        return dns.query.udp(q, "127.0.0.1", port=port, timeout=2)

    def addrs(m: dns.message.Message) -> set[str]:
        return {r.to_text() for rrset in m.answer for r in rrset}

    if addrs(ask("www.cdn.example", "A")) != {"192.0.2.1"}:
        problems.append("www A from 127.0.0.1 is not the eu edge")
    if addrs(ask("www.cdn.example", "A", "203.0.113.0/24")) != {"192.0.2.2"}:
        problems.append("www A for a us subnet is not the us edge")
    if ask("nope.cdn.example", "A").rcode() != dns.rcode.NXDOMAIN:
        problems.append("a missing name is not NXDOMAIN")
    return problems


def dnsperf(port: int, queries: Path, args: argparse.Namespace, ecs: bool) -> dict[str, float]:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries)]
    argv += [
        "-l",
        str(args.duration),
        "-c",
        str(args.clients),
        "-T",
        "1",
        "-q",
        str(args.outstanding),
    ]
    if ecs:
        argv += ["-e", "-E", ECS_OPTION]
    out = subprocess.run(
        pinned(argv, 1), capture_output=True, text=True, timeout=args.duration + 60
    )
    return parse_dnsperf(out.stdout + out.stderr)


def run(args: argparse.Namespace) -> int:
    require_tool("dnsperf")
    knotd = None if args.skip_reference else require_tool("knotd")
    results: dict[str, Any] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edge-dns-") as tmp, Processes(Path(tmp)) as procs:
        work = Path(tmp)
        queries = work / "queries.txt"
        queries.write_text("\n".join(QUERIES) + "\n")
        topology = work / "topology.toml"
        topology.write_text(TOPOLOGY)
        port = free_port()
        procs.start(
            "edge-dns",
            pinned(
                edge_command(
                    "dns",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--topology",
                    str(topology),
                    "--log-level",
                    "warning",
                ),
                0,
            ),
        )
        wait_dns(port)
        problems += spot_checks(port)
        results["edge dns"] = dnsperf(port, queries, args, ecs=False)
        results["edge dns (ECS)"] = dnsperf(port, queries, args, ecs=True)
        if knotd:
            kwork = work / "knot"
            (kwork / "db").mkdir(parents=True)
            (kwork / "cdn.example.zone").write_text(ZONE)
            kport = free_port()
            conf = kwork / "knot.conf"
            conf.write_text(knot_config(kwork, kport))
            procs.start("knotd", pinned([knotd, "-c", str(conf)], 0))
            wait_dns(kport)
            results["knot (reference)"] = dnsperf(kport, queries, args, ecs=False)
    edge = results["edge dns"]
    lost = edge.get("lost", 0) / max(1.0, edge.get("sent", 1))
    if lost > 0.01:
        problems.append(f"edge dns lost {lost:.1%} of the queries")
    ref = results.get("knot (reference)")
    ratio = edge["qps"] / ref["qps"] if ref else None
    lines = [
        f"dnsperf, {args.duration:g} s per run, {args.clients} clients, pinned: {can_pin()}",
        f"{'server':<20}{'qps':>10}{'lost %':>9}{'avg ms':>9}",
    ]
    for name, r in results.items():
        lost_pct = 100 * r.get("lost", 0) / max(1.0, r.get("sent", 1))
        lines.append(
            f"{name:<20}{r['qps']:>10.0f}{lost_pct:>9.2f}{1000 * r.get('latency_avg_s', 0):>9.2f}"
        )
    if ratio is not None:
        lines.append(f"edge dns / knot: {ratio:.3f}")
    print("\n".join(lines))
    for p in problems:
        print(f"FAILED: {p}")
    out = Path(args.out) if args.out else OUT_DIR / "dns_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"results": results, "ratio_edge_to_knot": ratio, "problems": problems}
    report["knot_version"] = _version(knotd) if knotd else None
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if problems else 0


def _version(knotd: str) -> str:
    out = subprocess.run([knotd, "--version"], capture_output=True, text=True)
    return out.stdout.strip()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.dns_throughput",
        description="edge dns against Knot DNS, measured with dnsperf on loopback.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf clients (4)")
    parser.add_argument(
        "--outstanding",
        type=int,
        default=50,
        help="queries in flight at most (50): more only fills socket buffers and drops",
    )
    parser.add_argument("--skip-reference", action="store_true", help="edge dns only")
    parser.add_argument("--out", default="", help="JSON report path")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients < 1:
        parser.error("--duration and --clients must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("dns_throughput", run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
