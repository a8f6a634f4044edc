"""The GeoDNS selector (pure: no I/O, health and the geolocation lookup passed in):
which edges answer a client.

Its region by EDNS Client Subnet (RFC 7871) or source address: the topology's networks
first (regions, then [[locations]]), then a geolocation database's record (a country or
continent a region lists, else the nearest region to its coordinates), else the default
region; the healthy edges there, the next-nearest region when there are none, a weighted
pick when there are more than the answer size. HTTP steering (origin/geodns/steer.py)
asks the same questions.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from origin.deploy.topology import Address, Edge, Network, Region, Topology
from origin.geodns.geoip import GeoRecord, Lookup, WatchedDatabase, unmapped


@dataclass(frozen=True)
class Decision:
    edges: tuple[Edge, ...]
    region: str
    scope: int  # RFC 7871 SCOPE PREFIX-LENGTH for the answer
    why: str


@dataclass(frozen=True)
class Placement:
    """Where a client is, as far as answers go: every client with the same placement
    gets the same plan, so the wire fast path keeps one plan per placement."""

    home: Region
    spot: tuple[float, float] | None  # a [[locations]] network's coordinates
    how: str
    scope: int
    record: GeoRecord | None = None  # the database record that placed the client


@dataclass(frozen=True)
class Plan:
    """The edges a placement may be answered with right now (before the weighted pick)."""

    candidates: tuple[Edge, ...]
    region: str
    scope: int
    why: str


class Selector:
    """Which edges answer a client, given the topology and who is healthy.

    decide = place (the client's region, by network or location) -> plan (the healthy
    edges of that region or the next-nearest) -> pick (weighted, when there are more
    than the answer size). Only the pick is random."""

    def __init__(
        self, topology: Topology, rng: random.Random | None = None, geo: Lookup | None = None
    ) -> None:
        self.t = topology
        self.rng = rng or random.Random()
        self.geo = geo
        self.by_country = {c: r for r in topology.regions for c in r.countries}
        self.by_continent = {c: r for r in topology.regions for c in r.continents}
        # Every network the topology places by itself: a database answer must not be
        # said to hold for one of them (see narrowed_scope).
        self.own_networks: tuple[Network, ...] = (
            *(n for r in topology.regions for n in r.networks),
            *(loc.network for loc in topology.locations),
        )

    def geo_version(self) -> int:
        """Which load of a watched database placements are made from: whoever keeps
        placements (the wire fast path) forgets them when this changes."""
        return self.geo.version if isinstance(self.geo, WatchedDatabase) else 0

    def decide(
        self,
        client: Address,
        family: int,
        healthy: Callable[[Edge], bool],
        source_prefix: int | None = None,
    ) -> Decision:
        """`family` 4 for A, 6 for AAAA; `source_prefix` is the ECS source prefix length
        when the client was located by ECS (None: by source address)."""
        plan = self.plan(self.place(client, source_prefix), family, healthy)
        return Decision(self.pick(plan.candidates), plan.region, plan.scope, plan.why)

    def place(self, client: Address, source_prefix: int | None = None) -> Placement:
        region, prefix, spot = self.t.locate(client)
        if region is not None:
            return Placement(region, spot, f"network /{prefix}", prefix)
        if spot is not None:
            nearest = self.t.by_distance(*spot)[0]
            return Placement(nearest, spot, f"location /{prefix} nearest", prefix)
        record = self.geo(unmapped(client)) if self.geo is not None else None
        if record is not None:
            return self._by_record(client, record)
        # Unknown network: the answer holds for the client's own subnet only.
        scope = source_prefix if source_prefix is not None else 0
        return Placement(self.t.default_region, spot, "default", scope)

    def _by_record(self, client: Address, record: GeoRecord) -> Placement:
        """A region for a database record: one listing its country, else one listing its
        continent, else the nearest to its coordinates, else the default region. The
        answer holds for the record's network (RFC 7871 Section 7.2.1: SCOPE
        PREFIX-LENGTH), less any topology network inside it."""
        scope = narrowed_scope(unmapped(client), record.network.prefixlen, self.own_networks)
        where = record.describe()
        if record.country is not None and record.country in self.by_country:
            home = self.by_country[record.country]
            how = f"{where}: country {record.country} listed on {home.name}"
        elif record.continent is not None and record.continent in self.by_continent:
            home = self.by_continent[record.continent]
            how = f"{where}: continent {record.continent} listed on {home.name}"
        elif record.location is not None:
            home = self.t.by_distance(*record.location)[0]
            how = f"{where}: nearest region by coordinates"
        else:
            home = self.t.default_region
            how = f"{where}: no region lists it, no coordinates: default"
        return Placement(home, record.location, how, scope, record)

    def plan(self, place: Placement, family: int, healthy: Callable[[Edge], bool]) -> Plan:
        home, how, scope = place.home, place.how, place.scope
        with_family = [e for e in self.t.edges if address_of(e, family) is not None]
        for candidate in [home, *self._nearest_others(home, place.spot)]:
            up = [e for e in with_family if e.region == candidate.name and healthy(e)]
            if up:
                why = f"{how} -> {home.name}"
                if candidate is not home:
                    why += f", no healthy edge there: next-nearest {candidate.name}"
                return Plan(tuple(up), candidate.name, scope, why)
        # Nobody healthy anywhere: a health view can be wrong, an empty answer is not.
        fallback = [e for e in with_family if e.region == home.name] or with_family
        return Plan(tuple(fallback), home.name, scope, f"{how}: no healthy edge anywhere")

    def _nearest_others(self, home: Region, spot: tuple[float, float] | None) -> list[Region]:
        lat, lon = spot if spot is not None else (home.lat, home.lon)
        return [r for r in self.t.by_distance(lat, lon) if r is not home]

    def pick(self, edges: tuple[Edge, ...], n: int | None = None) -> tuple[Edge, ...]:
        """At most `n` (answer_count) edges, a weighted sample without replacement
        (Efraimidis and Spirakis: the largest u^(1/w) win)."""
        n = self.t.zone.answer_count if n is None else n
        if len(edges) <= n:
            return edges
        keyed = sorted(edges, key=lambda e: self.rng.random() ** (1.0 / e.weight), reverse=True)
        return tuple(keyed[:n])


def narrowed_scope(client: Address, prefix: int, networks: tuple[Network, ...]) -> int:
    """RFC 7871 Section 7.2.1: the SCOPE PREFIX-LENGTH of an answer that holds for the
    client's /`prefix`, made longer until that covers none of `networks` (the topology's
    own, which are answered otherwise): a resolver caches the answer for the whole scope.
    A network the client's /S would reach shares its first S bits with the client; one
    bit past their common prefix keeps it out."""
    bits = client.max_prefixlen
    value = int(client)
    scope = prefix
    for net in networks:
        if net.version != client.version or net.prefixlen <= prefix:
            continue
        common = bits - (value ^ int(net.network_address)).bit_length()
        if common >= net.prefixlen:
            continue  # the client is inside it: it was placed by it, not here
        if common >= scope:
            scope = common + 1
    return scope


def address_of(edge: Edge, family: int) -> Address | None:
    return edge.ipv4 if family == 4 else edge.ipv6
