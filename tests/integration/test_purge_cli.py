"""`edge purge` and `edge status` as an operator runs them: real processes against a real
`edge coordinator`, with nodes played by WebSocket clients that ack
(tests/integration/test_coordinator.py's FakeNode): the wait for every node, a node that
never confirms, --no-wait, where the coordinator and token come from, several
coordinators tried in turn, one-line errors, and the node table."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_edge as edge
from tests.support.coordinators import TOKEN, FakeNode, Http, start_coordinator
from tests.support.procs import Proc, free_port

URL = "http://archive.example/books/a.txt"


def one_line_error(err: str, text: str) -> None:
    assert err.startswith("edge: ") and err.count("\n") == 1, err
    assert text in err and "Traceback" not in err, err


@pytest.fixture
def coordinator(procs: list[Proc], tmp_path: Path) -> Proc:
    return start_coordinator(procs, tmp_path / "purges.db")


@pytest.fixture
async def nodes(coordinator: Proc) -> AsyncIterator[Callable[..., Any]]:
    """`await nodes("edge-1", role="edge", ...)`: a connected FakeNode, closed at the end."""
    made: list[FakeNode] = []
    async with Http() as http:

        async def factory(name: str, role: str = "edge", **kw: Any) -> FakeNode:
            node = FakeNode(http, coordinator.url, name, role, **kw)
            made.append(node)
            return await node.connect()

        yield factory
        for node in made:
            await node.close()


def flags(coordinator: Proc) -> list[str]:
    return ["--coordinator", coordinator.url, "--token", TOKEN]


async def test_purge_waits_until_every_node_confirms(
    tmp_path: Path, coordinator: Proc, nodes: Callable[..., Any]
) -> None:
    shield = await nodes("shield-1", "shield", region="eu", ack_delay=0.1)
    edges = [await nodes("edge-1", region="eu"), await nodes("edge-2", region="us")]
    code, out, err = await edge(
        tmp_path,
        "purge",
        URL,
        "--prefix",
        "http://archive.example/audio/",
        *flags(coordinator),
    )
    assert code == 0, err
    lines = out.splitlines()
    # Not a terminal: a line per confirmation as it arrives (the shield's first), then
    # the table.
    assert lines[0].startswith("confirmed shield-1 (shield, eu) after ")
    assert {line.split()[1] for line in lines[1:3]} == {"edge-1", "edge-2"}
    assert lines[3] == "purge 1: 3/3 nodes confirmed"
    assert lines[4].split() == ["NODE", "ROLE", "REGION", "STATUS"]
    rows = {line.split()[0]: line.split() for line in lines[5:8]}
    assert rows["shield-1"][:5] == ["shield-1", "shield", "eu", "confirmed", "after"]
    assert rows["edge-2"][:3] == ["edge-2", "edge", "us"]
    assert float(rows["shield-1"][5]) >= 100  # its ack was 0.1 s late
    assert lines[8].startswith("purge 1: confirmed by all 3 nodes in ")
    for node in (shield, *edges):
        (_, message), *_ = node.received
        assert message["purge"]["urls"] == [URL]
        assert message["purge"]["prefixes"] == ["http://archive.example/audio/"]


async def test_purge_names_the_node_that_did_not_confirm(
    tmp_path: Path, coordinator: Proc, nodes: Callable[..., Any]
) -> None:
    await nodes("edge-1")
    silent = await nodes("edge-2", ack=False)
    started = time.monotonic()
    code, out, err = await edge(tmp_path, "purge", URL, "--timeout", "1", *flags(coordinator))
    assert code == 1
    assert 1 <= time.monotonic() - started < 5
    assert err == "edge: purge 1 not confirmed within 1s by: edge-2\n"
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert rows["edge-2"].endswith("waiting") and "confirmed after" in rows["edge-1"]
    assert silent.seqs() == [1]  # it was sent the purge, and never said so


async def test_no_wait_prints_the_id(
    tmp_path: Path, coordinator: Proc, nodes: Callable[..., Any]
) -> None:
    node = await nodes("edge-1", ack=False)
    for expected in ("1", "2"):
        code, out, err = await edge(
            tmp_path, "purge", "--tag", "books", "--no-wait", *flags(coordinator)
        )
        assert (code, out, err) == (0, f"{expected}\n", "")
    await node.wait_seq(2)
    assert node.received[1][1]["purge"]["tags"] == ["books"]


async def test_coordinator_and_token_from_flags_env_and_config(
    tmp_path: Path, coordinator: Proc, nodes: Callable[..., Any]
) -> None:
    good = {"EDGE_COORDINATOR": coordinator.url, "EDGE_TOKEN": TOKEN}
    config = tmp_path / "cli.toml"
    config.write_text(f'coordinator = "{coordinator.url}"\ntoken = "{TOKEN}"\n')
    default = tmp_path / ".config" / "edge" / "cli.toml"
    default.parent.mkdir(parents=True)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text(f'coordinator = "{coordinator.url}"\ntoken = "wrong"\n')
    home = tmp_path / "elsewhere"
    home.mkdir()
    cases: list[tuple[Path, list[str], dict[str, str]]] = [
        (home, [], good),  # the environment
        (home, ["--config", str(config)], {}),  # a named file
        (tmp_path, [], {}),  # ~/.config/edge/cli.toml
        (home, ["--token", TOKEN], {**good, "EDGE_TOKEN": "wrong"}),  # flags win
        (home, ["--config", str(wrong)], {"EDGE_TOKEN": TOKEN}),  # env beats the file
    ]
    default.write_text(config.read_text())
    for seq, (where, args, env) in enumerate(cases, start=1):
        code, out, err = await edge(where, "purge", URL, "--no-wait", *args, env=env)
        assert (code, out, err) == (0, f"{seq}\n", ""), (args, env)
    default.write_text('coordinator = "http://127.0.0.1:1"\nport = 8\n')
    code, _, err = await edge(tmp_path, "purge", URL)
    assert code == 2
    one_line_error(err, f"unknown setting in {default}: port")
    code, _, err = await edge(home, "purge", URL, "--config", str(tmp_path / "none.toml"))
    assert code == 2
    one_line_error(err, "config file not found")


async def test_errors_are_one_line(tmp_path: Path, coordinator: Proc) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    at = ["--coordinator", coordinator.url]
    cases: list[tuple[list[str], int, str]] = [
        (["purge", URL, "--token", TOKEN], 2, "no coordinator: give --coordinator URL"),
        (["purge", URL, *at], 2, "no token: give --token, EDGE_TOKEN"),
        (["purge", URL, *at, "--token", "wrong"], 1, "refused POST /v1/purge (401): invalid token"),
        (
            ["purge", "/books/a.txt", *at, "--token", TOKEN],
            2,
            "'/books/a.txt' is a path, not a URL",
        ),
        (["purge", "--prefix", "books/", *at, "--token", TOKEN], 2, "--prefix takes absolute"),
        (["purge", *at, "--token", TOKEN], 2, "nothing to purge"),
        (["purge", URL, *at, "--token", TOKEN, "--timeout", "soon"], 2, "--timeout must be"),
        (
            ["purge", "--tag", "two words", *at, "--token", TOKEN],
            1,
            "(400): tags[0] must be non-empty, without whitespace or commas",
        ),
        (
            ["purge", URL, "--coordinator", unreachable, "--token", TOKEN],
            1,
            f"cannot reach the coordinator at {unreachable}: Connection refused",
        ),
        (["purge", URL, "--coordinator", "archive", "--token", TOKEN], 2, "must be an http(s) URL"),
        (["status", *at, "--token", "wrong"], 1, "(401): invalid token"),
        (["status", "--coordinator", unreachable, "--token", TOKEN], 1, "cannot reach"),
    ]
    results = await asyncio.gather(*(edge(tmp_path, *args) for args, _, _ in cases))
    for (args, status, text), (code, out, err) in zip(cases, results, strict=True):
        assert code == status, (args, err)
        one_line_error(err, text)
        assert out == ""


async def test_several_coordinators_are_tried_in_turn(
    tmp_path: Path, coordinator: Proc, nodes: Callable[..., Any]
) -> None:
    """Coordinators sharing one log, the first of them down: the purge is made at the
    next, its confirmations waited for there, and `edge status` answers from it; with
    every one down, one line names the last tried."""
    await nodes("edge-1")
    down = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    listed = ["--coordinator", f"{down[0]},{coordinator.url}", "--token", TOKEN]
    code, out, err = await edge(tmp_path, "purge", URL, *listed)
    assert code == 0, err
    assert "edge-1" in out and "confirmed" in out
    code, out, err = await edge(tmp_path, "status", *listed)
    assert code == 0 and "edge-1" in out, err
    code, out, err = await edge(
        tmp_path, "purge", URL, "--coordinator", ",".join(down), "--token", TOKEN
    )
    assert code == 1 and out == ""
    one_line_error(err, f"cannot reach the coordinator at {down[1]}: Connection refused")


async def test_status_lists_the_nodes(
    tmp_path: Path, coordinator: Proc, nodes: Callable[..., Any]
) -> None:
    shield = await nodes("shield-1", "shield", region="eu", address="http://10.0.0.1:9000")
    behind = await nodes("edge-1", region="us", ack=False)
    gone = await nodes("edge-2")
    for _ in range(2):
        code, _, err = await edge(tmp_path, "purge", URL, "--no-wait", *flags(coordinator))
        assert code == 0, err
    await shield.wait_acked(2)
    await gone.wait_acked(2)
    await behind.wait_seq(2)
    await gone.close()
    code, out, err = await edge(tmp_path, "status", *flags(coordinator))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"coordinator {coordinator.url}: seq 2, 2/3 nodes healthy"
    assert lines[1].split() == ["NAME", "ROLE", "REGION", "ADDRESS", "HEALTH", "APPLIED", "LAG"]
    assert [line.split() for line in lines[2:]] == [
        ["shield-1", "shield", "eu", "http://10.0.0.1:9000", "healthy", "2", "0"],
        ["edge-1", "edge", "us", "-", "healthy", "0", "2"],
        ["edge-2", "edge", "-", "-", "disconnected", "2", "0"],
    ]
    code, out, err = await edge(
        tmp_path, "status", "--json", env={"EDGE_COORDINATOR": coordinator.url, "EDGE_TOKEN": TOKEN}
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["seq"] == 2
    assert [(n["name"], n["lag"], n["connected"]) for n in answer["nodes"]] == [
        ("shield-1", 0, True),
        ("edge-1", 2, True),
        ("edge-2", 0, False),
    ]


async def test_on_a_terminal_the_table_is_redrawn_in_place(
    tmp_path: Path, coordinator: Proc, nodes: Callable[..., Any]
) -> None:
    await nodes("shield-1", "shield", region="eu")
    await nodes("edge-1", region="eu", ack_delay=0.3)
    leader, follower = pty.openpty()

    def read_all() -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    reader = asyncio.create_task(asyncio.to_thread(read_all))
    try:
        code, _, err = await edge(tmp_path, "purge", URL, *flags(coordinator), stdout=follower)
    finally:
        os.close(follower)
    screen = (await asyncio.wait_for(reader, 10)).decode()
    os.close(leader)
    assert code == 0, err
    assert "\x1b[J" in screen  # drawn again over the previous table
    assert screen.count("purge 1: ") >= 3  # waiting, the shield, both
    assert "edge-1    edge    eu      waiting" in screen
    assert "confirmed by all 2 nodes" in screen
