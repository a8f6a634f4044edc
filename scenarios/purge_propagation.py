"""Scenario: purge propagation — how long a purge takes to be confirmed by every node.

    python -m scenarios.purge_propagation              # 1000 purges, 1 shield, 3 edges
    python -m scenarios.purge_propagation --purges 200 --edges 5
    python -m scenarios.purge_propagation --backends sqlite    # the SQLite log alone

Runs once per backend: the SQLite log (one coordinator), then the replicated log (a
three-member NATS JetStream cluster, `nats-server`, and two coordinators sharing it; the
shield at one, the edges spread over both, purges made at each in turn and long-polled
where they were made). Each run starts the coordinators, an origin (`edge origin` on a
small folder), one shield and N edges subscribed to the coordinators, warms a few
objects, then sends purges one after another the way `edge purge` does: POST
/v1/purge, then long-poll GET /v1/purge/{id} until every node confirmed. For each purge
it records the time from just before the POST to the answer that says complete (the
operator's view), and the coordinator's own confirmation times per node (shields
confirm first, then edges). A few purges are also sent through the `edge purge` command
itself, to show what a person waits (that time includes starting Python). Finally it
checks, by requests, that purged objects are misses at every node.

Prints a table and writes scenarios/out/purge_propagation.json. Exit status 1 when a
purge was not confirmed by every node or a purged object was still served; the latency
goal (p99 under 50 ms on this machine) is reported, not judged.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from scenarios.harness import (
    Processes,
    client_loop_factory,
    edge_command,
    free_port,
    report_path,
    require_tool,
    run_main,
    wait_http_ok,
    write_report,
)

TOKEN = "scenario-operator-token"
NODE_TOKEN = "scenario-node-token"
SITE = "archive.example"
GOAL_P99_MS = 50.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


async def purge_and_wait(
    s: aiohttp.ClientSession, base: str, body: dict[str, Any], timeout: float
) -> tuple[float, dict[str, Any]]:
    """(milliseconds from the POST to the complete answer, the final state)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    started = time.perf_counter()
    async with s.post(f"{base}/v1/purge", json=body, headers=auth) as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST /v1/purge answered {resp.status}: {await resp.text()}")
        purge_id = (await resp.json())["id"]
    seen = 0
    deadline = started + timeout
    while True:
        wait = max(0.0, deadline - time.perf_counter())
        url = f"{base}/v1/purge/{purge_id}?wait={wait:.3f}&seen={seen}"
        async with s.get(url, headers=auth) as resp:
            state = await resp.json()
        if state["complete"] or time.perf_counter() >= deadline:
            return (time.perf_counter() - started) * 1000, state
        seen = len(state["confirmations"])


async def node_status(s: aiohttp.ClientSession, node: str, path: str) -> str:
    async with s.get(node + path, headers={"Host": SITE}) as resp:
        await resp.read()
        mine = resp.headers.get("Cache-Status", "").split(",")[-1]
    return "hit" if "; hit" in mine else "miss"


async def drive(
    args: argparse.Namespace, coordinators: list[str], nodes: dict[str, str]
) -> dict[str, Any]:
    coordinator = coordinators[0]
    objects = [f"/p/obj-{i}.txt" for i in range(args.objects)]
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector) as s:
        for path in objects:  # warm: every node holds every object
            for url in nodes.values():
                await node_status(s, url, path)
        for _ in range(args.warmup):
            await purge_and_wait(s, coordinator, {"urls": [f"http://{SITE}/warmup"]}, args.timeout)
        latencies: list[float] = []
        per_node: dict[str, list[float]] = {name: [] for name in nodes}
        incomplete: list[int] = []
        for i in range(args.purges):
            body = {"urls": [f"http://{SITE}/p/never-{i}.txt"]}
            via = coordinators[i % len(coordinators)]  # each in turn
            ms, state = await purge_and_wait(s, via, body, args.timeout)
            latencies.append(ms)
            if not state["complete"] or len(state["confirmations"]) < len(nodes):
                incomplete.append(state["id"])
            for c in state["confirmations"]:
                per_node.setdefault(c["node"], []).append(c["ms"])
        # The purges above named other URLs: everything is still cached.
        still = {name: await node_status(s, url, objects[0]) for name, url in nodes.items()}
        # One real purge of the objects; every node must miss them afterwards.
        await purge_and_wait(s, coordinator, {"prefixes": [f"http://{SITE}/p/"]}, args.timeout)
        after = {
            name: [await node_status(s, url, p) for p in objects] for name, url in nodes.items()
        }
    leaks = [
        f"{name} still hit {objects[i]}"
        for name, got in after.items()
        for i, g in enumerate(got)
        if g != "miss"
    ]
    return {
        "latency_ms": summary(latencies),
        "node_confirm_ms": {name: summary(v) for name, v in per_node.items()},
        "incomplete": incomplete,
        "cached_before_real_purge": still,
        "leaks": leaks,
        "samples_ms": [round(v, 3) for v in latencies],
    }


