"""The end-to-end checks of `edge up` (tests/support/cdnchecks.py), run against the
docker compose stack of docker-compose.yml: .ci/compose starts the engine and builds
the image; this brings the stack up, checks it, restarts parts of it, and leaves it
running for .ci/compose to take down. Every edge is reached from this machine where
compose publishes it (127.R.0.x:8080, as `edge up`); a client in a region is a
container on the stack's network at an address in that region's docker_subnet.

Usage: python .ci/compose_checks.py (cwd: the checkout; `docker compose` on PATH;
EDGE_TOKEN, EDGE_NODE_TOKEN and COMPOSE_PROJECT_NAME set). Prints one line per check
with its time; exits 1 when one failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from origin.deploy import compose  # noqa: E402
from origin.deploy.plan import edge_listen  # noqa: E402
from origin.deploy.topology import load_topology  # noqa: E402
from tests.support import cdnchecks  # noqa: E402

TOPO = load_topology(compose.DEFAULT_TOPOLOGY)
LAYOUT = compose.Layout.of(TOPO)
PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", TOPO.services.cdn_name)
NETWORK = f"{PROJECT}_{compose.NETWORK}"
IMAGE = f"{TOPO.services.cdn_name}:local"
SHIELD = LAYOUT.shields[0].name
SITE = f"www.{TOPO.zone.origin.to_text(omit_final_dot=True)}"
PORT = compose.port_of(edge_listen(TOPO.edges[0]))
HOST = f"{SITE}:{PORT}"  # what curl sends for http://www.cdn.example:8080/
# Each edge where this machine reaches it: its `edge up` address, published by compose.
EDGES = {e.name: f"http://{edge_listen(e)}" for e in TOPO.edges}
EDGE_ADDRESS = {e.name: str(e.docker_ipv4) for e in TOPO.edges}
BY_REGION = {r.name: [e for e in TOPO.edges if e.region == r.name] for r in TOPO.regions}
DNS_ADDRESS = str(LAYOUT.core_addresses[LAYOUT.dns.name])
DNS_PORT = compose.port_of(LAYOUT.dns.listen)
NODES = len(TOPO.edges) + len(LAYOUT.shields)

# Run in a client container: ask the authority for the site, then GET `path` from each
# edge it answered with. Prints {"answers": [...], "reached": {address: status|error}}.
CLIENT = r"""
import json, sys, urllib.request
import dns.message, dns.query, dns.rdatatype
server, port, name, path, host, ports = sys.argv[1:7]
ports = json.loads(ports)
answer = dns.query.udp(dns.message.make_query(name, "A"), server, port=int(port), timeout=3)
ips = sorted({rr.to_text() for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A
              for rr in rrset})
reached = {}
for ip in ips if path else []:
    url = f"http://{ip}:{ports.get(ip, 80)}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": host}),
                                    timeout=5) as resp:
            resp.read()
            reached[ip] = resp.status
    except Exception as exc:
        reached[ip] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"answers": ips, "reached": reached}))
"""


def run(*argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv[:4])}... exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-400:]}"
        )
    return done


def dc(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("docker", "compose", *args, timeout=timeout, check=check)


def edge_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`edge ...` in the coordinator's container, as the README has users do it."""
    return dc("exec", "-T", LAYOUT.coordinator.name, "edge", *args, timeout=60, check=check)


