"""`edge serve` and `edge shield`: run a cache node (an edge, or the origin shield) in
front of its upstreams. Both are the same engine; they differ in role and in what sits
behind them (an edge: shields, then origins; a shield: origins)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli.errors import fail
from edge.config import ConfigError, NodeConfig, load_config

# typer reads these annotations at runtime: Optional[...] spelled out for it.
Listen = Annotated[Optional[str], typer.Option(help="HOST:PORT to listen on.")]  # noqa: UP045
Origins = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--origin", help="Origin base URL; repeat for a pool of origins."),
]
CacheDir = Annotated[Optional[Path], typer.Option(help="Cache directory.")]  # noqa: UP045
CacheSize = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Cache size bound, e.g. 512M, 10G (LRU eviction)."),
]
MaxObject = Annotated[Optional[str], typer.Option(help="Largest object stored, e.g. 2G.")]  # noqa: UP045
SliceSize = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Slice size for big objects, e.g. 4M."),
]
SliceThreshold = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Objects larger than this are cached as slices, e.g. 16M."),
]
Name = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Node name, shown in Cache-Status, Via and CDN-Loop."),
]
Balance = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Origin pool strategy: round-robin, weighted-round-robin, least-connections, "
        "consistent-hash, client-ip-hash, ewma."
    ),
]
Trusted = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--trusted-proxy",
        help="Network (CIDR) whose X-Forwarded-For/Forwarded is believed; repeatable "
        "(default: loopback).",
    ),
]
Config = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--config", "-c", help="TOML file with the same settings (and pools and host routes)."
    ),
]
Coordinator = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Purge coordinator URL to subscribe to (token: coordinator_token in --config, "
        "or EDGE_NODE_TOKEN)."
    ),
]
Region = Annotated[Optional[str], typer.Option(help="This node's region, e.g. eu.")]  # noqa: UP045
LogLevel = Annotated[str, typer.Option(help="debug, info, warning, error.")]
TlsCert = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--tls-cert",
        help="PEM certificate chain to serve HTTPS with; repeat with --tls-key for several "
        "(chosen by SNI, the first is the default).",
    ),
]
TlsKey = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--tls-key", help="PEM private key of the --tls-cert in the same position."),
]
HttpRedirect = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="HOST:PORT of a plain-HTTP listener that redirects (308) to https."),
]
Hsts = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(help="Send Strict-Transport-Security: max-age=N over TLS (0: off)."),
]
# Read as text so that a bad value is edge's one-line error, not typer's box.
Workers = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Worker processes (1-64), each serving the same port (SO_REUSEPORT) from the "
        "same cache directory; 1: one process.",
    ),
]
UpstreamCa = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="CA bundle to verify https upstreams with (default: the system's)."),
]


def serve(
    listen: Listen = None,
    upstream: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="One upstream base URL (shorthand for a single --origin)."),
    ] = None,
    origin: Origins = None,
    shield: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--shield",
            help="Origin shield base URL; repeat for several (each object at one shield, "
            "by rendezvous hashing).",
        ),
    ] = None,
    no_origin_direct: Annotated[
        bool,
        typer.Option(
            "--no-origin-direct",
            help="Never go to the origins directly when no shield can answer.",
        ),
    ] = False,
    cache_dir: CacheDir = None,
    cache_size: CacheSize = None,
    max_object_size: MaxObject = None,
    slice_size: SliceSize = None,
    slice_threshold: SliceThreshold = None,
    name: Name = None,
    balance: Balance = None,
    trusted_proxy: Trusted = None,
    coordinator: Coordinator = None,
    region: Region = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    http_redirect: HttpRedirect = None,
    hsts: Hsts = None,
    upstream_ca: UpstreamCa = None,
    workers: Workers = None,
    config: Config = None,
    log_level: LogLevel = "info",
) -> None:
    """Run an edge node."""
    options: dict[str, Any] = {
        "upstream": upstream,
        "shields": shield,
        "origin_direct": False if no_origin_direct else None,
    }
    run_node(
        "edge",
        config,
        options,
        listen=listen,
        origins=origin,
        cache_dir=cache_dir,
        cache_size=cache_size,
        max_object_size=max_object_size,
        slice_size=slice_size,
        slice_threshold=slice_threshold,
        name=name,
        balance=balance,
        trusted_proxies=trusted_proxy,
        coordinator=coordinator,
        region=region,
        tls_cert=tls_cert,
        tls_key=tls_key,
        http_redirect=http_redirect,
        hsts=hsts,
        upstream_ca=upstream_ca,
        workers=workers,
        log_level=log_level,
    )


def shield(
    listen: Listen = None,
    origin: Origins = None,
    cache_dir: CacheDir = None,
    cache_size: CacheSize = None,
    max_object_size: MaxObject = None,
    slice_size: SliceSize = None,
    slice_threshold: SliceThreshold = None,
    name: Name = None,
    balance: Balance = None,
    trusted_proxy: Trusted = None,
    coordinator: Coordinator = None,
    region: Region = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    http_redirect: HttpRedirect = None,
    hsts: Hsts = None,
    upstream_ca: UpstreamCa = None,
    workers: Workers = None,
    config: Config = None,
    log_level: LogLevel = "info",
) -> None:
    """Run an origin shield: the second cache tier, in front of the origins."""
    run_node(
        "shield",
        config,
        {},
        listen=listen,
        origins=origin,
        cache_dir=cache_dir,
        cache_size=cache_size,
        max_object_size=max_object_size,
        slice_size=slice_size,
        slice_threshold=slice_threshold,
        name=name,
        balance=balance,
        trusted_proxies=trusted_proxy,
        coordinator=coordinator,
        region=region,
        tls_cert=tls_cert,
        tls_key=tls_key,
        http_redirect=http_redirect,
        hsts=hsts,
        upstream_ca=upstream_ca,
        workers=workers,
        log_level=log_level,
    )


def run_node(
    role: str, config: Path | None, options: dict[str, Any], *, log_level: str, **common: Any
) -> None:
    from edge import tls

    try:
        cfg = load_config(config, {**common, **options, "role": role})
        tls.check(cfg)  # certificates, keys and CA files: one line, before anything starts
    except ConfigError as exc:
        fail(str(exc), 2)
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level: {log_level}", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    start(cfg)


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a node's loop on uvloop where it is installed: a hit costs about half as
    much CPU as on asyncio's own loop (edge.zerocopy keeps sendfile working on it)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def start(cfg: NodeConfig) -> None:
    from edge.node import serve_forever

    host = cfg.host_port[0]
    scheme = "https" if cfg.tls_cert else "http"
    ready = (
        f"{cfg.role} {cfg.name}: listening on {scheme}://{host}:{{port}} -> {cfg.upstream_summary}"
    )
    try:
        if cfg.workers > 1:
            from edge.workers import supervise

            supervise(cfg, ready, run)
        else:
            run(serve_forever(cfg, ready))
    except ConfigError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot listen on {cfg.listen}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
