"""HTTP steering (`edge dns --steer`): curl from addresses in each region's network
(127.R.255.x, as the shipped topology binds clients) asks the steering listener for a
CDN name and is sent, with a 302 and `Cache-Control: private`, to its region's edge;
a down edge (real `edge serve` processes, probed by the same health view as DNS) is
skipped; a client that reached the listener on its nearest edge's own address is served
by that edge, never redirected; other Hosts are not steered.

Here the parts with real processes or sockets; tests/unit/test_steer.py has
the pure ones."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

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


def test_each_region_is_sent_to_its_edge_with_a_private_302(cdn) -> None:  # type: ignore[no-untyped-def]
    server, _, ports = cdn
    r = curl(server, "127.3.255.9")
    assert r["status"] == "302" and r["cache-control"] == "private"
    assert r["location"] == "http://127.3.0.1/files/a.bin?size=100"
    seen = {curl(server, "127.2.255.9")["location"] for _ in range(30)}
    # Both us edges take turns (weights 1 and 3), each at its own address.
    assert seen == {f"http://127.0.0.1:{ports[n]}/files/a.bin?size=100" for n in ("us-1", "us-2")}
    assert curl(server, "127.2.255.9", "-I")["status"] == "302"  # HEAD
    assert curl(server, "127.2.255.9", "-d", "x=1")["status"] == "307"  # POST keeps its method


def test_a_down_edge_is_skipped(cdn) -> None:  # type: ignore[no-untyped-def]
    server, edges, ports = cdn
    edges["us-2"].stop()
    us1 = f"http://127.0.0.1:{ports['us-1']}/files/a.bin?size=100"
    deadline = time.monotonic() + 15
    while curl(server, "127.2.255.9")["location"] != us1 or any(
        curl(server, "127.2.255.9")["location"] != us1 for _ in range(20)
    ):
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.2)


def test_a_client_at_its_nearest_edge_is_served_not_redirected(cdn) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = cdn
    for _ in range(3):
        r = curl(server, "127.1.255.9")
        assert r["status"] == "200" and "location" not in r
        assert len(r["body"]) == 100
    # And the answer is eu-1's own (edge serve names itself in Cache-Status).
    assert "eu-1" in r.get("cache-status", ""), r


@pytest.mark.parametrize("host", ["127.0.0.1", "other.example", "edge.cdn.example"])
def test_other_hosts_are_not_steered(cdn, host: str) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = cdn
    r = curl(server, "127.2.255.9", host=host)
    assert r["status"] == "421" and "location" not in r


# -- the rule, without sockets --------------------------------------------------------
