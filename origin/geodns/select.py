"""The GeoDNS selector (pure: no I/O, health passed in): which edges answer a client.

Its region by EDNS Client Subnet (RFC 7871) or source address, the healthy edges there,
the next-nearest region when there are none, a weighted pick when there are more than
the answer size.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from origin.deploy.topology import Address, Edge, Region, Topology


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

    def __init__(self, topology: Topology, rng: random.Random | None = None) -> None:
        self.t = topology
        self.rng = rng or random.Random()

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
        # Unknown network: the answer holds for the client's own subnet only.
        scope = source_prefix if source_prefix is not None else 0
        return Placement(self.t.default_region, spot, "default", scope)

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

    def pick(self, edges: tuple[Edge, ...]) -> tuple[Edge, ...]:
        """At most answer_count edges, a weighted sample without replacement
        (Efraimidis and Spirakis: the largest u^(1/w) win)."""
        n = self.t.zone.answer_count
        if len(edges) <= n:
            return edges
        keyed = sorted(edges, key=lambda e: self.rng.random() ** (1.0 / e.weight), reverse=True)
        return tuple(keyed[:n])


def address_of(edge: Edge, family: int) -> Address | None:
    return edge.ipv4 if family == 4 else edge.ipv6
