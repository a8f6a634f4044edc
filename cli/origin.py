"""`edge origin`: serve a directory as an origin, optionally filled with the demo archive.

Thin: parse and check the options, generate the demo archive if asked, then hand over to
`origin.archive.server.run`. Bad input is one `edge: ...` line on stderr (exit 2), a failure to
start is one line too (exit 1); never a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.errors import fail
from edge.config import ConfigError, parse_listen
from origin.archive.rules import CacheRules, RuleError


def origin(
    # Optional only so that its absence is one `edge:` line like every other error.
    root: Annotated[
        Optional[Path],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Option(help="Folder to serve (required; created by --demo)."),
    ] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = "127.0.0.1:8081",
    demo: Annotated[
        bool, typer.Option(help="Fill ROOT with the demo archive first (keeps existing files).")
    ] = False,
    small: Annotated[
        bool, typer.Option(help="With --demo: 1-4 MiB bundles instead of 32-256 MiB.")
    ] = False,
    rule: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Option(
            help="GLOB=CACHE-CONTROL, e.g. '/books/*=public, max-age=600'; repeatable; "
            "tried in order before the built-in rules, first match wins.",
            show_default="none: the built-in rules",
        ),
    ] = None,
    # A string, parsed here, so that a bad value is one `edge:` line like every other error.
    latency: Annotated[
        str,
        typer.Option(
            metavar="SECONDS",
            help="Delay every response head by SECONDS (e.g. 0.2), as a distant origin would.",
        ),
    ] = "0",
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve a directory as an origin (the demo archive)."""
    if root is None:
        fail("--root DIR is required (the folder to serve)", 2)
    try:
        host, port = parse_listen(listen)
    except ConfigError as exc:
        fail(str(exc), 2)
    try:
        rules = CacheRules.from_options(rule or [])
    except RuleError as exc:
        fail(str(exc), 2)
    from origin.archive.server import parse_latency, run

    try:
        delay = parse_latency(latency)
    except ValueError as exc:
        fail(str(exc), 2)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level: {log_level}", 2)
    if small and not demo:
        fail("--small applies only with --demo", 2)

    if demo:
        from origin.archive.demo import generate

        try:
            generate(root, large=not small)
        except OSError as exc:
            fail(f"cannot write the demo archive in {root}: {exc.strerror or exc}")
    elif not root.exists():
        fail(f"root {root} does not exist (--demo creates a sample archive there)", 2)
    if not root.is_dir():
        fail(f"root {root} is not a directory", 2)

    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    resolved = root.resolve()

    def ready(url: str) -> None:
        late = f" (responses {delay:g}s late)" if delay else ""
        print(f"edge origin: serving {resolved} on {url}{late}", flush=True)

    try:
        run(resolved, host, port, rules, latency=delay, on_ready=ready)
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
