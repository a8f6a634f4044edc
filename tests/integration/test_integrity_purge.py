"""Purges select exactly what is stored, with every part real: a test origin, `edge
serve` alone or behind `edge shield`, and purges made on the nodes themselves (POST
/_edge/purge) or through `edge coordinator` with `edge purge`.

A purge URL is keyed by the function that keys requests (edge.rfc.keys): escapes of
unreserved characters decoded and the rest upper-cased, raw non-ASCII escaped, the
query by the node's own key_query, host case and default port. So a purge spelled
differently from the request that stored an object still removes it, at every tier.
A purge body is refused by a node exactly as the coordinator refuses it, and every
endpoint that asks for a token takes its auth-scheme in any case (RFC 9110 §11.1)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.cli import run_edge
from tests.support.coordinators import NODE_TOKEN, TOKEN, start_coordinator
from tests.support.guardkit import write_config
from tests.support.procs import Proc

ADMIN = "node-admin-secret"
SITE = "archive.example"

#: Objects as clients request them, by name; the purge below spells each differently.
#: (A client sends `/Menü` escaped, as `/Men%C3%BC`: an HTTP/1.1 parser refuses raw
#: non-ASCII octets in a request target, but a person types them in a purge.)
OBJECTS = {
    "cafe": "/Caf%C3%A9",
    "menu": "/Menü",
    "tilde": "/a~?a=2&b=1",
    "tilde-other": "/a~?a=1&b=2",  # other values: another object
    "host": "/host/x",
    "dir-e": "/d%C3%A9p/one",
    "dir-u": "/%C3%BCber/two",
    "dir-t": "/d~p/three",
    "keep": "/keep/me",
}
PURGE = {
    "urls": [
        f"http://{SITE}/Caf%c3%a9",
        f"http://{SITE}/Menü",
        f"http://{SITE}/a%7e?b=1&a=2",  # key_query = "sort" on every node
        "http://ARCHIVE.Example:80/host/x",
    ],
    "prefixes": [f"http://{SITE}/d%c3%a9p/", f"http://{SITE}/über/", f"http://{SITE}/d%7Ep/"],
}
PURGED = set(OBJECTS) - {"keep", "tilde-other"}


@dataclass
class Cdn:
    nodes: list[Proc]  # the shield (if any) first, the edge last

    @property
    def edge(self) -> Proc:
        return self.nodes[-1]


def node_config(tmp_path: Path, name: str, **extra: object) -> str:
    return str(
        write_config(
            tmp_path / f"{name}.toml",
            admin_token=ADMIN,
            key_query="sort",
            coordinator_token=NODE_TOKEN,
            **extra,
        )
    )


def start_cdn(
    node: NodeFactory, upstream: Proc, tmp_path: Path, tiers: int, coordinator: Proc | None
) -> Cdn:
    common = ["--coordinator", coordinator.url] if coordinator is not None else []
    nodes = []
    up = ["--origin", upstream.url]
    if tiers == 2:
        shield = node(
            "shield", *up, "--config", node_config(tmp_path, "shield"), *common, name="shield-k"
        )
        nodes.append(shield)
        up = ["--shield", shield.url]
    nodes.append(
        node("serve", *up, "--config", node_config(tmp_path, "edge"), *common, name="edge-k")
    )
    return Cdn(nodes)


def own_entry(cache_status: str, name: str) -> str:
    """This node's Cache-Status entry: hit, or miss (fetched or revalidated)."""
    for entry in cache_status.split(","):
        if entry.strip().startswith(name + ";") or entry.strip() == name:
            return "hit" if "; hit" in entry else "miss"
    raise AssertionError(f"no entry of {name} in {cache_status!r}")


async def fetch(s: aiohttp.ClientSession, proc: Proc, path: str, name: str) -> str:
    async with s.get(proc.url + path, headers={"Host": SITE}) as resp:
        await resp.read()
        assert resp.status == 200, (path, resp.status)
        return own_entry(resp.headers.get("Cache-Status", ""), name)


NAMES = {"shield": "shield-k", "serve": "edge-k"}


def name_of(cdn: Cdn, proc: Proc) -> str:
    return "shield-k" if proc is not cdn.edge else "edge-k"


async def warm(s: aiohttp.ClientSession, cdn: Cdn) -> None:
    for path in OBJECTS.values():
        await fetch(s, cdn.edge, path, "edge-k")
        for proc in cdn.nodes:
            assert await fetch(s, proc, path, name_of(cdn, proc)) == "hit", (proc.url, path)


