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
from edge.config import OBJECT_SHARE, ConfigError, NodeConfig, format_size, load_config

# The defaults shown in --help are NodeConfig's own (options are None here so that a
# --config file's values are not overridden by them).
_D = NodeConfig()

# typer reads these annotations at runtime: Optional[...] spelled out for it.
Listen = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="HOST:PORT to listen on.", show_default=_D.listen),
]
Origins = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--origin", help="Origin base URL; repeat for a pool of origins.", show_default="none"
    ),
]
CacheDir = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(help="Cache directory.", show_default=f"./{_D.cache_dir}"),
]
CacheSize = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Cache size bound, e.g. 512M, 10G (LRU eviction).",
        show_default=format_size(_D.cache_size),
    ),
]
MaxObject = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Largest object stored, e.g. 2G; larger ones are passed through. At most the "
        "cache size.",
        show_default=f"cache size / {OBJECT_SHARE}",
    ),
]
SliceSize = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Slice size for big objects, e.g. 4M.", show_default=format_size(_D.slice_size)
    ),
]
SliceThreshold = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Objects larger than this are cached as slices, e.g. 16M.",
        show_default=format_size(_D.slice_threshold),
    ),
]
Name = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Node name, shown in Cache-Status, Via and CDN-Loop; unique among the nodes "
        "of a coordinator.",
        show_default="ROLE-HOSTNAME-ADDRESS-PORT of --listen; no ADDRESS on 0.0.0.0",
    ),
]
Balance = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Origin pool strategy: round-robin, weighted-round-robin, least-connections, "
        "consistent-hash, client-ip-hash, ewma.",
        show_default="round-robin",
    ),
]
Trusted = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--trusted-proxy",
        help="Network (CIDR) whose X-Forwarded-For/Forwarded is believed, e.g. a shield's "
        "edges; repeatable.",
        show_default="none",
    ),
]
Config = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--config",
        "-c",
        help="TOML file with the same settings (and pools and host routes).",
        show_default="none",
    ),
]
Coordinator = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Purge coordinator URL to subscribe to (token: coordinator_token in --config, "
        "or EDGE_NODE_TOKEN).",
        show_default="none",
    ),
]
Region = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="This node's region, e.g. eu.", show_default="none"),
]
LogLevel = Annotated[str, typer.Option(help="debug, info, warning, error.")]
TlsCert = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--tls-cert",
        help="PEM certificate chain to serve HTTPS with; repeat with --tls-key for several "
        "(chosen by SNI, the first is the default).",
        show_default="none: plain HTTP",
    ),
]
TlsKey = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--tls-key",
        help="PEM private key of the --tls-cert in the same position.",
        show_default="none",
    ),
]
HttpRedirect = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="HOST:PORT of a plain-HTTP listener that redirects (308) to https.",
        show_default="none",
    ),
]
Hsts = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        help="Send Strict-Transport-Security: max-age=N over TLS (0: off).",
        show_default=str(_D.hsts),
    ),
]
# Read as text so that a bad value is edge's one-line error, not typer's box.
Workers = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Worker processes (1-64), each serving the same port (SO_REUSEPORT) from the "
        "same cache directory; 1: one process.",
        show_default=str(_D.workers),
    ),
]
UpstreamCa = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="CA bundle to verify https upstreams with.", show_default="the system's CAs"),
]


def serve(
    listen: Listen = None,
    upstream: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="One upstream base URL (shorthand for a single --origin).", show_default="none"
        ),
    ] = None,
    origin: Origins = None,
    shield: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--shield",
            help="Origin shield base URL; repeat for several (each object at one shield, "
            "by rendezvous hashing).",
            show_default="none",
        ),
    ] = None,
    no_origin_direct: Annotated[
        bool,
        typer.Option(
            "--no-origin-direct",
            help="Never go to the origins directly when no shield can answer.",
            show_default="off: the origins answer when no shield can",
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
    from edge.purge import Refusal

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
            # Stopped because the coordinator refused the node (it said why).
            refused = Refusal.exit_status()
            if refused is not None:
                raise SystemExit(refused)
    except ConfigError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot listen on {cfg.listen}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass
