"""docker-compose.yml and origin/topologies/docker.toml, generated from the default
topology so that `docker compose up` runs the same CDN as `edge up`.

This module owns where the plan's processes run in containers (networks, addresses,
volumes, what is published), their rendering as compose services, the docker view of
the topology the GeoDNS authority answers from, and the small deterministic YAML and
TOML writers both files need. `python -m origin.deploy.compose` rewrites both files;
`python -m origin.deploy.compose --check` exits 1 with a one-line summary when the committed
files differ from what it would write.

The processes, their options, secrets, health checks, start order and state are
origin.deploy.plan's, the one plan `edge up` runs too; this module adds only where they are
(the `Docker` placement) and how compose writes them:

- One service per process, running the image's `edge` console script with the plan's
  argv. The origin, coordinator and GeoDNS authority listen on 0.0.0.0 at the topology's
  port; services reach each other by service name (`http://origin:8081`); state lives
  in one volume per process (`NAME-cache` at /cache, `NAME-data` at /data).
- One network, `cdn`, as the internet is one: every client reaches every edge, as it
  must when GeoDNS sends a region's clients elsewhere because their own edges are down
  (docker drops traffic between two of its networks, so a network per region would
  leave them timing out). Its subnet is the smallest one holding [docker] core_subnet
  and every region's docker_subnet; those stay address ranges, so the GeoDNS authority
  still tells a region's clients by their source address. Every container has one
  fixed address: in core_subnet the origin is .10, shield i (from 0) .20+i, the
  coordinator .30 and the GeoDNS authority .53; edge i is at its docker_ipv4 in its
  region's docker_subnet; a client of a region takes any free address in that region's
  docker_subnet. (.1 of the network is the gateway docker takes.)
- Shields and edges listen on their own address, not 0.0.0.0: a node registers with
  the coordinator the address it listens on, and that is where others reach it.
- origin/topologies/docker.toml is the topology as the containers see it: services at
  their core addresses, edges at docker_ipv4 (health URLs on those), region networks
  without the loopback ones, glue for the authority's name on its docker address. The
  image carries it at /etc/edge/topology.docker.toml.
- Start order is the plan's, by healthchecks (the plan's checks, as Python one-liners:
  the image has no curl); every service restarts unless stopped and runs under an init
  that forwards signals. Tokens come from the environment (EDGE_TOKEN,
  EDGE_NODE_TOKEN; compose refuses to start without them), never from the file.
- Trust: each shield is given its edges' addresses as --trusted-proxy (they reach it
  from there), and nothing else; admin endpoints are left to each node's default,
  127.0.0.1 in its own container, which is where its healthcheck runs.
- Published on this machine's loopback only, at the addresses `edge up` listens on:
  each edge at its topology listen address (127.R.0.x:8080), the GeoDNS authority at
  its own over UDP and TCP. Every edge is then one URL's host and port
  (www.cdn.example:8080 resolved to any edge), so the shield keeps one copy for all and
  a purge of that URL removes it everywhere. Nothing else is reachable from the host.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edge.config import parse_listen
from origin.deploy.plan import Check, PlanError, Process, edge_listen, plan
from origin.deploy.topology import (
    Edge,
    GeoIPSettings,
    Network,
    Service,
    Topology,
    TopologyError,
    load_topology,
)

ORIGIN = Path(__file__).resolve().parents[1]
REPO = ORIGIN.parent
DEFAULT_TOPOLOGY = ORIGIN / "topologies" / "default.toml"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKER_TOPOLOGY = ORIGIN / "topologies" / "docker.toml"
IMAGE_TOPOLOGY = "/etc/edge/topology.docker.toml"  # where the Dockerfile puts docker.toml

# Host numbers in a subnet (the address is the subnet's first address + the number).
GATEWAY_HOST = 1
ORIGIN_HOST = 10
SHIELD_HOST = 20
MAX_SHIELDS = 10  # .20 to .29, below the coordinator
COORDINATOR_HOST = 30
DNS_HOST = 53
NETWORK = "cdn"  # the one docker network (see the module's docstring)
CLIENT_HOST = 200  # a region's example client in the header: .200 of its docker_subnet
WIDEST_NETWORK = 16  # the network's prefix is at most this wide: a /16

HEALTHCHECK_TIMING = {"interval": "3s", "timeout": "3s", "retries": 20, "start_period": "30s"}


class ComposeError(ValueError):
    """The topology cannot be run under docker-compose; the message is one line."""


# -- addresses ----------------------------------------------------------------------------


def host(subnet: Network, number: int, what: str) -> ipaddress.IPv4Address:
    """The address `number` of an IPv4 subnet, which must hold it."""
    if subnet.version != 4:
        raise ComposeError(f"{what}: docker networks here are IPv4, got {subnet}")
    if not 0 < number < subnet.num_addresses - 1:
        raise ComposeError(f"{what}: {subnet} has no host .{number}")
    return ipaddress.IPv4Address(int(subnet.network_address) + number)


def port_of(listen: str) -> int:
    return parse_listen(listen)[1]


def loopback_publish(listen: str, inside: int, what: str, suffix: str = "") -> str:
    """A `ports` entry publishing container port `inside` at the loopback `listen`
    address of the topology (never beyond this machine)."""
    address, port = parse_listen(listen)
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback or ":" in address:
        raise ComposeError(f"{what}: published on an IPv4 loopback address only, got {listen}")
    return f"{address}:{port}:{inside}{suffix}"


def covering(subnets: list[Network]) -> ipaddress.IPv4Network:
    """The smallest IPv4 network holding every subnet, at most a /16."""
    net = subnets[0]
    while not all(s.subnet_of(net) for s in subnets):  # type: ignore[arg-type]
        if net.prefixlen <= WIDEST_NETWORK:
            raise ComposeError(
                f"[docker] core_subnet and the regions' docker_subnet must lie in one "
                f"/{WIDEST_NETWORK}"
            )
        net = net.supernet()
    assert isinstance(net, ipaddress.IPv4Network)
    return net


@dataclass(frozen=True)
class Layout:
    """The topology's processes with their docker addresses, checked for collisions."""

    topology: Topology
    origin: Service
    shields: tuple[Service, ...]
    coordinator: Service
    dns: Service
    core: Network
    network: ipaddress.IPv4Network  # the one docker network, holding all the subnets
    core_addresses: dict[str, ipaddress.IPv4Address]  # service name -> its address
    region_subnets: dict[str, Network]  # region name -> docker_subnet

    @classmethod
    def of(cls, topo: Topology) -> Layout:
        s = topo.services
        if s.origin is None or s.coordinator is None or s.dns is None or not s.shields:
            raise ComposeError("the topology needs [origin], [[shields]], [coordinator] and [dns]")
        if s.docker_core_subnet is None:
            raise ComposeError("the topology needs [docker] core_subnet")
        if len(s.shields) > MAX_SHIELDS:
            raise ComposeError(f"at most {MAX_SHIELDS} shields have a core address")
        core = s.docker_core_subnet
        core_addresses = {
            s.origin.name: host(core, ORIGIN_HOST, "[docker] core_subnet"),
            **{
                sh.name: host(core, SHIELD_HOST + i, "[docker] core_subnet")
                for i, sh in enumerate(s.shields)
            },
            s.coordinator.name: host(core, COORDINATOR_HOST, "[docker] core_subnet"),
            s.dns.name: host(core, DNS_HOST, "[docker] core_subnet"),
        }
        # A service name is a DNS name on the network and a key in the compose file.
        names = {*core_addresses, *(e.name for e in topo.edges)}
        if len(names) != 3 + len(s.shields) + len(topo.edges):
            raise ComposeError("two processes of the topology have the same name")
        region_subnets: dict[str, Network] = {}
        for region in topo.regions:
            if region.docker_subnet is None:
                raise ComposeError(f"region {region.name} needs docker_subnet")
            for other, subnet in [("core", core), *region_subnets.items()]:
                if region.docker_subnet.overlaps(subnet):  # type: ignore[arg-type]
                    raise ComposeError(f"region {region.name} docker_subnet overlaps {other}")
            region_subnets[region.name] = region.docker_subnet
        network = covering([core, *region_subnets.values()])
        gateway = network.network_address + GATEWAY_HOST
        taken: dict[ipaddress.IPv4Address, str] = {}
        for edge in topo.edges:
            if edge.docker_ipv4 is None:
                raise ComposeError(f"edge {edge.name} needs docker_ipv4")
            subnet = region_subnets[edge.region]
            if edge.docker_ipv4 not in subnet:
                raise ComposeError(
                    f"edge {edge.name} docker_ipv4 {edge.docker_ipv4} is outside {subnet}"
                )
            if edge.docker_ipv4 in (subnet.network_address, subnet.broadcast_address, gateway):
                what = "the gateway" if edge.docker_ipv4 == gateway else "not a host address"
                raise ComposeError(f"edge {edge.name} docker_ipv4 {edge.docker_ipv4}: {what}")
            if edge.docker_ipv4 in taken:
                raise ComposeError(
                    f"edges {taken[edge.docker_ipv4]} and {edge.name} share {edge.docker_ipv4}"
                )
            taken[edge.docker_ipv4] = edge.name
        return cls(
            topo,
            s.origin,
            s.shields,
            s.coordinator,
            s.dns,
            core,
            network,
            core_addresses,
            region_subnets,
        )

    def docker_listen(self, service: Service) -> str:
        return f"{self.core_addresses[service.name]}:{port_of(service.listen)}"

    def edge_listen(self, edge: Edge) -> str:
        return f"{edge.docker_ipv4}:{port_of(edge_listen(edge))}"


