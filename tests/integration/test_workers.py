"""A node of several workers (`edge serve --workers N`, edge.multiproc.workers), real processes on
loopback: connections spread over the workers, one upstream request per object for the
whole node (a cold crowd over many connections, a Vary'd object, a small one), purges
and replaced objects seen by every worker (their hot tiers and memory caches included),
a killed worker started again, nothing left running after SIGTERM, metrics of the whole
node, one-line errors for bad values."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.coordinators import NODE_TOKEN, OP
from tests.support.guardkit import connect, exchange, status_of, write_config
from tests.support.procs import Proc, edge_cmd, free_port
from tests.support.procs import start as start_proc
from tests.support.upstream import body_for

TOKEN = "workers-admin"
SITE = "archive.test"


def wait_ready(proc: Proc, timeout: float = 30) -> int:
    """The port of the ready line, printed once every worker listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"listening on https?://[^ ]+:(\d+) ", proc.output())
        if found:
            return int(found.group(1))
        assert proc.popen.poll() is None, proc.output()
        time.sleep(0.05)
    raise AssertionError(f"no ready line:\n{proc.output()}")


def start_node(
    node: NodeFactory,
    upstream: Proc,
    tmp_path: Path,
    workers: int = 3,
    kind: str = "serve",
    **settings: object,
) -> Proc:
    config = write_config(tmp_path / "workers.toml", admin_token=TOKEN, **settings)
    proc = node(
        kind,
        "--origin",
        upstream.url,
        "--workers",
        str(workers),
        "--config",
        str(config),
        name="multi",
    )
    wait_ready(proc)
    return proc


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_edge/health", timeout=5) as resp:
        return json.loads(resp.read())


def worker_pids(port: int, connections: int = 40) -> set[int]:
    """The workers that answered `connections` fresh connections."""
    return {health(port)["worker"]["pid"] for _ in range(connections)}


def request(path: str, *fields: str, close: bool = True) -> bytes:
    extra = "".join(f"{f}\r\n" for f in fields)
    conn = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {SITE}\r\n{extra}{conn}\r\n".encode()


def field(response: bytes, name: str) -> str:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return ""


