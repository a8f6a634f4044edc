"""Every endpoint that asks for a token, with every part real: `edge serve` behind
`edge shield` and `edge coordinator`. The auth-scheme is taken in any case (RFC 9110
§11.1): `bearer` and `BEARER` are Bearer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import NodeFactory
from tests.guardkit import write_config
from tests.support.procs import Proc
from tests.test_purge import NODE_TOKEN, TOKEN, coordinator_factory  # noqa: F401

ADMIN = "node-admin-secret"
SITE = "archive.example"


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


# ---------------------------------------------------------------- one token check


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
async def test_the_bearer_scheme_is_case_insensitive_everywhere(
    upstream: Proc,
    node: NodeFactory,
    tmp_path: Path,
    coordinator_factory: Callable[..., Proc],  # noqa: F811
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
