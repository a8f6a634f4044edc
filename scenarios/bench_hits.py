"""Cache-hit benchmark: `edge serve` against nginx proxy_cache, in one run on this machine.

Owns: a small counting origin (aiohttp, in a thread of this process, one site per server
under test), starting each server in front of it, warming both, driving them in turn with
wrk (keep-alive, fixed connection count and duration, `--latency`), parsing wrk's report,
the hit check (each server must have sent ~1 request per object to its origin), the table
and ratios, and `scenarios/out/bench_hits.json`.

When taskset is there and the machine has two cores, the server under test runs on core 0
and wrk (and this process) on core 1, so load generator and server do not share a core.
With `--workers N` (N > 1) edge runs `edge serve --workers N` and nginx N worker processes
(each with its own listening socket, `reuseport`), and nothing is pinned: the servers'
workers may use every core, and share them with wrk.

Installs nothing: a missing nginx or wrk is one line naming the apt packages.

    python -m scenarios.bench_hits                      # edge and nginx, 1 KiB and 100 KiB
    python -m scenarios.bench_hits --servers nginx      # the reference alone
    python -m scenarios.bench_hits --duration 5 --sizes 1k
    python -m scenarios.bench_hits --duration 5 --sizes 1k --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from scenarios.harness import (
    REPO_ROOT,
    Child,
    Processes,
    ScenarioError,
    can_pin,
    edge_argv,
    free_port,
    parse_size,
    pinned,
    report_path,
    require_tool,
    run_main,
    size_label,
    wait_http_ok,
    wait_tcp,
    write_nginx_config,
    write_report,
)

SERVERS = ("nginx", "edge")
SERVER_CORE = 0
LOAD_CORE = 1
# "~1 request per object": a cache that stores on the first miss makes exactly one; allow
# one more (e.g. a fill racing the warm-up) before calling the run a miss benchmark.
MAX_ORIGIN_REQUESTS = 2
WARM_REQUESTS = 3
CACHE_CONTROL = "public, max-age=3600"
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"

# ---------------------------------------------------------------------------------------
# Pure parts: wrk's report (unit-tested; sizes are the harness's).

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_time_ms(text: str) -> float:
    """wrk's times: '812.00us', '1.23ms', '2.01s', '1.00m'."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"bad wrk time {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())


def parse_wrk(output: str) -> WrkResult:
    """Requests/s, p50, p99, totals and errors from `wrk --latency` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p50 = re.search(r"^\s+50(?:\.0+)?%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99(?:\.0+)?%\s+(\S+)", output, re.M)
    total = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m|h)", output, re.M)
    if not (rps and p50 and p99 and total):
        raise ValueError("wrk output lacks Requests/sec, latency distribution or totals")
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_ms=parse_time_ms(p50.group(1)),
        p99_ms=parse_time_ms(p99.group(1)),
        requests=int(total.group(1)),
        seconds=parse_time_ms(total.group(2) + total.group(3)) / 1000.0,
        socket_errors=errors,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
    )


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


# ---------------------------------------------------------------------------------------
# The origin: one aiohttp site per server under test, each counting what reaches it.


def object_path(size: int) -> str:
    return f"/obj/{size}"


def object_body(size: int) -> bytes:
    # Random bytes: nothing in the path can win by compressing them.
    return random.Random(size).randbytes(size)


@dataclass
class CountingOrigin:
    sizes: Sequence[int]
    counts: dict[str, int] = field(default_factory=dict)

    def app(self) -> web.Application:
        bodies = {object_path(s): object_body(s) for s in self.sizes}

        async def handle(request: web.Request) -> web.StreamResponse:
            path = request.path
            self.counts[path] = self.counts.get(path, 0) + 1
            body = bodies.get(path)
            if body is None:
                return web.Response(status=404, text="not found\n")
            return web.Response(
                body=body,
                content_type="application/octet-stream",
                headers={
                    "Cache-Control": CACHE_CONTROL,
                    "ETag": f'"obj-{len(body)}"',
                    "Last-Modified": LAST_MODIFIED,
                },
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app


class OriginThread:
    """An asyncio loop in a daemon thread serving one CountingOrigin per name."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []
        self.origins: dict[str, CountingOrigin] = {}
        self.ports: dict[str, int] = {}

    def __enter__(self) -> OriginThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self._cleanup(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    def _call(self, coro: Any, timeout: float) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout=timeout)

    def add(self, name: str, sizes: Sequence[int]) -> int:
        origin = CountingOrigin(sizes)
        port = free_port()
        self._call(self._start(origin, port), timeout=10)
        self.origins[name] = origin
        self.ports[name] = port
        return port

    async def _start(self, origin: CountingOrigin, port: int) -> None:
        runner = web.AppRunner(origin.app(), access_log=None)
        await runner.setup()
        self.runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", port).start()

    async def _cleanup(self) -> None:
        for runner in self.runners:
            await runner.cleanup()

    def count(self, name: str, path: str) -> int:
        return self.origins[name].counts.get(path, 0)


