"""Several coordinators on one replicated purge log (a real three-member NATS JetStream
cluster on loopback): purges made round-robin through two coordinators while one of them,
or one cluster member, is killed and restarted. Every node (shields and edges, each a
WebSocket client that moves to the other coordinator when its own fails and resumes from
what it applied, as edge.purge.bans.Subscription does) applies every purge exactly once,
in order, each edge after every shield; every purge acknowledged to the operator is in
the log with the body it was given."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.coordinators import NODE_TOKEN, OP, TOKEN
from tests.support.natscluster import Cluster
from tests.support.procs import Proc, edge_cmd, free_port, start

#: Purges made in each run, and when (by count) the victim is killed and restarted.
PURGES = 1000
KILL_AT, RESTART_AT = 300, 600
HEARTBEAT = "1"  # so a silent coordinator's shields stop counting within 3 s


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


def start_coordinator(procs: list[Proc], tmp_path: Path, backend: str, port: int) -> Proc:
    cmd = edge_cmd(
        "coordinator",
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        backend,
        "--heartbeat",
        HEARTBEAT,
    )
    env = {"EDGE_TOKEN": TOKEN, "EDGE_NODE_TOKEN": NODE_TOKEN}
    proc = start(cmd, port, tmp_path / f"coordinator-{port}.log", "/v1/health", env=env)
    procs.append(proc)
    return proc


@pytest.mark.timeout(600)
@pytest.mark.parametrize("victim", ["coordinator", "member"])
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
