"""`edge serve` and `edge shield`: run a cache node (an edge, or the origin shield) in
front of its upstreams. Both are the same engine; they differ in role and in what sits
behind them (an edge: shields, then origins; a shield: origins)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cli.errors import fail
from edge.config import ConfigError, NodeConfig, cli_options, from_command_line, load_config
from edge.options import ROLES, Kind, Option

# typer reads these types at runtime: Optional[...] spelled out for it. Values are read
# as text, so that a bad one is edge's one-line error (the option's own check, as for the
# same value in a TOML file), not typer's box; None: not given, the file or default wins.
_CLI_TYPES: dict[Kind, Any] = {Kind.LIST: Optional[list[str]]}  # noqa: UP045

# --help names what the text must be.
_METAVARS = {Kind.INT: "<int>", Kind.PATH: "<path>"}


def _parameter(option: Option) -> inspect.Parameter:
    if option.kind is Kind.FLAG:
        kind: Any = bool
        default: Any = False
    else:
        kind = _CLI_TYPES.get(option.kind, Optional[str])  # noqa: UP045
        default = None
    info = typer.Option(
        *option.flags,
        help=option.help,
        show_default=option.shown_default(),
        metavar=_METAVARS.get(option.kind),
    )
    return inspect.Parameter(
        option.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, info],
    )


_PROCESS = [
    inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Optional[Path],  # noqa: UP045
            typer.Option(
                "--config",
                "-c",
                help="TOML file with the same settings (and pools and host routes).",
                show_default="none",
            ),
        ],
    ),
    inspect.Parameter(
        "log_level",
        inspect.Parameter.KEYWORD_ONLY,
        default="info",
        annotation=Annotated[str, typer.Option(help="debug, info, warning, error.")],
    ),
]


def command(role: str, doc: str) -> Callable[..., None]:
    """The `edge serve` (role edge) or `edge shield` command: a parameter for each
    option its command line takes (edge.config.cli_options), then --config and
    --log-level."""

    def node_command(*, config: Path | None, log_level: str, **given: Any) -> None:
        run_node(role, config, given, log_level=log_level)

    node_command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*(_parameter(o) for o in cli_options(role)), *_PROCESS]
    )
    node_command.__name__ = ROLES[role]
    node_command.__doc__ = doc
    return node_command


serve = command("edge", "Run an edge node.")
shield = command("shield", "Run an origin shield: the second cache tier, in front of the origins.")


def run_node(role: str, config: Path | None, given: dict[str, Any], *, log_level: str) -> None:
    """Load the node's configuration (the command line's `given` values over the
    --config file), check it, set up logging and start the node."""
    from edge.server import tls

    try:
        cfg = load_config(config, {**from_command_line(role, given), "role": role})
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
    much CPU as on asyncio's own loop (edge.server.zerocopy keeps sendfile working on it)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def start(cfg: NodeConfig) -> None:
    from edge.purge.bans import Refusal
    from edge.server.node import serve_forever

    host = cfg.host_port[0]
    scheme = "https" if cfg.tls_cert else "http"
    ready = (
        f"{cfg.role} {cfg.name}: listening on {scheme}://{host}:{{port}} -> {cfg.upstream_summary}"
    )
    try:
        if cfg.workers > 1:
            from edge.multiproc.workers import supervise

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
