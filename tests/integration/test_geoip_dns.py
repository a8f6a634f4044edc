"""`edge dns` with a [geoip] database, as a real process asked by real clients: the
dnspython resolver and raw queries with ECS (and `dig +subnet=` in the `system` stage).
Databases are .mmdb files written by mmdb-writer and read by maxminddb in the server.

Shown: subnets in several countries, a city with coordinates, an IPv6 network and an
address in no record land where expected with the database network's prefix as the ECS
scope; the topology's networks still win; a database swapped under the running server
changes the answers, a garbage one keeps the old answers (with a warning); a corrupt
file at start and a bad --explain address are one-line errors with exit 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.mmdb import city, write_mmdb
from tests.support.procs import REPO, Proc, edge_cmd, free_port

ZONE = "cdn.example."
TOPOLOGY = """
[zone]
name = "cdn.example."
ttl = 5
names = ["@", "www"]
answer_count = 1

[geoip]
database = "geo.mmdb"
reload = 0.2

[health]
interval = 0.5

[[regions]]
name = "eu"
lat = 50.1
lon = 8.7
networks = ["127.1.0.0/16", "81.2.69.0/24"]
countries = ["DE", "FR"]
default = true

[[regions]]
name = "us"
lat = 40.7
lon = -74.0
networks = ["127.2.0.0/16"]
countries = ["US"]

[[regions]]
name = "ap"
lat = 35.7
lon = 139.7
networks = ["127.3.0.0/16"]
continents = ["AS", "OC"]

[[edges]]
name = "eu-1"
region = "eu"
ipv4 = "127.1.0.1"
ipv6 = "fd00:1::1"

[[edges]]
name = "us-1"
region = "us"
ipv4 = "127.2.0.1"
ipv6 = "fd00:2::1"

