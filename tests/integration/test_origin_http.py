"""The archive origin's pure parts, on their own: URL path confinement, metadata,
RFC 9110 preconditions (Section 13) and ranges (Section 14), the Cache-Control rules,
and the response delay (`--latency`): its parser, the app in this process, and the command
refusing a bad value. tests/integration/test_origin.py drives the real process for
everything else.

Here the parts with real processes or sockets; tests/unit/test_origin_http.py has
the pure ones."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from origin.archive.server import (
    make_app,
)

# ---------------------------------------------------------------- paths


# ---------------------------------------------------------------- metadata


# ---------------------------------------------------------------- preconditions


# ---------------------------------------------------------------- ranges


# ---------------------------------------------------------------- Cache-Control rules


# ---------------------------------------------------------------- response delay


async def test_latency_delays_every_response_head(tmp_path: Path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    latency = 0.3
    async with (
        TestServer(make_app(tmp_path, latency=latency), host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
    ):
        # A file, a not-found and a conditional 304: the delay is before any handling.
        for path, headers, status in (
            ("/a.bin", {}, 200),
            ("/missing.bin", {}, 404),
            ("/a.bin", {"If-None-Match": "*"}, 304),
        ):
            started = time.monotonic()
            async with session.get(server.make_url(path), headers=headers) as resp:
                head = time.monotonic() - started
                body = await resp.read()
            assert resp.status == status
            assert head >= latency, (path, head)
            if status == 200:
                assert body == b"x" * 1000


async def test_no_latency_by_default(tmp_path: Path):
    (tmp_path / "a.bin").write_bytes(b"x")
    async with (
        TestServer(make_app(tmp_path), host="127.0.0.1") as server,
        aiohttp.ClientSession() as session,
    ):
        assert not server.app.middlewares
        async with session.get(server.make_url("/a.bin")) as resp:
            assert (resp.status, await resp.read()) == (200, b"x")


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_cli_refuses_a_bad_latency(tmp_path: Path, value: str):
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "origin", "--root", str(tmp_path), "--latency", value],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge: latency must be"), done.stderr