# ---------------------------------------------------------------------------------------
# Servers under test, warm-up, wrk.


@dataclass
class Target:
    server: str
    port: int
    command: list[str]


def start_server(
    procs: Processes, server: str, origin_port: int, workdir: Path, pin: bool, workers: int = 1
) -> Target:
    port = free_port()
    if server == "nginx":
        argv = write_nginx_config(
            workdir / "nginx", port, origin_port, keepalive_upstream=True, workers=workers
        )
        argv = pinned(argv, SERVER_CORE) if pin else argv
        child = procs.start("nginx", argv)
        wait_tcp(child, port)
    else:
        argv = edge_argv(
            port, f"http://127.0.0.1:{origin_port}", workdir / "edge-cache", "bench", "1G"
        )
        # Like for like: the nginx reference runs with access_log off.
        config = workdir / "edge.toml"
        config.write_text("access_log = false\n")
        argv += ["--config", str(config)]
        if workers > 1:
            argv += ["--workers", str(workers)]
        argv = pinned(argv, SERVER_CORE) if pin else argv
        child = procs.start("edge", argv, cwd=REPO_ROOT)
        wait_http_ok(child, f"http://127.0.0.1:{port}/_edge/health")
        # The ready line comes once every worker listens: wrk's kept-alive connections
        # made before would all stay with the first.
        wait_log(child, "listening on")
    return Target(server, port, argv)


def wait_log(child: Child, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in child.log_path.read_text(errors="replace"):
        if not child.alive():
            raise child.died()
        if time.monotonic() > deadline:
            raise ScenarioError(f"{child.name} did not print {text!r} in {timeout:g}s")
        time.sleep(0.05)


def warm(target: Target, size: int) -> None:
    url = f"http://127.0.0.1:{target.port}{object_path(size)}"
    for _ in range(WARM_REQUESTS):
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read()
            if resp.status != 200 or len(body) != size:
                raise ScenarioError(
                    f"{target.server} answered {url} with {resp.status}, {len(body)} bytes"
                )


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    threads: int,
    duration: int,
    pin: bool,
    script: Path | None = None,
    core: int = LOAD_CORE,
) -> tuple[WrkResult, str]:
    """One wrk run, on `core` when pinned; `script` is a Lua file for `-s` (e.g. one that
    makes each request's path)."""
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "--latency",
        *(["-s", str(script)] if script is not None else []),
        url,
    ]
    argv = pinned(argv, core) if pin else argv
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise ScenarioError(f"wrk did not finish within {duration + 30}s") from exc
    if done.returncode != 0:
        raise ScenarioError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    try:
        return parse_wrk(done.stdout), done.stdout
    except ValueError as exc:
        raise ScenarioError(f"{exc}:\n{done.stdout}") from exc


@dataclass
class Row:
    server: str
    size: int
    wrk: WrkResult
    origin_requests: int

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
            "origin_requests": self.origin_requests,
        }


