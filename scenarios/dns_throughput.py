"""Scenario: GeoDNS throughput — `edge dns` against Knot DNS, both measured by dnsperf.

    python -m scenarios.dns_throughput                   # 10 s per pass, both servers
    python -m scenarios.dns_throughput --duration 3 --skip-reference
    python -m scenarios.dns_throughput --rounds 5        # medians of 5 alternating rounds
    python -m scenarios.dns_throughput --no-geoip        # without a [geoip] database

Owns: the topology edge dns serves and the equivalent static zone for the reference
(Knot DNS, `knotd` from Debian's knot package, every file of it in a temporary folder),
the dnsperf query file (80% www A, 10% www AAAA, 5% apex SOA/NS, 5% names that do not
exist, interleaved), the spot checks, running dnsperf and parsing its statistics, the
table and scenarios/out/dns_throughput.json.

Each server runs alone on a free loopback port, on core 0 when taskset allows, with
dnsperf (one thread) on core 1. Each gets two passes at full speed (no -Q) for a fixed
time: plain queries, then EDNS with a Client Subnet option on every query, the
geographic path of edge dns; Knot ignores the option, so its ECS pass measures EDNS alone.

edge dns runs with a [geoip] database loaded (unless --no-geoip): a synthetic GeoLite2-City
file of GEO_NETWORKS networks in several countries, written with mmdb-writer (the test
extra), and the ECS pass's subnet is one the topology does not list, placed in us by the
database (country US); without it, the us /24 of the topology.

Before any load: answers of edge dns are checked with dnspython (a loopback client gets
the eu edges, the us subnet dnsperf sends gets the us edge, a missing name is NXDOMAIN),
and edge dns and Knot must answer a set of queries identically, so both serve the same
mix. dnsperf 2.10 (Debian 12) prints no latency histogram or percentiles: the figures
are mean, min, max and standard deviation. At full speed latency is mostly queueing
(outstanding queries / queries per second).

Each pass also records the server's CPU time (user + system, from /proc) per completed
query: on a shared machine the queries per second move with whatever else runs, the
CPU a query costs much less. Near 100k queries/s dnsperf's own core is the limit: a
server that keeps up shows it by using less than all of its core.

Exit 1 when a spot check fails, the two servers answer differently, or a pass of edge
dns loses over 1% of its queries or answers any with an rcode other than NOERROR or
NXDOMAIN. Installs nothing: a missing tool is one line naming its Debian package.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

from scenarios.harness import (
    Child,
    Processes,
    ScenarioError,
    can_pin,
    edge_command,
    free_port,
    pinned,
    report_path,
    require_tool,
    run_main,
    write_report,
)

SERVER_CORE = 0
LOAD_CORE = 1
ZONE = "cdn.example."
#: (name, region, IPv4, IPv6) of each edge edge dns answers with.
EDGES = (
    ("edge-eu-1", "eu", "127.1.0.1", "fd00:1::1"),
    ("edge-eu-2", "eu", "127.1.0.2", "fd00:1::2"),
    ("edge-us-1", "us", "127.2.0.1", "fd00:2::1"),
)
EU_V4 = {v4 for _, region, v4, _ in EDGES if region == "eu"}
EU_V6 = {v6 for _, region, _, v6 in EDGES if region == "eu"}
US_V4 = {v4 for _, region, v4, _ in EDGES if region == "us"}
NS_GLUE = "192.0.2.53"
TTL, NEGATIVE_TTL, NS_TTL = 30, 60, 3600  # NS_TTL: what edge dns gives NS and glue
US_SUBNET = "203.0.113.0/24"
EU_SUBNET = "198.51.100.0/24"
#: The ECS pass's subnet with a database: in no topology network, in a US record.
GEO_SUBNET = "100.64.0.0/24"
#: Networks in the synthetic database (a /22 each from 100.64.0.0/10, countries in turn).
GEO_NETWORKS = 4096
GEO_COUNTRIES = (  # country, continent, latitude, longitude
    ("US", "NA", 40.7, -74.0),
    ("DE", "EU", 50.1, 8.7),
    ("BR", "SA", -23.5, -46.6),
    ("JP", "AS", 35.7, 139.7),
)
MAX_LOST = 0.01
EDGE, REFERENCE = "edge dns", "Knot DNS"  # the servers' rows in the table and the report
# A pass also stops after this many queries per second of --duration, far above what
# loopback on two cores reaches: the count bound never cuts a normal run short.
MAX_QPS_BOUND = 200_000


def topology_toml(geoip: bool = False) -> str:
    """The topology edge dns serves: zone, two regions, EDGES; no health probes, so every
    edge counts as healthy. Loopback clients (127.0.0.1) are in neither region's networks:
    they get the default, eu. With `geoip`, the database geo.mmdb beside it (see
    write_database) and the countries each region takes."""
    edges = "".join(
        f'\n[[edges]]\nname = "{name}"\nregion = "{region}"\nipv4 = "{v4}"\nipv6 = "{v6}"\n'
        for name, region, v4, v6 in EDGES
    )
    return f"""[zone]