def client(region: str, path: str = "") -> dict[str, object]:
    """A client container in `region`'s docker_subnet: its answers and fetches."""
    subnet = LAYOUT.region_subnets[region]
    address = str(subnet.network_address + compose.CLIENT_HOST)
    ports = json.dumps({str(e.docker_ipv4): compose.port_of(edge_listen(e)) for e in TOPO.edges})
    done = run(
        "docker", "run", "--rm", "--network", NETWORK, "--ip", address, IMAGE,
        "python", "-c", CLIENT, DNS_ADDRESS, str(DNS_PORT), SITE, path, HOST, ports,
        timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def status() -> str:
    return edge_cli("status", "--json").stdout


def purge(url: str, *options: str) -> str:
    done = edge_cli("purge", url, *options, check=False)
    return done.stdout + done.stderr


def wait_for(what: str, ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def image_paths() -> list[str]:
    """The archive's images (long-lived: max-age=3600), from its catalogue."""
    url = EDGES[TOPO.edges[0].name] + "/catalogue.json?check=list"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": HOST})) as resp:
            items = json.loads(resp.read())["items"]
    except OSError as exc:
        raise AssertionError(f"GET {url} (Host: {HOST}): {exc}") from exc
    return [i["path"] for i in items if i["collection"] == "images"]


# -- the checks, in order -----------------------------------------------------------------


def up() -> None:
    dc("up", "-d", "--wait")


def registered() -> None:
    expected = {sh.name: f"http://{LAYOUT.docker_listen(sh)}" for sh in LAYOUT.shields}
    expected |= {e.name: f"http://{LAYOUT.edge_listen(e)}" for e in TOPO.edges}
    cdnchecks.check_registered_addresses(status(), expected)


def miss_then_hit() -> None:
    for line in cdnchecks.check_miss_then_hit(EDGES, "/catalogue.json", HOST, SHIELD):
        print(f"      {line}")


def steering() -> None:
    answers = {}
    for region in BY_REGION:
        answers[region] = client(region)["answers"]
        print(f"      client in {region}: {answers[region]}")
    own = {r: [str(e.docker_ipv4) for e in edges] for r, edges in BY_REGION.items()}
    cdnchecks.check_steering(answers, own)  # type: ignore[arg-type]


def purge_everywhere() -> None:
    out = purge(f"http://{HOST}/catalogue.json")
    print(f"      {out.strip().splitlines()[-1]}")
    cdnchecks.check_purge_confirmed(out, NODES)
    # Honoured: the shield and every edge fetch it anew (the shield then shares it).
    cdnchecks.check_miss_then_hit(EDGES, "/catalogue.json", HOST, SHIELD)


def failover() -> None:
    region = next(r for r, edges in BY_REGION.items() if len(edges) == 1)
    down = [EDGE_ADDRESS[e.name] for e in BY_REGION[region]]
    for edge in BY_REGION[region]:
        dc("stop", edge.name)
    try:
        seen: dict[str, object] = {}

        def moved() -> bool:
            seen.update(client(region))
            return bool(seen["answers"]) and not set(seen["answers"]) & set(down)  # type: ignore[arg-type]

        wait_for(f"GeoDNS moving {region}'s clients off {down}", moved, 30)
        seen.update(client(region, "/catalogue.json"))
        print(f"      {region} client with {down} down: {seen}")
        cdnchecks.check_failover(region, seen["answers"], down, seen["reached"])  # type: ignore[arg-type]
    finally:
        dc("up", "-d", "--wait")


def restart_keeps_cache() -> None:
    name = next(e.name for edges in BY_REGION.values() if len(edges) > 1 for e in edges[1:])
    kept, purged = (f"{p}?check=restart" for p in image_paths()[:2])
    one = {name: EDGES[name]}
    for path in (kept, purged):
        cdnchecks.fetch(EDGES[name], path, HOST)
        cdnchecks.check_hits(one, path, HOST)
    dc("stop", name)
    try:
        out = purge(f"http://{HOST}{purged}", "--connected-only")
        print(f"      with {name} stopped: {out.strip().splitlines()[-1]}")
        # Confirmed by the nodes that run; the stopped one is named as not connected.
        assert f"{name}" in out and "not connected: applies on reconnect" in out, out.strip()[-300:]
    finally:
        dc("up", "-d", "--wait")
    cdnchecks.check_misses_at(one, purged, HOST)  # its first answer: the purge applied
    cdnchecks.check_hits(one, kept, HOST)


def down_up_keeps_caches_and_the_purge_log() -> None:
    path = f"{image_paths()[2]}?check=down-up"
    cdnchecks.check_miss_then_hit(EDGES, path, HOST, SHIELD)
    before = json.loads(status())["seq"]
    assert before >= 2, f"the purge log has {before} purges, not the ones made above"
    dc("down")
    dc("up", "-d", "--wait")
    cdnchecks.check_hits(EDGES, path, HOST)

    def caught_up() -> bool:
        try:
            cdnchecks.check_applied(status(), before)
        except AssertionError:
            return False
        return len(json.loads(status())["nodes"]) == NODES

    wait_for("every node registered and at the purge log's seq", caught_up, 30)
    cdnchecks.check_applied(status(), before)


CHECKS: list[tuple[str, Callable[[], None]]] = [
    ("up -d --wait: every service healthy", up),
    ("nodes register the address others reach them at", registered),
    ("miss then hit at every edge, one copy at the shield", miss_then_hit),
    ("GeoDNS steers a client in each region to its region's edges", steering),
    ("edge purge confirmed by every node and honoured", purge_everywhere),
    ("failover: a region's edge stopped, its clients reach another", failover),
    ("an edge restarted keeps its cache, applies missed purges", restart_keeps_cache),
    ("down/up keeps caches and the purge log", down_up_keeps_caches_and_the_purge_log),
]  # fmt: skip


def main() -> int:
    failed = []
    started = time.monotonic()
    for title, check in CHECKS:
        t0 = time.monotonic()
        try:
            check()
        except Exception as exc:
            failed.append(title)
            plain = isinstance(exc, AssertionError | subprocess.TimeoutExpired)
            reason = str(exc) if plain else traceback.format_exc()
            print(f"FAIL {title} ({time.monotonic() - t0:.1f}s): {reason}", flush=True)
            if check is up:
                break  # nothing else can run
        else:
            print(f"ok   {title} ({time.monotonic() - t0:.1f}s)", flush=True)
    took = f"in {time.monotonic() - started:.0f}s"
    if failed:
        print(f"compose checks: {len(failed)} of {len(CHECKS)} failed {took}", flush=True)
    else:
        print(f"compose checks: all {len(CHECKS)} passed {took}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
