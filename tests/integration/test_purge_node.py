"""Purging one node directly (PURGE and POST /_edge/purge with its admin token): each
kind of purge, hard and soft, seen through real requests; tags kept from clients; the
sweeper freeing space; bans surviving a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.procs import Proc

TOKEN = "node-admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SITE = "archive.example"


async def fetch(
    s: aiohttp.ClientSession, edge: Proc, path: str
) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    async with s.get(edge.url + path, headers={"Host": SITE}) as resp:
        await resp.read()
        return resp.status, resp.headers.get("Cache-Status", ""), resp.headers


async def purge(
    s: aiohttp.ClientSession, edge: Proc, body: dict[str, object], token: str = TOKEN
) -> tuple[int, dict]:
    async with s.post(
        edge.url + "/_edge/purge", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        return resp.status, await resp.json()


def admin_env(tmp_path: Path) -> str:
    cfg = tmp_path / "admin.toml"
    cfg.write_text(f'admin_token = "{TOKEN}"\n')
    return str(cfg)


OBJECTS = {
    "/books/a.txt?tags=books+shelf-1": "books",
    "/books/b.txt?ctags=books,shelf-2": "books",
    "/scans/c.png?tags=scans": "scans",
    "/audio/d.ogg": "audio",
}


async def warm(s: aiohttp.ClientSession, edge: Proc) -> None:
    for path in OBJECTS:
        status, cs, _ = await fetch(s, edge, path)
        assert status == 200
        status, cs, _ = await fetch(s, edge, path)
        assert "; hit" in cs, (path, cs)


async def hits(s: aiohttp.ClientSession, edge: Proc) -> dict[str, str]:
    """For each object: hit, miss (purged hard) or stale (purged soft, revalidated)."""
    out = {}
    for path in OBJECTS:
        _, cs, _ = await fetch(s, edge, path)
        out[path] = "hit" if "; hit" in cs else ("stale" if "fwd=stale" in cs else "miss")
    return out


@pytest.mark.parametrize(
    ("body", "purged"),
    [
        (
            {"urls": [f"http://{SITE}/books/a.txt?tags=books+shelf-1"]},
            {"/books/a.txt?tags=books+shelf-1"},
        ),
        (
            {"prefixes": [f"http://{SITE}/books/"]},
            {"/books/a.txt?tags=books+shelf-1", "/books/b.txt?ctags=books,shelf-2"},
        ),
        (
            {"tags": ["books"]},
            {"/books/a.txt?tags=books+shelf-1", "/books/b.txt?ctags=books,shelf-2"},
        ),
        (
            {"tags": ["shelf-2", "scans"]},
            {"/books/b.txt?ctags=books,shelf-2", "/scans/c.png?tags=scans"},
        ),
        ({"hosts": [SITE]}, set(OBJECTS)),
        ({"hosts": ["other.example"]}, set()),
        ({"all": True}, set(OBJECTS)),
    ],
)
@pytest.mark.parametrize("soft", [False, True])
async def test_each_kind_of_purge_on_one_node(
    upstream: Proc, node: NodeFactory, tmp_path: Path, body: dict, purged: set[str], soft: bool
) -> None:
    edge = node("serve", "--origin", upstream.url, "--config", admin_env(tmp_path), name="edge-p")
    async with aiohttp.ClientSession() as s:
        await warm(s, edge)
        status, answer = await purge(s, edge, {**body, "soft": soft})
        assert status == 200, answer
        seen = await hits(s, edge)
        expected = {p: (("stale" if soft else "miss") if p in purged else "hit") for p in OBJECTS}
        assert seen == expected
        # Fetched again (or revalidated): hits from now on.
        assert set((await hits(s, edge)).values()) == {"hit"}


async def test_purge_method_on_a_url_and_its_token(
    upstream: Proc, node: NodeFactory, tmp_path: Path
) -> None:
    edge = node("serve", "--origin", upstream.url, "--config", admin_env(tmp_path), name="edge-p")
    open_edge = node("serve", "--origin", upstream.url, name="edge-open")
    async with aiohttp.ClientSession() as s:
        await warm(s, edge)
        path = "/audio/d.ogg"
        for headers, code in [({}, 401), ({"Authorization": "Bearer wrong"}, 401)]:
            async with s.request("PURGE", edge.url + path, headers={"Host": SITE, **headers}) as r:
                assert r.status == code
                assert "error" in await r.json()
        assert "; hit" in (await fetch(s, edge, path))[1]  # nothing purged by those
        async with s.request("PURGE", edge.url + path, headers={"Host": SITE, **AUTH}) as r:
            assert r.status == 200
            assert (await r.json())["purged"] == f"http://{SITE}{path}"
        # Removed at lookup (detail=purged) or already by the sweeper: a miss either way.
        assert "fwd=uri-miss" in (await fetch(s, edge, path))[1]
        async with s.request(
            "PURGE",
            edge.url + "/books/a.txt?tags=books+shelf-1",
            headers={"Host": SITE, **AUTH, "Edge-Soft-Purge": "1"},
        ) as r:
            assert (await r.json())["soft"] is True
        assert "fwd=stale" in (await fetch(s, edge, "/books/a.txt?tags=books+shelf-1"))[1]
        # A node without an admin token cannot be purged directly, and PURGE never
        # reaches the origin.
        async with s.request("PURGE", open_edge.url + path, headers=AUTH) as r:
            assert r.status == 403
    assert await_count(upstream, path) == 2  # the first fetch and the one after the purge


def await_count(upstream: Proc, path: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{upstream.url}/_count{path}", timeout=5) as resp:
        return int(json.load(resp)["count"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "nothing to purge"),
        ({"urls": "http://x/"}, "urls must be a list"),
        ({"urls": ["/relative"]}, "not an absolute http(s) URL"),
        ({"tags": [""]}, "tags[0] must be non-empty"),
        ({"all": "yes"}, "all must be true or false"),
        ({"bogus": 1}, "unknown key: 'bogus'"),
    ],
)
async def test_bad_purges_are_400_with_the_reason(
    upstream: Proc, node: NodeFactory, tmp_path: Path, body: dict, reason: str
) -> None:
    edge = node("serve", "--origin", upstream.url, "--config", admin_env(tmp_path), name="edge-p")
    async with aiohttp.ClientSession() as s:
        status, answer = await purge(s, edge, body)
        assert status == 400 and reason in answer["error"]
        async with s.post(edge.url + "/_edge/purge", data=b"{nope", headers=AUTH) as r:
            assert r.status == 400
            assert (await r.json())["error"].startswith("body is not valid JSON: ")


async def test_edges_keep_tags_from_clients_and_shields_pass_them_on(
    upstream: Proc, node: NodeFactory
) -> None:
    shield = node("shield", "--origin", upstream.url, name="shield-t")
    edge = node("serve", "--shield", shield.url, name="edge-t")
    async with aiohttp.ClientSession() as s:
        async with s.get(shield.url + "/t?tags=a+b&ctags=c") as r:
            assert r.headers["Surrogate-Key"] == "a b" and r.headers["Cache-Tag"] == "c"
        async with s.get(edge.url + "/t?tags=a+b&ctags=c") as r:
            assert "Surrogate-Key" not in r.headers and "Cache-Tag" not in r.headers


async def test_sweeper_frees_space_and_bans_survive_a_restart(
    upstream: Proc, node: NodeFactory, tmp_path: Path
) -> None:
    cfg = admin_env(tmp_path)
    cache = tmp_path / "cache-sweep"
    edge = node(
        "serve", "--origin", upstream.url, "--config", cfg, "--cache-dir", str(cache), name="edge-s"
    )
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            await fetch(s, edge, f"/bulk/{i}?size=65536")

        async def objects() -> int:
            async with s.get(edge.url + "/_edge/health") as r:
                return int((await r.json())["store"]["objects"])

        assert await objects() >= 20
        await purge(s, edge, {"prefixes": [f"http://{SITE}/bulk/"]})
        for _ in range(100):  # the sweeper runs soon after a purge
            if await objects() == 0:
                break
            await asyncio.sleep(0.1)
        assert await objects() == 0
        # A soft purge is recorded durably: after a restart the entry is still stale.
        await fetch(s, edge, "/keep?size=100")
        await purge(s, edge, {"urls": [f"http://{SITE}/keep?size=100"], "soft": True})
    edge.stop()
    edge = node(
        "serve", "--origin", upstream.url, "--config", cfg, "--cache-dir", str(cache), name="edge-s"
    )
    async with aiohttp.ClientSession() as s:
        assert "fwd=stale" in (await fetch(s, edge, "/keep?size=100"))[1]
    state = json.loads((cache / "purge-state.json").read_text())
    assert "applied" in state and isinstance(state["bans"], list)