name = "{ZONE}"
ttl = {TTL}
negative_ttl = {NEGATIVE_TTL}
ns = ["ns1.{ZONE}"]
glue = {{ "ns1.{ZONE}" = ["{NS_GLUE}"] }}
names = ["@", "www", "files"]
answer_count = 2

[[regions]]
name = "eu"
lat = 50.1
lon = 8.7
networks = ["127.1.0.0/16", "{EU_SUBNET}"]
default = true
{'countries = ["DE"]' if geoip else ""}

[[regions]]
name = "us"
lat = 40.7
lon = -74.0
networks = ["127.2.0.0/16", "{US_SUBNET}"]
{'countries = ["US"]' if geoip else ""}
{edges}{GEOIP if geoip else ""}"""


GEOIP = """
[geoip]
database = "geo.mmdb"
"""


def write_database(path: Path) -> None:
    """A GeoLite2-City-shaped database of GEO_NETWORKS /22s from 100.64.0.0/10 (the
    first, holding GEO_SUBNET, in the US), written with mmdb-writer."""
    try:
        from mmdb_writer import MmdbF64, MMDBWriter
        from netaddr import IPSet
    except ImportError:
        raise ScenarioError(
            "the database needs mmdb-writer: pip install -e '.[test]' (or run with --no-geoip)"
        ) from None
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    base = ipaddress.ip_network("100.64.0.0/10")
    for i, net in enumerate(base.subnets(new_prefix=22)):
        if i == GEO_NETWORKS:
            break
        country, continent, lat, lon = GEO_COUNTRIES[i % len(GEO_COUNTRIES)]
        record = {
            "country": {"iso_code": country},
            "continent": {"code": continent},
            "location": {"latitude": MmdbF64(lat), "longitude": MmdbF64(lon)},
        }
        writer.insert_network(IPSet([str(net)]), record)
    writer.to_db_file(str(path))


#: (dnsperf query line, weight): 80/10/5/5.
QUERY_MIX: tuple[tuple[str, int], ...] = (
    ("www.cdn.example A", 32),
    ("www.cdn.example AAAA", 4),
    ("cdn.example SOA", 1),
    ("cdn.example NS", 1),
    ("nope.cdn.example A", 1),
    ("old.cdn.example AAAA", 1),
)
#: Asked of both servers before the load; their answers must be the same.
COMPARED = (
    *(line for line, _ in QUERY_MIX),
    "cdn.example A",
    "files.cdn.example AAAA",
    "ns1.cdn.example A",
    "www.cdn.example MX",
)


def zone_file() -> str:
    """The reference's static zone: what edge dns answers a eu client, record for record
    (the SOA's own TTL is edge's negative TTL, as in its SOA answers)."""
    lines = [
        f"$ORIGIN {ZONE}",
        f"$TTL {TTL}",
        f"@ {NEGATIVE_TTL} IN SOA ns1.{ZONE} hostmaster.{ZONE} 1 3600 600 604800 {NEGATIVE_TTL}",
        f"@ {NS_TTL} IN NS ns1.{ZONE}",
        f"ns1 {NS_TTL} IN A {NS_GLUE}",
    ]
    for name in ("@", "www", "files"):
        lines += [f"{name} IN A {v4}" for v4 in sorted(EU_V4)]
        lines += [f"{name} IN AAAA {v6}" for v6 in sorted(EU_V6)]
    return "\n".join(lines) + "\n"


def knot_config(work: Path, port: int) -> str:
    """knotd in the foreground on 127.0.0.1:port, one worker per kind (edge dns is one
    event loop), logging to stderr; pid file, control socket, databases and the zone all
    inside `work`."""
    return f"""server:
    rundir: "{work}"
    pidfile: "{work}/knot.pid"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
