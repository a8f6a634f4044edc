"""`edge purge` tells the whole story when a node the coordinator knows is not connected:
a real `edge coordinator`, real nodes (edges alone, or edges behind a shield) and the
test origin; one node seen by the coordinator and then stopped.

Shown: the stopped node is named ("not connected: applies on reconnect"), never hidden
behind "confirmed by all"; the exit status is 1 while a known node has not confirmed,
and 0 with --connected-only once every connected node has; the node applies the purge
when it comes back, after which a purge is confirmed by every node again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.cli import run_edge as edge
from tests.support.coordinators import ENV, SITE, TOKEN, fetch
from tests.support.procs import Proc, free_port

NOT_CONNECTED = "not connected: applies on reconnect"


@dataclass
class Cdn:
    coordinator: Proc
    nodes: dict[str, Proc]
    restart: dict[str, Callable[[], Proc]]
    edges: list[str]


def make_cdn(upstream: Proc, node: NodeFactory, coordinator: Proc, shielded: bool) -> Cdn:
    common = ("--coordinator", coordinator.url)
    nodes: dict[str, Proc] = {}
    restart: dict[str, Callable[[], Proc]] = {}

    def starter(kind: str, name: str, *args: str) -> Callable[[], Proc]:
        port = free_port()  # the same port (and cache dir) when started again

        def start() -> Proc:
            nodes[name] = node(kind, *args, *common, name=name, port=port, env=ENV)
            return nodes[name]

        return start

    upstream_args: tuple[str, ...] = ("--origin", upstream.url)
    if shielded:
        restart["shield-1"] = starter("shield", "shield-1", "--origin", upstream.url)
        restart["shield-1"]()
        upstream_args = ("--shield", nodes["shield-1"].url, "--origin", upstream.url)
    for i, region in enumerate(("eu", "us")):
        name = f"edge-{i}"
        restart[name] = starter("serve", name, *upstream_args, "--region", region)
        restart[name]()
    return Cdn(coordinator, nodes, restart, ["edge-0", "edge-1"])


async def registered(cdn: Cdn, names: set[str]) -> None:
    """Until the coordinator lists exactly `names` as connected."""
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            async with s.get(
                cdn.coordinator.url + "/v1/nodes", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as resp:
                nodes = (await resp.json())["nodes"]
            if {n["name"] for n in nodes if n["connected"]} == names:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"connected nodes never became {names}: {nodes}")


CASES = [
    pytest.param(False, "edge-1", id="one-tier"),
    pytest.param(True, "edge-1", id="shielded-edge-stopped"),
    pytest.param(True, "shield-1", id="shielded-shield-stopped"),
]


@pytest.mark.parametrize(("shielded", "stopped"), CASES)
async def test_a_known_node_that_is_down_is_named_and_fails_the_purge(
    tmp_path: Path,
    upstream: Proc,
    node: NodeFactory,
    coordinator_factory: Callable[..., Proc],
    shielded: bool,
    stopped: str,
) -> None:
    cdn = make_cdn(upstream, node, coordinator_factory(), shielded)
    everyone = set(cdn.nodes)
    await registered(cdn, everyone)
    path = "/story/a.txt"
    async with aiohttp.ClientSession() as s:
        for name in cdn.edges:
            await fetch(s, cdn.nodes[name], path)
        assert await fetch(s, cdn.nodes[stopped], path) == "hit"
    cdn.nodes[stopped].stop()
    await registered(cdn, everyone - {stopped})
    home = tmp_path
    flags = ["--coordinator", cdn.coordinator.url, "--token", TOKEN, "--timeout", "20"]
    url = f"http://{SITE}{path}"

    # The whole story: every connected node confirmed, the stopped one is named, exit 1.
    code, out, err = await edge(home, "purge", url, *flags)
    assert code == 1, (out, err)
    assert "confirmed by all" not in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split()}
    assert rows[stopped].endswith(NOT_CONNECTED), out
    for name in everyone - {stopped}:
        assert "confirmed after" in rows[name], out
    assert f"purge 1: {len(everyone) - 1}/{len(everyone)} nodes confirmed" in out
    assert err.startswith("edge: ") and err.count("\n") == 1, err
    assert stopped in err and "not connected" in err and "--connected-only" in err, err

    # --connected-only: the connected nodes' confirmation is enough, and the rest is said.
    code, out, err = await edge(home, "purge", "--tag", "t", "--connected-only", *flags)
    assert (code, err) == (0, ""), (out, err)
    last = out.splitlines()[-1]
    assert last.startswith(f"purge 2: confirmed by all {len(everyone) - 1} connected nodes in ")
    assert last.endswith(f"; {NOT_CONNECTED}: {stopped}"), last

    # Back: it applied both purges before serving, and the next purge reaches everyone.
    cdn.restart[stopped]()
    await registered(cdn, everyone)
    async with aiohttp.ClientSession() as s:
        assert await fetch(s, cdn.nodes[stopped], path) == "miss"
    code, out, err = await edge(home, "purge", url, *flags)
    assert code == 0, (out, err)
    assert out.splitlines()[-1].startswith(f"purge 3: confirmed by all {len(everyone)} nodes in ")
    assert NOT_CONNECTED not in out


async def test_with_no_node_connected_the_known_ones_are_named(
    tmp_path: Path,
    upstream: Proc,
    node: NodeFactory,
    coordinator_factory: Callable[..., Proc],
) -> None:
    coordinator = coordinator_factory()
    edge_0 = node(
        "serve", "--origin", upstream.url, "--coordinator", coordinator.url, name="edge-0", env=ENV
    )
    cdn = Cdn(coordinator, {"edge-0": edge_0}, {}, ["edge-0"])
    await registered(cdn, {"edge-0"})
    edge_0.stop()
    await registered(cdn, set())
    flags = ["--coordinator", coordinator.url, "--token", TOKEN]
    code, out, err = await edge(tmp_path, "purge", "--host", SITE, *flags)
    assert code == 1, (out, err)
    assert out.splitlines()[-1].split(maxsplit=2) == ["edge-0", "edge", NOT_CONNECTED]
    assert "edge-0" in err and err.count("\n") == 1, err
    code, out, err = await edge(tmp_path, "purge", "--host", SITE, "--connected-only", *flags)
    assert (code, err) == (0, ""), (out, err)
    last = out.splitlines()[-1]
    assert last == f"purge 2: stored; no node is connected to confirm it; {NOT_CONNECTED}: edge-0"