# -- docker-compose.yml -------------------------------------------------------------------


@dataclass(frozen=True)
class Docker:
    """The placement of compose (origin.deploy.plan): every process in its container at its
    fixed address on the one network, reached by service name, state in volumes."""

    layout: Layout
    tls: bool = False  # `edge up --tls` only: compose serves plain HTTP

    def listen(self, role: str, name: str, listen: str, edge: Edge | None = None) -> str:
        if edge is not None:
            return self.layout.edge_listen(edge)
        if role == "shield":
            # A node registers the address it listens on: the one others reach it at.
            return f"{self.layout.core_addresses[name]}:{port_of(listen)}"
        return f"0.0.0.0:{port_of(listen)}"

    def url(self, name: str, listen: str) -> str:
        return f"{name}:{port_of(listen)}"

    def directory(self, name: str, kind: str) -> str:
        return f"/{kind}"  # the process's own volume, `NAME-KIND`

    def edge_sources(self, topo: Topology) -> list[str]:
        return [str(e.docker_ipv4) for e in topo.edges]

    def certificate(self, name: str, listen: str, names: list[str]) -> dict[str, Any]:
        return {}

    def upstream_ca(self) -> dict[str, Any]:
        return {}

    def dns_topology(self) -> str:
        return IMAGE_TOPOLOGY

    def published(self, role: str, listen: str) -> str:
        # Users reach the edges and the GeoDNS authority; the rest stays inside.
        return listen if role in ("edge", "dns") else ""