control:
    listen: "{work}/knot.sock"
log:
  - target: stderr
    any: info
database:
    storage: "{work}/db"
template:
  - id: default
    storage: "{work}"
    semantic-checks: off
zone:
  - domain: {ZONE}
    file: "{work}/cdn.example.zone"
"""


def write_knot(work: Path, port: int, knotd: str) -> list[str]:
    """Write the zone and knot.conf into `work`; the argv that runs knotd on them."""
    (work / "db").mkdir(parents=True, exist_ok=True)
    (work / "cdn.example.zone").write_text(zone_file())
    conf = work / "knot.conf"
    conf.write_text(knot_config(work, port))
    return [knotd, "--config", str(conf)]


def query_lines(mix: Sequence[tuple[str, int]]) -> list[str]:
    """One cycle of the mix (sum of weights lines), interleaved by smooth weighted
    round-robin: dnsperf reads the file in order, so every stretch of it has the mix."""
    current = [0] * len(mix)
    total = sum(weight for _, weight in mix)
    lines = []
    for _ in range(total):
        for i, (_, weight) in enumerate(mix):
            current[i] += weight
        best = max(range(len(mix)), key=lambda i: current[i])
        current[best] -= total
        lines.append(mix[best][0])
    return lines


def write_queries(path: Path, mix: Sequence[tuple[str, int]] = QUERY_MIX) -> int:
    """Write dnsperf's query file; the number of lines."""
    lines = query_lines(mix)
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def ecs_option(subnet: str) -> str:
    """dnsperf's `-E code:hex` for an RFC 7871 Client Subnet option: family, source
    prefix, scope 0, the address cut to the prefix's bytes."""
    net = ipaddress.ip_network(subnet)
    family = 1 if net.version == 4 else 2
    address = net.network_address.packed[: math.ceil(net.prefixlen / 8)]
    return f"8:{family:04x}{net.prefixlen:02x}00{address.hex()}"


_NUMBERS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "run_s": r"Run time \(s\):\s+([\d.]+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "latency_avg_s": r"Average Latency \(s\):\s+([\d.]+)",
    "latency_min_s": r"Average Latency \(s\):.*\(min ([\d.]+)",
    "latency_max_s": r"Average Latency \(s\):.*max ([\d.]+)\)",
    "latency_stddev_s": r"Latency StdDev \(s\):\s+([\d.]+)",
    "request_bytes": r"Average packet size:\s+request (\d+)",
    "response_bytes": r"Average packet size:.*response (\d+)",
}


