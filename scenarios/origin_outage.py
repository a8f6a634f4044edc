"""Scenario: origin outage — the origin dies; what was cached keeps being served.

    python -m scenarios.origin_outage                  # 10 s of traffic after the kill
    python -m scenarios.origin_outage --duration 4

Starts the default topology with `edge up --no-restart` (free ports), its origin given
a rule that makes books short-lived but usable stale on error (`public, max-age=2,
stale-if-error=600`, RFC 5861); the catalogue keeps its own max-age=60. Every edge
fetches the catalogue and a few books, then the origin is SIGKILLed and, once the books
have gone stale, clients fetch for a bounded time through every edge: the cached
objects (fresh: catalogue; stale: books) and objects never cached. Reported per class:
requests, 2xx, 5xx, and the Cache-Status details seen. Goal: zero 5xx for cached
objects (exit 1 otherwise); never-cached ones get a clear 502 or 504.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scenarios.cdn import Cdn, Node, start_cdn
from scenarios.harness import Processes, ScenarioError, report_path, run_main, write_report

BOOK_RULE = "/books/*=public, max-age=2, stale-if-error=600"
HOST = "www.cdn.example"


def get(edge: Node, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(edge.host, edge.port, timeout=15)
    try:
        conn.request("GET", path, headers={"Host": f"{HOST}:{edge.port}"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Cache-Status", "")
    finally:
        conn.close()


def books(cdn: Cdn, count: int) -> list[str]:
    root = cdn.workdir / "cdn" / "archive" / "books"
    found = sorted(p.name for p in root.iterdir() if p.is_file()) if root.is_dir() else []
    if not found:
        raise ScenarioError(f"no demo books under {root}")
    return [f"/books/{name}" for name in found[:count]]


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-outage-") as tmp, Processes(Path(tmp)) as procs:
        work = Path(tmp)
        cdn = start_cdn(procs, work, restart=False, origin_rules=[BOOK_RULE])
        edges = cdn.edges()
        classes = {"fresh": ["/catalogue.json"], "stale": books(cdn, args.objects)}
        for edge in edges:  # warm every edge (and the shield)
            for path in (*classes["fresh"], *classes["stale"]):
                status, _ = get(edge, path)
                if status != 200:
                    raise ScenarioError(f"warming {path} at {edge.name} answered {status}")
        os.kill(cdn.find("origin")[0], signal.SIGKILL)
        time.sleep(2.5)  # the books are stale now
        classes["never cached"] = [f"/books/missing-{i}.txt" for i in range(3)]
        counts: dict[str, Counter[str]] = {c: Counter() for c in classes}
        details: dict[str, Counter[str]] = {c: Counter() for c in classes}
        t0 = time.monotonic()
        rounds = 0
        while time.monotonic() - t0 < args.duration and rounds < 500:
            rounds += 1
            for edge in edges:
                for cls, paths in classes.items():
                    path = paths[rounds % len(paths)]
                    try:
                        status, cs = get(edge, path)
                    except OSError:
                        status, cs = 0, ""
                    counts[cls]["requests"] += 1
                    counts[cls][
                        "2xx" if 200 <= status < 300 else ("5xx" if status >= 500 else "other")
                    ] += 1
                    details[cls][summarise(cs)] += 1
    report: dict[str, Any] = {cls: {**counts[cls], "details": dict(details[cls])} for cls in counts}
    problems = [
        f"{counts[c]['5xx'] + counts[c]['other']} failed requests for {c} objects"
        for c in ("fresh", "stale")
        if counts[c]["2xx"] != counts[c]["requests"]
    ]
    print(f"{'objects':<14}{'requests':>9}{'2xx':>7}{'5xx':>7}  Cache-Status details")
    for cls, r in report.items():
        print(
            f"{cls:<14}{r['requests']:>9}{r.get('2xx', 0):>7}{r.get('5xx', 0):>7}  "
            + ", ".join(f"{k} x{v}" for k, v in r["details"].items())
        )
    for p in problems:
        print(f"FAILED: {p}")
    out = report_path(args.out, "origin_outage.json")
    seconds = round(time.monotonic() - started, 1)
    write_report(
        out, {"classes": report, "problems": problems, "seconds": seconds}, f" ({seconds:.0f}s)"
    )
    return 1 if problems else 0


def summarise(cache_status: str) -> str:
    """The tiers' Cache-Status entries without node names and ttl, e.g.
    `hit | fwd=stale; fwd-status=304` (shield | edge)."""
    entries = []
    for entry in cache_status.split(","):
        params = [p.strip() for p in entry.split(";")[1:] if not p.strip().startswith("ttl=")]
        entries.append("; ".join(params) or "-")
    return " | ".join(entries) if cache_status else "-"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.origin_outage",
        description="The origin dies: are cached objects still served (stale where allowed)?",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (10)")
    parser.add_argument("--objects", type=int, default=5, help="books cached (5)")
    parser.add_argument("--out", default="", help="JSON report path")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600 or args.objects < 1:
        parser.error("--duration must be 1-600 s and --objects at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("origin_outage", run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
