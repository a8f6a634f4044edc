"""Scenario: geo steering — clients in each region reach their region's edge.

    python -m scenarios.geo_steering                   # 20 clients per region
    python -m scenarios.geo_steering --clients 5

Starts the default topology with `edge up` (free ports). Clients of each region send
from their region's loopback network (127.R.255.x): each asks the GeoDNS authority for
www.cdn.example (UDP, from its own address), then fetches /catalogue.json from the edge
it was given (from the same address, `Host: www.cdn.example:PORT`) and reads which edge
answered from the last Cache-Status entry. Reported per region: clients, DNS answers in
the region, fetches that succeeded and were served by an edge of the region, and the
edges seen. Writes scenarios/out/geo_steering.json; exit 1 when a client was sent to,
or served by, another region's edge (every edge is healthy here).
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dns.message
import dns.query

from scenarios.cdn import Cdn, start_cdn
from scenarios.harness import Processes, report_path, run_main, write_report

NAME = "www.cdn.example"


def client_address(edge_host: str, index: int) -> str:
    """A client in the edge's region network: 127.R.255.(index+1)."""
    a, b = edge_host.split(".")[:2]
    return f"{a}.{b}.255.{index + 1}"


def resolve(cdn: Cdn, source: str) -> list[str]:
    query = dns.message.make_query(NAME, "A")
    answer = dns.query.udp(query, cdn.dns.host, port=cdn.dns.port, source=source, timeout=3)
    return [rr.to_text() for rrset in answer.answer for rr in rrset]


def fetch(cdn: Cdn, address: str, source: str) -> tuple[int, str]:
    edge = cdn.by_address(address)
    if edge is None:
        return 0, ""
    conn = http.client.HTTPConnection(address, edge.port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", "/catalogue.json", headers={"Host": f"{NAME}:{edge.port}"})
        resp = conn.getresponse()
        resp.read()
        served_by = resp.getheader("Cache-Status", "").split(",")[-1].split(";")[0].strip()
        return resp.status, served_by
    finally:
        conn.close()


def steer(cdn: Cdn, clients: int) -> dict[str, Any]:
    regions = sorted({e.region for e in cdn.edges()})
    report: dict[str, Any] = {}
    for region in regions:
        home = cdn.edges(region)[0]
        names = {e.name for e in cdn.edges(region)}
        stats: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for i in range(clients):
            source = client_address(home.host, i)
            answers = resolve(cdn, source)
            stats["clients"] += 1
            in_region = [a for a in answers if (e := cdn.by_address(a)) and e.region == region]
            stats["answers_in_region"] += bool(answers) and len(in_region) == len(answers)
            if not answers:
                continue
            status, served_by = fetch(cdn, answers[i % len(answers)], source)
            seen[served_by] += 1
            stats["fetched_ok"] += status == 200
            stats["served_in_region"] += status == 200 and served_by in names
        report[region] = {**stats, "edges_seen": dict(seen)}
    return report


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-geo-") as tmp, Processes(Path(tmp)) as procs:
        cdn = start_cdn(procs, Path(tmp))
        report = steer(cdn, args.clients)
    problems = []
    print(f"{'region':<8}{'clients':>9}{'DNS in region':>15}{'served in region':>18}  edges seen")
    for region, r in report.items():
        print(
            f"{region:<8}{r['clients']:>9}{r['answers_in_region']:>15}{r['served_in_region']:>18}"
            f"  {', '.join(f'{k} x{v}' for k, v in sorted(r['edges_seen'].items()))}"
        )
        for key in ("answers_in_region", "served_in_region"):
            if r[key] != r["clients"]:
                problems.append(
                    f"{region}: {r['clients'] - r[key]} clients not {key.replace('_', ' ')}"
                )
    for p in problems:
        print(f"FAILED: {p}")
    out = report_path(args.out, "geo_steering.json")
    seconds = round(time.monotonic() - started, 1)
    write_report(
        out, {"regions": report, "problems": problems, "seconds": seconds}, f" ({seconds:.0f}s)"
    )
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.geo_steering",
        description="Clients in each region resolve the CDN name and fetch through the edge "
        "they get: is it their region's?",
    )
    parser.add_argument("--clients", type=int, default=20, help="clients per region (20)")
    parser.add_argument("--out", default="", help="JSON report path")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 250:
        parser.error("--clients must be from 1 to 250")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("geo_steering", run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