def parse_dnsperf(text: str) -> dict[str, Any]:
    """The statistics block of a dnsperf run: counts, queries/s, latency (s), rcodes,
    packet sizes, why it stopped and dnsperf's version."""
    out: dict[str, Any] = {}
    for key, pattern in _NUMBERS.items():
        m = re.search(pattern, text)
        if m:
            value = float(m.group(1))
            out[key] = int(value) if value.is_integer() and not key.endswith("_s") else value
    if "qps" not in out or "sent" not in out:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise ScenarioError(f"dnsperf printed no statistics: {last}")
    m = re.search(r"Response codes:[ \t]*(.*)", text)
    out["rcodes"] = {
        code: int(n) for code, n in re.findall(r"([A-Z]+) (\d+)", m.group(1) if m else "")
    }
    m = re.search(r"Testing complete \((.*?)\)", text)
    out["stopped_by"] = m.group(1) if m else None
    m = re.search(r"^Version (\S+)", text, re.MULTILINE)
    out["dnsperf_version"] = m.group(1) if m else None
    out["lost_pct"] = 100.0 * out.get("lost", 0) / out["sent"] if out["sent"] else 100.0
    return out


def _ask(
    port: int, line: str, options: Sequence[dns.edns.Option] | None = None
) -> dns.message.Message:
    """One query (a dnsperf query line) over UDP; no answer is a ScenarioError."""
    name, rdtype = line.split()
    q = dns.message.make_query(name, rdtype, use_edns=0 if options else None, options=options)
    try:
        return dns.query.udp(q, "127.0.0.1", port=port, timeout=2.0)
    except dns.exception.Timeout:
        raise ScenarioError(f"no answer to `{line}` from 127.0.0.1:{port} in 2 s") from None


def wait_dns(child: Child, port: int, timeout: float = 20.0) -> None:
    """Until the server answers SOA for the zone apex; fails early if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.died()
        q = dns.message.make_query(ZONE, "SOA")
        try:
            if dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5).answer:
                return
        except (dns.exception.DNSException, OSError):
            pass
        time.sleep(0.1)
    raise ScenarioError(f"{child.name} gave no SOA for {ZONE} on port {port} in {timeout:g}s")


def _addresses(m: dns.message.Message) -> set[str]:
    return {r.to_text() for rrset in m.answer for r in rrset}


def spot_checks(port: int, geoip: bool = False) -> list[str]:
    """Answers of edge dns that must be right before its throughput means anything."""
    # The us option as the very bytes dnsperf sends with -E.
    code, data = ecs_option(US_SUBNET).split(":")
    us_option = dns.edns.GenericOption(int(code), bytes.fromhex(data))
    eu_option = dns.edns.ECSOption.from_text(EU_SUBNET)
    checks = [
        ("www A from 127.0.0.1 gives the eu edges", _ask(port, "www.cdn.example A"), EU_V4),
        ("www AAAA from 127.0.0.1 gives the eu edges", _ask(port, "www.cdn.example AAAA"), EU_V6),
        (
            f"www A for ECS {US_SUBNET} gives the us edge",
            _ask(port, "www.cdn.example A", [us_option]),
            US_V4,
        ),
        (
            f"www A for ECS {EU_SUBNET} gives the eu edges",
            _ask(port, "www.cdn.example A", [eu_option]),
            EU_V4,
        ),
    ]
    if geoip:
        geo_option = dns.edns.ECSOption.from_text(GEO_SUBNET)
        checks.append(
            (
                f"www A for ECS {GEO_SUBNET} (database: US) gives the us edge",
                _ask(port, "www.cdn.example A", [geo_option]),
                US_V4,
            )
        )
    problems = [
        f"{what}: got {sorted(_addresses(m)) or dns.rcode.to_text(m.rcode())}"
        for what, m, want in checks
        if _addresses(m) != want
    ]
    missing = _ask(port, "nope.cdn.example A")
    if missing.rcode() != dns.rcode.NXDOMAIN or not missing.authority:
        problems.append(
            f"a missing name is {dns.rcode.to_text(missing.rcode())}, not NXDOMAIN with the SOA"
        )
    return problems


def answers(port: int) -> dict[str, list[str]]:
    """Each COMPARED query's answer in a form two servers can be compared by: rcode, AA
    and each section's records, sorted (edge dns orders its picks by weight)."""
    out = {}
    for line in COMPARED:
        m = _ask(port, line)
        aa = "aa" if m.flags & dns.flags.AA else "no-aa"
        text = [f"{dns.rcode.to_text(m.rcode())} {aa}"]
        for section, rrsets in (("an", m.answer), ("ns", m.authority), ("ad", m.additional)):
            text += sorted(
                f"{section} {rr}" for rrset in rrsets for rr in rrset.to_text().split("\n")
            )
        out[line] = text
    return out


