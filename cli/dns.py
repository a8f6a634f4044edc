"""`edge dns`: run the GeoDNS authority for the CDN's zone from a topology file (and,
with --steer, the HTTP steering listener beside it); `--explain ADDRESS` says where one
address lands and why, and exits."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from cli.errors import fail
from edge.config import ConfigError, parse_listen

if TYPE_CHECKING:
    from origin.deploy.topology import Topology
    from origin.geodns.geoip import WatchedDatabase


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
    steer: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Option(
            help="HOST:PORT of an HTTP steering listener: a request for a CDN name gets a "
            "302 to the nearest healthy edge for the client's own address (same selector "
            "and health as DNS); a client already at that edge is passed to it.",
            show_default="off",
        ),
    ] = None,
    explain: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Option(
            metavar="ADDRESS",
            help="Print where ADDRESS lands and why (topology network or geoip "
            "database record, region, edges, ECS scope), then exit.",
            show_default="off: serve",
        ),
    ] = None,
) -> None:
    """Answer for the CDN's zone, sending each client to its nearest healthy edge."""
    from origin.deploy.topology import TopologyError, load_topology
    from origin.geodns.geoip import GeoError, WatchedDatabase

    if topology is None:
        fail("--topology FILE is required", 2)
    try:
        host, port = parse_listen(listen)
        steer_at = parse_listen(steer) if steer is not None else None
        topo = load_topology(topology)
    except (ConfigError, TopologyError) as exc:
        fail(str(exc), 2)
    try:
        geo = WatchedDatabase(Path(topo.geoip.database)) if topo.geoip.database else None
    except GeoError as exc:
        fail(str(exc), 2)
    if explain is not None:
        print(explanation(topo, geo, explain))
        return
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level: {log_level}", 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    from origin.geodns.authority import serve

    def ready(bound: int) -> None:
        print(f"edge dns: {topo.zone.origin} on udp+tcp {host}:{bound}", flush=True)

    def steer_ready(bound: int) -> None:
        assert steer_at is not None
        print(f"edge dns: HTTP steering on http://{steer_at[0]}:{bound}", flush=True)

    async def main() -> None:
        task = asyncio.create_task(
            serve(
                topo,
                host,
                port,
                ready,
                fast=fast_path,
                geo=geo,
                steer=steer_at,
                steer_ready=steer_ready,
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    from origin.geodns.steer import SteerListenError

    try:
        asyncio.run(main())
    except SteerListenError as exc:
        fail(f"cannot listen on {steer}: {exc}")
    except OSError as exc:
        fail(f"cannot listen on {listen}: {exc.strerror or exc}")


def explanation(topo: Topology, geo: WatchedDatabase | None, text: str) -> str:
    """Where `text` (an address) lands: how it was placed, its region, the edges an
    answer is drawn from per family, and the ECS scope. Health is not probed by a
    one-shot command: every edge counts as up."""
    from origin.geodns.select import Selector, address_of

    try:
        client = ipaddress.ip_address(text)
    except ValueError:
        fail(f"--explain: not an IP address: {text!r}", 2)
    selector = Selector(topo, geo=geo)
    # As if the address came as an ECS option of its full length: the scope says for
    # how much of the address space the answer would hold.
    place = selector.place(client, client.max_prefixlen)
    scope_net = ipaddress.ip_network((client, place.scope), strict=False)
    how = place.how
    if how == "default":
        how = "the default region: in no topology network" + (
            " and no database record" if geo else ""
        )
    lines = [
        f"{client}: region {place.home.name}",
        f"  placed by: {how}",
        f"  ECS scope: /{place.scope} (the answer holds for {scope_net})",
    ]
    for family, rdtype in ((4, "A"), (6, "AAAA")):
        plan = selector.plan(place, family, lambda e: True)
        edges = ", ".join(
            f"{e.name} {address_of(e, family)} (weight {e.weight})" for e in plan.candidates
        )
        pick = f"; {topo.zone.answer_count} per answer, weighted" if edges else ""
        if edges and plan.region != place.home.name:
            pick += f"; from {plan.region}, the nearest region with an edge of this family"
        lines.append(f"  {rdtype}: {edges or 'none (no edge has an address of this family)'}{pick}")
    source = f"[geoip] database {topo.geoip.database}" if geo else "no [geoip] database"
    lines.append(f"  ({source}; health not probed here: every edge counted up)")
    return "\n".join(lines)