async def check_purged(s: aiohttp.ClientSession, cdn: Cdn) -> None:
    # Nearest the origin first: an edge's refetch would refill the shield.
    for proc in cdn.nodes:
        name = name_of(cdn, proc)
        seen = {obj: await fetch(s, proc, path, name) for obj, path in OBJECTS.items()}
        assert seen == {obj: "miss" if obj in PURGED else "hit" for obj in seen}, name


async def node_purge(s: aiohttp.ClientSession, proc: Proc, body: dict) -> None:
    async with s.post(
        proc.url + "/_edge/purge", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
    ) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("tiers", [1, 2], ids=["one-tier", "shielded"])
async def test_a_purge_made_on_the_nodes_selects_what_they_stored(
    upstream: Proc, node: NodeFactory, tmp_path: Path, tiers: int
) -> None:
    cdn = start_cdn(node, upstream, tmp_path, tiers, None)

    async with aiohttp.ClientSession() as s:
        await warm(s, cdn)
        for proc in cdn.nodes:  # the shield first, as the coordinator would
            await node_purge(s, proc, PURGE)
        await check_purged(s, cdn)


@pytest.mark.parametrize("tiers", [1, 2], ids=["one-tier", "shielded"])
async def test_edge_purge_through_the_coordinator_selects_what_nodes_stored(
    upstream: Proc,
    node: NodeFactory,
    tmp_path: Path,
    coordinator_factory: Callable[..., Proc],
    tiers: int,
) -> None:
    coordinator = coordinator_factory()
    cdn = start_cdn(node, upstream, tmp_path, tiers, coordinator)
    at = ["--coordinator", coordinator.url, "--token", TOKEN, "--timeout", "20"]

    async with aiohttp.ClientSession() as s:
        await warm(s, cdn)
        args = [*PURGE["urls"], *(a for p in PURGE["prefixes"] for a in ("--prefix", p))]
        code, out, err = await run_edge(tmp_path, "purge", *args, *at)
        assert code == 0, err
        assert f"confirmed by all {tiers} nodes" in out, out
        await check_purged(s, cdn)


# ---------------------------------------------------------------- one validation

BAD_BODIES: list[object] = [
    {"urls": [f"http://{SITE}/a#top"]},
    {"urls": [f"http://user:pw@{SITE}/a"]},
    {"urls": [f"http://{SITE}/a\x01b"]},
    {"prefixes": [f"http://{SITE}/a b"]},
    {"urls": [f"http://{SITE}/x"] * 1001},
    {"tags": ["x" * 2049]},
    {"tags": ["two words"]},
    {"hosts": ["http://a.example"]},
    {"urls": [f"http://{SITE}/a/../b"]},
    {"urls": [f"http://{SITE}/a%zz"]},
    {"urls": "http://a.example/"},
    {"bogus": 1},
    {},
    [f"http://{SITE}/"],
]