def differences(ours: dict[str, list[str]], reference: dict[str, list[str]]) -> list[str]:
    return [
        f"`{line}`: edge dns {ours[line]} but the reference {reference.get(line)}"
        for line in ours
        if ours[line] != reference.get(line)
    ]


@dataclass
class Load:
    """What every dnsperf pass shares."""

    tool: str
    queries: Path
    lines: int
    duration: float
    clients: int
    outstanding: int
    ecs_subnet: str = US_SUBNET


def dnsperf(load: Load, port: int, *, ecs: bool) -> dict[str, Any]:
    """One pass at full speed: no -Q; -l seconds, and -n passes through the file as a
    count bound that a normal run never reaches."""
    passes = math.ceil(load.duration * MAX_QPS_BOUND / load.lines)
    argv = [load.tool, "-s", "127.0.0.1", "-p", str(port), "-d", str(load.queries)]
    argv += ["-l", f"{load.duration:g}", "-n", str(passes)]
    # One thread: dnsperf has one core of its own; the clients are its sockets.
    argv += ["-c", str(load.clients), "-T", "1", "-q", str(load.outstanding)]
    if ecs:
        argv += ["-e", "-E", ecs_option(load.ecs_subnet)]
    limit = load.duration + 30
    try:
        proc = subprocess.run(
            pinned(argv, LOAD_CORE), capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        raise ScenarioError(f"dnsperf did not finish in {limit:g}s") from None
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        last = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise ScenarioError(f"dnsperf exited with status {proc.returncode}: {last}")
    return parse_dnsperf(text)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, from /proc (None where there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    name: str,
    argv: list[str],
    port: int,
    work: Path,
    load: Load,
    *,
    checks: bool,
    geoip: bool = False,
) -> tuple[dict[str, Any], dict[str, list[str]], list[str]]:
    """Start one server alone, check and record its answers, run both passes, stop it:
    (results per pass, answers, problems)."""
    with Processes(work) as procs:
        child = procs.start(name, pinned(argv, SERVER_CORE))
        wait_dns(child, port)
        problems = spot_checks(port, geoip) if checks else []
        seen = answers(port)
        results = {}
        for kind, ecs in (("plain", False), ("ECS", True)):
            before = cpu_seconds(child.proc.pid)
            results[kind] = r = dnsperf(load, port, ecs=ecs)
            after = cpu_seconds(child.proc.pid)
            if before is not None and after is not None and r.get("completed"):
                r["server_cpu_s"] = round(after - before, 2)
                r["server_cpu_pct"] = round(100 * (after - before) / r["run_s"], 1)
                r["cpu_us_per_query"] = round(1e6 * (after - before) / r["completed"], 2)
            if not child.alive():
                raise ScenarioError(f"{name} exited during the {kind} pass:\n{child.tail()}")
    return results, seen, problems


def _version(argv: list[str], pattern: str) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, proc.stdout + proc.stderr)
    return m.group(1) if m else None


def round_ratio(
    this: dict[str, dict[str, Any]], field: str, *, edge_over_reference: bool
) -> dict[str, float]:
    """Per pass, edge dns's `field` over the reference's in one round (or the inverse)."""
    if REFERENCE not in this:
        return {}
    out = {}
    for kind, r in this[EDGE].items():
        ours, theirs = r.get(field), this[REFERENCE][kind].get(field)
        if ours and theirs:
            out[kind] = ours / theirs if edge_over_reference else theirs / ours
    return out


def median_ratios(rounds: list[dict[str, float]]) -> dict[str, float]:
    kinds = [kind for kind in rounds[0] if all(kind in r for r in rounds)] if rounds else []
    return {kind: statistics.median(r[kind] for r in rounds) for kind in kinds}