def render(rows: Sequence[Row], ratios: dict[str, dict[str, float | None]]) -> str:
    head = (
        f"{'object':<9}{'server':<8}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'non-2xx':>9}{'origin reqs':>13}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{size_label(r.size):<9}{r.server:<8}{r.wrk.requests_per_s:>11,.0f}"
            f"{r.wrk.p50_ms:>9.2f}{r.wrk.p99_ms:>9.2f}{r.wrk.errors:>8}"
            f"{r.wrk.non_2xx_3xx:>9}{r.origin_requests:>13}"
        )
    for label, rs in ratios.items():
        lines.append(
            f"{label}: edge/nginx throughput {_fmt(rs['throughput'])}, "
            f"edge p99 / nginx p99 {_fmt(rs['p99'])}"
        )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    wrk = require_tool("wrk")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            raise ScenarioError(f"unknown server {s!r} (choose from {', '.join(SERVERS)})")
    if "nginx" in servers:
        require_tool("nginx")
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError as exc:
        raise ScenarioError(str(exc)) from exc
    if not sizes or not servers:
        raise ScenarioError("nothing to measure: give --sizes and --servers")
    if not 1 <= args.duration <= 120:
        raise ScenarioError("--duration must be 1..120 seconds")
    if not 1 <= args.connections <= 1000:
        raise ScenarioError("--connections must be 1..1000")
    if not 1 <= args.workers <= 64:
        raise ScenarioError("--workers must be 1..64")

    # Several workers per server use every core: nothing is pinned then.
    pin = can_pin() and not args.no_pin and args.workers == 1
    if pin:
        # This process hosts the origin; keep it off the server's core too.
        os.sched_setaffinity(0, {LOAD_CORE})
    print(
        f"bench_hits: {', '.join(servers)}; objects {', '.join(map(size_label, sizes))}; "
        f"wrk {args.connections} connections, {args.duration}s each; "
        f"{args.workers} worker{'s' if args.workers > 1 else ''} per server; "
        + (f"server on core {SERVER_CORE}, wrk on core {LOAD_CORE}" if pin else "no CPU pinning"),
        flush=True,
    )

    rows: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp,
        Processes(Path(tmp)) as procs,
        OriginThread() as origins,
    ):
        targets: dict[str, Target] = {}
        for server in servers:
            origin_port = origins.add(server, sizes)
            targets[server] = start_server(procs, server, origin_port, Path(tmp), pin, args.workers)
        for server, target in targets.items():
            for size in sizes:
                warm(target, size)
            print(f"  {server} on port {target.port}: warm", flush=True)

        for i, size in enumerate(sizes):
            # Alternate the order per size so neither server always runs first.
            order = servers if i % 2 == 0 else list(reversed(servers))
            for server in order:
                target = targets[server]
                url = f"http://127.0.0.1:{target.port}{object_path(size)}"
                print(f"  wrk {server} {size_label(size)} ...", flush=True)
                result, _ = run_wrk(
                    wrk,
                    url,
                    connections=args.connections,
                    threads=args.threads,
                    duration=args.duration,
                    pin=pin,
                )
                rows.append(Row(server, size, result, 0))
        for row in rows:
            row.origin_requests = origins.count(row.server, object_path(row.size))
        commands = {name: t.command for name, t in targets.items()}

    ratios: dict[str, dict[str, float | None]] = {}
    if "edge" in servers and "nginx" in servers:
        for size in sizes:
            e = next(r for r in rows if r.server == "edge" and r.size == size)
            n = next(r for r in rows if r.server == "nginx" and r.size == size)
            ratios[size_label(size)] = {
                "throughput": ratio(e.wrk.requests_per_s, n.wrk.requests_per_s),
                "p99": ratio(e.wrk.p99_ms, n.wrk.p99_ms),
            }

    problems = []
    for r in rows:
        if r.origin_requests > MAX_ORIGIN_REQUESTS:
            problems.append(
                f"{r.server} {size_label(r.size)}: origin saw {r.origin_requests} requests "
                f"(not a hit benchmark)"
            )
        if r.wrk.non_2xx_3xx:
            problems.append(f"{r.server} {size_label(r.size)}: {r.wrk.non_2xx_3xx} non-2xx")
    warnings = [
        f"{r.server} {size_label(r.size)}: socket errors {r.wrk.socket_errors}"
        for r in rows
        if r.wrk.errors
    ]

    print()
    print(render(rows, ratios))
    for w in warnings:
        print(f"warning: {w}")
    for p in problems:
        print(f"FAILED: {p}")

    report = {
        "cores": os.cpu_count(),
        "pinned": pin,
        "connections": args.connections,
        "threads": args.threads,
        "duration_s": args.duration,
        "workers": args.workers,
        "commands": commands,
        "results": [r.as_json() for r in rows],
        "ratios": ratios,
        "hits_only": not any("origin saw" in p for p in problems),
        "problems": problems,
    }
    out = report_path(args.out, "bench_hits.json")
    write_report(out, report)
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.bench_hits",
        description="Cache-hit throughput and latency of edge serve against nginx proxy_cache.",
    )
    parser.add_argument("--servers", default="edge,nginx", help="comma list of edge, nginx")
    parser.add_argument("--sizes", default="1k,100k", help="object sizes, e.g. 1k,100k")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of each server (edge serve --workers, nginx worker_processes)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", help="report path (default scenarios/out/bench_hits.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("bench_hits", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
