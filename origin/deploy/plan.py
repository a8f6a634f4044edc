"""The one plan: a topology turned into the processes that run it.

`edge up` runs this plan as child processes on this machine; origin.deploy.compose renders the
same plan as docker-compose services. Everything a process is given (its subcommand,
every option the topology sets (a node's through edge.config.node_argv, from the one
declaration of node options), the secrets it reads, its health check, what must be
healthy before it starts, where it keeps state) is decided here, once. What differs
between the two ways of running the CDN is only *where* things are, and that is a
`Placement`: which address a process listens on, how the others reach it, where its
directories are, which sources a shield trusts, which topology file the GeoDNS
authority reads and whether nodes serve TLS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from edge.config import node_argv
from origin.deploy.topology import MONITOR_OFFSET, ROUTE_OFFSET, Edge, Service, Topology

Role = Literal["origin", "nats", "coordinator", "shield", "edge", "dns"]
StateKind = Literal["cache", "data"]

#: The secrets a process reads from its environment, by role. None of them is ever
#: written into a plan: `edge up` makes or passes them, compose takes them from the
#: operator's shell.
OPERATOR_TOKEN = "EDGE_TOKEN"
NODE_TOKEN = "EDGE_NODE_TOKEN"

DEFAULT_EDGE_PORT = 8080  # an edge without a listen address in the topology


@dataclass(frozen=True)
class Check:
    """How to tell a process is ready: an HTTP URL answering below 500, or (for the
    GeoDNS authority) an SOA answer for `name` from `target` (HOST:PORT)."""

    kind: Literal["http", "dns"]
    target: str
    name: str = ""


@dataclass(frozen=True)
class Process:
    """One process of the CDN, independent of how it is started."""

    name: str
    role: Role
    region: str
    listen: str  # where it listens (as the placement has it)
    argv: tuple[str, ...]  # after the program (the `edge` console script, or `program`)
    check: Check
    after: tuple[str, ...] = ()  # processes that must be healthy before it starts
    secrets: tuple[str, ...] = ()  # environment variables it needs from the operator
    env: dict[str, str] = field(default_factory=dict)  # other environment it is given
    state: tuple[StateKind, ...] = ()  # directories it keeps across restarts
    published: str = ""  # HOST:PORT where users on this machine reach it ("" nowhere)
    program: str = "edge"  # what runs: edge, or nats-server for a purge log member


class Placement(Protocol):
    """Where the processes of a plan are: this machine's loopback (`edge up`) or
    containers on a docker network (compose)."""

    tls: bool  # edges and shields serve HTTPS

    def listen(self, role: Role, name: str, listen: str, edge: Edge | None = None) -> str:
        """The address the process listens on, given the topology's `listen`."""
        ...

    def url(self, name: str, listen: str) -> str:
        """How the other processes reach a process, without scheme (HOST:PORT)."""
        ...

    def directory(self, name: str, kind: StateKind) -> str:
        """The process's cache (`cache`) or data (`data`) directory."""
        ...

    def edge_sources(self, topo: Topology) -> list[str]:
        """The addresses a shield sees its edges' connections come from."""
        ...

    def certificate(self, name: str, listen: str, names: list[str]) -> dict[str, Any]:
        """TLS options of a node, by option name (none without tls)."""
        ...

    def upstream_ca(self) -> dict[str, Any]:
        """The option for an edge to verify its shields' certificates (none without tls)."""
        ...

    def dns_topology(self) -> str:
        """The topology file the GeoDNS authority reads."""
        ...

    def published(self, role: Role, listen: str) -> str:
        """Where users on this machine reach the process at the topology's `listen`."""
        ...


class PlanError(ValueError):
    """The topology cannot be run; the message is one line, read after "the topology"
    or the command's name."""


def edge_listen(edge: Edge) -> str:
    """The address an edge has on this machine: its listen, else its ipv4 on 8080."""
    return edge.listen or f"{edge.ipv4}:{DEFAULT_EDGE_PORT}"