def median_pass(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """The pass with the median queries per second (the lower middle one of an even count)."""
    ordered = sorted(passes, key=lambda r: r["qps"])
    return ordered[(len(ordered) - 1) // 2]


def render(report: dict[str, Any]) -> str:
    c, v = report["config"], report["versions"]
    tools = f"dnsperf {v['dnsperf']}" + (f", Knot DNS {v['knot']}" if "knot" in v else "")
    pin = f"server on core {SERVER_CORE}, dnsperf on core {LOAD_CORE}" if c["pinned"] else "no"
    lines = [
        f"dns_throughput ({tools}): {c['duration_s']:g} s per pass, {c['clients']} clients, "
        f"1 thread, {c['outstanding']} outstanding; pinned: {pin}",
        "",
        f"{'server':<16}{'pass':<7}{'qps':>9}{'lost %':>8}{'avg ms':>8}{'min ms':>8}"
        f"{'max ms':>8}{'sd ms':>7}{'cpu %':>7}{'cpu us/q':>10}",
    ]
    for server, passes in report["results"].items():
        for kind, r in passes.items():
            ms = [1000 * r.get(f"latency_{k}_s", 0.0) for k in ("avg", "min", "max", "stddev")]
            cpu = (
                f"{r['server_cpu_pct']:>7.0f}{r['cpu_us_per_query']:>10.1f}"
                if "cpu_us_per_query" in r
                else f"{'-':>7}{'-':>10}"
            )
            lines.append(
                f"{server:<16}{kind:<7}{r['qps']:>9.0f}{r['lost_pct']:>8.2f}"
                + "".join(f"{v:>8.2f}" for v in ms[:3])
                + f"{ms[3]:>7.2f}"
                + cpu
            )
    if len(report.get("rounds", [])) > 1:
        lines += [
            "",
            f"each round's ratios ({len(report['rounds'])} rounds, who goes first alternates):",
        ]
        for i, r in enumerate(report["rounds"], 1):
            qps = ", ".join(f"{kind} {v:.3f}" for kind, v in r["qps"].items())
            cpu = ", ".join(f"{kind} {v:.3f}" for kind, v in r["cpu"].items())
            lines.append(f"  {i}: qps {qps}; CPU per query {cpu}")
        lines.append(
            "the table: each server's median round; the ratios below: medians of the rounds'"
        )
    if report["ratios"]:
        ratio = ", ".join(f"{kind} {v:.3f}" for kind, v in report["ratios"].items())
        lines += ["", f"qps {EDGE} / {REFERENCE}: {ratio}"]
    if report.get("cpu_ratios"):
        ratio = ", ".join(f"{kind} {v:.3f}" for kind, v in report["cpu_ratios"].items())
        lines += [f"CPU per query {REFERENCE} / {EDGE} (above 1: edge dns cheaper): {ratio}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    dnsperf_tool = require_tool("dnsperf")
    knotd = None if args.skip_reference else require_tool("knotd")
    out = report_path(args.out, "dns_throughput.json")
    versions = {"dnsperf": _version([dnsperf_tool, "-H"], r"Version (\S+)")}
    if knotd is not None:
        versions["knot"] = _version([knotd, "--version"], r"version (\S+)")
    rounds: list[dict[str, dict[str, Any]]] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edge-dns-") as tmp:
        work = Path(tmp)
        queries = work / "queries.txt"
        lines = write_queries(queries)
        geoip = not args.no_geoip
        ecs_subnet = GEO_SUBNET if geoip else US_SUBNET
        load = Load(
            dnsperf_tool,
            queries,
            lines,
            args.duration,
            args.clients,
            args.outstanding,
            ecs_subnet,
        )
        topology = work / "topology.toml"
        topology.write_text(topology_toml(geoip))
        if geoip:
            write_database(work / "geo.mmdb")

        def edge_dns(first: bool) -> tuple[dict[str, Any], dict[str, list[str]], list[str]]:
            port = free_port()
            argv = edge_command("dns", "--listen", f"127.0.0.1:{port}", "--topology", str(topology))
            argv += ["--log-level", "warning"]
            return measure("edge-dns", argv, port, work, load, checks=first, geoip=geoip)

        def knot() -> tuple[dict[str, Any], dict[str, list[str]], list[str]]:
            assert knotd is not None
            kport = free_port()
            kargv = write_knot(work / "knot", kport, knotd)
            return measure("knotd", kargv, kport, work, load, checks=False)

        for i in range(args.rounds):
            # Alternate who goes first, so a neighbour's load that comes or goes during a
            # round weighs on both servers alike over the rounds.
            this: dict[str, dict[str, Any]] = {}
            order = [EDGE, REFERENCE] if i % 2 == 0 else [REFERENCE, EDGE]
            for server in order:
                if server == EDGE:
                    this[EDGE], seen, found = edge_dns(i == 0)
                    problems += found
                    if i == 0:
                        edge_answers = seen
                elif knotd is not None:
                    this[REFERENCE], seen, _ = knot()
                    if i == 0:
                        ref_answers = seen
            rounds.append(this)
        if knotd is not None:
            problems += differences(edge_answers, ref_answers)
    for this in rounds:
        for kind, r in this[EDGE].items():
            if r["lost_pct"] > 100 * MAX_LOST:
                problems.append(f"edge dns lost {r['lost_pct']:.2f}% of the {kind} pass's queries")
            odd = {c: n for c, n in r["rcodes"].items() if c not in ("NOERROR", "NXDOMAIN")}
            if odd:
                problems.append(f"edge dns answered {odd} in the {kind} pass")
    round_ratios = [round_ratio(this, "qps", edge_over_reference=True) for this in rounds]
    round_cpu = [
        round_ratio(this, "cpu_us_per_query", edge_over_reference=False) for this in rounds
    ]
    ratios, cpu_ratios = median_ratios(round_ratios), median_ratios(round_cpu)
    # The table shows, per server and pass, the round with the median queries per second.
    results = {
        server: {kind: median_pass([this[server][kind] for this in rounds]) for kind in passes}
        for server, passes in rounds[0].items()
    }
    report: dict[str, Any] = {
        "config": {
            "duration_s": args.duration,
            "clients": args.clients,
            "outstanding": args.outstanding,
            "pinned": can_pin(),
            "ecs_subnet": ecs_subnet,
            "geoip_networks": GEO_NETWORKS if not args.no_geoip else 0,
            "query_mix": dict(QUERY_MIX),
        },
        "versions": versions,
        "results": results,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "rounds": [{"qps": q, "cpu": c} for q, c in zip(round_ratios, round_cpu, strict=True)],
        "problems": problems,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(render(report))
    for p in problems:
        print(f"FAILED: {p}")
    write_report(out, report, f" ({report['seconds']:.0f}s)")
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.dns_throughput",
        description="edge dns against Knot DNS, each measured with dnsperf on loopback.",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per pass (10)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf clients, -c (4)")
    parser.add_argument(
        "--outstanding",
        type=int,
        default=100,
        help="queries in flight at most, -q (100, dnsperf's default)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure both servers this many times, alternating who goes first; the "
        "ratios are the medians of each round's (1)",
    )
    parser.add_argument("--skip-reference", action="store_true", help="edge dns only")
    parser.add_argument(
        "--no-geoip",
        action="store_true",
        help="edge dns without a [geoip] database (the ECS pass then uses a topology subnet)",
    )
    parser.add_argument("--out", default="", help="JSON report path")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be 1 to 20")
    if not 1 <= args.duration <= 120:
        parser.error("--duration must be 1 to 120 seconds")
    if not 1 <= args.clients <= 256 or not 1 <= args.outstanding <= 10_000:
        parser.error("--clients must be 1 to 256 and --outstanding 1 to 10000")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("dns_throughput", run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
