"""Running the `edge` command as an operator does, for the tests that check its output."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.support.procs import REPO, edge_cmd


async def run_edge(
    home: Path, *args: str, env: dict[str, str] | None = None, stdout: int | None = None
) -> tuple[int, str, str]:
    """Run `edge ARGS` with a clean environment (no EDGE_*, HOME with no config file
    unless the test writes one); (exit status, stdout, stderr)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    proc = await asyncio.create_subprocess_exec(
        *edge_cmd(*args),
        cwd=REPO,
        env={**clean, "HOME": str(home), **(env or {})},
        stdout=asyncio.subprocess.PIPE if stdout is None else stdout,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, (out or b"").decode(), err.decode()
