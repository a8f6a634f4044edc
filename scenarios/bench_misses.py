"""Cache-miss benchmark: `edge serve` (or `edge shield`) against nginx proxy_cache, one run.

Owns: the origin (nginx serving prebuilt bodies from tmpfs, its access log the count of
what reached it), the wrk Lua script that makes every request a path never asked before,
starting the servers under test in front of that one origin, the miss check (every wrk
request reached the origin, each path once), the table, the ratios, the p99 a miss adds
over the same wrk run straight at the origin, and `scenarios/out/bench_misses*.json`.

The origin is Debian's nginx too, one worker, answering `GET /SIZE/...` with a prebuilt
file of SIZE bytes from a tmpfs folder (open_file_cache, sendfile, keep-alive without a
request limit): a miss then costs the origin a file lookup in memory and a sendfile,
far less than either server's miss (store the body, write the index), so the origin is
not what is measured. A `return 200 "..."` would do as well for 1 KiB, but nginx caps a
config token at 4 KiB; a file serves every size the same way.

Pinning, as bench_hits: with taskset and two cores the server under test runs on core 0,
wrk, the origin and this process on core 1. In the direct run (wrk straight at the
origin) wrk takes core 0, idle then: at the origin's full rate wrk would otherwise take
the origin's core from it, and the direct p99 would be wrk's queue, not the origin's.

wrk, wrk's report, sizes, the nginx reference and the edge command line are
bench_hits' and the harness's. Installs nothing: a missing tool is one line naming its
apt package.

    python -m scenarios.bench_misses                   # edge serve and nginx, 1 KiB and 100 KiB
    python -m scenarios.bench_misses --tier shield     # edge shield as the server under test
    python -m scenarios.bench_misses --duration 5 --sizes 1k
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scenarios.bench_hits import LOAD_CORE, SERVER_CORE, WrkResult, object_body, ratio, run_wrk
from scenarios.harness import (
    REPO_ROOT,
    Child,
    Processes,
    ScenarioError,
    can_pin,
    edge_argv,
    free_port,
    memory_folder,
    nginx_main,
    nginx_temp_paths,
    parse_size,
    pinned,
    report_path,
    require_tool,
    run_main,
    shield_argv,
    size_label,
    wait_http_ok,
    wait_tcp,
    write_nginx_config,
    write_nginx_config_text,
    write_report,
)

TIERS = ("edge", "shield")
SERVERS = ("edge", "nginx")
DIRECT = "origin"  # the same wrk run straight at the origin
CACHE_CONTROL = "public, max-age=3600"
# Both caches are bounded well above what a run stores, so neither evicts while measured
# (100 KiB x 8,000 misses/s x 10 s is 8 GB).
CACHE_SIZE = "8G"
NGINX_CACHE_SIZE = "8g"
# The must-hold figure from the issue: a miss path at least half nginx's rate.
MUST_HOLD = 0.5

# ---------------------------------------------------------------------------------------
# Pure parts (unit-tested in tests/unit/test_scenario_bench_misses.py).


def run_prefix(size: int, server: str, token: str) -> str:
    """The path every request of one wrk run starts with: the origin answers by the first
    segment (the size), the rest makes the run's paths its own."""
    return f"/{size}/{server}-{token}/"


def lua_script(prefix: str) -> str:
    """wrk's script: each request a new path, `PREFIX<thread>/<n>`; threads are numbered
    in setup() (the main Lua state) so two threads never make the same path."""
    return f"""-- Every request a URL never asked before: {prefix}<thread>/<n>.
local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("id", threads)
end
local prefix = "{prefix}"
local n = 0
function init(args)
   prefix = prefix .. id .. "/"
end
function request()
   n = n + 1
   return wrk.format("GET", prefix .. n)
end
"""


def origin_config(run_dir: Path, port: int, bodies: Path) -> str:
    """nginx as the origin: `GET /SIZE/anything` answers the file `bodies/SIZE` (404 for a
    size it has no file for), cacheable, logging `$request_uri` per request."""
    d = run_dir
    return f"""{nginx_main(d, connections=4096)}http {{
    log_format uri '$request_uri $status';
    access_log {d}/access.log uri buffer=64k flush=250ms;
{nginx_temp_paths(d)}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=64 inactive=10m;
    open_file_cache_valid 10m;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port};
        root {bodies};
        location ~ "^/(?<size>[0-9]+)/" {{
            try_files /$size =404;
            add_header Cache-Control "{CACHE_CONTROL}";
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class OriginCount:
    """What the origin's access log says about one run's paths."""

    requests: int  # lines under the run's prefix
    paths: int  # distinct paths among them
    non_200: int


def count_origin(log_text: str, prefix: str) -> OriginCount:
    """Lines `URI STATUS` of the origin's access log whose URI starts with `prefix`."""
    seen: set[str] = set()
    requests = non_200 = 0
    for line in log_text.splitlines():
        uri, _, status = line.partition(" ")
        if not uri.startswith(prefix):
            continue
        requests += 1
        seen.add(uri)
        if status.strip() != "200":
            non_200 += 1
    return OriginCount(requests, len(seen), non_200)


