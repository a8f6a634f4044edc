"""`edge coordinator` as a real process: tokens, purge validation, fan-out to nodes (shields
first), replay, reset after compaction, a SIGKILL between purges, purge status with its
long-poll, the node registry. Nodes are played by WebSocket clients speaking the protocol:
they record what they receive and ack it (`FakeNode`, also used by test_purge_cli.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.cli import run_edge
from tests.support.coordinators import NODE_TOKEN, TOKEN, FakeNode, Http, start_coordinator
from tests.support.procs import REPO, Proc, edge_cmd, free_port

URL = "http://archive.example/books/a.txt"


async def api(
    http: Http,
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with http.request(method, url, data=data, headers=headers) as response:
        return response.status, await response.json(), response.headers


async def purge(http: Http, base: str, **body: Any) -> dict[str, Any]:
    status, answer, _ = await api(http, "POST", f"{base}/v1/purge", body or {"urls": [URL]})
    assert status == 202, answer
    return answer


async def latest_seq(http: Http, base: str) -> int:
    _, body, _ = await api(http, "GET", f"{base}/v1/health", token=None)
    return int(body["seq"])


@pytest.fixture
async def http() -> AsyncIterator[Http]:
    async with Http() as client:
        yield client


@pytest.fixture
async def nodes(http: Http) -> AsyncIterator[Callable[..., Any]]:
    """`await nodes(base, "edge-1", role="edge", ...)`: a connected FakeNode, closed at
    the end of the test."""
    made: list[FakeNode] = []

    async def factory(base: str, name: str, role: str = "edge", **kw: Any) -> FakeNode:
        node = FakeNode(http, base, name, role, **kw)
        made.append(node)
        return await node.connect()

    yield factory
    for node in made:
        await node.close()


@pytest.fixture
def coordinator(procs: list[Proc], tmp_path: Path) -> Proc:
    return start_coordinator(procs, tmp_path / "purges.db")


# ---------------------------------------------------------------- tokens and start


async def test_tokens(procs: list[Proc], tmp_path: Path, http: Http) -> None:
    base = start_coordinator(procs, tmp_path / "p.db", node_token=NODE_TOKEN).url
    _, health, _ = await api(http, "GET", f"{base}/v1/health", token=None)
    assert health == {"status": "ok", "seq": 0}
    for token, reason in [(None, "authorization required"), ("wrong", "invalid token")]:
        for method, path in [
            ("POST", "/v1/purge"),
            ("GET", "/v1/nodes"),
            ("GET", "/v1/purge/1"),
            ("DELETE", "/v1/nodes/edge-1"),
        ]:
            status, body, headers = await api(
                http, method, base + path, {"urls": [URL]}, token=token
            )
            assert status == 401 and reason in body["error"]
            assert headers["WWW-Authenticate"].startswith("Bearer")
    # Nodes cannot purge, and operators' token does not subscribe.
    status, body, _ = await api(http, "POST", f"{base}/v1/purge", {"all": True}, token=NODE_TOKEN)
    assert status == 401 and body["error"] == "invalid token"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await FakeNode(http, base, "edge-1", token=TOKEN).connect()
    assert refused.value.status == 401
    node = await FakeNode(http, base, "edge-1", token=NODE_TOKEN).connect()
    try:
        await purge(http, base)
        await node.wait_seq(1)
    finally:
        await node.close()
    assert await latest_seq(http, base) == 1


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ((), {}, "an operator token is required"),
        (("--keep", "0"), {"EDGE_TOKEN": "t"}, "--keep must be a whole number >= 1"),
        (("--listen", "nowhere"), {"EDGE_TOKEN": "t"}, "listen address must be HOST:PORT"),
        (("--heartbeat", "soon"), {"EDGE_TOKEN": "t"}, "--heartbeat must be a number"),
    ],
)
def test_usage_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    done = subprocess.run(
        edge_cmd("coordinator", "--db", str(tmp_path / "p.db"), *args),
        cwd=REPO,
        env={**base_env, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("edge: ") and message in done.stderr
    assert done.stderr.count("\n") == 1


async def test_a_database_in_use_is_refused(
    procs: list[Proc], tmp_path: Path, coordinator: Proc
) -> None:
    done = subprocess.run(
        edge_cmd(
            "coordinator",
            "--db",
            str(tmp_path / "purges.db"),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ),
        cwd=REPO,
        env={**os.environ, "EDGE_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stderr == f"edge: database {tmp_path / 'purges.db'} is in use by another process\n"


# ---------------------------------------------------------------- the purge request

BAD_PURGES: list[tuple[bytes, str]] = [
    (b"{not json", "body is not valid JSON"),
    (b"", "body is not valid JSON"),
    (b'["http://a.example/"]', "body must be a JSON object"),
    (b"{}", "nothing to purge"),
    (b'{"urls": [], "all": false}', "nothing to purge"),
    (b'{"soft": true}', "nothing to purge"),
    (b'{"url": ["http://a.example/"]}', "unknown key: 'url'"),
    (b'{"urls": "http://a.example/"}', "urls must be a list of strings"),
    (b'{"tags": [1]}', "tags must be a list of strings"),
    (b'{"all": "yes"}', "all must be true or false"),
    (b'{"all": true, "soft": 1}', "soft must be true or false"),
    (b'{"urls": ["/books/a.txt"]}', "urls[0] is not an absolute http(s) URL"),
    (b'{"urls": ["ftp://a.example/x"]}', "urls[0] is not an absolute http(s) URL"),
    (b'{"prefixes": ["http://a.example/", "books/"]}', "prefixes[1] is not an absolute"),
    (b'{"urls": ["http://a.example:99999/"]}', "urls[0] has a bad port"),
    (b'{"urls": ["http://a.example/a b"]}', "urls[0] contains whitespace"),
    (b'{"urls": ["http://a.example/#top"]}', "urls[0] has a fragment"),
    (b'{"hosts": ["a b.example"]}', "hosts[0] has a host that is not an ASCII name"),
    (b'{"hosts": ["http://a.example"]}', "hosts[0] has a bad port"),
    (b'{"tags": ["two words"]}', "tags[0] must be non-empty, without whitespace or commas"),
    (b'{"tags": ["a,b"]}', "tags[0] must be non-empty"),
    (b'{"tags": [""]}', "tags[0] must be non-empty"),
    (json.dumps({"tags": ["t"] * 600, "hosts": ["h"] * 401}).encode(), "too many selectors"),
    (json.dumps({"tags": ["x" * 2049]}).encode(), "tags[0] is longer than 2048 characters"),
]


async def test_malformed_purges_are_400_and_store_nothing(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    base = coordinator.url
    node = await nodes(base, "edge-1")
    for raw, reason in BAD_PURGES:
        status, body, _ = await api(http, "POST", f"{base}/v1/purge", raw=raw)
        assert status == 400, (raw[:60], body)
        assert reason in body["error"], (raw[:60], body)
    assert await latest_seq(http, base) == 0
    # The largest valid purge is accepted, and URLs are normalised lightly.
    answer = await purge(
        http,
        base,
        urls=["HTTP://Archive.Example:80/Books/A.txt?Q=1", "https://a.example:443"],
        prefixes=["http://archive.example:8080/books/"],
        hosts=["Archive.Example", "a.example:8080"],
        tags=["x" * 2048, *(f"t{i}" for i in range(994))],
    )
    assert answer["id"] == answer["seq"] == 1 and answer["nodes"] == ["edge-1"]
    await node.wait_seq(1)
    sent = node.received[0][1]["purge"]
    assert sent["urls"] == ["http://archive.example/Books/A.txt?Q=1", "https://a.example/"]
    assert sent["prefixes"] == ["http://archive.example:8080/books/"]
    assert sent["hosts"] == ["archive.example", "a.example:8080"]
    assert len(sent["tags"]) == 995 and sent["all"] is False and sent["soft"] is False
    _, stored, _ = await api(http, "GET", f"{base}/v1/purge/1")
    assert stored["purge"] == sent


# ---------------------------------------------------------------- fan-out


async def test_purge_reaches_every_subscribed_node(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    base = coordinator.url
    shield = await nodes(base, "shield-1", "shield")
    edges = [await nodes(base, f"edge-{i}") for i in (1, 2)]
    answer = await purge(http, base, tags=["books"], soft=True)
    assert answer["nodes"] == ["edge-1", "edge-2", "shield-1"]
    assert isinstance(answer["created"], float)
    for node in (shield, *edges):
        await node.wait_seq(1)
        (_, message), *_ = node.received
        assert message == {
            "type": "purge",
            "seq": 1,
            "created": answer["created"],
            "purge": {
                "urls": [],
                "prefixes": [],
                "tags": ["books"],
                "hosts": [],
                "all": False,
                "soft": True,
            },
        }


async def test_edges_get_an_event_only_after_every_shield_acked_it(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    base = coordinator.url
    shield = await nodes(base, "shield-1", "shield", ack_delay=0.3)
    edges = [await nodes(base, f"edge-{i}") for i in (1, 2)]
    for _ in range(3):
        await purge(http, base)
    for seq in (1, 2, 3):
        for edge in edges:
            received = await edge.wait_seq(seq)
            assert received >= shield.acked[seq]
    for edge in edges:
        assert edge.seqs() == [1, 2, 3]  # in order, each once
    # Shield acks are 0.3 s late, and edges waited for them.
    assert edges[0].received[0][0] - shield.received[0][0] >= 0.29


async def test_without_shields_edges_get_events_at_once(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    base = coordinator.url
    edge = await nodes(base, "edge-1", ack=False)
    started = time.monotonic()
    await purge(http, base)
    assert await edge.wait_seq(1) - started < 0.5


async def test_a_shield_leaving_releases_the_events_it_held(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    base = coordinator.url
    quick = await nodes(base, "shield-1", "shield")
    silent = await nodes(base, "shield-2", "shield", ack=False)
    edge = await nodes(base, "edge-1")
    await purge(http, base)
    await purge(http, base)
    await quick.wait_seq(2)
    await silent.wait_seq(2)
    await asyncio.sleep(0.3)
    assert edge.received == []  # shield-2 has not acked
    left = time.monotonic()
    await silent.close()
    assert await edge.wait_seq(2) - left < 0.5
    assert edge.seqs() == [1, 2]


# ---------------------------------------------------------------- replay, reset, restart


async def test_a_reconnecting_node_gets_exactly_what_it_missed(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    base = coordinator.url
    node = await nodes(base, "edge-1")
    for _ in range(2):
        await purge(http, base)
    await node.wait_seq(2)
    await node.close()
    for _ in range(3):
        await purge(http, base)
    again = await nodes(base, "edge-1", after=2)
    await again.wait_seq(5)
    await asyncio.sleep(0.1)
    assert again.seqs() == [3, 4, 5] and again.seqs("reset") == []
    # A node ahead of this log (which was lost and begun again) has applied none of it.
    ahead = await nodes(base, "edge-2", after=99, ack=False)
    await ahead.wait_until(lambda: bool(ahead.received))
    assert ahead.seqs("reset") == [5] and ahead.seqs() == []
    _, view, _ = await api(http, "GET", f"{base}/v1/purge/5")
    assert view["pending"] == ["edge-2"]


async def test_a_node_behind_the_compaction_point_is_reset(
    procs: list[Proc], tmp_path: Path, http: Http, nodes: Callable[..., Any]
) -> None:
    db = tmp_path / "p.db"
    proc = start_coordinator(procs, db, "--keep", "5")
    for _ in range(10):
        await purge(http, proc.url)
    for run in range(2):  # and the compaction point survives a restart
        behind = await nodes(proc.url, f"edge-behind-{run}", after=1)
        await behind.wait_seq(10)
        assert behind.seqs("reset") == [10] and behind.seqs() == []
        # after=5: the oldest kept event is 6, so nothing is missing.
        edge = await nodes(proc.url, f"edge-{run}", after=5)
        await edge.wait_seq(10)
        assert edge.seqs() == [6, 7, 8, 9, 10] and edge.seqs("reset") == []
        status, body, _ = await api(http, "GET", f"{proc.url}/v1/purge/5")
        assert status == 404 and "compacted" in body["error"]
        # The reset's ack confirms every kept event up to it; earlier runs' confirmations
        # survived the restart.
        await behind.wait_acked(10)
        _, kept, _ = await api(http, "GET", f"{proc.url}/v1/purge/6?wait=5&seen={2 * run + 1}")
        names = {c["node"] for c in kept["confirmations"]}
        assert names == {f"edge{kind}-{r}" for kind in ("", "-behind") for r in range(run + 1)}
        await behind.close()
        await edge.close()
        proc.stop()  # SIGTERM: the last batch of acks is written on the way out
        proc = start_coordinator(procs, db, "--keep", "5", port=proc.port)
    assert await latest_seq(http, proc.url) == 10
    assert (await purge(http, proc.url))["id"] == 11


async def test_sigkill_between_purges_loses_none(
    procs: list[Proc], tmp_path: Path, http: Http, nodes: Callable[..., Any]
) -> None:
    db = tmp_path / "p.db"
    proc = start_coordinator(procs, db)
    node = await nodes(
        proc.url, "edge-1", region="eu", address="http://127.0.0.1:9/", ack_delay=0.0
    )
    for _ in range(3):
        await purge(http, proc.url)
    await node.wait_acked(3)
    await asyncio.sleep(0.3)  # past the acks' batch window
    await node.close()
    ids = [(await purge(http, proc.url))["id"] for _ in range(2)]
    assert ids == [4, 5]
    proc.stop(signal.SIGKILL)
    proc = start_coordinator(procs, db, port=proc.port)
    assert await latest_seq(http, proc.url) == 5
    _, registry, _ = await api(http, "GET", f"{proc.url}/v1/nodes")
    (row,) = registry["nodes"]
    assert row["name"] == "edge-1" and row["region"] == "eu" and row["applied"] == 3
    assert row["connected"] is False and row["lag"] == 2
    _, before, _ = await api(http, "GET", f"{proc.url}/v1/purge/2")
    assert [c["node"] for c in before["confirmations"]] == ["edge-1"]
    again = await nodes(proc.url, "edge-1", after=3)
    await again.wait_seq(5)
    assert (await purge(http, proc.url))["id"] == 6
    await again.wait_seq(6)
    assert again.seqs() == [4, 5, 6]


# ---------------------------------------------------------------- status of a purge


async def test_purge_status_and_long_poll(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    base = coordinator.url
    quick = await nodes(base, "shield-1", "shield", region="eu")
    slow = await nodes(base, "edge-1", region="us", ack=False)
    answer = await purge(http, base)
    await quick.wait_acked(1)
    await slow.wait_seq(1)
    _, view, _ = await api(http, "GET", f"{base}/v1/purge/1")
    assert view["id"] == 1 and view["created"] == answer["created"]
    assert view["purge"]["urls"] == [URL]
    (confirmed,) = view["confirmations"]
    assert confirmed["node"] == "shield-1" and confirmed["role"] == "shield"
    assert confirmed["region"] == "eu" and 0 <= confirmed["ms"] < 1000
    assert view["pending"] == ["edge-1"] and view["complete"] is False

    # Held until a new confirmation arrives, then answered at once.
    started = time.monotonic()
    poll = asyncio.create_task(api(http, "GET", f"{base}/v1/purge/1?wait=10&seen=1"))
    await asyncio.sleep(0.3)
    assert not poll.done()
    await slow.send_ack(1)
    _, view, _ = await poll
    assert 0.3 <= time.monotonic() - started < 1.5
    assert [c["node"] for c in view["confirmations"]] == ["shield-1", "edge-1"]
    assert view["pending"] == [] and view["complete"] is True

    # Complete: no wait at all; nothing new: held for the whole wait.
    started = time.monotonic()
    await api(http, "GET", f"{base}/v1/purge/1?wait=10&seen=2")
    assert time.monotonic() - started < 0.5
    await purge(http, base)
    await slow.wait_seq(2)
    started = time.monotonic()
    _, view, _ = await api(http, "GET", f"{base}/v1/purge/2?wait=0.5&seen=1")
    assert 0.5 <= time.monotonic() - started < 1.5 and view["pending"] == ["edge-1"]

    for path, status in [
        ("/v1/purge/x", 400),
        ("/v1/purge/-1", 400),
        ("/v1/purge/99", 404),
        ("/v1/purge/1?wait=31", 400),
        ("/v1/purge/1?wait=soon", 400),
        ("/v1/purge/1?seen=-1", 400),
    ]:
        got, body, _ = await api(http, "GET", base + path)
        assert got == status and body["error"], path


# ---------------------------------------------------------------- the node registry


async def test_nodes_lag_and_health(
    procs: list[Proc], tmp_path: Path, http: Http, nodes: Callable[..., Any]
) -> None:
    base = start_coordinator(procs, tmp_path / "p.db", "--heartbeat", "0.5").url
    lively = await nodes(base, "shield-1", "shield", region="eu", address="http://10.0.0.1:9000")
    quiet = await nodes(base, "edge-1", region="us", ack=False)
    gone = await nodes(base, "edge-2")
    for _ in range(3):
        await purge(http, base)
    await lively.wait_acked(3)
    await gone.wait_acked(3)
    await gone.close()
    await quiet.wait_seq(3)
    for _ in range(4):  # 2 s: past 3 heartbeat intervals for the quiet one
        await asyncio.sleep(0.5)
        await lively.heartbeat()
    _, body, _ = await api(http, "GET", f"{base}/v1/nodes")
    assert body["seq"] == 3
    rows = {row["name"]: row for row in body["nodes"]}
    assert [row["name"] for row in body["nodes"]] == ["shield-1", "edge-1", "edge-2"]
    assert rows["shield-1"] == {
        "name": "shield-1",
        "role": "shield",
        "region": "eu",
        "address": "http://10.0.0.1:9000",
        "connected": True,
        "healthy": True,
        "last_seen": rows["shield-1"]["last_seen"],
        "applied": 3,
        "lag": 0,
    }
    assert time.time() - rows["shield-1"]["last_seen"] < 1
    assert rows["edge-1"]["connected"] and not rows["edge-1"]["healthy"]  # stale
    assert rows["edge-1"]["applied"] == 0 and rows["edge-1"]["lag"] == 3
    assert not rows["edge-2"]["connected"] and not rows["edge-2"]["healthy"]
    assert rows["edge-2"]["lag"] == 0


async def test_a_node_that_stops_answering_pings_is_dropped(
    procs: list[Proc], tmp_path: Path, http: Http, nodes: Callable[..., Any]
) -> None:
    base = start_coordinator(procs, tmp_path / "p.db", "--heartbeat", "0.3").url
    shield = await nodes(base, "shield-1", "shield", ack=False, autoping=False)
    edge = await nodes(base, "edge-1")
    await purge(http, base)
    await shield.wait_seq(1)
    # The hung shield held the edge back until the coordinator's pings went unanswered.
    received = await edge.wait_seq(1, timeout=3)
    assert received - shield.received[0][0] >= 0.3
    assert shield._reader is not None
    await asyncio.wait_for(shield._reader, 3)
    assert shield.closed
    _, body, _ = await api(http, "GET", f"{base}/v1/nodes")
    assert [(n["name"], n["connected"]) for n in body["nodes"]] == [
        ("shield-1", False),
        ("edge-1", True),
    ]


async def test_a_second_live_node_with_the_same_name_is_refused(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    """One name, one node: another process under a connected name is told why and
    closed; the first keeps its connection and its purges."""
    base = coordinator.url
    first = await nodes(base, "edge-1", region="eu", address="http://10.0.0.1:8080")
    second = await nodes(base, "edge-1", region="us")
    assert second._reader is not None
    await asyncio.wait_for(second._reader, 5)
    assert second.closed and second.ws is not None and second.ws.close_code == 4409
    await purge(http, base)
    await first.wait_seq(1)
    assert not first.closed and second.received == []
    _, body, _ = await api(http, "GET", f"{base}/v1/nodes")
    (row,) = body["nodes"]
    assert row["connected"] and row["region"] == "eu" and row["applied"] == 1


async def test_a_reconnect_of_the_same_process_replaces_its_older_connection(
    coordinator: Proc, http: Http, nodes: Callable[..., Any]
) -> None:
    base = coordinator.url
    first = await nodes(base, "edge-1", region="eu", instance="p1")
    second = await nodes(base, "edge-1", region="us", instance="p1")
    assert first._reader is not None
    await asyncio.wait_for(first._reader, 5)
    assert first.closed and first.ws is not None and first.ws.close_code == 4000
    await purge(http, base)
    await second.wait_seq(1)
    assert first.received == []
    _, body, _ = await api(http, "GET", f"{base}/v1/nodes")
    (row,) = body["nodes"]
    assert row["connected"] and row["region"] == "us" and row["applied"] == 1


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("role=edge", "name is required"),
        ("name=a%20b&role=edge", "name is required"),
        ("name=e1&role=origin", "role must be edge or shield"),
        ("name=e1&role=edge&after=-1", "after must be a whole number"),
        ("name=e1&role=edge&address=ftp://x", "address must be an http(s) URL"),
    ],
)
async def test_bad_subscriptions_are_400(
    coordinator: Proc, http: Http, query: str, reason: str
) -> None:
    status, body, _ = await api(http, "GET", f"{coordinator.url}/v1/subscribe?{query}")
    assert status == 400 and reason in body["error"]


async def test_a_retired_node_is_forgotten_and_purges_stop_waiting_for_it(
    procs: list[Proc], tmp_path: Path, http: Http, nodes: Callable[..., Any]
) -> None:
    db = tmp_path / "f.db"
    proc = start_coordinator(procs, db)
    base = proc.url
    old = await nodes(base, "edge-old")
    await nodes(base, "edge-live")
    status, body, _ = await api(http, "DELETE", f"{base}/v1/nodes/edge-old")
    assert status == 409 and "connected" in body["error"]
    await old.close()

    async def listed() -> dict[str, bool]:
        _, answer, _ = await api(http, "GET", f"{base}/v1/nodes")
        return {n["name"]: n["connected"] for n in answer["nodes"]}

    deadline = time.monotonic() + 10
    while (await listed()).get("edge-old") is not False:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert (await purge(http, base))["not_connected"] == ["edge-old"]

    env = {"EDGE_COORDINATOR": base, "EDGE_TOKEN": TOKEN}
    code, out, err = await run_edge(tmp_path, "forget", "edge-old", env=env)
    assert (code, out.strip(), err) == (0, "forgot edge-old", "")
    assert (await purge(http, base))["not_connected"] == []
    assert await listed() == {"edge-live": True}

    code, out, err = await run_edge(tmp_path, "forget", "edge-old", env=env)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "404" in err, err
    status, _, _ = await api(http, "DELETE", f"{base}/v1/nodes/edge-live", token=None)
    assert status == 401
    # Forgotten for good: not back after a restart.
    proc.stop()
    proc = start_coordinator(procs, db, port=proc.port)
    assert "edge-old" not in await listed()
