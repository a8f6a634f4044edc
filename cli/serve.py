"""`edge serve`: run an edge node (a caching reverse proxy) in front of an upstream."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from cli.errors import fail
from edge.config import ConfigError, load_config


def serve(
    listen: Annotated[str | None, typer.Option(help="HOST:PORT to listen on.")] = None,
    upstream: Annotated[
        str | None,
        typer.Option(help="Upstream base URL (origin or shield), e.g. http://127.0.0.1:8081."),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache directory.")] = None,
    cache_size: Annotated[
        str | None,
        typer.Option(help="Cache size bound, e.g. 512M, 10G (LRU eviction)."),
    ] = None,
    max_object_size: Annotated[
        str | None,
        typer.Option(help="Largest object stored, e.g. 2G."),
    ] = None,
    slice_size: Annotated[
        str | None,
        typer.Option(help="Slice size for big objects, e.g. 4M."),
    ] = None,
    slice_threshold: Annotated[
        str | None,
        typer.Option(help="Objects larger than this are cached as slices, e.g. 16M."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Node name, shown in Cache-Status and Via."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML file with the same settings."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run an edge node."""
    try:
        cfg = load_config(
            config,
            {
                "listen": listen,
                "upstream": upstream,
                "cache_dir": cache_dir,
                "cache_size": cache_size,
                "max_object_size": max_object_size,
                "slice_size": slice_size,
                "slice_threshold": slice_threshold,
                "name": name,
            },
        )
    except ConfigError as exc:
        fail(str(exc), 2)
    run_node(cfg, log_level)


def run_node(cfg, log_level: str) -> None:  # type: ignore[no-untyped-def]
    from edge.node import serve_forever

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level: {log_level}", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host = cfg.host_port[0]
    ready = f"edge {cfg.role} {cfg.name}: listening on http://{host}:{{port}} -> {cfg.upstream}"
    try:
        asyncio.run(serve_forever(cfg, ready))
    except ConfigError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot listen on {cfg.listen}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