def miss_problems(wrk: WrkResult, origin: OriginCount, connections: int) -> list[str]:
    """Why a run was not all misses, if it was not: every answered request must have
    reached the origin (at least as many distinct paths as wrk's answers), and no more than
    the requests still in flight when wrk stopped (one per connection) beyond them."""
    problems = []
    if origin.paths < wrk.requests:
        problems.append(
            f"origin saw {origin.paths} paths for {wrk.requests} answered requests "
            f"({wrk.requests - origin.paths} not misses)"
        )
    if origin.paths > wrk.requests + connections:
        problems.append(
            f"origin saw {origin.paths} paths, more than {wrk.requests} answered requests "
            f"+ {connections} in flight"
        )
    if origin.non_200:
        problems.append(f"origin answered {origin.non_200} requests with other than 200")
    if wrk.non_2xx_3xx:
        problems.append(f"{wrk.non_2xx_3xx} non-2xx answers")
    return problems


@dataclass
class Row:
    server: str  # edge, nginx or origin (direct)
    size: int
    wrk: WrkResult
    origin: OriginCount
    problems: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "size": self.size,
            "requests_per_s": self.wrk.requests_per_s,
            "p50_ms": round(self.wrk.p50_ms, 3),
            "p99_ms": round(self.wrk.p99_ms, 3),
            "requests": self.wrk.requests,
            "seconds": self.wrk.seconds,
            "socket_errors": self.wrk.socket_errors,
            "non_2xx_3xx": self.wrk.non_2xx_3xx,
            "origin_requests": self.origin.requests,
            "origin_paths": self.origin.paths,
            "misses_only": not self.problems,
            "problems": self.problems,
        }