def origin_count(upstream: Proc, path: str) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_count{path}", timeout=5) as resp:
        return int(json.loads(resp.read())["count"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def crowd(
    url: str, clients: int, headers: dict[str, str] | None = None
) -> list[tuple[int, dict[str, str], bytes]]:
    """`clients` requests at once, each on a connection of its own."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[int, dict[str, str], bytes]:
            async with session.get(url, headers={"Host": SITE, **(headers or {})}) as resp:
                return resp.status, dict(resp.headers), await resp.read()

        return await asyncio.gather(*(one() for _ in range(clients)))


def counters_by_worker(proc: Proc, cache_dir: Path, status: str) -> dict[int, float]:
    """Each live worker's edge_requests_total for `status`, from the snapshots every
    worker writes into the cache directory (edge.multiproc.workers)."""
    port = proc.port
    pids = {w["pid"] for w in health(port)["worker"]["all"] if w["alive"]}
    time.sleep(1.5)  # every worker writes its counters at least once a second
    found = {}
    for path in (cache_dir / "metrics").glob("*.json"):
        data = json.loads(path.read_text())
        if data["pid"] in pids:
            found[data["pid"]] = sum(
                value
                for name, labels, value in data["samples"]
                if name == "edge_requests_total" and labels["cache_status"] == status
            )
    return found


def test_connections_reach_several_workers(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    proc = start_node(node, upstream, tmp_path)
    port = proc.port
    report = health(port)["worker"]
    assert report["count"] == 3 and len(report["all"]) == 3
    assert all(w["alive"] for w in report["all"])
    assert len(worker_pids(port)) > 1
    path = "/spread?size=3000"
    expected = body_for("/spread", 3000)
    for _ in range(30):
        response, _ = exchange(port, request(path))
        assert status_of(response) == 200
        assert response.split(b"\r\n\r\n", 1)[1] == expected
    assert origin_count(upstream, "/spread") == 1


@pytest.mark.parametrize(
    ("case", "target", "headers", "size"),
    [
        ("several MB, slow origin", "/big?size=4194304&delay=0.3&trickle=2", {}, 4194304),
        (
            "Vary'd",
            "/varied?size=20000&delay=0.5&vary=Accept-Language",
            {"Accept-Language": "fr"},
            20000,
        ),
        ("small", "/small?size=100&delay=0.5", {}, 100),
    ],
)
def test_a_cold_crowd_over_every_worker_makes_one_upstream_request(
    node: NodeFactory,
    upstream: Proc,
    tmp_path: Path,
    case: str,
    target: str,
    headers: dict[str, str],
    size: int,
) -> None:
    proc = start_node(node, upstream, tmp_path)
    path = target.split("?", 1)[0]
    answers = asyncio.run(crowd(proc.url + target, 60, headers))
    expected = body_for(path, size)
    assert origin_count(upstream, path) == 1, case
    for status, _, body in answers:
        assert status == 200
        assert len(body) == size and body == expected, case
    statuses = [fields["Cache-Status"] for _, fields, _ in answers]
    assert sum("collapsed" in s or "; hit" in s for s in statuses) >= 59, statuses
    if "Vary" in target:
        assert all(fields.get("X-Echo") == "fr" for _, fields, _ in answers)
    # Afterwards, hits from every worker.
    answers = asyncio.run(crowd(proc.url + target, 45, headers))
    assert all(body == expected for _, _, body in answers)
    assert all("; hit" in fields["Cache-Status"] for _, fields, _ in answers)
    assert origin_count(upstream, path) == 1
    hits = counters_by_worker(proc, tmp_path / "cache-multi", "hit")
    assert len(hits) == 3 and all(count > 0 for count in hits.values()), hits
    if "Vary" in target:  # another language is another variant: one more request
        other = asyncio.run(crowd(proc.url + target, 10, {"Accept-Language": "de"}))
        assert all(fields.get("X-Echo") == "de" for _, fields, _ in other)
        assert origin_count(upstream, path) == 2


def warm_every_worker(port: int, target: str, times: int = 4, connections: int = 24) -> None:
    """Each connection asks `times` times on one kept-alive connection, so every
    worker's hot tier holds the response (the fast path answers the later ones)."""
    for _ in range(connections):
        with connect(port) as sock:
            for _ in range(times):
                sock.sendall(request(target, close=False))
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(65536)
                head, rest = data.split(b"\r\n\r\n", 1)
                length = int(field(head + b"\r\n\r\n", "Content-Length"))
                while len(rest) < length:
                    rest += sock.recv(65536)


def counts_seen(port: int, target: str, connections: int = 30, times: int = 3) -> set[str]:
    """X-Request-Count (the origin's count when it answered) of every response over
    `connections` kept-alive connections, `times` requests each."""
    seen = set()
    for _ in range(connections):
        with connect(port) as sock:
            for _ in range(times):
                sock.sendall(request(target, close=False))
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(65536)
                assert status_of(data) == 200
                seen.add(field(data, "X-Request-Count"))
                head, rest = data.split(b"\r\n\r\n", 1)
                length = int(field(head + b"\r\n\r\n", "Content-Length"))
                while len(rest) < length:
                    rest += sock.recv(65536)
    return seen


def post_purge(port: int, body: dict, token: str | None = TOKEN) -> int:
    data = json.dumps(body).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    raw = (
        f"POST /_edge/purge HTTP/1.1\r\nHost: {SITE}\r\n{auth}Content-Type: application/json"
        f"\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
    return status_of(exchange(port, raw)[0])


def test_a_purge_at_one_worker_reaches_every_worker_and_hot_tier(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    proc = start_node(node, upstream, tmp_path)
    port = proc.port
    target = "/purged?size=500"
    warm_every_worker(port, target)
    assert counts_seen(port, target) == {"1"}
    fast_before = proc.output().count("walk=fast")
    assert fast_before > 0
    assert post_purge(port, {"urls": [f"http://{SITE}{target}"]}) == 200
    # Every worker, from memory or not: never the purged object again.
    assert "1" not in counts_seen(port, target)
    assert origin_count(upstream, "/purged") == 2
    # A prefix purge, then a tag-less host purge, each reaching every worker's hot tier.
    warm_every_worker(port, target)
    assert post_purge(port, {"prefixes": [f"http://{SITE}/pur"]}) == 200
    assert counts_seen(port, target) == {"3"}
    warm_every_worker(port, target)
    assert post_purge(port, {"hosts": [SITE]}) == 200
    assert counts_seen(port, target) == {"4"}
    assert origin_count(upstream, "/purged") == 4


def test_purges_from_two_workers_at_once_are_all_kept(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    proc = start_node(node, upstream, tmp_path)
    port = proc.port
    paths = [f"/many-{i}?size=10" for i in range(24)]

    async def purge_all() -> None:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)
        ) as s:

            async def one(path: str) -> int:
                async with s.post(
                    f"{proc.url}/_edge/purge",
                    json={"urls": [f"http://{SITE}{path}"]},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    return resp.status

            assert set(await asyncio.gather(*(one(p) for p in paths))) == {200}

    for path in paths:
        exchange(port, request(path))
    asyncio.run(purge_all())
    state = json.loads((tmp_path / "cache-multi" / "purge-state.json").read_text())
    purged = {url for ban in state["bans"] for url in ban["purge"]["urls"]}
    # A ban leaves the state once a sweep has removed what it selects (a sweep follows
    # every purge), so the state may already hold fewer; a ban lost to another
    # worker's write would leave its object served from the cache.
    assert purged <= {f"http://{SITE}{p}" for p in paths}
    for path in paths:
        assert b"fwd=uri-miss" in exchange(port, request(path))[0]


async def _coordinator_purge(coordinator: Proc, url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(coordinator.url + "/v1/purge", json={"urls": [url]}, headers=OP) as resp:
            assert resp.status == 202, await resp.text()
            purge_id = (await resp.json())["id"]
        for _ in range(50):
            async with s.get(f"{coordinator.url}/v1/purge/{purge_id}?wait=5", headers=OP) as resp:
                if (await resp.json())["complete"]:
                    return
        raise AssertionError("the purge was not confirmed")


def test_a_purge_through_the_coordinator_reaches_every_worker(
    node: NodeFactory,
    upstream: Proc,
    tmp_path: Path,
    coordinator_factory: Callable[..., Proc],
) -> None:
    coordinator = coordinator_factory()
    config = write_config(tmp_path / "workers.toml", admin_token=TOKEN)
    proc = node(
        "serve",
        "--origin",
        upstream.url,
        "--workers",
        "3",
        "--config",
        str(config),
        "--coordinator",
        coordinator.url,
        name="multi",
        env={"EDGE_NODE_TOKEN": NODE_TOKEN},
    )
    port = wait_ready(proc)
    target = "/coord?size=300"
    warm_every_worker(port, target)
    asyncio.run(_coordinator_purge(coordinator, f"http://{SITE}{target}"))
    assert "1" not in counts_seen(port, target)
    with urllib.request.urlopen(
        urllib.request.Request(coordinator.url + "/v1/nodes", headers=OP), timeout=5
    ) as resp:
        nodes = json.loads(resp.read())
    # One subscription for the node, not one per worker.
    listed = nodes["nodes"] if isinstance(nodes, dict) else nodes
    assert [n["name"] for n in listed].count("multi") == 1
    # The lead (the subscriber) killed: a new one catches up, and every worker serves
    # from the cache again (none did while no worker could hear a purge).
    lead = health(port)["worker"]["all"][0]["pid"]
    os.kill(lead, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.2)
        report = health(port)
        if report["worker"]["all"][0]["pid"] != lead and report["purges"]["ready"]:
            break
    assert f"worker 0 (pid {lead}) exited" in proc.output()
    time.sleep(0.2)
    answers = [exchange(port, request(target))[0] for _ in range(20)]
    assert all(b"; hit" in a and field(a, "X-Request-Count") == "2" for a in answers)


def test_an_object_replaced_by_one_worker_is_not_served_stale_by_another(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    proc = start_node(node, upstream, tmp_path)
    port = proc.port
    target = "/replaced?size=800"
    warm_every_worker(port, target)
    assert counts_seen(port, target) == {"1"}
    # Still fresh everywhere, but one worker replaces it (a client's no-cache).
    response, _ = exchange(port, request(target, "Cache-Control: no-cache"))
    assert b"fwd=request" in response and field(response, "X-Request-Count") == "2"
    assert counts_seen(port, target) == {"2"}
    # Expired, refetched by whichever worker asks first: the others follow. (Date has
    # whole seconds: an object may be up to a second old as it arrives.)
    target = "/expiring?size=800&cc=max-age%3D3"
    warm_every_worker(port, target)
    time.sleep(3.2)
    assert field(exchange(port, request(target))[0], "X-Request-Count") == "2"
    assert counts_seen(port, target) == {"2"}


def test_a_killed_worker_is_started_again_and_sigterm_stops_all(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    proc = start_node(node, upstream, tmp_path)
    port = proc.port
    before = {w["index"]: w["pid"] for w in health(port)["worker"]["all"]}
    victim = before[1]
    os.kill(victim, signal.SIGKILL)
    # Connections the kernel queued for it as it died are lost with it (its listening
    # socket goes when it has exited); new ones go to the others.
    time.sleep(0.3)
    deadline = time.monotonic() + 15
    after: dict[int, int] = {}
    while time.monotonic() < deadline:
        answered, _ = exchange(port, request("/k?size=10"))  # the node keeps answering
        assert status_of(answered) == 200
        after = {w["index"]: w["pid"] for w in health(port)["worker"]["all"] if w["alive"]}
        if len(after) == 3 and after[1] != victim:
            break
        time.sleep(0.1)
    assert len(after) == 3 and after[1] != victim and after[0] == before[0], (before, after)
    assert f"worker 1 (pid {victim}) exited with status -9; starting it again" in proc.output()
    assert victim in {*before.values()} and not alive(victim)
    assert after[1] in worker_pids(port, 60) or len(worker_pids(port, 60)) == 3
    everyone = {proc.popen.pid, *after.values()}
    assert proc.stop(signal.SIGTERM) == 0
    time.sleep(0.2)
    assert not any(alive(pid) for pid in everyone)


def test_sigint_stops_the_node_and_every_worker(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    proc = start_node(node, upstream, tmp_path, workers=2)
    port = proc.port
    pids = {w["pid"] for w in health(port)["worker"]["all"]}
    assert proc.stop(signal.SIGINT) == 0
    time.sleep(0.2)
    assert not any(alive(pid) for pid in {proc.popen.pid, *pids})


def metric_total(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_edge/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_metrics_count_the_whole_node(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    proc = start_node(node, upstream, tmp_path)
    port = proc.port
    sent = 0
    for i in range(5):  # misses, general hits and fast-path hits, over many connections
        for _ in range(12):
            assert status_of(exchange(port, request(f"/m-{i}?size=50"))[0]) == 200
            sent += 1
    warm_every_worker(port, "/m-0?size=50", times=3, connections=10)
    sent += 30
    for _ in range(3):  # whichever worker answers the scrape
        assert metric_total(port, "edge_requests_total") == sent
    assert metric_total(port, "edge_upstream_latency_seconds_count") == 5


def test_port_0_is_picked_once_for_every_worker(
    procs: list[Proc], upstream: Proc, tmp_path: Path
) -> None:
    cmd = edge_cmd(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream.url,
        "--cache-dir",
        str(tmp_path / "c"),
        "--workers",
        "2",
        "--name",
        "zero",
    )
    out = open(tmp_path / "zero.log", "ab")  # noqa: SIM115 - handed to the child
    popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    proc = Proc(popen, 0, tmp_path / "zero.log")
    procs.append(proc)
    port = wait_ready(proc)
    assert proc.output().count("listening on") == 1
    assert port > 0 and len(worker_pids(port)) == 2


def test_a_shield_with_workers_and_an_admin_listener(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    admin = free_port()
    proc = start_node(
        node, upstream, tmp_path, workers=2, kind="shield", admin_listen=f"127.0.0.1:{admin}"
    )
    assert len(worker_pids(admin)) == 2  # every worker answers the admin port
    port = proc.port
    assert b"fwd=uri-miss" in exchange(port, request("/s?size=10"))[0]
    assert b"; hit" in exchange(port, request("/s?size=10"))[0]


@pytest.mark.parametrize("value", ["0", "65", "-1", "abc", "2.5", ""])
def test_bad_workers_values_are_one_line_errors(value: str, tmp_path: Path) -> None:
    base = ["serve", "--cache-dir", str(tmp_path / "c"), "--upstream", "http://127.0.0.1:1"]
    done = subprocess.run(
        edge_cmd(*base, "--workers", value), capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("edge: workers must be a whole number from 1 to 64")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("value", ["0", "100", '"many"', "true"])
def test_bad_workers_in_a_config_file_are_one_line_errors(value: str, tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text(f'upstream = "http://127.0.0.1:1"\nworkers = {value}\n')
    done = subprocess.run(
        edge_cmd("shield", "--cache-dir", str(tmp_path / "c"), "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "workers must be a whole number from 1 to 64" in done.stderr


def test_a_worker_that_cannot_start_ends_the_node(upstream: Proc, tmp_path: Path) -> None:
    taken = upstream.port
    admin = f"127.0.0.1:{taken}"  # the admin address is someone else's
    config = write_config(tmp_path / "edge.toml", admin_listen=admin)
    done = subprocess.run(
        edge_cmd(
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--upstream",
            upstream.url,
            "--cache-dir",
            str(tmp_path / "c"),
            "--workers",
            "2",
            "--config",
            str(config),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("edge: cannot listen on"), done.stderr
    assert "Traceback" not in done.stderr


def test_one_worker_is_the_node_alone(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    proc = start_node(node, upstream, tmp_path, workers=1)
    port = proc.port
    report = health(port)
    assert "worker" not in report
    assert not (tmp_path / "cache-multi" / "workers.map").exists()


def test_a_cold_crowd_on_a_sliced_object_over_every_worker_makes_one_upstream_request(
    procs: list[Proc], node: NodeFactory, tmp_path: Path
) -> None:
    """Big objects are slices, each a fill of its own: the stream that cuts one upstream
    response into slices in one worker is followed by readers in the others."""
    archive = tmp_path / "archive"
    data = (bytes(range(251)) * (41 << 12))[: (40 << 20) + 777]  # 41 slices of 1 MiB
    (archive / "big").mkdir(parents=True)
    (archive / "big" / "file.bin").write_bytes(data)
    (archive / "big" / "other.bin").write_bytes(data)
    port = free_port()
    origin = start_proc(
        edge_cmd(
            "origin", "--root", str(archive), "--listen", f"127.0.0.1:{port}", "--latency", "0.3"
        ),
        port,
        tmp_path / "origin.log",
    )
    procs.append(origin)
    config = write_config(
        tmp_path / "workers.toml", admin_token=TOKEN, slice_size="1M", slice_threshold="4M"
    )
    proc = node(
        "serve", "--origin", origin.url, "--workers", "3", "--config", str(config), name="multi"
    )
    wait_ready(proc)
    answers = asyncio.run(crowd(proc.url + "/big/file.bin", 30))
    assert all(status == 200 and body == data for status, _, body in answers)
    lines = [line for line in origin.output().splitlines() if '"GET /big/file.bin' in line]
    assert len(lines) == 1, lines
    # A seek into another cold object: its slice fetched once for the whole node.
    part = asyncio.run(crowd(proc.url + "/big/other.bin", 30, {"Range": "bytes=20971520-20971529"}))
    assert all(status == 206 and body == data[20971520:20971530] for status, _, body in part), [
        (status, fields.get("Cache-Status"), len(body)) for status, fields, body in part
    ]
    lines = [line for line in origin.output().splitlines() if '"GET /big/other.bin' in line]
    assert len(lines) == 1, lines


def test_tls_and_the_redirect_listener_in_every_worker(
    procs: list[Proc], upstream: Proc, tmp_path: Path
) -> None:
    from edge.server.tls import LocalCA
    from tests.support.tlsnodes import tls_edge

    ca = LocalCA(tmp_path / "tls")
    pair = ca.issue("archive", [SITE], ["127.0.0.1"])
    redirect = free_port()
    proc = tls_edge(
        procs,
        tmp_path,
        upstream.url,
        [pair],
        ca.cert_path,
        "--http-redirect",
        f"127.0.0.1:{redirect}",
        "--workers",
        "2",
        "--config",
        str(write_config(tmp_path / "admin.toml", admin_token=TOKEN)),
    )
    wait_ready(proc)
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    pids = set()
    for _ in range(30):
        with urllib.request.urlopen(
            urllib.request.Request(
                f"https://127.0.0.1:{proc.port}/_edge/health",
                headers={"Authorization": f"Bearer {TOKEN}"},
            ),
            timeout=5,
            context=ctx,
        ) as resp:
            pids.add(json.loads(resp.read())["worker"]["pid"])
    assert len(pids) == 2
    # Each worker's redirect listener: many connections, every one a 308.
    for _ in range(20):
        answer, _ = exchange(redirect, request("/r"))
        assert status_of(answer) == 308, answer


def test_eviction_from_every_worker_at_once_keeps_the_store_whole(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    """A cache far smaller than what is asked: every worker commits and evicts at once
    (SQLite transactions between them); every answer is whole, the bound holds."""
    config = write_config(tmp_path / "workers.toml", admin_token=TOKEN, cache_size="1M")
    proc = node(
        "serve", "--origin", upstream.url, "--workers", "3", "--config", str(config), name="small"
    )
    port = wait_ready(proc)
    targets = [f"/ev-{i}?size=100000" for i in range(40)]

    async def round_() -> None:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as s:

            async def one(target: str) -> None:
                async with s.get(f"{proc.url}{target}", headers={"Host": SITE}) as resp:
                    body = await resp.read()
                    assert resp.status == 200
                    assert body == body_for(target.split("?")[0], 100000)

            await asyncio.gather(*(one(t) for t in targets * 3))

    for _ in range(3):
        asyncio.run(round_())
    store = health(port)["store"]
    assert store["bytes"] <= (1 << 20) + 100000, store
    assert "Traceback" not in proc.output() and "internal error" not in proc.output()
