"""HTTP steering (`edge dns --steer`): curl from addresses in each region's network
(127.R.255.x, as the shipped topology binds clients) asks the steering listener for a
CDN name and is sent, with a 302 and `Cache-Control: private`, to its region's edge;
a down edge (real `edge serve` processes, probed by the same health view as DNS) is
skipped; a client that reached the listener on its nearest edge's own address is served
by that edge, never redirected; other Hosts are not steered.

Here the parts that open no socket and start no process;
tests/integration/test_steer.py has the ones with real processes."""

from __future__ import annotations

import ipaddress

import pytest

from origin.deploy.topology import parse_topology
from origin.geodns.geoip import GeoRecord, GeoTable
from origin.geodns.select import Selector
from origin.geodns.steer import base_url, host_name, steer

# -- the rule, without sockets --------------------------------------------------------


TOPO = parse_topology(
    {
        "zone": {"name": "cdn.example.", "names": ["www"]},
        "regions": [
            {"name": "eu", "lat": 50.1, "lon": 8.7, "networks": ["10.1.0.0/16"]},
            {"name": "us", "lat": 40.7, "lon": -74.0, "countries": ["US"], "default": True},
        ],
        "edges": [
            {"name": "eu-1", "region": "eu", "ipv4": "192.0.2.1", "ipv6": "2001:db8::1"},
            {"name": "us-1", "region": "us", "ipv4": "192.0.2.2", "health": "https://x/h"},
        ],
    }
)
SELECTOR = Selector(TOPO, geo=GeoTable([GeoRecord(ipaddress.ip_network("5.0.0.0/8"), "US")]))


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_steer_redirects_by_network_and_database() -> None:
    up = lambda e: True  # noqa: E731
    s = steer(SELECTOR, up, "www.cdn.example:8080", ip("127.0.0.1"), ip("10.1.2.3"), "/a?b")
    assert (s.kind, s.location) == ("redirect", "http://192.0.2.1/a?b")
    s = steer(SELECTOR, up, "WWW.cdn.example.", None, ip("5.6.7.8"), "/")
    assert (s.kind, s.location) == ("redirect", "https://192.0.2.2/")  # by its health URL
    s = steer(SELECTOR, up, "www.cdn.example", None, ip("2001:db8:9::1"), "/v6")
    assert s.location == "http://[2001:db8::1]/v6"


def test_steer_never_redirects_to_where_the_client_already_is() -> None:
    s = steer(SELECTOR, lambda e: True, "www.cdn.example", ip("192.0.2.1"), ip("10.1.2.3"), "/")
    assert s.kind == "here" and s.edge is not None and s.edge.name == "eu-1"
    # eu-1 down: its clients go to us-1, even when they came in on eu-1's address.
    down = lambda e: e.name != "eu-1"  # noqa: E731
    s = steer(SELECTOR, down, "www.cdn.example", ip("192.0.2.1"), ip("10.1.2.3"), "/")
    assert s.kind == "redirect" and s.edge is not None and s.edge.name == "us-1"


@pytest.mark.parametrize("host", ["cdn.example", "192.0.2.1", "[2001:db8::1]:80", "a..b", ""])
def test_only_cdn_names_are_steered(host: str) -> None:
    s = steer(SELECTOR, lambda e: True, host, None, ip("10.1.2.3"), "/")
    assert s.kind == "not-ours"


def test_base_url_and_host_name() -> None:
    eu, us = TOPO.edges
    assert base_url(eu, 4) == "http://192.0.2.1" and base_url(eu, 6) == "http://[2001:db8::1]"
    assert base_url(us, 6) == "https://192.0.2.2"  # no IPv6 address: its IPv4 one
    assert host_name("www.cdn.example:443") == host_name("www.cdn.example.")
    assert host_name("10.0.0.1:80") is None