def health_host(listen: str) -> str:
    """HOST:PORT to check a process listening on `listen` at: its own address, or
    127.0.0.1 when it listens on every interface."""
    host, port = listen.rsplit(":", 1)
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "[::]", "::") else listen


def origin_argv(origin: Service, listen: str, root_parent: str) -> list[str]:
    """`edge origin` with every option of the topology's [origin]."""
    o = origin.options
    argv = ["origin", "--root", f"{root_parent}/{o.get('root', 'archive')}", "--listen", listen]
    if o.get("demo", True):
        argv.append("--demo")
        if o.get("small", False):
            argv.append("--small")
    for rule in o.get("rules", []):  # GLOB=CACHE-CONTROL, as `edge origin --rule`
        argv += ["--rule", str(rule)]
    if o.get("latency"):
        argv += ["--latency", str(o["latency"])]
    return argv


def with_port(listen: str, offset: int) -> str:
    host, port = listen.rsplit(":", 1)
    return f"{host}:{int(port) + offset}"


def nats_members(topo: Topology, place: Placement) -> list[Process]:
    """The JetStream cluster of [purge_log]: one `nats-server` per member, each with its
    store in its data directory, routes to every member, one cluster name."""
    members = topo.services.log_members
    names = [f"nats-{n + 1}" for n in range(len(members))]
    routes = ",".join(
        f"nats://{place.url(name, with_port(m, ROUTE_OFFSET))}"
        for name, m in zip(names, members, strict=True)
    )
    out = []
    for name, member in zip(names, members, strict=True):
        listen = place.listen("nats", name, member)
        host, port = listen.rsplit(":", 1)
        argv = ["--addr", host, "--port", port, "--server_name", name]
        # Its own folder: `edge up`'s members share one data directory.
        argv += ["--jetstream", "--store_dir", f"{place.directory(name, 'data')}/{name}"]
        argv += ["--http_port", str(int(port) + MONITOR_OFFSET)]
        if len(members) > 1:
            argv += ["--cluster_name", f"{topo.services.cdn_name}-purges"]
            argv += ["--cluster", f"nats://{with_port(listen, ROUTE_OFFSET)}", "--routes", routes]
        out.append(
            Process(
                name,
                "nats",
                "core",
                listen,
                tuple(argv),
                # /varz answers once the member listens; /healthz would wait for a quorum,
                # which the members started after this one make.
                Check("http", f"http://{health_host(with_port(listen, MONITOR_OFFSET))}/varz"),
                state=("data",),
                published=place.published("nats", member),
                program="nats-server",
            )
        )
    return out


