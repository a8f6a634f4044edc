"""origin.geodns.select.Selector and origin.deploy.topology, without sockets: where a
client is, which region answers when its own has no healthy edge, the ECS scope, and the
weighted pick."""

from __future__ import annotations

import ipaddress
import random

from origin.deploy.topology import distance_km, parse_topology
from origin.geodns.select import Selector

RAW = {
    "zone": {"name": "cdn.example.", "names": ["www"], "answer_count": 1},
    "regions": [
        {"name": "eu", "lat": 50.1, "lon": 8.7, "networks": ["10.1.0.0/16", "10.1.2.0/24"]},
        {"name": "us", "lat": 40.7, "lon": -74.0, "networks": ["10.2.0.0/16"], "default": True},
        {"name": "ap", "lat": 35.7, "lon": 139.7, "networks": ["10.3.0.0/16"]},
    ],
    "locations": [{"network": "192.0.2.0/24", "lat": 48.9, "lon": 2.4}],  # Paris
    "edges": [
        {"name": "eu-1", "region": "eu", "ipv4": "127.1.0.1"},
        {"name": "us-1", "region": "us", "ipv4": "127.2.0.1", "ipv6": "fd00::2"},
        {"name": "ap-1", "region": "ap", "ipv4": "127.3.0.1"},
    ],
}
TOPO = parse_topology(RAW)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def up(*names: str):  # type: ignore[no-untyped-def]
    return lambda e: e.name in names


def test_most_specific_network_wins() -> None:
    region, prefix, spot = TOPO.locate(ip("10.1.2.9"))
    assert region is not None and region.name == "eu" and prefix == 24 and spot is None


def test_healthy_home_region_answers() -> None:
    d = Selector(TOPO).decide(ip("10.3.0.1"), 4, up("eu-1", "us-1", "ap-1"), 24)
    assert [e.name for e in d.edges] == ["ap-1"] and d.region == "ap" and d.scope == 16


def test_next_nearest_region_when_home_has_no_healthy_edge() -> None:
    # eu is down: Frankfurt's nearest other region is New York (6,200 km), not Tokyo.
    d = Selector(TOPO).decide(ip("10.1.0.1"), 4, up("us-1", "ap-1"), 24)
    assert d.region == "us" and "next-nearest us" in d.why
    assert distance_km(50.1, 8.7, 40.7, -74.0) < distance_km(50.1, 8.7, 35.7, 139.7)


def test_location_places_unknown_networks_by_coordinates() -> None:
    d = Selector(TOPO).decide(ip("192.0.2.77"), 4, up("eu-1", "us-1", "ap-1"), 32)
    assert d.region == "eu" and d.scope == 24


def test_unknown_network_goes_to_the_default_region_for_its_own_subnet_only() -> None:
    d = Selector(TOPO).decide(ip("172.16.5.5"), 4, up("eu-1", "us-1", "ap-1"), 24)
    assert d.region == "us" and d.scope == 24


def test_only_edges_of_the_family_count() -> None:
    d = Selector(TOPO).decide(ip("10.1.0.1"), 6, up("eu-1", "us-1", "ap-1"), 24)
    assert [e.name for e in d.edges] == ["us-1"]


def test_nobody_healthy_answers_the_home_region_anyway() -> None:
    d = Selector(TOPO).decide(ip("10.3.0.1"), 4, up(), 24)
    assert [e.name for e in d.edges] == ["ap-1"] and "no healthy edge anywhere" in d.why


def test_weighted_pick_follows_weights() -> None:
    raw = {
        **RAW,
        "edges": [
            {"name": "heavy", "region": "eu", "ipv4": "127.1.0.1", "weight": 3},
            {"name": "light", "region": "eu", "ipv4": "127.1.0.2", "weight": 1},
        ],
    }
    sel = Selector(parse_topology(raw), random.Random(9111))
    picks = [sel.decide(ip("10.1.0.1"), 4, lambda e: True, 24).edges[0].name for _ in range(4000)]
    assert 2800 <= picks.count("heavy") <= 3200  # 3 of 4