def _check(check: Check) -> list[str]:
    # python:3.11-slim has no curl; urlopen raises (exit 1) on no answer or 4xx/5xx.
    if check.kind == "http":
        code = f"import urllib.request; urllib.request.urlopen({check.target!r}, timeout=2)"
    else:
        host, port = check.target.rsplit(":", 1)
        code = (
            "import dns.message, dns.query; "
            f"dns.query.udp(dns.message.make_query({check.name!r}, 'SOA'), {host!r}, "
            f"port={port}, timeout=2)"
        )
    return ["CMD", "python", "-c", code]


def _environment(process: Process) -> dict[str, str]:
    # `:?` makes compose refuse to start when a token is unset: no default token exists.
    secrets = {name: f"${{{name}:?set {name}}}" for name in process.secrets}
    return {**secrets, **process.env}


def _ports(process: Process) -> list[str]:
    if not process.published:
        return []
    inside = port_of(process.listen)
    what = f"{process.role} {process.name}"
    if process.role == "dns":
        return [
            loopback_publish(process.published, inside, what, "/udp"),
            loopback_publish(process.published, inside, what, "/tcp"),
        ]
    return [loopback_publish(process.published, inside, what)]


def compose_model(topo: Topology) -> dict[str, Any]:
    """The compose file as plain data (mappings in the order they are written): the
    plan's processes, one service each."""
    layout = Layout.of(topo)
    if topo.services.log_members:
        # The image has no nats-server (Dockerfile): the replicated purge log runs under
        # `edge up`, or beside compose on a cluster of the operator's.
        raise ComposeError("[purge_log] runs under `edge up` only: the image has no nats-server")
    try:
        processes = plan(topo, Docker(layout))
    except PlanError as exc:
        raise ComposeError(f"the topology {exc}") from exc
    addresses = {**layout.core_addresses, **{e.name: e.docker_ipv4 for e in topo.edges}}
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for process in processes:
        service: dict[str, Any] = {
            "build": ".",
            "image": f"{topo.services.cdn_name}:local",
            "init": True,  # the process is not PID 1: signals reach it, children are reaped
            "restart": "unless-stopped",
            "command": [process.program, *process.argv],
        }
        environment = _environment(process)
        if environment:
            service["environment"] = environment
        service["networks"] = {NETWORK: {"ipv4_address": str(addresses[process.name])}}
        ports = _ports(process)
        if ports:
            service["ports"] = ports
        if process.state:
            mounts = [f"{process.name}-{kind}:/{kind}" for kind in process.state]
            volumes.update({m.split(":")[0]: {} for m in mounts})
            service["volumes"] = mounts
        service["healthcheck"] = {"test": _check(process.check), **HEALTHCHECK_TIMING}
        if process.after:
            service["depends_on"] = {d: {"condition": "service_healthy"} for d in process.after}
        services[process.name] = service
    # ADDRESS:PORT:INSIDE[/PROTOCOL]: one host address, port and protocol per service.
    published = [
        (*p.split(":")[:2], p.partition("/")[2] or "tcp")
        for service in services.values()
        for p in service.get("ports", [])
    ]
    if len(published) != len(set(published)):
        raise ComposeError("two processes of the topology are published at one address")

    networks = {NETWORK: {"ipam": {"config": [{"subnet": str(layout.network)}]}}}
    return {
        "name": topo.services.cdn_name,
        "services": services,
        "networks": networks,
        "volumes": volumes,
    }


