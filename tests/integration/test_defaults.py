"""The defaults a new user meets, against real processes: trust and admin rights narrow
(127.0.0.1 and ::1 are admins, nobody is a trusted proxy), node names that differ by role
and listen address (and a coordinator that refuses a second live node with a name it
has), the largest object a fraction of the cache, a stale copy served while the origin is
down, and every --help naming each default."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import typer

from cli.main import app
from tests.integration.conftest import EdgeFactory, NodeFactory
from tests.support.procs import REPO, Proc, edge_cmd, free_port, start

NO_STORE = "cc=no-store"
FORGED = "203.0.113.9"
NODE_TOKEN = "node-secret"


async def fetch(
    url: str, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One GET from a chosen loopback source address (a client elsewhere on the net)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as s,
        s.get(url, headers=headers or {}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def forwarded_for(body: bytes) -> list[str]:
    """The X-Forwarded-For values the origin received (its echo=1 answer)."""
    return [v for k, v in json.loads(body) if k.lower() == "x-forwarded-for"]


def count(upstream: Proc, path: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{upstream.url}/_count{path}", timeout=5) as resp:
        return int(json.load(resp)["count"])


def unnamed(procs: list[Proc], tmp_path: Path, kind: str, *args: str) -> Proc:
    """`edge serve` / `edge shield` started as a new user would: no --name."""
    port = free_port()
    cmd = edge_cmd(
        kind, "--listen", f"127.0.0.1:{port}", "--cache-dir", str(tmp_path / f"c{port}"), *args
    )
    proc = start(cmd, port, tmp_path / f"{kind}-{port}.log", health_path="/_edge/health")
    procs.append(proc)
    return proc


# -- an origin that is down ------------------------------------------------------------------


async def test_a_stale_copy_stands_in_for_an_origin_that_is_down(
    upstream: Proc, edge: EdgeFactory
) -> None:
    """RFC 9111 Section 4.2.4: a cache that cannot reach its upstream may serve stale, and
    by default does (stale_if_error_grace: a day), unless the response forbade it."""
    node = edge(upstream.url)
    paths = {"plain": "/down/a?cc=max-age=1", "forbidden": "/down/b?cc=max-age=1,must-revalidate"}
    for path in paths.values():
        status, _, _ = await fetch(node.url + path)
        assert status == 200
    upstream.stop()
    await asyncio.sleep(1.5)  # both are stale now
    status, headers, body = await fetch(node.url + paths["plain"])
    assert status == 200 and body and "fwd=stale" in headers["Cache-Status"], headers
    status, headers, _ = await fetch(node.url + paths["forbidden"])
    assert status in (502, 504), (status, headers)


# -- trust and admin rights are narrow -----------------------------------------------------


async def test_a_loopback_peer_other_than_127_0_0_1_is_neither_proxy_nor_admin(
    upstream: Proc, node: NodeFactory
) -> None:
    edge = node("serve", "--origin", upstream.url, name="e1")
    forged = {"X-Forwarded-For": FORGED}
    status, _, body = await fetch(
        f"{edge.url}/who?{NO_STORE}&echo=1", source="127.0.0.2", headers=forged
    )
    assert status == 200 and forwarded_for(body) == ["127.0.0.2"]
    status, _, body = await fetch(f"{edge.url}/_edge/health", source="127.0.0.2")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    status, _, _ = await fetch(f"{edge.url}/_edge/metrics", source="127.0.0.2")
    assert status == 401
    # The machine's own address keeps what operators use on the node itself.
    status, _, body = await fetch(f"{edge.url}/_edge/health")
    assert status == 200 and json.loads(body)["name"] == "e1"
    status, _, _ = await fetch(f"{edge.url}/_edge/metrics")
    assert status == 200


async def test_a_shield_believes_only_the_edges_it_is_told_to_trust(
    upstream: Proc, node: NodeFactory
) -> None:
    # Loopback connections come from 127.0.0.1: the address the edge reaches the shield from.
    shield = node("shield", "--origin", upstream.url, "--trusted-proxy", "127.0.0.1", name="s1")
    edge = node("serve", "--shield", shield.url, name="e1")
    forged = {"X-Forwarded-For": FORGED}
    url = f"{edge.url}/who?{NO_STORE}&echo=1"
    status, _, body = await fetch(url, source="127.0.0.2", headers=forged)
    # The edge drops the client's forgery; the shield keeps what its edge says.
    assert status == 200 and forwarded_for(body) == ["127.0.0.2, 127.0.0.1"]
    # Straight to the shield from elsewhere: not one of its edges, not believed.
    status, _, body = await fetch(
        f"{shield.url}/who?{NO_STORE}&echo=1", source="127.0.0.2", headers=forged
    )
    assert status == 200 and forwarded_for(body) == ["127.0.0.2"]
    status, _, body = await fetch(f"{shield.url}/_edge/health", source="127.0.0.2")
    assert json.loads(body) == {"status": "ok"}


# -- names that cannot collide --------------------------------------------------------------


async def test_an_unnamed_node_is_named_by_role_host_and_listen_address(
    upstream: Proc, procs: list[Proc], tmp_path: Path
) -> None:
    edge = unnamed(procs, tmp_path, "serve", "--origin", upstream.url)
    status, headers, _ = await fetch(f"{edge.url}/n")
    expected = f"edge-{socket.gethostname()}-127.0.0.1-{edge.port}"
    assert status == 200 and headers["Cache-Status"].startswith(f"{expected}; ")


async def test_an_unnamed_edge_in_front_of_an_unnamed_shield_is_not_a_loop(
    upstream: Proc, procs: list[Proc], tmp_path: Path
) -> None:
    shield = unnamed(procs, tmp_path, "shield", "--origin", upstream.url)
    edge = unnamed(procs, tmp_path, "serve", "--shield", shield.url)
    status, headers, _ = await fetch(f"{edge.url}/tiers")
    host = socket.gethostname()
    assert status == 200, headers
    names = [e.split(";")[0].strip() for e in headers["Cache-Status"].split(",")]
    assert names == [f"shield-{host}-127.0.0.1-{shield.port}", f"edge-{host}-127.0.0.1-{edge.port}"]


def start_coordinator(procs: list[Proc], tmp_path: Path) -> Proc:
    port = free_port()
    cmd = edge_cmd("coordinator", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "c.db"))
    env = {"EDGE_TOKEN": "operator-secret", "EDGE_NODE_TOKEN": NODE_TOKEN}
    proc = start(cmd, port, tmp_path / "coordinator.log", health_path="/v1/health", env=env)
    procs.append(proc)
    return proc


async def connected(coordinator: Proc) -> list[tuple[str, str, bool]]:
    headers = {"Authorization": "Bearer operator-secret"}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{coordinator.url}/v1/nodes", headers=headers) as resp,
    ):
        body = await resp.json()
    return [(n["name"], n["role"], n["connected"]) for n in body["nodes"]]


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_second_live_node_with_a_connected_name_is_refused_and_exits(
    upstream: Proc, node: NodeFactory, procs: list[Proc], tmp_path: Path, workers: str
) -> None:
    coordinator = start_coordinator(procs, tmp_path)
    env = {"EDGE_NODE_TOKEN": NODE_TOKEN}
    subscribe = ("--coordinator", coordinator.url)
    shield = node("shield", "--origin", upstream.url, *subscribe, name="n1", env=env)
    assert await connected(coordinator) == [("n1", "shield", True)]
    # An edge given the shield's name by mistake: one line, status 2, the shield stays.
    port = free_port()
    log = tmp_path / "second.log"
    with log.open("wb") as out:
        second = subprocess.Popen(
            edge_cmd(
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--shield",
                shield.url,
                "--cache-dir",
                str(tmp_path / "second"),
                "--name",
                "n1",
                "--workers",
                workers,
                *subscribe,
            ),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    try:
        code = second.wait(timeout=30)
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait()
        raise AssertionError(f"the second n1 kept running:\n{log.read_text()}") from None
    text = log.read_text()
    assert code == 2, text
    refusals = [line for line in text.splitlines() if "refused" in line]
    assert len(refusals) == 1 and "n1 is already connected" in refusals[0], text
    assert "Traceback" not in text
    assert await connected(coordinator) == [("n1", "shield", True)]
    assert shield.popen.poll() is None


# -- sizes that fit ----------------------------------------------------------------------------


async def test_the_default_largest_object_is_an_eighth_of_the_cache(
    upstream: Proc, node: NodeFactory
) -> None:
    edge = node("serve", "--origin", upstream.url, "--cache-size", "1M", name="e1")
    for _ in range(2):
        status, headers, body = await fetch(f"{edge.url}/big?size=200000")
        assert status == 200 and len(body) == 200000
        assert "hit" not in headers["Cache-Status"].split("; ")
    assert count(upstream, "/big") == 2
    for _ in range(2):
        status, headers, _ = await fetch(f"{edge.url}/small?size=100000")
    assert headers["Cache-Status"].startswith("e1; hit")


async def test_through_a_shield_each_tier_keeps_its_own_largest_object(
    upstream: Proc, node: NodeFactory
) -> None:
    shield = node("shield", "--origin", upstream.url, "--cache-size", "1M", name="s1")
    edge = node("serve", "--shield", shield.url, "--cache-size", "1M", name="e1")
    for _ in range(2):
        status, headers, body = await fetch(f"{edge.url}/big?size=200000")
        assert status == 200 and len(body) == 200000
        assert "stored" not in headers["Cache-Status"]
    assert count(upstream, "/big") == 2


@pytest.mark.parametrize("kind", ["serve", "shield"])
def test_a_largest_object_over_the_cache_size_is_a_one_line_error(
    kind: str, tmp_path: Path
) -> None:
    cmd = edge_cmd(
        kind,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--origin",
        "http://127.0.0.1:9",
        "--cache-dir",
        str(tmp_path / "c"),
        "--cache-size",
        "1M",
        "--max-object-size",
        "2M",
    )
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("started with an object larger than its cache") from None
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err
    assert "max_object_size" in lines[0] and "cache_size" in lines[0]


# Every subcommand the `edge` app has, so that a new one is held to this too.
SUBCOMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_help_shows_each_options_default(command: str) -> None:
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run(
        [sys.executable, "-m", "cli.main", command, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if re.match(r"^\W*--[a-z]", line)]
    assert rows, out.stdout
    missing = [
        row.split()[1]
        for row in rows
        if "--help" not in row and "[default: " not in row and "required" not in row
    ]
    assert not missing, f"edge {command} --help: no default shown for {', '.join(missing)}"