async def post(s: aiohttp.ClientSession, url: str, raw: bytes, token: str) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with s.post(url, data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("kind", ["serve", "shield"])
async def test_nodes_and_the_coordinator_refuse_the_same_bodies_alike(
    upstream: Proc,
    node: NodeFactory,
    tmp_path: Path,
    coordinator_factory: Callable[..., Proc],
    kind: str,
) -> None:
    coordinator = coordinator_factory()
    proc = node(
        kind, "--origin", upstream.url, "--config", node_config(tmp_path, kind), name=NAMES[kind]
    )
    async with aiohttp.ClientSession() as s:
        for body in [*(json.dumps(b).encode() for b in BAD_BODIES), b"{nope", b""]:
            at_node = await post(s, proc.url + "/_edge/purge", body, ADMIN)
            at_coordinator = await post(s, coordinator.url + "/v1/purge", body, TOKEN)
            assert at_node[0] == 400 and at_node == at_coordinator, (
                body[:80],
                at_node,
                at_coordinator,
            )
        async with s.get(coordinator.url + "/v1/health") as resp:
            assert (await resp.json())["seq"] == 0  # nothing stored
        async with s.get(proc.url + "/_edge/health") as resp:
            assert (await resp.json())["purges"]["bans"] == 0  # nothing applied


# ---------------------------------------------------------------- one token check


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_the_bearer_scheme_is_case_insensitive_everywhere(
    upstream: Proc,
    node: NodeFactory,
    tmp_path: Path,
    coordinator_factory: Callable[..., Proc],
    scheme: str,
) -> None:
    coordinator = coordinator_factory()
    # No admin network: health and metrics ask for the token too.
    shield = node(
        "shield",
        "--origin",
        upstream.url,
        "--config",
        node_config(tmp_path, "shield", admin_networks=[]),
        name="shield-k",
    )
    edge = node(
        "serve",
        "--shield",
        shield.url,
        "--config",
        node_config(tmp_path, "edge", admin_networks=[]),
        name="edge-k",
    )
    async with aiohttp.ClientSession() as s:

        async def status(method: str, url: str, token: str, **kw: object) -> int:
            auth = {"Authorization": f"{scheme} {token}", **kw.pop("headers", {})}  # type: ignore[dict-item]
            async with s.request(method, url, headers=auth, **kw) as resp:  # type: ignore[arg-type]
                await resp.read()
                return resp.status

        for proc in (shield, edge):
            assert await status("PURGE", proc.url + "/x", ADMIN, headers={"Host": SITE}) == 200
            assert await status("POST", proc.url + "/_edge/purge", ADMIN, json={"all": True}) == 200
            assert await status("GET", proc.url + "/_edge/metrics", ADMIN) == 200
            async with s.get(
                proc.url + "/_edge/health", headers={"Authorization": f"{scheme} {ADMIN}"}
            ) as resp:
                assert "name" in await resp.json()  # the operator's view, not the bare one
            assert await status("GET", proc.url + "/_edge/metrics", "wrong") == 401
        base = coordinator.url
        assert await status("POST", base + "/v1/purge", TOKEN, json={"all": True}) == 202
        assert await status("GET", base + "/v1/purge/1", TOKEN) == 200
        assert await status("GET", base + "/v1/nodes", TOKEN) == 200
        assert await status("GET", base + "/v1/nodes", "wrong") == 401
        async with s.ws_connect(
            base + "/v1/subscribe?name=n1&role=edge",
            headers={"Authorization": f"{scheme} {NODE_TOKEN}"},
        ) as ws:
            message = await ws.receive_json(timeout=10)
            assert message["type"] == "purge" and message["seq"] == 1


async def test_a_logged_purge_the_node_refuses_is_applied_wider_and_the_log_goes_on(
    node: NodeFactory, upstream: Proc, tmp_path: Path, procs: list[Proc]
) -> None:
    """An event in the coordinator's log that this node's validation refuses (written by
    a newer coordinator, or under older rules) is applied as a ban on the hosts it names,
    and the purges after it still arrive: neither skipped nor retried forever."""
    db = tmp_path / "coordinator.db"
    coordinator = start_coordinator(procs, db, node_token=NODE_TOKEN)
    edge = node(
        "serve",
        "--origin",
        upstream.url,
        "--config",
        node_config(tmp_path, "edge"),
        "--coordinator",
        coordinator.url,
        name="edge-w",
    )
    other = "other.example"
    async with aiohttp.ClientSession() as s:

        async def entry(host: str, path: str) -> str:
            async with s.get(edge.url + path, headers={"Host": host}) as resp:
                await resp.read()
                assert resp.status == 200
                return own_entry(resp.headers.get("Cache-Status", ""), "edge-w")

        async def applied() -> int:
            async with s.get(edge.url + "/_edge/health") as resp:
                return int((await resp.json())["purges"]["applied"])

        for host in (SITE, other):
            for path in ("/w/a", "/w/b"):
                await entry(host, path)
                assert await entry(host, path) == "hit"

        coordinator.stop()
        with sqlite3.connect(db) as conn:
            conn.execute(
                "INSERT INTO purges (created, body) VALUES (?, ?)",
                (time.time(), json.dumps({"urls": [f"http://{SITE}/w/a\x01"]})),
            )
        coordinator = start_coordinator(procs, db, port=coordinator.port, node_token=NODE_TOKEN)
        code, out = await coordinator_purge(s, coordinator, {"urls": [f"http://{other}/w/b"]})
        assert code in (200, 202), out  # 202: accepted before the node reconnected
        deadline = time.monotonic() + 20
        while await applied() < 2:
            assert time.monotonic() < deadline, "the node stopped at the refused purge"
            await asyncio.sleep(0.1)
        seen = {(h, p): await entry(h, p) for h in (SITE, other) for p in ("/w/a", "/w/b")}
    assert seen == {
        (SITE, "/w/a"): "miss",  # the refused event, applied to its whole host
        (SITE, "/w/b"): "miss",
        (other, "/w/a"): "hit",  # another host: untouched
        (other, "/w/b"): "miss",  # the purge after it
    }
    assert "applied wider" in edge.output()


async def coordinator_purge(
    s: aiohttp.ClientSession, coordinator: Proc, body: dict
) -> tuple[int, dict]:
    async with s.post(
        coordinator.url + "/v1/purge", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        return resp.status, await resp.json()