def compose_header(topo: Topology, source: str) -> list[str]:
    layout = Layout.of(topo)
    width = max(len(e.name) for e in (*topo.edges, layout.dns)) + 2
    published = [f"  {e.name:<{width}}http://{edge_listen(e)}" for e in topo.edges]
    dns_host, dns_port = parse_listen(layout.dns.listen)
    site = f"www.{topo.zone.origin.to_text(omit_final_dot=True)}"
    first_host, first = parse_listen(edge_listen(topo.edges[0]))
    region = topo.regions[-1]
    assert region.docker_subnet is not None  # Layout.of checked
    client = region.docker_subnet.network_address + CLIENT_HOST
    cdn = topo.services.cdn_name
    return [
        f"Generated by `python -m origin.deploy.compose` from {source}:",
        "edit that topology or origin/deploy/compose.py and run it again, not this file",
        "(tests/unit/test_compose.py checks that they agree).",
        "",
        "  EDGE_TOKEN=... EDGE_NODE_TOKEN=... docker compose up --build",
        "",
        "Published on this machine only:",
        *published,
        f"  {layout.dns.name:<{width}}udp+tcp {dns_host}:{dns_port}",
        "Every edge is the same site: the shield keeps one copy, a purge of the URL removes it.",
        "For example (the tokens set in the shell for every compose command):",
        f"  curl -si --resolve {site}:{first}:{first_host} http://{site}:{first}/catalogue.json",
        f"  docker compose exec {layout.coordinator.name} edge purge http://{site}:{first}/catalogue.json",
        f"  docker compose exec {layout.coordinator.name} edge status",
        f"GeoDNS steers by source address: a client in a region's docker_subnet on the {NETWORK}",
        f"network, e.g. region {region.name}'s {client}, asking the authority at "
        f"{layout.core_addresses[layout.dns.name]}:{dns_port}:",
        f"  docker run --rm --network {cdn}_{NETWORK} --ip {client} {cdn}:local python -c \\",
        '    "import dns.message as m, dns.query as q; '
        f"print(q.udp(m.make_query('{site}', 'A'), "
        f"'{layout.core_addresses[layout.dns.name]}', port={dns_port}))\"",
    ]


