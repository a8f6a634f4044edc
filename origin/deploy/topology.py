"""The CDN's topology: its DNS zone, regions (with coordinates and the client networks
they serve) and edges (addresses, weights, health URL), read from one TOML file.

This module owns the file format and its validation (every mistake is one line, raised
as TopologyError) and the pure geography on top of it: which region a client address
belongs to, and the regions nearest to another. A `[geoip]` database and the countries
and continents regions list are settings here; reading the database is
origin/geodns/geoip.py's, placing by it the Selector's. `edge dns` answers from it; `edge up`
will start the same topology.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.name

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


#: Every setting a topology may have, by section: the parser accepts these and no
#: other, and tests/unit/test_plan.py checks that each reaches `edge up` and compose alike.
SECTIONS: dict[str, frozenset[str]] = {
    "cdn": frozenset({"name"}),
    "origin": frozenset({"listen", "name", "demo", "small", "root", "latency", "rules"}),
    "shields": frozenset({"name", "listen", "cache_size", "workers"}),
    "coordinator": frozenset({"listen", "name"}),
    # A replicated purge log (NATS JetStream members' client HOST:PORTs) and the
    # coordinators that share it beside [coordinator] (README: several coordinators).
    "purge_log": frozenset({"members", "coordinators"}),
    "dns": frozenset({"listen", "name"}),
    "docker": frozenset({"core_subnet"}),
    "zone": frozenset(
        {
            "name",
            "ttl",
            "negative_ttl",
            "ns",
            "glue",
            "names",
            "answer_count",
            "mname",
            "rname",
            "serial",
        }
    ),
    "health": frozenset({"interval", "timeout", "rise", "fall", "coordinator", "token", "ca"}),
    "regions": frozenset(
        {"name", "lat", "lon", "networks", "default", "docker_subnet", "countries", "continents"}
    ),
    "edges": frozenset(
        {
            "name",
            "region",
            "ipv4",
            "ipv6",
            "weight",
            "health",
            "listen",
            "cache_size",
            "docker_ipv4",
            "workers",
        }
    ),
    "locations": frozenset({"network", "lat", "lon"}),
    "geoip": frozenset({"database", "reload"}),
}

#: Continent codes of the MaxMind format (`continent.code`).
CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})


class TopologyError(ValueError):
    """A mistake in the topology file; the message is one line."""


@dataclass(frozen=True)
class Zone:
    origin: dns.name.Name
    names: tuple[dns.name.Name, ...]  # absolute names answered with edges
    ttl: int = 30
    negative_ttl: int = 60
    ns: tuple[dns.name.Name, ...] = ()
    glue: dict[dns.name.Name, tuple[Address, ...]] = field(default_factory=dict)
    mname: dns.name.Name | None = None
    rname: dns.name.Name | None = None
    serial: int = 1
    answer_count: int = 2


@dataclass(frozen=True)
class Region:
    name: str
    lat: float
    lon: float
    networks: tuple[Network, ...] = ()
    default: bool = False
    docker_subnet: Network | None = None  # the region's network under docker-compose
    countries: tuple[str, ...] = ()  # ISO 3166-1 alpha-2 codes a geoip database places here
    continents: tuple[str, ...] = ()  # continent codes (EU, NA, ...), after countries


@dataclass(frozen=True)
class Edge:
    name: str
    region: str
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    weight: int = 1
    health: str = ""  # URL probed by edge dns; empty: healthy unless the coordinator says not
    listen: str = ""  # HOST:PORT the edge listens on when `edge up` runs it
    cache_size: str = "1G"
    docker_ipv4: ipaddress.IPv4Address | None = None
    workers: int = 1  # processes of `edge serve --workers` (edge.multiproc.workers)


@dataclass(frozen=True)
class Service:
    """One of the central processes `edge up` runs (origin, shield, coordinator, dns)."""

    name: str
    listen: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Services:
    cdn_name: str = "edge"
    origin: Service | None = None
    shields: tuple[Service, ...] = ()
    coordinator: Service | None = None
    dns: Service | None = None
    docker_core_subnet: Network | None = None
    # [purge_log]: the JetStream members (client HOST:PORT; routes on port + ROUTE_OFFSET,
    # monitoring on port + MONITOR_OFFSET) and more coordinators' listen addresses.
    log_members: tuple[str, ...] = ()
    more_coordinators: tuple[str, ...] = ()


@dataclass(frozen=True)
class Location:
    """Client networks outside every region, placed by coordinates (a small GeoIP)."""

    network: Network
    lat: float
    lon: float


@dataclass(frozen=True)
class HealthSettings:
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 1
    coordinator: str = ""
    token: str = ""
    ca: str = ""  # CA bundle for https health URLs (edge up --tls: its local CA)


@dataclass(frozen=True)
class GeoIPSettings:
    """A MaxMind-format database placing clients outside every topology network."""

    database: str = ""  # path of the .mmdb file (relative: to the topology file); "" none
    reload: float = 10.0  # seconds between looks at the file for a new version


@dataclass(frozen=True)
class Topology:
    zone: Zone
    regions: tuple[Region, ...]
    edges: tuple[Edge, ...]
    locations: tuple[Location, ...] = ()
    health: HealthSettings = field(default_factory=HealthSettings)
    services: Services = field(default_factory=Services)
    geoip: GeoIPSettings = field(default_factory=GeoIPSettings)

    def region(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)

    def edges_in(self, region: str) -> list[Edge]:
        return [e for e in self.edges if e.region == region]

    def locate(self, address: Address) -> tuple[Region | None, int, tuple[float, float] | None]:
        """The region whose network holds `address` (the most specific one), that
        network's prefix length, and, when no region's does, the coordinates of a
        [[locations]] network holding it (longest prefix)."""
        best: tuple[int, Region] | None = None
        for region in self.regions:
            for net in region.networks:
                inside = address.version == net.version and address in net
                if inside and (best is None or net.prefixlen > best[0]):
                    best = (net.prefixlen, region)
        if best is not None:
            return best[1], best[0], None
        spot: tuple[int, Location] | None = None
        for loc in self.locations:
            inside = address.version == loc.network.version and address in loc.network
            if inside and (spot is None or loc.network.prefixlen > spot[0]):
                spot = (loc.network.prefixlen, loc)
        if spot is not None:
            return None, spot[0], (spot[1].lat, spot[1].lon)
        return None, 0, None

    def by_distance(self, lat: float, lon: float) -> list[Region]:
        """Regions nearest first (great-circle distance)."""
        return sorted(self.regions, key=lambda r: distance_km(lat, lon, r.lat, r.lon))

    @property
    def default_region(self) -> Region:
        return next((r for r in self.regions if r.default), self.regions[0])


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a sphere of the Earth's mean radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(min(1.0, math.sqrt(a)))


# -- reading the file ---------------------------------------------------------------------


def load_topology(path: Path) -> Topology:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise TopologyError(f"topology file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"topology file {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise TopologyError(f"cannot read topology file {path}: {exc.strerror or exc}") from exc
    topology = parse_topology(raw)
    database = topology.geoip.database
    if database and not Path(database).is_absolute():
        # Relative to the topology file, wherever the process reading it runs.
        geoip = GeoIPSettings(str(Path(path).resolve().parent / database), topology.geoip.reload)
        topology = dataclasses.replace(topology, geoip=geoip)
    if topology.health.ca:
        _check_ca(topology.health.ca)
    return topology


def _check_ca(ca: str) -> None:
    """[health] ca names a CA bundle on this machine: checked when the file is read,
    so a mistake is one line rather than a failing probe loop."""
    import ssl

    try:
        ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise TopologyError(f"[health] ca {ca} is not a PEM CA bundle") from exc
    except OSError as exc:
        raise TopologyError(f"[health] ca {ca}: {exc.strerror or exc}") from exc


def to_toml(raw: dict[str, Any]) -> str:
    """A parsed topology (or any TOML document as tomllib reads it) written back as
    TOML, for `edge up` to hand a derived topology to its children. Tables become
    sections, arrays of tables `[[...]]`, anything deeper inline."""

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines: list[str] = []

    def section(path: list[str], table: dict[str, Any]) -> None:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict) and not is_tables(v)}
        lines.extend(f"{key(k)} = {value(v)}" for k, v in plain.items())
        for k, v in table.items():
            if isinstance(v, dict):
                lines.append(f"\n[{'.'.join(map(key, [*path, k]))}]")
                section([*path, k], v)
            elif is_tables(v):
                for item in v:
                    lines.append(f"\n[[{'.'.join(map(key, [*path, k]))}]]")
                    section([*path, k], item)

    section([], raw)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(raw: dict[str, Any], key: str, allowed: frozenset[str]) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise TopologyError(f"[{key}] must be a table")
    unknown = set(value) - allowed
    if unknown:
        raise TopologyError(f"unknown setting in [{key}]: {sorted(unknown)[0]}")
    return value


def _number(where: str, value: Any, *, low: float, high: float, integer: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "a whole number" if integer else "a number"
        raise TopologyError(f"{where} must be {kind} from {low:g} to {high:g}: {value!r}")
    return value


def _workers(where: str, item: dict[str, Any]) -> int:
    """A node's processes (`edge serve --workers`, edge.multiproc.workers)."""
    return int(_number(f"{where} workers", item.get("workers", 1), low=1, high=64, integer=True))


def _dns_name(where: str, text: Any, origin: dns.name.Name | None = None) -> dns.name.Name:
    if not isinstance(text, str) or not text:
        raise TopologyError(f"{where} must be a DNS name")
    try:
        if origin is not None and text == "@":
            return origin
        name = dns.name.from_text(text, origin=origin)
    except dns.exception.DNSException as exc:
        raise TopologyError(f"{where}: bad DNS name {text!r} ({exc})") from exc
    return name


def _address(where: str, text: Any, version: int | None = None) -> Address:
    try:
        addr = ipaddress.ip_address(str(text))
    except ValueError as exc:
        raise TopologyError(f"{where}: not an IP address: {text!r}") from exc
    if version is not None and addr.version != version:
        raise TopologyError(f"{where}: not an IPv{version} address: {text!r}")
    return addr


def _network(where: str, text: Any) -> Network:
    try:
        return ipaddress.ip_network(str(text), strict=False)
    except ValueError as exc:
        raise TopologyError(f"{where}: not a network: {text!r}") from exc


def parse_topology(raw: dict[str, Any]) -> Topology:
    extra = set(raw) - set(SECTIONS)
    if extra:
        raise TopologyError(f"unknown section in topology: {sorted(extra)[0]}")
    z = _table(raw, "zone", SECTIONS["zone"])
    if "name" not in z:
        raise TopologyError("[zone] needs name (the zone apex, e.g. cdn.example.)")
    origin = _dns_name(
        "[zone] name", z["name"] if str(z["name"]).endswith(".") else f"{z['name']}."
    )
    names = z.get("names", ["@"])
    if not isinstance(names, list) or not names:
        raise TopologyError("[zone] names must be a list of names answered with edges")
    cdn_names = tuple(_dns_name("[zone] names", n, origin) for n in names)
    for n in cdn_names:
        if not n.is_subdomain(origin):
            raise TopologyError(f"[zone] names: {n} is outside the zone {origin}")
    ns = tuple(_dns_name("[zone] ns", n, origin) for n in z.get("ns", [f"ns1.{origin}"]))
    glue_raw = z.get("glue", {})
    if not isinstance(glue_raw, dict):
        raise TopologyError("[zone] glue must be a table of NAME = [addresses]")
    glue = {
        _dns_name("[zone] glue", k, origin): tuple(_address(f"[zone] glue {k}", a) for a in v)
        for k, v in glue_raw.items()
    }
    zone = Zone(
        origin=origin,
        names=cdn_names,
        ttl=_number("[zone] ttl", z.get("ttl", 30), low=0, high=86400, integer=True),
        negative_ttl=_number(
            "[zone] negative_ttl", z.get("negative_ttl", 60), low=0, high=86400, integer=True
        ),
        ns=ns,
        glue=glue,
        mname=_dns_name("[zone] mname", z["mname"], origin) if "mname" in z else ns[0],
        rname=_dns_name("[zone] rname", z.get("rname", f"hostmaster.{origin}"), origin),
        serial=_number("[zone] serial", z.get("serial", 1), low=0, high=2**32 - 1, integer=True),
        answer_count=_number(
            "[zone] answer_count", z.get("answer_count", 2), low=1, high=64, integer=True
        ),
    )
    h = _table(raw, "health", SECTIONS["health"])
    health = HealthSettings(
        interval=_number("[health] interval", h.get("interval", 2.0), low=0.05, high=3600),
        timeout=_number("[health] timeout", h.get("timeout", 1.0), low=0.01, high=60),
        rise=_number("[health] rise", h.get("rise", 2), low=1, high=100, integer=True),
        fall=_number("[health] fall", h.get("fall", 1), low=1, high=100, integer=True),
        coordinator=str(h.get("coordinator", "")),
        token=str(h.get("token", "")),
        ca=str(h.get("ca", "")),
    )
    regions = _regions(raw.get("regions", []))
    edges = _edges(raw.get("edges", []), {r.name for r in regions})
    locations = []
    for i, item in enumerate(_list(raw, "locations")):
        where = f"[[locations]] #{i + 1}"
        _keys(where, item, SECTIONS["locations"], {"network", "lat", "lon"})
        locations.append(
            Location(
                _network(where, item["network"]),
                _number(f"{where} lat", item["lat"], low=-90, high=90),
                _number(f"{where} lon", item["lon"], low=-180, high=180),
            )
        )
    g = _table(raw, "geoip", SECTIONS["geoip"])
    database = g.get("database", "")
    if not isinstance(database, str):
        raise TopologyError("[geoip] database must be the path of a .mmdb file")
    geoip = GeoIPSettings(
        database, _number("[geoip] reload", g.get("reload", 10.0), low=0.1, high=86400)
    )
    return Topology(zone, regions, edges, tuple(locations), health, _services(raw), geoip)


def _listen(where: str, value: Any) -> str:
    from edge.config import ConfigError, parse_listen

    try:
        parse_listen(str(value))
    except ConfigError as exc:
        raise TopologyError(f"{where}: {exc}") from exc
    return str(value)


def _service(raw: dict[str, Any], key: str, default_name: str) -> Service | None:
    if key not in raw:
        return None
    table = _table(raw, key, SECTIONS[key])
    if "listen" not in table:
        raise TopologyError(f"[{key}] needs listen (HOST:PORT)")
    options = {k: v for k, v in table.items() if k not in ("listen", "name")}
    return Service(
        str(table.get("name", default_name)), _listen(f"[{key}]", table["listen"]), options
    )


def _services(raw: dict[str, Any]) -> Services:
    """The processes `edge up` starts besides the edges (all optional for `edge dns`)."""
    cdn = _table(raw, "cdn", SECTIONS["cdn"])
    shields = []
    for i, item in enumerate(_list(raw, "shields")):
        where = f"[[shields]] #{i + 1}"
        _keys(where, item, SECTIONS["shields"], {"name", "listen"})
        if not _NAME.match(str(item["name"])):
            raise TopologyError(f"{where}: name must be letters, digits, '.', '_' or '-'")
        options = {
            "cache_size": str(item.get("cache_size", "2G")),
            "workers": _workers(f"shield {item['name']}", item),
        }
        shields.append(Service(item["name"], _listen(where, item["listen"]), options))
    docker = _table(raw, "docker", SECTIONS["docker"])
    members, more = _purge_log(raw)
    return Services(
        log_members=members,
        more_coordinators=more,
        cdn_name=str(cdn.get("name", "edge")),
        origin=_service(raw, "origin", "origin"),
        shields=tuple(shields),
        coordinator=_service(raw, "coordinator", "coordinator"),
        dns=_service(raw, "dns", "dns"),
        docker_core_subnet=_network("[docker] core_subnet", docker["core_subnet"])
        if "core_subnet" in docker
        else None,
    )


