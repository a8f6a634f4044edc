"""`edge dns`: run the GeoDNS authority for the CDN's zone from a topology file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.errors import fail
from edge.config import ConfigError, parse_listen


def dns_command(
    listen: Annotated[str, typer.Option(help="HOST:PORT for UDP and TCP.")] = "127.0.0.1:5353",
    topology: Annotated[
        Optional[Path],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Option(help="Topology TOML: zone, regions, edges (required)."),
    ] = None,
    log_level: Annotated[
        str, typer.Option(help="debug (each answer's decision), info, warning, error.")
    ] = "info",
    fast_path: Annotated[
        bool,
        typer.Option(
            help="Answer the common queries from precomputed wire bytes; with "
            "--no-fast-path every query goes through dnspython (the same answers, slower)."
        ),
    ] = True,
) -> None:
    """Answer for the CDN's zone, sending each client to its nearest healthy edge."""
    from origin.deploy.topology import TopologyError, load_topology

    if topology is None:
        fail("--topology FILE is required", 2)
    try:
        host, port = parse_listen(listen)
        topo = load_topology(topology)
    except (ConfigError, TopologyError) as exc:
        fail(str(exc), 2)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level: {log_level}", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from origin.geodns.authority import serve

    def ready(bound: int) -> None:
        print(f"edge dns: {topo.zone.origin} on udp+tcp {host}:{bound}", flush=True)

    async def main() -> None:
        task = asyncio.create_task(serve(topo, host, port, ready, fast=fast_path))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}")