[[edges]]
name = "ap-1"
region = "ap"
ipv4 = "127.3.0.1"
ipv6 = "fd00:3::1"
"""
EU, US, AP = "127.1.0.1", "127.2.0.1", "127.3.0.1"
RECORDS = {
    "2.16.0.0/13": city("DE", "EU"),  # a country a region lists
    "81.2.0.0/16": city("GB", "EU", 51.5, -0.1),  # London, by coordinates: eu
    "5.5.0.0/16": city("BR", "SA", -23.5, -46.6),  # Sao Paulo, by coordinates: us
    "1.128.0.0/11": city("AU", "OC"),  # a continent a region lists
    "2001:db8::/32": city("JP", "AS", 35.7, 139.7),  # IPv6
}


def start_dns(tmp_path: Path, procs: list[Proc], *extra: str) -> Proc:
    port = free_port()
    log = tmp_path / f"dns-{port}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            edge_cmd(
                "dns",
                "--listen",
                f"127.0.0.1:{port}",
                "--topology",
                str(tmp_path / "topology.toml"),
                "--log-level",
                "debug",
                *extra,
            ),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc = Proc(popen, port, log)
    procs.append(proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=0.5)
            return proc
        except (dns.exception.Timeout, OSError):
            if popen.poll() is not None:
                raise RuntimeError(log.read_text()) from None
    raise RuntimeError(f"edge dns did not answer:\n{log.read_text()}")


@pytest.fixture
def world(tmp_path: Path) -> Path:
    (tmp_path / "topology.toml").write_text(TOPOLOGY)
    return write_mmdb(tmp_path / "geo.mmdb", RECORDS)


@pytest.fixture
def geodns(world: Path, tmp_path: Path, procs: list[Proc]) -> Proc:
    return start_dns(tmp_path, procs)


def ask(server: Proc, subnet: str, rdtype: str = "A", tcp: bool = False) -> tuple[set[str], int]:
    """The addresses answered for a client subnet (as ECS), and the ECS scope."""
    address, prefix = subnet.split("/")
    q = dns.message.make_query(
        "www." + ZONE, rdtype, use_edns=0, options=[dns.edns.ECSOption(address, int(prefix))]
    )
    send = dns.query.tcp if tcp else dns.query.udp
    r = send(q, "127.0.0.1", port=server.port, timeout=3)
    assert r.rcode() == dns.rcode.NOERROR
    (opt,) = [o for o in r.options if isinstance(o, dns.edns.ECSOption)]
    return {rr.to_text() for rrset in r.answer for rr in rrset}, opt.scopelen


CASES = [
    ("2.17.4.0/24", "A", {EU}, 13),  # DE, listed on eu
    ("81.2.3.0/24", "A", {EU}, 18),  # GB at London, nearest eu; the /16 less 81.2.69/24
    ("81.2.69.0/24", "A", {EU}, 24),  # the topology's own network wins
    ("5.5.5.0/24", "A", {US}, 16),  # BR at Sao Paulo, nearest us
    ("1.130.0.0/16", "A", {AP}, 11),  # AU: continent OC, listed on ap
    ("2001:db8:1::/48", "AAAA", {"fd00:3::1"}, 32),  # JP over IPv6
    ("9.9.9.0/24", "A", {EU}, 24),  # in no record: the default, for its own subnet
]


@pytest.mark.parametrize(("subnet", "rdtype", "edges", "scope"), CASES)
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_clients_land_by_the_database(
    geodns: Proc, subnet: str, rdtype: str, edges: set[str], scope: int, tcp: bool
) -> None:
    assert ask(geodns, subnet, rdtype, tcp) == (edges, scope)


def test_the_slow_path_gives_the_same_answers(
    world: Path, tmp_path: Path, procs: list[Proc]
) -> None:
    server = start_dns(tmp_path, procs, "--no-fast-path")
    for subnet, rdtype, edges, scope in CASES:
        assert ask(server, subnet, rdtype) == (edges, scope), subnet


@pytest.mark.system
@pytest.mark.parametrize(("subnet", "rdtype", "edges", "scope"), CASES)
def test_dig_subnet_lands_by_the_database(
    geodns: Proc, subnet: str, rdtype: str, edges: set[str], scope: int
) -> None:
    assert shutil.which("dig"), "dig is installed by .ci/run's system stage (bind9-dnsutils)"
    out = subprocess.run(
        [
            "dig",
            "@127.0.0.1",
            "-p",
            str(geodns.port),
            "+time=2",
            "+tries=1",
            f"+subnet={subnet}",
            "www.cdn.example",
            rdtype,
        ],
        capture_output=True,
        text=True,
        timeout=20,
    ).stdout
    assert f"CLIENT-SUBNET: {subnet}/{scope}" in out
    answers = {line.split()[-1] for line in out.splitlines() if line.startswith("www.cdn.example.")}
    assert answers == edges


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_a_swapped_database_is_used_without_a_restart(geodns: Proc, world: Path) -> None:
    assert ask(geodns, "5.5.5.0/24") == ({US}, 16)
    assert ask(geodns, "6.6.6.0/24") == ({EU}, 24)  # in no record yet
    write_mmdb(world, {**RECORDS, "5.5.0.0/16": city("JP", "AS"), "6.6.0.0/16": city("US", "NA")})
    assert wait_for(lambda: ask(geodns, "5.5.5.0/24") == ({AP}, 16), 10), geodns.output()
    assert ask(geodns, "6.6.6.0/24") == ({US}, 16)
    assert "reloaded" in geodns.output()


def test_a_garbage_database_keeps_the_old_answers(geodns: Proc, world: Path) -> None:
    assert ask(geodns, "5.5.5.0/24") == ({US}, 16)
    world.write_bytes(b"\x00not a database" * 500)
    assert wait_for(lambda: "keeping the data loaded" in geodns.output(), 10), geodns.output()
    for subnet, rdtype, edges, scope in CASES:
        assert ask(geodns, subnet, rdtype) == (edges, scope), subnet
    assert geodns.popen.poll() is None
    # And a good file after the bad one is taken.
    write_mmdb(world, {"5.5.0.0/16": city("JP", "AS")})
    assert wait_for(lambda: ask(geodns, "5.5.5.0/24") == ({AP}, 16), 10), geodns.output()


def run_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(edge_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("content", [None, b"garbage" * 100], ids=["missing", "corrupt"])
def test_a_missing_or_corrupt_database_at_start_is_one_line(
    world: Path, tmp_path: Path, content: bytes | None
) -> None:
    if content is None:
        world.unlink()
    else:
        world.write_bytes(content)
    done = run_edge(
        "dns", "--listen", f"127.0.0.1:{free_port()}", "--topology", str(tmp_path / "topology.toml")
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(world) in lines[0], done.stderr
    assert ("not found" if content is None else "not a MaxMind DB file") in lines[0]


def test_explain_says_where_an_address_lands_and_why(world: Path, tmp_path: Path) -> None:
    topology = str(tmp_path / "topology.toml")
    done = run_edge("dns", "--topology", topology, "--explain", "2.17.4.9")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "2.17.4.9: region eu" in out
    assert "database 2.16.0.0/13 (country DE, continent EU): country DE listed on eu" in out
    assert "ECS scope: /13" in out and "A: eu-1 127.1.0.1" in out
    done = run_edge("dns", "--topology", topology, "--explain", "127.2.9.9")
    assert done.returncode == 0 and "region us" in done.stdout
    assert "network /16" in done.stdout and "ECS scope: /16" in done.stdout
    done = run_edge("dns", "--topology", topology, "--explain", "2001:db8::7")
    assert "region ap" in done.stdout and "AAAA: ap-1 fd00:3::1" in done.stdout
    bad = run_edge("dns", "--topology", topology, "--explain", "2.17.4")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "edge: --explain: not an IP address: '2.17.4'"
    ]
    assert not bad.stdout


def test_relative_database_paths_are_relative_to_the_topology(world: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        edge_cmd("dns", "--topology", str(tmp_path / "topology.toml"), "--explain", "5.5.5.5"),
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    assert "region us" in done.stdout and str(world) in done.stdout