#: A member's route and monitoring ports, from its client port (NATS's own 4222, 6222
#: and 8222 are one such trio).
ROUTE_OFFSET = 2000
MONITOR_OFFSET = 4000


def _purge_log(raw: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    table = _table(raw, "purge_log", SECTIONS["purge_log"])
    if not table:
        return (), ()
    members = table.get("members", [])
    more = table.get("coordinators", [])
    if not isinstance(members, list) or len(members) not in (1, 3, 5):
        raise TopologyError("[purge_log] members must list 1, 3 or 5 HOST:PORT (a quorum)")
    if not isinstance(more, list):
        raise TopologyError("[purge_log] coordinators must be a list of HOST:PORT")
    listens = [_listen("[purge_log] members", m) for m in members]
    for listen in listens:
        if int(listen.rsplit(":", 1)[1]) + MONITOR_OFFSET > 65535:
            raise TopologyError(
                f"[purge_log] member {listen}: its port + {MONITOR_OFFSET} (monitoring) "
                "must be a port too"
            )
    return tuple(listens), tuple(_listen("[purge_log] coordinators", c) for c in more)


def _list(raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise TopologyError(f"[[{key}]] must be an array of tables")
    return value


def _keys(where: str, item: dict[str, Any], allowed: frozenset[str], required: set[str]) -> None:
    unknown = set(item) - allowed
    if unknown:
        raise TopologyError(f"unknown setting in {where}: {sorted(unknown)[0]}")
    missing = required - set(item)
    if missing:
        raise TopologyError(f"{where} needs {sorted(missing)[0]}")


def _regions(items: Any) -> tuple[Region, ...]:
    regions = []
    for i, item in enumerate(_list({"regions": items}, "regions")):
        where = f"[[regions]] #{i + 1}"
        _keys(where, item, SECTIONS["regions"], {"name", "lat", "lon"})
        name = item["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise TopologyError(f"{where}: name must be letters, digits, '.', '_' or '-'")
        nets = item.get("networks", [])
        if not isinstance(nets, list):
            raise TopologyError(f"{where}: networks must be a list of CIDRs")
        regions.append(
            Region(
                name,
                _number(f"region {name} lat", item["lat"], low=-90, high=90),
                _number(f"region {name} lon", item["lon"], low=-180, high=180),
                tuple(_network(f"region {name}", n) for n in nets),
                bool(item.get("default", False)),
                _network(f"region {name} docker_subnet", item["docker_subnet"])
                if "docker_subnet" in item
                else None,
                _codes(f"region {name} countries", item.get("countries", []), None),
                _codes(f"region {name} continents", item.get("continents", []), CONTINENTS),
            )
        )
    if not regions:
        raise TopologyError("the topology needs at least one [[regions]]")
    if len({r.name for r in regions}) != len(regions):
        raise TopologyError("two regions have the same name")
    if sum(r.default for r in regions) > 1:
        raise TopologyError("only one region can be the default")
    for kind in ("countries", "continents"):
        seen: dict[str, str] = {}
        for r in regions:
            for code in getattr(r, kind):
                if code in seen:
                    raise TopologyError(f"{code} is in the {kind} of {seen[code]} and {r.name}")
                seen[code] = r.name
    return tuple(regions)


def _codes(where: str, value: Any, allowed: frozenset[str] | None) -> tuple[str, ...]:
    """Country (ISO 3166-1 alpha-2) or continent codes, upper case as databases say them."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TopologyError(f"{where} must be a list of codes")
    codes = tuple(v.upper() for v in value)
    for code in codes:
        bad = code not in allowed if allowed is not None else not re.fullmatch(r"[A-Z]{2}", code)
        if bad:
            want = ", ".join(sorted(allowed)) if allowed else "two letters, e.g. DE"
            raise TopologyError(f"{where}: {code!r} is not a code ({want})")
    return codes


def _edges(items: Any, regions: set[str]) -> tuple[Edge, ...]:
    edges = []
    for i, item in enumerate(_list({"edges": items}, "edges")):
        where = f"[[edges]] #{i + 1}"
        _keys(where, item, SECTIONS["edges"], {"name", "region"})
        name = item["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise TopologyError(f"{where}: name must be letters, digits, '.', '_' or '-'")
        if item["region"] not in regions:
            raise TopologyError(f"edge {name}: unknown region {item['region']!r}")
        if "ipv4" not in item and "ipv6" not in item:
            raise TopologyError(f"edge {name} needs ipv4 or ipv6")
        # An edge with a listen address is probed there unless it names its own URL.
        default_health = f"http://{item['listen']}/_edge/health" if "listen" in item else ""
        health = item.get("health", default_health)
        if health and not str(health).startswith(("http://", "https://")):
            raise TopologyError(f"edge {name}: health must be an http(s) URL")
        edges.append(
            Edge(
                name,
                item["region"],
                _address(f"edge {name} ipv4", item["ipv4"], 4) if "ipv4" in item else None,  # type: ignore[arg-type]
                _address(f"edge {name} ipv6", item["ipv6"], 6) if "ipv6" in item else None,  # type: ignore[arg-type]
                _number(
                    f"edge {name} weight", item.get("weight", 1), low=1, high=1000, integer=True
                ),
                str(health),
                _listen(f"edge {name}", item["listen"]) if "listen" in item else "",
                str(item.get("cache_size", "1G")),
                _address(f"edge {name} docker_ipv4", item["docker_ipv4"], 4)  # type: ignore[arg-type]
                if "docker_ipv4" in item
                else None,
                _workers(f"edge {name}", item),
            )
        )
    if not edges:
        raise TopologyError("the topology needs at least one [[edges]]")
    if len({e.name for e in edges}) != len(edges):
        raise TopologyError("two edges have the same name")
    return tuple(edges)
