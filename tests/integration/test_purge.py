"""Purges across the CDN, with every part real: `edge coordinator`, a shield and two
edges subscribed to it, a test origin; purges sent to the coordinator's API (and once
through `edge purge`) and checked by real requests at every node afterwards."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.coordinators import ENV, OP, SITE, TOKEN, fetch
from tests.support.procs import REPO, Proc, edge_cmd, free_port


@dataclass
class Cdn:
    coordinator: Proc
    shield: Proc
    edges: list[Proc]
    start_coordinator: Callable[..., Proc]
    start_edge: Callable[[int], Proc]

    @property
    def nodes(self) -> list[Proc]:
        return [self.shield, *self.edges]


def make_cdn(
    upstream: Proc, node: NodeFactory, coordinator: Proc, factory: Callable[..., Proc]
) -> Cdn:
    common = ("--coordinator", coordinator.url)
    shield = node(
        "shield", "--origin", upstream.url, *common, "--region", "core", name="shield-1", env=ENV
    )
    ports = [free_port(), free_port()]

    def start_edge(i: int) -> Proc:
        return node(
            "serve",
            "--shield",
            shield.url,
            *common,
            "--region",
            ("eu", "us")[i],
            name=f"edge-{i}",
            port=ports[i],
            env=ENV,
        )

    return Cdn(coordinator, shield, [start_edge(0), start_edge(1)], factory, start_edge)


@pytest.fixture
def cdn(
    upstream: Proc, node: NodeFactory, coordinator_factory: Callable[..., Proc]
) -> Iterator[Cdn]:
    yield make_cdn(upstream, node, coordinator_factory(), coordinator_factory)


async def send_purge(s: aiohttp.ClientSession, cdn: Cdn, body: dict) -> dict:
    """POST the purge and wait until every connected node confirmed it."""
    async with s.post(cdn.coordinator.url + "/v1/purge", json=body, headers=OP) as resp:
        assert resp.status == 202, await resp.text()
        purge_id = (await resp.json())["id"]
    seen = 0
    for _ in range(100):
        url = f"{cdn.coordinator.url}/v1/purge/{purge_id}?wait=5&seen={seen}"
        async with s.get(url, headers=OP) as resp:
            state = await resp.json()
        if state["complete"]:
            return state
        seen = len(state["confirmations"])
    raise AssertionError(f"purge {purge_id} never completed: {state}")


async def warm(s: aiohttp.ClientSession, cdn: Cdn, paths: list[str]) -> None:
    for path in paths:
        for proc in cdn.edges:
            await fetch(s, proc, path)
        for proc in cdn.nodes:
            assert await fetch(s, proc, path) == "hit", (proc, path)


def objects(case: str) -> dict[str, str]:
    """Per case, four objects: two under /CASE/books/ (tagged), one scan, one other."""
    return {
        "books-a": f"/{case}/books/a.txt?tags={case}-books+{case}-shelf",
        "books-b": f"/{case}/books/b.txt?ctags={case}-books",
        "scan": f"/{case}/scans/c.png?tags={case}-scans",
        "other": f"/{case}/other/d.bin",
    }


CASES = [
    ("url", lambda c, o: {"urls": [f"http://{SITE}{o['books-a']}"]}, {"books-a"}),
    ("prefix", lambda c, o: {"prefixes": [f"http://{SITE}/{c}/books/"]}, {"books-a", "books-b"}),
    ("tag", lambda c, o: {"tags": [f"{c}-books"]}, {"books-a", "books-b"}),
    ("host", lambda c, o: {"hosts": [SITE]}, {"books-a", "books-b", "scan", "other"}),
    ("all", lambda c, o: {"all": True}, {"books-a", "books-b", "scan", "other"}),
]


async def test_every_kind_of_purge_hard_and_soft_reaches_every_node(cdn: Cdn) -> None:
    async with aiohttp.ClientSession() as s:
        for kind, body_for, purged in CASES:
            for soft in (False, True):
                case = f"{kind}-{'soft' if soft else 'hard'}"
                objs = objects(case)
                await warm(s, cdn, list(objs.values()))
                state = await send_purge(s, cdn, {**body_for(case, objs), "soft": soft})
                confirmed = {c["node"] for c in state["confirmations"]}
                assert confirmed == {"shield-1", "edge-0", "edge-1"}, state
                # Shields first: no edge confirmed before the shield did.
                at = {c["node"]: c["at"] for c in state["confirmations"]}
                assert at["edge-0"] >= at["shield-1"] and at["edge-1"] >= at["shield-1"]
                want = "stale" if soft else "miss"
                # The shield first: an edge's refetch would refill (or revalidate) it.
                for proc in [cdn.shield, *cdn.edges]:
                    for name, path in objs.items():
                        got = await fetch(s, proc, path)
                        assert got == (want if name in purged else "hit"), (case, proc.url, name)


async def test_an_edge_stopped_during_three_purges_serves_none_of_them(cdn: Cdn) -> None:
    objs = objects("down")
    async with aiohttp.ClientSession() as s:
        await warm(s, cdn, list(objs.values()))
        cdn.edges[1].stop()
        for body in (
            {"urls": [f"http://{SITE}{objs['books-a']}"]},
            {"tags": ["down-scans"]},
            {"prefixes": [f"http://{SITE}/down/books/b"], "soft": True},
        ):
            await send_purge(s, cdn, body)
        back = cdn.start_edge(1)  # same cache dir and port; ready = caught up
        assert await fetch(s, back, objs["books-a"]) == "miss"
        assert await fetch(s, back, objs["scan"]) == "miss"
        assert await fetch(s, back, objs["books-b"]) == "stale"
        assert await fetch(s, back, objs["other"]) == "hit"


async def test_the_coordinator_restarted_between_purges_loses_none(cdn: Cdn) -> None:
    objs = objects("restart")
    async with aiohttp.ClientSession() as s:
        await warm(s, cdn, list(objs.values()))
        first = await send_purge(s, cdn, {"urls": [f"http://{SITE}{objs['books-a']}"]})
        port = cdn.coordinator.port
        cdn.coordinator.stop(signal.SIGKILL)
        cdn.coordinator = cdn.start_coordinator(port=port)  # same database
        # Nodes reconnect by themselves; wait until all three are back.
        for _ in range(100):
            async with s.get(cdn.coordinator.url + "/v1/nodes", headers=OP) as resp:
                nodes = (await resp.json())["nodes"]
            if sum(n["connected"] for n in nodes) == 3:
                break
            await asyncio.sleep(0.1)
        second = await send_purge(s, cdn, {"urls": [f"http://{SITE}{objs['scan']}"]})
        assert second["id"] > first["id"]
        async with s.get(f"{cdn.coordinator.url}/v1/purge/{first['id']}", headers=OP) as resp:
            assert (await resp.json())["purge"]["urls"] == [f"http://{SITE}{objs['books-a']}"]
        for proc in cdn.edges:
            assert await fetch(s, proc, objs["scan"]) == "miss"
            assert await fetch(s, proc, objs["other"]) == "hit"
        async with s.get(cdn.coordinator.url + "/v1/nodes", headers=OP) as resp:
            listing = await resp.json()
        assert {n["name"]: n["lag"] for n in listing["nodes"]} == {
            "shield-1": 0,
            "edge-0": 0,
            "edge-1": 0,
        }


async def test_a_node_behind_a_compacted_log_drops_its_whole_cache(
    upstream: Proc, node: NodeFactory, coordinator_factory: Callable[..., Proc]
) -> None:
    cdn = make_cdn(upstream, node, coordinator_factory(keep=3), coordinator_factory)
    objs = objects("compact")
    async with aiohttp.ClientSession() as s:
        await warm(s, cdn, list(objs.values()))
        cdn.edges[1].stop()
        for i in range(6):  # purges of other things; the log keeps only 3
            await send_purge(s, cdn, {"urls": [f"http://{SITE}/nothing/{i}"]})
        back = cdn.start_edge(1)
        for path in objs.values():  # nothing it had is trusted any more
            assert await fetch(s, back, path) == "miss"
        assert await fetch(s, cdn.edges[0], objs["other"]) == "hit"


def test_edge_purge_cli_waits_for_every_node(cdn: Cdn) -> None:
    proc = subprocess.run(
        edge_cmd(
            "purge",
            f"http://{SITE}/cli/x",
            "--coordinator",
            cdn.coordinator.url,
            "--token",
            TOKEN,
            "--timeout",
            "10",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("shield-1", "edge-0", "edge-1"):
        assert name in proc.stdout
    status = subprocess.run(
        edge_cmd("status", "--coordinator", cdn.coordinator.url, "--token", TOKEN, "--json"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    nodes = {n["name"]: n for n in json.loads(status.stdout)["nodes"]}
    assert nodes["edge-1"]["region"] == "us" and nodes["shield-1"]["role"] == "shield"
