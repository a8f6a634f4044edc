"""Several coordinators on one replicated purge log (a real three-member NATS JetStream
cluster on loopback): purges made round-robin through two coordinators while one of them
or one cluster member is killed and restarted, or a member hangs and then resumes. Every
node (shields and edges, each a WebSocket client that moves to the other coordinator when
its own fails and resumes from what it applied, as edge.purge.bans.Subscription does)
applies every purge exactly once, in order, each edge after every shield; every purge
acknowledged to the operator is in the log with the body it was given."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from origin.coordinator.service import CLOSE_NAME_TAKEN
from tests.integration.conftest import NodeFactory
from tests.support.cli import run_edge
from tests.support.coordinators import NODE_TOKEN, OP, SITE, TOKEN, FakeNode, fetch
from tests.support.coordinators import start_coordinator as sqlite_coordinator
from tests.support.guardkit import write_config
from tests.support.natscluster import Cluster
from tests.support.procs import Proc, edge_cmd, free_port, start

# Every test here runs nats-server (Debian's): a system test, run by .ci/run's system
# stage.
pytestmark = pytest.mark.system

#: Purges made in each run, and when (by count) the victim is killed and restarted.
PURGES = 1000
KILL_AT, RESTART_AT = 300, 600
HEARTBEAT = "1"  # so a silent coordinator's shields stop counting within 3 s
URL = "http://archive.example/books/a.txt"


class Node:
    """A node as the coordinators see it: subscribes to one of `bases`, applies purges
    after the last it applied (a resend after reconnecting is skipped, as a real node
    skips it), acks each, and moves to the next coordinator when its connection ends."""

    def __init__(self, http: aiohttp.ClientSession, bases: list[str], name: str, role: str):
        self.http, self.bases, self.name, self.role = http, bases, name, role
        self.applied = 0
        self.order: list[int] = []  # every seq applied, in the order applied
        self.when: dict[int, float] = {}  # seq -> monotonic time applied
        self.bodies: dict[int, dict[str, Any]] = {}
        self.resets: list[int] = []
        self.connections = 0
        self.instance = os.urandom(8).hex()  # this "process", wherever it connects
        self._task: asyncio.Task[None] | None = None

    def start(self, first: int) -> None:
        self._task = asyncio.create_task(self._run(first))

    async def _run(self, at: int) -> None:
        while True:
            base = self.bases[at % len(self.bases)]
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await self._session(base)
            at += 1
            await asyncio.sleep(0.1)

    async def _session(self, base: str) -> None:
        params = {"name": self.name, "role": self.role, "after": str(self.applied)}
        params["instance"] = self.instance
        async with self.http.ws_connect(
            f"{base}/v1/subscribe",
            params=params,
            headers={"Authorization": f"Bearer {NODE_TOKEN}"},
            timeout=aiohttp.ClientWSTimeout(ws_close=2),
        ) as ws:
            self.connections += 1
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                seq = data["seq"]
                if data["type"] == "reset":
                    self.resets.append(seq)
                    self.applied = max(self.applied, seq)
                elif data["type"] == "purge" and seq > self.applied:
                    self.when[seq] = time.monotonic()
                    self.order.append(seq)
                    self.bodies[seq] = data["purge"]
                    self.applied = seq
                await ws.send_json({"type": "ack", "seq": self.applied})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self._task


def start_coordinator(
    procs: list[Proc], tmp_path: Path, backend: str, port: int, *extra: str
) -> Proc:
    cmd = edge_cmd(
        "coordinator",
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        backend,
        "--heartbeat",
        HEARTBEAT,
        *extra,
    )
    env = {"EDGE_TOKEN": TOKEN, "EDGE_NODE_TOKEN": NODE_TOKEN}
    proc = start(cmd, port, tmp_path / f"coordinator-{port}.log", "/v1/health", env=env)
    procs.append(proc)
    return proc


@pytest.mark.timeout(600)
@pytest.mark.parametrize("victim", ["coordinator", "member", "frozen member"])
async def test_purges_through_two_coordinators_survive_a_kill(
    procs: list[Proc], tmp_path: Path, victim: str
) -> None:
    cluster = Cluster(tmp_path / "nats", procs, size=3).start()
    ports = [free_port(), free_port()]
    coordinators = [start_coordinator(procs, tmp_path, cluster.url, p) for p in ports]
    bases = [c.url for c in coordinators]

    async with aiohttp.ClientSession() as http:
        nodes = [
            Node(http, bases, "s1", "shield"),
            Node(http, bases, "s2", "shield"),
            Node(http, bases, "e1", "edge"),
            Node(http, bases, "e2", "edge"),
            Node(http, bases, "e3", "edge"),
        ]
        for n, node in enumerate(nodes):
            node.start(n)  # spread over both coordinators
        async with asyncio.timeout(30):
            while sum(node.connections for node in nodes) < len(nodes):
                await asyncio.sleep(0.05)

        acknowledged: dict[int, int] = {}  # seq -> the purge's number
        for number in range(PURGES):
            if number == KILL_AT:
                if victim == "coordinator":
                    coordinators[0].popen.kill()
                    coordinators[0].popen.wait()
                else:
                    cluster.kill(cluster.members[1])
            if number == RESTART_AT:
                if victim == "coordinator":
                    coordinators[0] = start_coordinator(procs, tmp_path, cluster.url, ports[0])
                else:
                    cluster.start_member(cluster.members[1])
            body = {"urls": [f"https://archive.example/{number}"]}
            seq = await post(http, bases, number, body)
            acknowledged[seq] = number

        latest = max(acknowledged)
        async with asyncio.timeout(90):
            while min(node.applied for node in nodes) < latest:
                await asyncio.sleep(0.1)
        for node in nodes:
            await node.stop()

    for node in nodes:
        # Every purge exactly once, in order: 1..latest with nothing skipped or repeated.
        assert node.resets == [], node.name
        assert node.order == list(range(1, latest + 1)), node.name
        # Nothing acknowledged is lost: each acknowledged seq carries the purge posted.
        for seq, number in acknowledged.items():
            assert node.bodies[seq]["urls"] == [f"https://archive.example/{number}"]
    shields = [n for n in nodes if n.role == "shield"]
    edges = [n for n in nodes if n.role == "edge"]
    late = [
        (edge.name, seq)
        for edge in edges
        for seq in range(1, latest + 1)
        if edge.when[seq] < max(shield.when[seq] for shield in shields)
    ]
    assert late == [], f"edges sent a purge before every shield applied it: {late[:10]}"


async def post(http: aiohttp.ClientSession, bases: list[str], number: int, body: Any) -> int:
    """POST one purge, to the coordinators in turn starting at `number`'s; the seq of the
    first 202. A coordinator that is down (or answers 503 while the cluster elects a
    leader) is skipped: the purge was not acknowledged there."""
    deadline = time.monotonic() + 60
    at = number
    while True:
        base = bases[at % len(bases)]
        try:
            async with http.post(
                f"{base}/v1/purge", json=body, headers=OP, timeout=aiohttp.ClientTimeout(20)
            ) as resp:
                if resp.status == 202:
                    return int((await resp.json())["seq"])
                assert resp.status == 503, await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"purge {number} not acknowledged within 60s"
        at += 1
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- one log, two doors


async def test_status_long_polls_and_shields_first_whichever_coordinator(
    procs: list[Proc], tmp_path: Path
) -> None:
    """A purge made at one coordinator is long-polled at the other to completion, with
    the confirmations of nodes connected to both; an edge at one coordinator gets it only
    after the shield at the other confirmed it; /v1/nodes says the same at both."""
    cluster = Cluster(tmp_path / "nats", procs, size=1).start()
    backend = ["--replicas", "1"]
    a, b = (
        start_coordinator(procs, tmp_path, cluster.url, free_port(), *backend) for _ in range(2)
    )
    async with aiohttp.ClientSession() as http:
        shield = await FakeNode(
            http, a.url, "s1", "shield", ack_delay=0.5, token=NODE_TOKEN
        ).connect()
        edge = await FakeNode(http, b.url, "e1", "edge", token=NODE_TOKEN).connect()
        async with asyncio.timeout(10):  # each coordinator has learnt of the other's node
            while [len(await connected(http, c.url)) for c in (a, b)] != [2, 2]:
                await asyncio.sleep(0.05)

        async with http.post(f"{a.url}/v1/purge", json={"urls": [URL]}, headers=OP) as resp:
            assert resp.status == 202
            made = await resp.json()
        assert made["nodes"] == ["e1", "s1"]
        seq = made["seq"]
        view = await until_complete(http, b.url, seq)
        assert sorted(row["node"] for row in view["confirmations"]) == ["e1", "s1"]
        assert (view["pending"], view["not_connected"]) == ([], [])
        # Shields first across coordinators: the edge was sent it after the shield's ack.
        assert await edge.wait_seq(seq, timeout=10) > shield.acked[seq]
        assert (await until_complete(http, a.url, seq))["confirmations"] == view["confirmations"]

        # A node that leaves one coordinator is not connected at either.
        await edge.close()
        async with asyncio.timeout(10):
            while [await connected(http, c.url) for c in (a, b)] != [{"s1"}, {"s1"}]:
                await asyncio.sleep(0.05)
        async with http.post(f"{b.url}/v1/purge", json={"urls": [URL]}, headers=OP) as resp:
            assert (await resp.json())["not_connected"] == ["e1"]
        await shield.close()


async def until_complete(http: aiohttp.ClientSession, base: str, seq: int) -> dict[str, Any]:
    """Long-poll purge `seq` at `base` until every connected node confirmed it, as `edge
    purge` does."""
    view: dict[str, Any] = {"confirmations": [], "complete": False}
    async with asyncio.timeout(30):
        while not view["complete"]:
            seen = len(view["confirmations"])
            url = f"{base}/v1/purge/{seq}?wait=10&seen={seen}"
            async with http.get(url, headers=OP) as resp:
                assert resp.status == 200, await resp.text()
                view = await resp.json()
    return view


async def connected(http: aiohttp.ClientSession, base: str) -> set[str]:
    async with http.get(f"{base}/v1/nodes", headers=OP) as resp:
        return {row["name"] for row in (await resp.json())["nodes"] if row["connected"]}


async def test_a_name_held_at_one_coordinator_is_refused_at_the_other(
    procs: list[Proc], tmp_path: Path
) -> None:
    """A second live node under a name another coordinator holds is refused (4409, the
    reason), as one coordinator refuses it; the same process moving over is not."""
    cluster = Cluster(tmp_path / "nats", procs, size=1).start()
    a, b = (
        start_coordinator(procs, tmp_path, cluster.url, free_port(), "--replicas", "1")
        for _ in range(2)
    )
    async with aiohttp.ClientSession() as http:
        first = await FakeNode(http, a.url, "dup", token=NODE_TOKEN, instance="one").connect()
        async with asyncio.timeout(10):
            while await connected(http, b.url) != {"dup"}:
                await asyncio.sleep(0.05)
        second = await FakeNode(http, b.url, "dup", token=NODE_TOKEN, instance="two").connect()
        assert second._reader is not None
        await asyncio.wait_for(second._reader, 10)
        assert second.ws is not None and second.ws.close_code == CLOSE_NAME_TAKEN
        assert second.received == []
        same = await FakeNode(http, b.url, "dup", token=NODE_TOKEN, instance="one").connect()
        async with http.post(f"{a.url}/v1/purge", json={"urls": [URL]}, headers=OP) as resp:
            seq = (await resp.json())["seq"]
        await same.wait_seq(seq, timeout=10)
        for node in (first, second, same):
            await node.close()


async def test_compaction_tells_a_node_behind_at_either_coordinator(
    procs: list[Proc], tmp_path: Path
) -> None:
    """--keep on a shared log: a node behind what either coordinator kept is reset, and a
    coordinator started later finds the stream compacted (its first seq) too."""
    cluster = Cluster(tmp_path / "nats", procs, size=1).start()
    extra = ["--replicas", "1", "--keep", "10"]
    a, b = (start_coordinator(procs, tmp_path, cluster.url, free_port(), *extra) for _ in range(2))
    async with aiohttp.ClientSession() as http:
        for n in range(40):
            async with http.post(
                f"{(a, b)[n % 2].url}/v1/purge", json={"urls": [URL]}, headers=OP
            ) as resp:
                assert resp.status == 202
        late = start_coordinator(procs, tmp_path, cluster.url, free_port(), *extra)
        for proc in (a, b, late):
            # Behind what was kept: a reset (to everything there is: the whole cache goes).
            node = await FakeNode(
                http, proc.url, "behind", after=3, token=NODE_TOKEN, instance="behind-1"
            ).connect()
            await node.wait_until(lambda node=node: node.applied >= 40, timeout=10)
            assert (node.seqs("reset"), node.seqs()) == ([40], []), proc.url
            await node.close()
            # Within what was kept: the events it missed, in order.
            node = await FakeNode(
                http, proc.url, "within", after=35, token=NODE_TOKEN, instance="within-1"
            ).connect()
            await node.wait_until(lambda node=node: node.applied >= 40, timeout=10)
            assert (node.seqs("reset"), node.seqs()) == ([], [36, 37, 38, 39, 40]), proc.url
            await node.close()
        # The stream itself was compacted (every coordinator compacts it, in steps).
        async with http.get(f"http://127.0.0.1:{cluster.members[0].monitor}/jsz?streams=1") as r:
            streams = (await r.json())["account_details"][0]["stream_detail"]
        state = next(s["state"] for s in streams if s["name"] == "EDGE_PURGES")
        assert (state["first_seq"], state["last_seq"]) == (31, 40)


# ---------------------------------------------------------------- real nodes


async def test_real_nodes_move_to_the_other_coordinator_and_purge_through_either(
    procs: list[Proc], tmp_path: Path, node: NodeFactory, upstream: Proc
) -> None:
    """`edge shield` and `edge serve` given both coordinators (each listing its own first);
    `edge purge` through either removes an object from both; once the edge's coordinator
    is killed it resumes at the other one and the next purge reaches it too."""
    cluster = Cluster(tmp_path / "nats", procs, size=3).start()
    a, b = (start_coordinator(procs, tmp_path, cluster.url, free_port()) for _ in range(2))
    config = str(write_config(tmp_path / "node.toml", coordinator_token=NODE_TOKEN))
    shield = node(
        "shield", "--origin", upstream.url, "--coordinator", f"{a.url},{b.url}",
        "--config", config, name="shield-c",
    )  # fmt: skip
    edge = node(
        "serve", "--shield", shield.url, "--coordinator", f"{b.url},{a.url}",
        "--config", config, name="edge-c",
    )  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(20):
            while [len(await connected(http, c.url)) for c in (a, b)] != [2, 2]:
                await asyncio.sleep(0.1)
        for n, (via, path) in enumerate([(a, "/one"), (b, "/two"), (a, "/three")]):
            if n == 2:
                b.popen.kill()  # the edge's coordinator, without a word
                b.popen.wait()
            assert await fetch(http, edge, path) == "miss"
            assert await fetch(http, edge, path) == "hit"
            args = ["--coordinator", via.url, "--token", TOKEN, "--timeout", "30"]
            code, out, err = await run_edge(tmp_path, "purge", f"http://{SITE}{path}", *args)
            assert code == 0, err
            assert "confirmed by all 2 nodes" in out, out
            # Gone from both tiers: a miss at the edge is a miss at the shield too.
            async with http.get(edge.url + path, headers={"Host": SITE}) as resp:
                assert resp.status == 200
                status = resp.headers["Cache-Status"]
            assert "; hit" not in status and "shield-c; fwd=" in status, status


# ---------------------------------------------------------------- migration


async def test_migrate_a_sqlite_log_to_jetstream_keeps_every_seq(
    procs: list[Proc], tmp_path: Path
) -> None:
    """`edge coordinator migrate` moves the kept purges with their seqs, the compaction
    point, confirmations and nodes: a node resumes where it was at a coordinator of the
    new log, one behind the compaction point is reset, and a new purge gets the next seq."""
    db = tmp_path / "old.db"
    old = sqlite_coordinator(procs, db, "--keep", "5", node_token=NODE_TOKEN)
    async with aiohttp.ClientSession() as http:
        shield = await FakeNode(http, old.url, "s1", "shield", token=NODE_TOKEN).connect()
        for _ in range(12):
            async with http.post(f"{old.url}/v1/purge", json={"urls": [URL]}, headers=OP) as r:
                assert r.status == 202
        await shield.wait_acked(12)
        await until_complete(http, old.url, 12)
        await shield.close()
        old.stop()

        cluster = Cluster(tmp_path / "nats", procs, size=1).start()
        move = ["coordinator", "migrate", "--from", f"sqlite:{db}", "--to", cluster.url]
        code, out, err = await run_edge(tmp_path, *move, "--replicas", "1")
        assert code == 0, err
        assert "5 purges (seq 8-12, compacted through 7) and 1 nodes moved" in out, out
        # A second time: the target has purges now, and would give them other seqs.
        code, out, err = await run_edge(tmp_path, *move, "--replicas", "1")
        assert (code, out) == (1, "")
        assert err.startswith("edge: the target log is not empty (seq 12, 1 nodes)"), err

        new = start_coordinator(procs, tmp_path, cluster.url, free_port(), "--replicas", "1")
        async with http.get(f"{new.url}/v1/purge/12", headers=OP) as resp:
            view = await resp.json()
        assert [row["node"] for row in view["confirmations"]] == ["s1"]
        async with http.get(f"{new.url}/v1/nodes", headers=OP) as resp:
            nodes = (await resp.json())["nodes"]
        assert [(n["name"], n["role"], n["applied"]) for n in nodes] == [("s1", "shield", 12)]
        async with http.post(f"{new.url}/v1/purge", json={"urls": [URL]}, headers=OP) as resp:
            assert (await resp.json())["seq"] == 13

        resumed = await FakeNode(
            http, new.url, "s1", "shield", after=12, token=NODE_TOKEN
        ).connect()
        within = await FakeNode(http, new.url, "e1", after=9, token=NODE_TOKEN).connect()
        behind = await FakeNode(http, new.url, "e2", after=2, token=NODE_TOKEN).connect()
        for node in (resumed, within, behind):
            await node.wait_until(lambda node=node: node.applied >= 13, timeout=10)
        assert (resumed.seqs("reset"), resumed.seqs()) == ([], [13])
        assert (within.seqs("reset"), within.seqs()) == ([], [10, 11, 12, 13])
        assert behind.seqs("reset") == [13]
        for node in (resumed, within, behind):
            await node.close()


async def test_a_bad_backend_is_one_line(tmp_path: Path) -> None:
    env = {"EDGE_TOKEN": TOKEN}
    listen = ["coordinator", "--listen", f"127.0.0.1:{free_port()}"]
    for args, status, line in [
        (["--backend", "redis://127.0.0.1:6379"], 2, "edge: backend must be sqlite:PATH or"),
        (["--backend", "nats://127.0.0.1"], 2, "edge: a NATS server is nats://HOST:PORT"),
        (["--db", "x.db", "--backend", "sqlite:y.db"], 2, "edge: --db FILE is --backend"),
        (["--backend", "sqlite:x.db", "--replicas", "2"], 2, "edge: --replicas must be 1, 3"),
        # Nobody there: bounded, not a coordinator waiting forever without listening.
        (["--backend", f"nats://127.0.0.1:{free_port()}"], 1, "edge: cannot reach NATS at"),
    ]:
        code, out, err = await run_edge(tmp_path, *listen, *args, env=env)
        assert (code, out) == (status, ""), (args, err)
        assert err.startswith(line) and len(err.strip().splitlines()) == 1, (args, err)