def plan(topo: Topology, place: Placement) -> list[Process]:
    """The topology's processes in start order: origin, the purge log's members,
    coordinators, shields, edges and the GeoDNS authority."""
    s = topo.services
    if s.origin is None or s.coordinator is None or s.dns is None or not s.shields:
        raise PlanError("needs [origin], [[shields]], [coordinator] and [dns]")
    origin, coordinator, dns = s.origin, s.coordinator, s.dns
    node_scheme = "https" if place.tls else "http"
    origin_url = f"http://{place.url(origin.name, origin.listen)}"
    # [purge_log]: more coordinators, named after the first, all on the replicated log.
    coordinators = [(coordinator.name, coordinator.listen)] + [
        (f"{coordinator.name}-{n + 2}", listen) for n, listen in enumerate(s.more_coordinators)
    ]
    coordinator_url = ",".join(f"http://{place.url(n, listen)}" for n, listen in coordinators)
    out: list[Process] = []

    listen = place.listen("origin", origin.name, origin.listen)
    out.append(
        Process(
            origin.name,
            "origin",
            "core",
            listen,
            tuple(origin_argv(origin, listen, place.directory(origin.name, "data"))),
            Check("http", f"http://{health_host(listen)}/"),
            state=("data",),
            published=place.published("origin", origin.listen),
        )
    )

    members = nats_members(topo, place)
    out += members
    for name, topo_listen in coordinators:
        listen = place.listen("coordinator", name, topo_listen)
        if members:
            backend = ",".join(f"nats://{place.url(m.name, m.listen)}" for m in members)
            log = ("--backend", backend, "--replicas", str(len(members)))
        else:
            log = ("--db", f"{place.directory(name, 'data')}/coordinator.db")
        out.append(
            Process(
                name,
                "coordinator",
                "core",
                listen,
                ("coordinator", "--listen", listen, *log),
                Check("http", f"http://{health_host(listen)}/v1/health"),
                after=(origin.name, *(m.name for m in members)),
                secrets=(OPERATOR_TOKEN, NODE_TOKEN),
                # `edge purge` / `edge status` run beside it (compose exec) find it.
                env={"EDGE_COORDINATOR": f"http://{health_host(listen)}"},
                state=() if members else ("data",),
                published=place.published("coordinator", topo_listen),
            )
        )
    everyone = tuple(name for name, _ in coordinators)

    # A shield believes X-Forwarded-For from its edges' connections, and nobody else's:
    # not the region networks, where the clients are. Admin endpoints are left to each
    # node's default (127.0.0.1 and ::1), which is where the health checks come from.
    for shield in s.shields:
        listen = place.listen("shield", shield.name, shield.listen)
        options = {
            "listen": listen,
            "origins": [origin_url],
            "name": shield.name,
            "trusted_proxies": place.edge_sources(topo),
            **place.certificate(shield.name, listen, [shield.name]),
            "cache_dir": place.directory(shield.name, "cache"),
            "cache_size": str(shield.options["cache_size"]),
            "workers": int(shield.options.get("workers", 1)),
            "coordinator": coordinator_url,
            "region": "core",
        }
        out.append(
            Process(
                shield.name,
                "shield",
                "core",
                listen,
                tuple(node_argv("shield", options)),
                Check("http", f"{node_scheme}://{health_host(listen)}/_edge/health"),
                after=(origin.name, *everyone),
                secrets=(NODE_TOKEN,),
                state=("cache",),
                published=place.published("shield", shield.listen),
            )
        )

    shields = [f"{node_scheme}://{place.url(sh.name, sh.listen)}" for sh in s.shields]
    apex = topo.zone.origin.to_text().rstrip(".")
    site_names = [n.to_text().rstrip(".") for n in topo.zone.names] + [apex, f"*.{apex}"]
    for edge in topo.edges:
        listen = place.listen("edge", edge.name, edge_listen(edge), edge)
        options = {
            "listen": listen,
            "shields": shields,
            **place.upstream_ca(),
            "origins": [origin_url],
            "name": edge.name,
            "cache_dir": place.directory(edge.name, "cache"),
            "cache_size": edge.cache_size,
            "workers": edge.workers,
            **place.certificate(edge.name, listen, site_names),
            # Over TLS, edges serve HTTP/3 too (UDP, the same port); shields are reached
            # by edges, over HTTP/1.1.
            **({"http3": True} if place.tls else {}),
            "coordinator": coordinator_url,
            "region": edge.region,
        }
        out.append(
            Process(
                edge.name,
                "edge",
                edge.region,
                listen,
                tuple(node_argv("edge", options)),
                Check("http", f"{node_scheme}://{health_host(listen)}/_edge/health"),
                after=(origin.name, *everyone, *(sh.name for sh in s.shields)),
                secrets=(NODE_TOKEN,),
                state=("cache",),
                published=place.published("edge", edge_listen(edge)),
            )
        )

    listen = place.listen("dns", dns.name, dns.listen)
    out.append(
        Process(
            dns.name,
            "dns",
            "core",
            listen,
            ("dns", "--listen", listen, "--topology", place.dns_topology()),
            Check("dns", health_host(listen), topo.zone.origin.to_text()),
            after=tuple(e.name for e in topo.edges),
            # The authority reads the coordinator's node registry with the operators' token.
            secrets=(OPERATOR_TOKEN,) if topo.health.coordinator else (),
            published=place.published("dns", dns.listen),
        )
    )
    return out