# -- origin/topologies/docker.toml --------------------------------------------------------


def docker_topology(topo: Topology, source: str) -> str:
    """The topology as the containers see it, as TOML that load_topology reads."""
    layout = Layout.of(topo)
    s = topo.services
    z = topo.zone
    dns_host = parse_listen(layout.dns.listen)[0]
    dns_addresses = _dns_addresses(layout)

    def glue(addresses: tuple[Any, ...]) -> list[str]:
        # The authority's own loopback address becomes its addresses on docker networks.
        out: list[str] = []
        for a in addresses:
            out += dns_addresses if str(a) == dns_host else [str(a)]
        return out

    out = TomlWriter(
        [
            f"Generated by `python -m origin.deploy.compose` from {source}:",
            "the same CDN as the containers of docker-compose.yml see it (edges at",
            "docker_ipv4, services at their core addresses). Do not edit it;",
            "tests/unit/test_compose.py checks that it agrees with the generator.",
        ]
    )
    out.table("cdn", {"name": s.cdn_name})
    out.table(
        "origin",
        {"name": layout.origin.name, "listen": layout.docker_listen(layout.origin)}
        | layout.origin.options,
    )
    for shield in layout.shields:
        out.array_item(
            "shields",
            {"name": shield.name, "listen": layout.docker_listen(shield)}
            # workers = 1 is the default: written only when it says more.
            | {k: v for k, v in shield.options.items() if k != "workers" or v != 1},
        )
    for key, service in (("coordinator", layout.coordinator), ("dns", layout.dns)):
        out.table(key, {"name": service.name, "listen": layout.docker_listen(service)})
    out.table("docker", {"core_subnet": str(layout.core)})
    out.table(
        "zone",
        {
            "name": z.origin.to_text(),
            "ttl": z.ttl,
            "negative_ttl": z.negative_ttl,
            "ns": [n.to_text() for n in z.ns],
            "glue": {k.to_text(): glue(v) for k, v in z.glue.items()},
            "names": [n.to_text() for n in z.names],
            "answer_count": z.answer_count,
            "mname": z.mname.to_text() if z.mname is not None else None,
            "rname": z.rname.to_text() if z.rname is not None else None,
            "serial": z.serial,
        },
    )
    h = topo.health
    out.table(
        "health",
        {
            "interval": h.interval,
            "timeout": h.timeout,
            "rise": h.rise,
            "fall": h.fall,
            "coordinator": _coordinator_url(layout, h.coordinator),
            "token": h.token or None,
        },
    )
    for region in topo.regions:
        subnet = layout.region_subnets[region.name]
        # No container has a loopback address: only the other networks place clients.
        networks = [str(n) for n in region.networks if not n.is_loopback]
        if str(subnet) not in networks:
            networks.append(str(subnet))
        out.array_item(
            "regions",
            {
                "name": region.name,
                "lat": region.lat,
                "lon": region.lon,
                "networks": networks,
                "docker_subnet": str(subnet),
                "default": region.default or None,
                "countries": list(region.countries) or None,
                "continents": list(region.continents) or None,
            },
        )
    for edge in topo.edges:
        listen = layout.edge_listen(edge)
        out.array_item(
            "edges",
            {
                "name": edge.name,
                "region": edge.region,
                "ipv4": str(edge.docker_ipv4),
                "listen": listen,
                "health": _edge_health(edge, listen),
                "weight": edge.weight,
                "cache_size": edge.cache_size,
                "docker_ipv4": str(edge.docker_ipv4),
                **({"workers": edge.workers} if edge.workers > 1 else {}),
            },
        )
    for loc in topo.locations:
        out.array_item("locations", {"network": str(loc.network), "lat": loc.lat, "lon": loc.lon})
    # [geoip] database is a file on this machine, not in the image: the containers'
    # authority places clients by the topology's networks alone (README: GeoIP).
    if topo.geoip.reload != GeoIPSettings().reload:
        out.table("geoip", {"reload": topo.geoip.reload})
    return out.text()