def cli_purges(coordinator: str, count: int) -> list[float]:
    """Wall time of `edge purge URL` (waiting for every node), process start included."""
    env = {**os.environ, "EDGE_COORDINATOR": coordinator, "EDGE_TOKEN": TOKEN}
    times = []
    for i in range(count):
        started = time.perf_counter()
        proc = subprocess.run(
            edge_command("purge", f"http://{SITE}/cli/{i}", "--timeout", "10"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"edge purge failed: {proc.stderr.strip() or proc.stdout.strip()}")
        times.append((time.perf_counter() - started) * 1000)
    return times


def render(result: dict[str, Any], args: argparse.Namespace, backend: str) -> str:
    lat = result["latency_ms"]
    lines = [
        f"purge propagation: {args.purges} purges, 1 shield + {args.edges} edges, one at a time,"
        f" {BACKENDS[backend]}",
        "",
        f"{'':24}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}   ms",
        f"{'POST -> all confirmed':24}"
        + "".join(f"{_ms(lat[k]):>8}" for k in ("p50", "p90", "p99", "max")),
    ]
    for name, s in result["node_confirm_ms"].items():
        lines.append(
            f"{'  confirmed by ' + name:24}"
            + "".join(f"{_ms(s[k]):>8}" for k in ("p50", "p90", "p99", "max"))
        )
    cli = result.get("cli_ms")
    if cli:
        lines.append(
            f"{'edge purge (command)':24}"
            + "".join(f"{_ms(cli[k]):>8}" for k in ("p50", "p90", "p99", "max"))
            + "   (includes starting Python)"
        )
    goal = "met" if (lat["p99"] or 1e9) < GOAL_P99_MS else "NOT met"
    lines += ["", f"goal p99 < {GOAL_P99_MS:.0f} ms: {goal}"]
    return "\n".join(lines)


BACKENDS = {
    "sqlite": "one coordinator on SQLite",
    "jetstream": "two coordinators on a 3-member JetStream cluster",
}


def start_log(procs: Processes, work: Path, backend: str) -> list[str]:
    """The coordinators' --backend arguments: one on a SQLite file, or two on a
    three-member JetStream cluster started here (members on free loopback ports)."""
    if backend == "sqlite":
        return [f"sqlite:{work / 'coordinator.db'}"]
    server = require_tool("nats-server")
    members = [(f"nats-{n}", free_port(), free_port(), free_port()) for n in (1, 2, 3)]
    routes = ",".join(f"nats://127.0.0.1:{route}" for _, _, route, _ in members)
    for name, port, route, monitor in members:
        child = procs.start(
            name,
            [server, "--addr", "127.0.0.1", "--port", str(port), "--server_name", name,
             "--jetstream", "--store_dir", str(work / name), "--http_port", str(monitor),
             "--cluster_name", "purges", "--cluster", f"nats://127.0.0.1:{route}",
             "--routes", routes],
        )  # fmt: skip
        wait_http_ok(child, f"http://127.0.0.1:{monitor}/varz")
    spec = ",".join(f"nats://127.0.0.1:{port}" for _, port, _, _ in members)
    return [spec, spec]


def run_backend(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edge-purge-") as tmp, Processes(Path(tmp)) as procs:
        work = Path(tmp)
        root = work / "origin"
        (root / "p").mkdir(parents=True)
        for i in range(args.objects):
            (root / "p" / f"obj-{i}.txt").write_text(f"object {i}\n" * 100)
        env = {**os.environ, "EDGE_NODE_TOKEN": NODE_TOKEN}
        specs = start_log(procs, work, backend)
        ports = {"origin": free_port(), "shield-1": free_port()}
        ports |= {f"coordinator-{i}": free_port() for i in range(len(specs))}
        ports |= {f"edge-{i}": free_port() for i in range(args.edges)}
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        origin = procs.start(
            "origin",
            edge_command("origin", "--root", str(root), "--listen", f"127.0.0.1:{ports['origin']}"),
        )
        coordinators = []
        for i, spec in enumerate(specs):
            name = f"coordinator-{i}"
            child = procs.start(
                name,
                edge_command(
                    "coordinator",
                    "--listen",
                    f"127.0.0.1:{ports[name]}",
                    "--backend",
                    spec,
                    "--token",
                    TOKEN,
                    "--node-token",
                    NODE_TOKEN,
                ),
            )
            wait_http_ok(child, url[name] + "/v1/health")
            coordinators.append(url[name])
        wait_http_ok(origin, url["origin"] + "/p/obj-0.txt")

        def subscribe(n: int) -> list[str]:
            # Every coordinator, starting at the n-th: nodes spread over them.
            return ["--coordinator", ",".join(coordinators[n:] + coordinators[:n])]

        nodes = {"shield-1": url["shield-1"]}
        shield = procs.start(
            "shield-1",
            edge_command(
                "shield",
                "--listen",
                f"127.0.0.1:{ports['shield-1']}",
                "--origin",
                url["origin"],
                "--cache-dir",
                str(work / "cache-shield-1"),
                "--name",
                "shield-1",
                # Its edges, on this machine, connect from 127.0.0.1 (as under edge up).
                "--trusted-proxy",
                "127.0.0.1",
                *subscribe(0),
            ),
            env=env,
        )
        wait_http_ok(shield, url["shield-1"] + "/_edge/health")
        for i in range(args.edges):
            name = f"edge-{i}"
            child = procs.start(
                name,
                edge_command(
                    "serve",
                    "--listen",
                    f"127.0.0.1:{ports[name]}",
                    "--shield",
                    url["shield-1"],
                    "--cache-dir",
                    str(work / f"cache-{name}"),
                    "--name",
                    name,
                    *subscribe((i + 1) % len(coordinators)),
                ),
                env=env,
            )
            wait_http_ok(child, url[name] + "/_edge/health")
            nodes[name] = url[name]
        with asyncio.Runner(loop_factory=client_loop_factory()) as runner:
            result = runner.run(drive(args, coordinators, nodes))
        if args.cli:
            result["cli_ms"] = summary(cli_purges(coordinators[0], args.cli))
    return result


def problems_of(result: dict[str, Any]) -> list[str]:
    problems = [f"purge {i} not confirmed by every node" for i in result["incomplete"]]
    problems += result["leaks"]
    problems += [
        f"{n} lost {o}"
        for n, got in result["cached_before_real_purge"].items()
        for o in [got]
        if got != "hit"
    ]
    return problems


def run(args: argparse.Namespace) -> int:
    """The report's top level is the first backend's run (sqlite by default), as it
    always was; every backend's is under `backends`."""
    started = time.monotonic()
    out = report_path(args.out, "purge_propagation.json")
    runs = {backend: run_backend(args, backend) for backend in args.backends}
    problems = []
    for backend, result in runs.items():
        print(render(result, args, backend) + "\n")
        problems += [f"{backend}: {p}" for p in problems_of(result)]
    result = {**runs[args.backends[0]]}
    result["backends"] = {
        backend: {k: v for k, v in r.items() if k != "samples_ms"} for backend, r in runs.items()
    }
    result["config"] = {
        "purges": args.purges,
        "edges": args.edges,
        "shields": 1,
        "cores": os.cpu_count(),
        "backends": args.backends,
    }
    result["goal_p99_ms"] = GOAL_P99_MS
    result["seconds"] = round(time.monotonic() - started, 1)
    for p in problems:
        print(f"FAILED: {p}")
    write_report(out, {**result, "problems": problems}, f" ({result['seconds']:.0f}s)")
    return 1 if problems else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.purge_propagation",
        description="Purges through the coordinator to a shield and edges: time until "
        "every node confirmed, per purge.",
    )
    parser.add_argument("--purges", type=int, default=1000, help="purges to time (1000)")
    parser.add_argument("--edges", type=int, default=3, help="edge nodes (3)")
    parser.add_argument("--objects", type=int, default=5, help="objects cached at every node")
    parser.add_argument("--warmup", type=int, default=10, help="untimed purges first (10)")
    parser.add_argument("--cli", type=int, default=10, help="purges sent with `edge purge` (10)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per purge (10)")
    parser.add_argument("--out", default="", help="JSON report path")
    parser.add_argument(
        "--backends",
        default="sqlite,jetstream",
        help="purge logs to run on, in order: sqlite, jetstream (both)",
    )
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.backends or set(args.backends) - set(BACKENDS):
        parser.error("--backends lists sqlite and/or jetstream")
    if args.purges < 1 or args.edges < 1 or args.objects < 1:
        parser.error("--purges, --edges and --objects must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("purge_propagation", run, parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
