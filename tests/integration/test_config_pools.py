"""Pools, routes and tiers in the node's configuration: the forms that work and a
one-line error (exit 2) for each mistake, from `edge serve`/`edge shield` and TOML.

Here the parts with real processes or sockets; tests/unit/test_config_pools.py has
the pure ones."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import NodeFactory
from tests.support.procs import REPO, Proc, edge_cmd


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["shield", "--listen", "127.0.0.1:1"], "no upstream"),
        (["serve", "--origin", "http://o", "--balance", "fastest"], "unknown strategy 'fastest'"),
        (["serve", "--origin", "nope"], "upstream must be an http(s) URL"),
        (["serve", "--origin", "http://o", "--trusted-proxy", "nonsense"], "trusted_proxies"),
    ],
)
def test_cli_mistakes_are_one_line_errors(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        edge_cmd(*args, "--cache-dir", str(tmp_path / "c")),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


async def test_health_endpoint_and_metrics_show_pool_members(
    upstream: Proc, node: NodeFactory
) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    edge = node("serve", "--shield", dead, "--origin", upstream.url, name="edge-h")
    # Let the active checks see the dead shield (interval 1 s, fall 2).
    import asyncio

    for _ in range(50):
        with urllib.request.urlopen(edge.url + "/_edge/health", timeout=5) as resp:
            health = json.load(resp)
        if not health["pools"]["shields"]["members"][0]["usable"]:
            break
        await asyncio.sleep(0.2)
    shields = health["pools"]["shields"]
    assert shields["strategy"] == "consistent-hash"
    assert shields["members"][0]["url"] == dead and not shields["members"][0]["healthy"]
    assert health["pools"]["origin"]["members"][0]["healthy"]
    with urllib.request.urlopen(edge.url + "/_edge/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert f'edge_upstream_member_up{{member="{dead}",node="edge-h",pool="shields"}} 0.0' in metrics
    assert (
        f'edge_upstream_member_up{{member="{upstream.url}",node="edge-h",pool="origin"}} 1.0'
        in metrics
    )