def _dns_addresses(layout: Layout) -> list[str]:
    return [str(layout.core_addresses[layout.dns.name])]


def _coordinator_url(layout: Layout, url: str) -> str | None:
    """The [health] coordinator URL, moved to the coordinator's core address when it
    named the coordinator's loopback listen address."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.netloc == layout.coordinator.listen:
        return urlunsplit(parts._replace(netloc=layout.docker_listen(layout.coordinator)))
    return url


def _edge_health(edge: Edge, listen: str) -> str:
    """The edge's health URL on its docker address (a URL elsewhere is kept)."""
    if not edge.health:
        return f"http://{listen}/_edge/health"
    parts = urlsplit(edge.health)
    if parts.netloc == edge.listen:
        return urlunsplit(parts._replace(netloc=listen))
    return edge.health


# -- writers ------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_TOML_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Plain YAML 1.1 reads these as booleans or null, not strings.
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _scalar(value: Any) -> str:
    """A scalar both YAML and TOML read the same way. JSON's string escapes are a subset
    of both YAML's double-quoted and TOML's basic strings; every string is quoted, so
    none is read as a number, a boolean or (YAML 1.1) a base-60 port mapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)
    raise TypeError(f"not a scalar: {value!r}")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


def _key(key: str) -> str:
    """A mapping key written plain; the compose file's keys (service, network, volume
    names) are kept to those every YAML reader takes as the same string."""
    if not _PLAIN_KEY.match(key) or key.lower() in _YAML_WORDS:
        raise ComposeError(f"{key!r} cannot be a name in docker-compose.yml")
    return key


def to_yaml(value: dict[str, Any], header: list[str] | None = None, width: int = 100) -> str:
    """Block YAML for mappings, lists and scalars: a list of scalars on one line (a
    JSON array) when it fits, a mapping's keys in their order, `{}` for an empty one."""
    lines = [f"# {h}".rstrip() for h in header or []]
    if lines:
        lines.append("")

    def flow(items: list[Any]) -> str:
        return "[" + ", ".join(_scalar(i) for i in items) + "]"

    def mapping(m: dict[str, Any], indent: int, first_prefix: str | None = None) -> None:
        for n, (k, v) in enumerate(m.items()):
            pad = first_prefix if (n == 0 and first_prefix is not None) else " " * indent
            head = f"{pad}{_key(k)}:"
            if _is_scalar(v):
                lines.append(f"{head} {_scalar(v)}")
            elif isinstance(v, dict) and not v:
                lines.append(f"{head} {{}}")
            elif isinstance(v, dict):
                lines.append(head)
                mapping(v, indent + 2)
            elif (
                isinstance(v, list)
                and all(_is_scalar(i) for i in v)
                and (len(head) + 1 + len(flow(v)) <= width)
            ):
                lines.append(f"{head} {flow(v)}")
            elif isinstance(v, list):
                lines.append(head)
                sequence(v, indent + 2)
            else:
                raise TypeError(f"cannot write {k}: {v!r}")

    def sequence(items: list[Any], indent: int) -> None:
        for item in items:
            if _is_scalar(item):
                lines.append(f"{' ' * indent}- {_scalar(item)}")
            elif isinstance(item, dict) and item:
                mapping(item, indent + 2, first_prefix=f"{' ' * indent}- ")
            else:
                raise TypeError(f"cannot write list item {item!r}")

    mapping(value, 0)
    return "\n".join(lines) + "\n"


