"""Scenario: edge failover — an edge is killed; GeoDNS moves its region's clients to
the next-nearest region, and back when the edge returns.

    python -m scenarios.edge_failover                  # us clients, 12 s
    python -m scenarios.edge_failover --region ap --duration 8

Starts the default topology with `edge up --no-restart` (free ports). Clients of one
region (from 127.R.255.x) loop: resolve www.cdn.example at the GeoDNS authority, fetch
/catalogue.json from the first edge given. They resolve on every round, as a resolver
honouring the answers' short TTL would within one TTL. A quarter into the run the
region's edge(s) are SIGKILLed; halfway they are started again (the same command
line). Reported: requests, errors (failed fetches) and the window they fell in, time
from the kill to the first answer without the dead edge, time from the restart to the
first answer with it again, and which edges served meanwhile. The goal: errors stop
within the GeoDNS health interval (+ the TTL for caching resolvers). Writes
scenarios/out/edge_failover.json; exit 1 if clients never moved or never came back.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scenarios.cdn import start_cdn
from scenarios.geo_steering import client_address, fetch, resolve
from scenarios.harness import (
    Processes,
    ScenarioError,
    report_path,
    run_main,
    wait_http_ok,
    write_report,
)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-failover-") as tmp, Processes(Path(tmp)) as procs:
        cdn = start_cdn(procs, Path(tmp), restart=False)
        victims = cdn.edges(args.region)
        if not victims:
            raise ScenarioError(f"no edge in region {args.region!r}")
        dead = {v.host for v in victims}
        source = client_address(victims[0].host, 0)
        kill_at, back_at = args.duration / 4, args.duration / 2
        t0 = time.monotonic()
        killed = restarted = False
        moved_after = back_after = None
        errors: list[float] = []
        served: Counter[str] = Counter()
        requests = 0
        commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        while (now := time.monotonic() - t0) < args.duration and requests < 20_000:
            if not killed and now >= kill_at:
                for v in victims:
                    pid, argv, env = cdn.find(v.name)
                    commands[v.name] = (argv, env)
                    os.kill(pid, signal.SIGKILL)
                killed, kill_time = True, now
            if killed and not restarted and now >= back_at:
                for v in victims:
                    argv, env = commands[v.name]
                    child = procs.start(f"{v.name}-again", argv, env=env)
                    wait_http_ok(child, f"http://{v.listen}/_edge/health")
                restarted, restart_time = True, time.monotonic() - t0
            answers = resolve(cdn, source)
            requests += 1
            if killed and moved_after is None and answers and not dead & set(answers):
                moved_after = now - kill_time
            if restarted and back_after is None and dead & set(answers):
                back_after = now - restart_time
            try:
                status, served_by = fetch(cdn, answers[0], source) if answers else (0, "")
            except OSError:
                status, served_by = 0, ""
            if status != 200:
                errors.append(round(now - (kill_time if killed else 0), 3))
            else:
                served[served_by] += 1
            time.sleep(0.02)
    report: dict[str, Any] = {
        "region": args.region,
        "requests": requests,
        "errors": len(errors),
        "error_window_s": [min(errors), max(errors)] if errors else None,
        "moved_after_s": moved_after,
        "back_after_s": back_after,
        "served_by": dict(served),
        "seconds": round(time.monotonic() - started, 1),
    }
    problems = []
    if moved_after is None:
        problems.append("clients were never sent elsewhere")
    if back_after is None:
        problems.append("clients never came back to their region's edge")
    print(
        f"region {args.region}: {requests} requests, {len(errors)} errors"
        + (f" between {errors[0]:.2f} s and {errors[-1]:.2f} s after the kill" if errors else "")
    )
    print(
        f"  moved {moved_after if moved_after is None else round(moved_after, 2)} s after the kill"
    )
    print(
        f"  back  {back_after if back_after is None else round(back_after, 2)} s after the restart"
    )
    print(f"  served by: {', '.join(f'{k} x{v}' for k, v in sorted(served.items()))}")
    for p in problems:
        print(f"FAILED: {p}")
    report["problems"] = problems
    out = report_path(args.out, "edge_failover.json")
    write_report(out, report)
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.edge_failover",
        description="An edge killed: GeoDNS moves its region's clients, and back.",
    )
    parser.add_argument("--region", default="us", help="region whose edges die (us)")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of traffic (12)")
    parser.add_argument("--out", default="", help="JSON report path")
    args = parser.parse_args(argv)
    if not 4 <= args.duration <= 600:
        parser.error("--duration must be from 4 to 600 seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("edge_failover", run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