def summarize(rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Per size: edge/nginx throughput and p99, and what each server's miss adds to the
    direct origin run's p50 and p99 (ms), for the rows that were measured."""
    out: dict[str, dict[str, Any]] = {}
    for size in dict.fromkeys(r.size for r in rows):
        by = {r.server: r for r in rows if r.size == size}
        entry: dict[str, Any] = {}
        if "edge" in by and "nginx" in by:
            e, n = by["edge"].wrk, by["nginx"].wrk
            entry["throughput"] = ratio(e.requests_per_s, n.requests_per_s)
            entry["p99"] = ratio(e.p99_ms, n.p99_ms)
        if DIRECT in by:
            direct = by[DIRECT].wrk
            for server in SERVERS:
                if server in by:
                    entry[f"{server}_added_p50_ms"] = round(
                        by[server].wrk.p50_ms - direct.p50_ms, 3
                    )
                    entry[f"{server}_added_p99_ms"] = round(
                        by[server].wrk.p99_ms - direct.p99_ms, 3
                    )
        out[size_label(size)] = entry
    return out


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def render(rows: Sequence[Row], summary: dict[str, dict[str, Any]], tier: str) -> str:
    names = {"edge": "edge shield" if tier == "shield" else "edge serve", "nginx": "nginx"}
    names[DIRECT] = "origin"
    head = (
        f"{'object':<9}{'server':<13}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'non-2xx':>9}{'origin reqs':>13}{'misses':>8}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{size_label(r.size):<9}{names[r.server]:<13}{r.wrk.requests_per_s:>10,.0f}"
            f"{r.wrk.p50_ms:>9.2f}{r.wrk.p99_ms:>9.2f}{r.wrk.errors:>8}"
            f"{r.wrk.non_2xx_3xx:>9}{r.origin.requests:>13}{'all' if not r.problems else 'NO':>8}"
        )
    for label, s in summary.items():
        parts = []
        if "throughput" in s:
            parts.append(
                f"edge/nginx throughput {_fmt(s['throughput'])} "
                f"(must hold: at least {MUST_HOLD:g}), edge p99 / nginx p99 {_fmt(s['p99'])}"
            )
        added = [
            f"{server} {s[f'{server}_added_p99_ms']:+.2f} ms"
            for server in SERVERS
            if f"{server}_added_p99_ms" in s
        ]
        if added:
            parts.append("p99 a miss adds over the origin: " + ", ".join(added))
        if parts:
            lines.append(f"{label}: " + "; ".join(parts))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The origin, the servers under test, one measured run.


@dataclass
class Origin:
    child: Child
    port: int
    log: Path

    def settled_log(self, timeout: float = 10.0) -> str:
        """The access log once it stops growing: nginx flushes its buffer every 250 ms, and
        the servers' fetches still in flight when wrk stopped finish after it."""
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline:
            time.sleep(0.4)
            size = self.log.stat().st_size if self.log.exists() else 0
            if size == last:
                break
            last = size
        return self.log.read_text(errors="replace")


def start_origin(
    procs: Processes, workdir: Path, bodies: Path, sizes: Sequence[int], pin: bool
) -> Origin:
    for size in sizes:
        path = bodies / str(size)
        path.write_bytes(object_body(size))
        path.chmod(0o644)
    port = free_port()
    run_dir = workdir / "origin"
    argv = write_nginx_config_text(run_dir, origin_config(run_dir, port, bodies))
    child = procs.start("origin", pinned(argv, LOAD_CORE) if pin else argv)
    wait_tcp(child, port)
    return Origin(child, port, run_dir / "access.log")


@dataclass
class Target:
    server: str
    port: int
    command: list[str]


def start_server(
    procs: Processes,
    server: str,
    tier: str,
    origin: Origin,
    workdir: Path,
    pin: bool,
    connections: int,
) -> Target:
    port = free_port()
    upstream = f"http://127.0.0.1:{origin.port}"
    if server == DIRECT:
        return Target(DIRECT, origin.port, list(origin.child.proc.args))  # type: ignore[arg-type]
    if server == "nginx":
        argv = write_nginx_config(
            workdir / "nginx",
            port,
            origin.port,
            keepalive_upstream=True,
            max_size=NGINX_CACHE_SIZE,
            # Every connection's miss may be in flight at once: keep as many upstream
            # connections idle as there are clients, as a keep-alive pool would.
            upstream_keepalive=max(16, connections),
        )
        argv = pinned(argv, SERVER_CORE) if pin else argv
        child = procs.start("nginx", argv)
        wait_tcp(child, port)
        return Target(server, port, argv)
    cache = workdir / "edge-cache"
    if tier == "shield":
        argv = [*shield_argv(port, upstream, cache, "shield-bench"), "--cache-size", CACHE_SIZE]
    else:
        argv = edge_argv(port, upstream, cache, "bench", CACHE_SIZE)
    # Like for like: the nginx reference runs with access_log off.
    config = workdir / "edge.toml"
    config.write_text("access_log = false\n")
    argv += ["--config", str(config)]
    argv = pinned(argv, SERVER_CORE) if pin else argv
    child = procs.start(tier, argv, cwd=REPO_ROOT)
    wait_http_ok(child, f"http://127.0.0.1:{port}/_edge/health")
    return Target(server, port, argv)


def check_path(target: Target, size: int, token: str) -> None:
    """One miss by hand before the load: the server answers a new path with the body."""
    url = f"http://127.0.0.1:{target.port}{run_prefix(size, 'check-' + target.server, token)}1"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raise ScenarioError(f"{target.server} answered {url} with {exc.code}") from None
    except OSError as exc:
        raise ScenarioError(f"{target.server} did not answer {url}: {exc}") from None
    if status != 200 or len(body) != size:
        raise ScenarioError(f"{target.server} answered {url} with {status}, {len(body)} bytes")


def measure(
    wrk: str,
    target: Target,
    origin: Origin,
    size: int,
    token: str,
    workdir: Path,
    args: argparse.Namespace,
    pin: bool,
) -> Row:
    prefix = run_prefix(size, target.server, token)
    script = workdir / f"misses-{target.server}-{size}.lua"
    script.write_text(lua_script(prefix))
    result, _ = run_wrk(
        wrk,
        f"http://127.0.0.1:{target.port}/",
        connections=args.connections,
        threads=args.threads,
        duration=args.duration,
        pin=pin,
        script=script,
        core=SERVER_CORE if target.server == DIRECT else LOAD_CORE,
    )
    count = count_origin(origin.settled_log(), prefix)
    return Row(target.server, size, result, count, miss_problems(result, count, args.connections))


def run(args: argparse.Namespace) -> int:
    wrk = require_tool("wrk")
    require_tool("nginx")  # the origin, and the reference
    if args.tier not in TIERS:
        raise ScenarioError(f"unknown tier {args.tier!r} (choose from {', '.join(TIERS)})")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            raise ScenarioError(f"unknown server {s!r} (choose from {', '.join(SERVERS)})")
    try:
        sizes = list(dict.fromkeys(parse_size(s) for s in args.sizes.split(",") if s.strip()))
    except ValueError as exc:
        raise ScenarioError(str(exc)) from exc
    if not sizes or not servers:
        raise ScenarioError("nothing to measure: give --sizes and --servers")
    if any(not 1 <= s <= 16 << 20 for s in sizes):
        raise ScenarioError("--sizes must be 1 byte..16M")
    if not 1 <= args.duration <= 120:
        raise ScenarioError("--duration must be 1..120 seconds")
    if not 1 <= args.connections <= 1000:
        raise ScenarioError("--connections must be 1..1000")
    if not 1 <= args.threads <= args.connections:
        raise ScenarioError("--threads must be 1..connections")

    pin = can_pin() and not args.no_pin
    if pin:
        os.sched_setaffinity(0, {LOAD_CORE})
    measured = [*servers, *([] if args.no_direct else [DIRECT])]
    print(
        f"bench_misses: tier {args.tier}; {', '.join(measured)}; "
        f"objects {', '.join(map(size_label, sizes))}; every request a new path; "
        f"wrk {args.connections} connections, {args.duration}s each; one worker per server; "
        + (
            f"server on core {SERVER_CORE}, wrk and origin on core {LOAD_CORE}"
            if pin
            else "no CPU pinning"
        ),
        flush=True,
    )

    token = secrets.token_hex(4)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edge-bench-misses-") as tmp:
        work = Path(tmp)
        bodies = memory_folder(work, "edge-bench-misses-")
        try:
            with Processes(work) as procs:
                origin = start_origin(procs, work, bodies, sizes, pin)
                targets = {
                    s: start_server(procs, s, args.tier, origin, work, pin, args.connections)
                    for s in measured
                }
                for target in targets.values():
                    for size in sizes:
                        check_path(target, size, token)
                print(f"  origin on port {origin.port}, bodies in {bodies}", flush=True)
                for i, size in enumerate(sizes):
                    # Alternate the order per size so neither server always runs first.
                    order = measured if i % 2 == 0 else list(reversed(measured))
                    for server in order:
                        print(f"  wrk {server} {size_label(size)} ...", flush=True)
                        row = measure(wrk, targets[server], origin, size, token, work, args, pin)
                        rows.append(row)
                commands = {name: t.command for name, t in targets.items()}
        finally:
            shutil.rmtree(bodies, ignore_errors=True)

    summary = summarize(rows)
    problems = [f"{r.server} {size_label(r.size)}: {p}" for r in rows for p in r.problems]
    warnings = [
        f"{r.server} {size_label(r.size)}: socket errors {r.wrk.socket_errors}"
        for r in rows
        if r.wrk.errors
    ] + [
        f"{r.server} {size_label(r.size)}: origin saw {r.origin.requests - r.origin.paths} "
        f"repeated paths"
        for r in rows
        if r.origin.requests > r.origin.paths
    ]
    print()
    print(render(rows, summary, args.tier))
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"FAILED: {p}")

    report = {
        "tier": args.tier,
        "cores": os.cpu_count(),
        "pinned": pin,
        "connections": args.connections,
        "threads": args.threads,
        "duration_s": args.duration,
        "commands": commands,
        "results": [r.as_json() for r in rows],
        "summary": summary,
        "must_hold_throughput_ratio": MUST_HOLD,
        "misses_only": not problems,
        "problems": problems,
        "warnings": warnings,
    }
    default = "bench_misses.json" if args.tier == "edge" else f"bench_misses-{args.tier}.json"
    write_report(report_path(args.out, default), report)
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.bench_misses",
        description="Cache-miss throughput and latency of edge serve (or edge shield) against "
        "nginx proxy_cache, every request a new URL, with the same origin.",
    )
    parser.add_argument(
        "--tier", default="edge", help="edge (edge serve) or shield (edge shield) under test"
    )
    parser.add_argument("--servers", default="edge,nginx", help="comma list of edge, nginx")
    parser.add_argument("--sizes", default="1k,100k", help="object sizes, e.g. 1k,100k")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--no-direct", action="store_true", help="skip the wrk run straight at the origin"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument(
        "--out", help="report path (default scenarios/out/bench_misses[-shield].json)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench_misses", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