class TomlWriter:
    """Tables and arrays of tables of scalars, lists and one level of inline tables;
    a None value is left out (the parser's default applies)."""

    def __init__(self, header: list[str]) -> None:
        self.lines = [f"# {h}".rstrip() for h in header]

    def _section(self, head: str, values: dict[str, Any]) -> None:
        self.lines += ["", head]
        for key, value in values.items():
            if value is not None:
                assert _TOML_BARE_KEY.match(key), key  # the keys are this module's own
                self.lines.append(f"{key} = {self._value(value)}")

    def _value(self, value: Any) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(self._value(v) for v in value) + "]"
        if isinstance(value, dict):
            inner = ", ".join(f"{_scalar(k)} = {self._value(v)}" for k, v in value.items())
            return "{ " + inner + " }" if inner else "{}"
        return _scalar(value)

    def table(self, name: str, values: dict[str, Any]) -> None:
        self._section(f"[{name}]", values)

    def array_item(self, name: str, values: dict[str, Any]) -> None:
        self._section(f"[[{name}]]", values)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# -- the command --------------------------------------------------------------------------


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def render(
    topology: Path = DEFAULT_TOPOLOGY,
    compose_file: Path = COMPOSE_FILE,
    docker_file: Path = DOCKER_TOPOLOGY,
) -> dict[Path, str]:
    """What the generator writes: each output file and its text."""
    topo = load_topology(topology)
    source = _relative(topology)
    return {
        compose_file: to_yaml(compose_model(topo), compose_header(topo, source)),
        docker_file: docker_topology(topo, source),
    }


def differences(outputs: dict[Path, str]) -> list[str]:
    """One phrase per output file whose text on disk is not the generator's."""
    found = []
    for path, text in outputs.items():
        name = _relative(path)
        try:
            current = path.read_text()
        except FileNotFoundError:
            found.append(f"{name} is missing")
            continue
        if current == text:
            continue
        old, new = current.splitlines(), text.splitlines()
        changed = [
            line
            for line in difflib.unified_diff(old, new, lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))
        ]
        first = next(
            (i + 1 for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
            min(len(old), len(new)) + 1,
        )
        lines = "line" if len(changed) == 1 else "lines"
        found.append(f"{name} differs in {len(changed)} {lines} from line {first}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m origin.deploy.compose",
        description="Write docker-compose.yml and origin/topologies/docker.toml from "
        "origin/topologies/default.toml.",
    )
    parser.add_argument(
        "--check", action="store_true", help="Write nothing; exit 1 if either file differs."
    )
    args = parser.parse_args(argv)
    if not (REPO / "pyproject.toml").is_file():
        print(
            f"origin.deploy.compose: run it from a checkout of the project, not {REPO}",
            file=sys.stderr,
        )
        return 2
    try:
        outputs = render()
    except (TopologyError, ComposeError) as exc:
        print(f"origin.deploy.compose: {exc}", file=sys.stderr)
        return 2
    if args.check:
        stale = differences(outputs)
        if stale:
            print(
                f"origin.deploy.compose: {'; '.join(stale)}; run python -m origin.deploy.compose",
                file=sys.stderr,
            )
            return 1
        return 0
    for path, text in outputs.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {_relative(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
