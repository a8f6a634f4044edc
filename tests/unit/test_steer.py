"""HTTP steering (`edge dns --steer`): curl from addresses in each region's network
(127.R.255.x, as the shipped topology binds clients) asks the steering listener for a
CDN name and is sent, with a 302 and `Cache-Control: private`, to its region's edge;
a down edge (real `edge serve` processes, probed by the same health view as DNS) is
skipped; a client that reached the listener on its nearest edge's own address is served
by that edge, never redirected; other Hosts are not steered."""

from __future__ import annotations

import ipaddress
import subprocess
import time
from pathlib import Path

import pytest

from origin.deploy.topology import parse_topology
from origin.geodns.geoip import GeoRecord, GeoTable
from origin.geodns.select import Selector
from origin.geodns.steer import base_url, host_name, steer
from tests.integration.conftest import NodeFactory
from tests.support.procs import REPO, Proc, edge_cmd, free_port


def topology(eu: int, us1: int, us2: int) -> str:
    # eu-1's address is 127.0.0.1, the address the steering listener is reached on: an
    # eu client asking there is at its nearest edge already.
    return f"""
[zone]
name = "cdn.example."
names = ["@", "www"]

[health]
interval = 0.3
timeout = 1.0
rise = 1
fall = 1

[[regions]]
name = "eu"
lat = 50.1
lon = 8.7
networks = ["127.1.0.0/16"]
default = true

[[regions]]
name = "us"
lat = 40.7
lon = -74.0
networks = ["127.2.0.0/16"]

[[regions]]
name = "ap"
lat = 35.7
lon = 139.7
networks = ["127.3.0.0/16"]

[[edges]]
name = "eu-1"
region = "eu"
ipv4 = "127.0.0.1"
listen = "127.0.0.1:{eu}"

[[edges]]
name = "us-1"
region = "us"
ipv4 = "127.2.0.1"
listen = "127.0.0.1:{us1}"

[[edges]]
name = "us-2"
region = "us"
ipv4 = "127.2.0.2"
listen = "127.0.0.1:{us2}"
weight = 3

[[edges]]
name = "ap-1"
region = "ap"
ipv4 = "127.3.0.1"
"""


@pytest.fixture
def cdn(
    procs: list[Proc], tmp_path: Path, upstream: Proc, node: NodeFactory
) -> tuple[Proc, dict[str, Proc], dict[str, int]]:
    ports = {name: free_port() for name in ("eu-1", "us-1", "us-2")}
    edges = {
        name: node("serve", "--origin", upstream.url, name=name, port=port)
        for name, port in ports.items()
    }
    path = tmp_path / "topology.toml"
    path.write_text(topology(ports["eu-1"], ports["us-1"], ports["us-2"]))
    steer_port, dns_port = free_port(), free_port()
    log = tmp_path / "dns.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            edge_cmd(
                "dns",
                "--listen",
                f"127.0.0.1:{dns_port}",
                "--topology",
                str(path),
                "--steer",
                f"127.0.0.1:{steer_port}",
            ),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Proc(popen, steer_port, log)
    procs.append(server)
    deadline = time.monotonic() + 30
    while "HTTP steering on" not in server.output():
        assert popen.poll() is None and time.monotonic() < deadline, server.output()
        time.sleep(0.1)
    # Until the first probes are in, the edges are counted up; wait for them anyway.
    time.sleep(1.0)
    return server, edges, ports


def curl(server: Proc, source: str, *args: str, host: str = "www.cdn.example") -> dict[str, str]:
    """Status, the response's header fields (lower-case names) and the body."""
    done = subprocess.run(
        [
            "curl",
            "-s",
            "-i",
            "--interface",
            source,
            "-H",
            f"Host: {host}",
            *args,
            f"http://127.0.0.1:{server.port}/files/a.bin?size=100",
        ],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return {"status": lines[0].split()[1], "body": body.decode("latin-1"), **fields}


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
