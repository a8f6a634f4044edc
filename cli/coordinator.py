"""`edge coordinator`: run the purge coordinator (origin/coordinator/service.py).

Thin: check the options (a missing operator token, a bad listen address, --keep or
--heartbeat are one `edge:` line, exit 2), then hand over to `origin.coordinator.service.run`; a
database that cannot be opened or an address that cannot be bound is one line, exit 1.
The log is `--db FILE` (SQLite) or `--backend SPEC` (origin.coordinator.log.open_log).
`edge coordinator migrate` moves a SQLite log to a replicated one
(origin/coordinator/migrate.py), with the same one-line errors.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.errors import fail
from edge.config import ConfigError, parse_listen


def coordinator(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = "127.0.0.1:8400",
    # Optional only so that its absence is one `edge:` line like every other error.
    db: Annotated[
        Optional[Path],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Option(
            help="SQLite file of the purge log, created if missing (--backend sqlite:FILE); "
            "this or --backend is required.",
            show_default="none",
        ),
    ] = None,
    backend: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="SPEC",
            help="The purge log: sqlite:PATH (one coordinator) or nats://HOST:PORT[,...] "
            "(a JetStream cluster several coordinators share).",
            show_default="sqlite:--db",
        ),
    ] = None,
    replicas: Annotated[
        str, typer.Option(metavar="N", help="Copies of a JetStream log (1, 3 or 5).")
    ] = "3",
    token: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Operators' bearer token.", show_default="$EDGE_TOKEN"),
    ] = None,
    node_token: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Nodes' bearer token.", show_default="$EDGE_NODE_TOKEN, else the operators'"
        ),
    ] = None,
    # Strings, parsed here, so that a bad value is one `edge:` line.
    keep: Annotated[
        str, typer.Option(metavar="N", help="Purge events kept in the log; older are compacted.")
    ] = "10000",
    heartbeat: Annotated[
        str,
        typer.Option(
            metavar="SECONDS",
            help="WebSocket ping interval; a node silent for 3 of them is stale.",
        ),
    ] = "5",
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the purge coordinator."""
    if ctx.invoked_subcommand is not None:
        return  # `edge coordinator migrate ...`: its options are its own
    from origin.coordinator.service import CoordinatorSettings, StoreError, run

    operator = token or os.environ.get("EDGE_TOKEN", "")
    if not operator:
        fail("an operator token is required: --token or EDGE_TOKEN", 2)
    nodes = node_token or os.environ.get("EDGE_NODE_TOKEN", "") or operator
    if db is None and not backend:
        fail("--db FILE or --backend SPEC is required (where the purge log is)", 2)
    if db is not None and backend:
        fail("--db FILE is --backend sqlite:FILE: give one of them", 2)
    if replicas.strip() not in ("1", "3", "5"):
        fail(f"--replicas must be 1, 3 or 5, got {replicas!r}", 2)
    spec = backend or f"sqlite:{db}"
    from origin.coordinator.log import open_log

    try:
        open_log(spec)  # checks the spec only: nothing is opened before run()
    except ValueError as exc:
        fail(str(exc), 2)
    try:
        host, port = parse_listen(listen)
    except ConfigError as exc:
        fail(str(exc), 2)
    if not re.fullmatch(r"[0-9]{1,18}", keep.strip()) or int(keep) < 1:
        fail(f"--keep must be a whole number >= 1, got {keep!r}", 2)
    try:
        interval = float(heartbeat)
    except ValueError:
        interval = -1.0
    if not 0.05 <= interval <= 3600:  # NaN too
        fail(f"--heartbeat must be a number of seconds (0.05 to 3600), got {heartbeat!r}", 2)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level: {log_level}", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    settings = CoordinatorSettings(
        db=db,
        token=operator,
        node_token=nodes,
        keep=int(keep),
        heartbeat=interval,
        backend=spec,
        replicas=int(replicas),
    )

    def ready(url: str, seq: int) -> None:
        print(f"edge coordinator: listening on {url} (log {spec}, seq {seq})", flush=True)

    try:
        run(settings, host, port, on_ready=ready)
    except StoreError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


def migrate(
    source: Annotated[
        str,
        typer.Option("--from", metavar="SPEC", help="The log to move: sqlite:PATH."),
    ],
    target: Annotated[
        str,
        typer.Option(
            "--to", metavar="SPEC", help="The new, empty replicated log: nats://HOST:PORT[,...]."
        ),
    ],
    replicas: Annotated[
        str, typer.Option(metavar="N", help="Copies of the JetStream log (1, 3 or 5).")
    ] = "3",
) -> None:
    """Copy every kept purge with its sequence number, the compaction point, the
    confirmations and the node registry; nodes resume where they were. Stop the old
    coordinator first (its file is locked while it runs)."""
    import asyncio

    from origin.coordinator.log import StoreError, open_log
    from origin.coordinator.migrate import migrate as move

    if replicas.strip() not in ("1", "3", "5"):
        fail(f"--replicas must be 1, 3 or 5, got {replicas!r}", 2)
    try:
        old = open_log(source)
        new = open_log(target, replicas=int(replicas))
    except ValueError as exc:
        fail(str(exc), 2)
    if not new.shared:
        fail(f"--to must be a replicated log (nats://HOST:PORT), got {target!r}", 2)
    try:
        moved = asyncio.run(move(old, new))
    except StoreError as exc:
        fail(str(exc))
    print(
        f"edge coordinator migrate: {moved.events} purges (seq {moved.compacted + 1}"
        f"-{moved.latest}, compacted through {moved.compacted}) and {moved.nodes} nodes "
        f"moved to {target}",
        flush=True,
    )
