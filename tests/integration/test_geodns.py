"""`edge dns` as a real process, asked by real clients: dnspython (resolver and raw
queries, from source addresses in each region's network), and in the `system` stage
(.ci/run installs bind9-dnsutils) `dig` as a user types it.

Shown: each region's clients (by ECS or by source address) get their region's edge,
over UDP and TCP; a region's edge stopped moves its clients to the next-nearest region
and back when it returns; negative answers, REFUSED, truncation and the TCP retry, the
ECS scope, EDNS versions, ANY, and malformed packets that never stop the server.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.geodns import BASE, EDGES, ZONE, edge_block
from tests.support.procs import REPO, Proc, edge_cmd, free_port


def start_dns(procs: list[Proc], tmp_path: Path, topology: str) -> Proc:
    path = tmp_path / "topology.toml"
    path.write_text(topology)
    port = free_port()
    log = tmp_path / "dns.log"
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    popen = subprocess.Popen(
        edge_cmd(
            "dns", "--listen", f"127.0.0.1:{port}", "--topology", str(path), "--log-level", "debug"
        ),
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    proc = Proc(popen, port, log)
    procs.append(proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=0.5)
            return proc
        except (dns.exception.Timeout, OSError):
            if popen.poll() is not None:
                raise RuntimeError(log.read_text()) from None
    raise RuntimeError(f"edge dns did not answer:\n{log.read_text()}")


@pytest.fixture
def geodns(procs: list[Proc], tmp_path: Path) -> Proc:
    return start_dns(procs, tmp_path, BASE.format(answer_count=2) + EDGES)


def dig(server: Proc, *args: str) -> str:
    """`dig` itself: only in tests marked `system` (a machine with Python, pip and curl
    has no dig; .ci/run installs it for them, and its absence there is a failure)."""
    assert shutil.which("dig"), "dig is installed by .ci/run's system stage (bind9-dnsutils)"
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(server.port), "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    return out.stdout


def ask(
    server: Proc,
    name: str,
    rdtype: str = "A",
    *,
    source: str = "127.0.0.1",
    tcp: bool = False,
    **kw,
) -> dns.message.Message:  # type: ignore[no-untyped-def]
    q = dns.message.make_query(name, rdtype, **kw)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", port=server.port, source=source, timeout=3)


def ecs(subnet: str) -> dns.edns.ECSOption:
    """The EDNS Client Subnet option of `dig +subnet=SUBNET`."""
    address, prefix = subnet.split("/")
    return dns.edns.ECSOption(address, int(prefix))


def addresses(msg: dns.message.Message) -> set[str]:
    return {rr.to_text() for rrset in msg.answer for rr in rrset}


# -- steering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "edge"),
    [
        ("198.51.100.0/24", "127.1.0.1"),
        ("203.0.113.0/24", "127.2.0.1"),
        ("127.3.7.0/24", "127.3.0.1"),
    ],
)
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_a_client_subnet_gets_its_regions_edge(
    geodns: Proc, subnet: str, edge: str, tcp: bool
) -> None:
    r = ask(geodns, "www.cdn.example", "A", tcp=tcp, use_edns=0, options=[ecs(subnet)])
    assert [rr.to_text() for rrset in r.answer for rr in rrset] == [edge]


@pytest.mark.parametrize(
    ("source", "edge"),
    [("127.1.0.9", "127.1.0.1"), ("127.2.0.9", "127.2.0.1"), ("127.3.0.9", "127.3.0.1")],
)
def test_dnspython_resolver_is_steered_by_its_source_address(
    geodns: Proc, source: str, edge: str
) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = geodns.port
    answer = resolver.resolve("www.cdn.example", "A", source=source, lifetime=3)
    assert [r.to_text() for r in answer] == [edge]
    assert answer.rrset is not None and answer.rrset.ttl == 5
    tcp = resolver.resolve("www.cdn.example", "A", source=source, tcp=True, lifetime=3)
    assert [r.to_text() for r in tcp] == [edge]


def test_unknown_networks_go_to_the_nearest_region_or_the_default(geodns: Proc) -> None:
    def answer(subnet: str) -> set[str]:
        return addresses(ask(geodns, "www.cdn.example", use_edns=0, options=[ecs(subnet)]))

    # 192.0.2.0/24 is placed near Seoul: ap is nearest.
    assert answer("192.0.2.1/32") == {"127.3.0.1"}
    # Nowhere known: the default region (eu).
    assert answer("10.9.9.0/24") == {"127.1.0.1"}


def test_aaaa_answers_only_edges_with_ipv6_and_nodata_without(geodns: Proc) -> None:
    assert addresses(ask(geodns, "www.cdn.example", "AAAA", source="127.1.0.9")) == {"fd00:1::1"}
    # us has no IPv6 edge: the nearest region with one (eu, over the Atlantic) answers.
    assert addresses(ask(geodns, "www.cdn.example", "AAAA", source="127.2.0.9")) == {"fd00:1::1"}


async def test_a_regions_edge_stopped_sends_its_clients_next_door_and_back(
    procs: list[Proc], tmp_path: Path, upstream: Proc, node: NodeFactory
) -> None:
    # Real edges on their own loopback addresses, probed by edge dns.
    ports = {"eu": free_port(), "us": free_port()}
    eu = node("serve", "--origin", upstream.url, name="edge-eu-1", port=ports["eu"])
    node("serve", "--origin", upstream.url, name="edge-us-1", port=ports["us"])
    edges = edge_block(
        "edge-eu-1", "eu", "127.1.0.1", health=f"http://127.0.0.1:{ports['eu']}/_edge/health"
    ) + edge_block(
        "edge-us-1", "us", "127.2.0.1", health=f"http://127.0.0.1:{ports['us']}/_edge/health"
    )
    server = start_dns(procs, tmp_path, BASE.format(answer_count=2) + edges)

    def eu_client() -> set[str]:
        return addresses(ask(server, "www.cdn.example", source="127.1.0.9"))

    assert eu_client() == {"127.1.0.1"}
    eu.stop()
    wait_for(lambda: eu_client() == {"127.2.0.1"}, 5)  # within a probe interval (0.5 s)
    node("serve", "--origin", upstream.url, name="edge-eu-1", port=ports["eu"])
    wait_for(lambda: eu_client() == {"127.1.0.1"}, 5)
    log = server.output()
    assert "edge edge-eu-1 is down" in log and "edge edge-eu-1 is up" in log
    assert "next-nearest us" in log  # the decision is logged at debug level


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("not within the time allowed")


def test_weighted_selection_when_a_region_has_more_edges_than_the_answer(
    procs: list[Proc], tmp_path: Path
) -> None:
    edges = "".join(edge_block(f"edge-eu-{i}", "eu", f"127.1.0.{i}") for i in range(1, 5))
    edges = edges.replace(
        'name = "edge-eu-1"\nregion = "eu"\nipv4 = "127.1.0.1"\n',
        'name = "edge-eu-1"\nregion = "eu"\nipv4 = "127.1.0.1"\nweight = 10\n',
    )
    server = start_dns(procs, tmp_path, BASE.format(answer_count=2) + edges)
    seen: dict[str, int] = {}
    for _ in range(100):
        got = addresses(ask(server, "www.cdn.example", source="127.1.0.9"))
        assert len(got) == 2
        for a in got:
            seen[a] = seen.get(a, 0) + 1
    assert seen["127.1.0.1"] > 80  # weight 10 against 1, 1, 1: nearly always in
    assert set(seen) == {f"127.1.0.{i}" for i in range(1, 5)}  # the others take turns


# -- a real authority's manners ------------------------------------------------------------------


def test_soa_ns_and_the_aa_flag_at_the_apex(geodns: Proc) -> None:
    soa = ask(geodns, ZONE, "SOA")
    assert soa.flags & dns.flags.AA and not soa.flags & dns.flags.RA
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    ns = ask(geodns, ZONE, "NS")
    assert addresses(ns) == {"ns1.cdn.example."}
    assert {rr.to_text() for rrset in ns.additional for rr in rrset} == {"127.0.0.53"}
    # The glue name answers too.
    assert addresses(ask(geodns, "ns1.cdn.example", "A")) == {"127.0.0.53"}


def test_nxdomain_and_nodata_carry_the_soa(geodns: Proc) -> None:
    nx = ask(geodns, "nope.cdn.example", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA
    assert nx.authority[0].rdtype == dns.rdatatype.SOA and nx.authority[0].ttl == 60
    below = ask(geodns, "x.www.cdn.example", "A")  # nothing below a CDN name
    assert below.rcode() == dns.rcode.NXDOMAIN
    for name, rdtype in (
        ("www.cdn.example", "TXT"),
        ("static.cdn.example", "A"),
        ("ns1.cdn.example", "AAAA"),
    ):
        nodata = ask(geodns, name, rdtype)  # static. is an empty non-terminal
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer, name
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA


def test_outside_the_zone_is_refused_without_aa(geodns: Proc) -> None:
    for name in ("example.org", "example."):
        r = ask(geodns, name, "A")
        assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA
    ch = dns.message.make_query("version.bind", "TXT", "CH")
    r = dns.query.udp(ch, "127.0.0.1", port=geodns.port, timeout=3)
    assert r.rcode() == dns.rcode.REFUSED
    assert ask(geodns, ZONE, "AXFR", tcp=True).rcode() == dns.rcode.REFUSED


def test_the_questions_case_is_preserved(geodns: Proc) -> None:
    r = ask(geodns, "WwW.CdN.ExAmPlE", "A", source="127.2.0.9")
    assert r.question[0].name.to_text() == "WwW.CdN.ExAmPlE."
    assert r.answer[0].name.to_text() == "WwW.CdN.ExAmPlE."


def test_edns_payload_and_badvers(geodns: Proc) -> None:
    r = ask(geodns, "www.cdn.example", use_edns=0, payload=4096)
    assert r.edns == 0 and r.payload == 1232
    assert ask(geodns, "www.cdn.example").edns == -1  # no OPT unless asked with one
    bad = ask(geodns, "www.cdn.example", use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS and bad.edns == 0


def test_any_is_answered_minimally(geodns: Proc) -> None:
    r = ask(geodns, "www.cdn.example", "ANY")
    assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.HINFO
    assert '"RFC8482"' in r.answer[0].to_text()


def test_truncation_over_udp_and_the_whole_answer_over_tcp(
    procs: list[Proc], tmp_path: Path
) -> None:
    edges = "".join(edge_block(f"edge-eu-{i}", "eu", f"127.1.1.{i}") for i in range(1, 41))
    server = start_dns(procs, tmp_path, BASE.format(answer_count=40) + edges)
    udp = ask(server, "www.cdn.example", source="127.1.0.9")  # no EDNS: 512 bytes at most
    assert udp.flags & dns.flags.TC and not udp.answer
    big = ask(server, "www.cdn.example", source="127.1.0.9", use_edns=0, payload=1232)
    assert not big.flags & dns.flags.TC and len(addresses(big)) == 40  # fits in 1232
    tcp = ask(server, "www.cdn.example", source="127.1.0.9", tcp=True)
    assert not tcp.flags & dns.flags.TC and len(addresses(tcp)) == 40
    # A client that sees TC asks again over TCP (dnspython's udp_with_fallback, as a
    # stub resolver does) and gets every record.
    query = dns.message.make_query("www.cdn.example", "A", use_edns=False)
    whole, used_tcp = dns.query.udp_with_fallback(
        query, "127.0.0.1", port=server.port, source="127.1.0.9", timeout=3
    )
    assert used_tcp and not whole.flags & dns.flags.TC and len(addresses(whole)) == 40


# -- dig, as a user types it (the `system` stage of .ci/run) ----------------------------------


@pytest.mark.system
def test_dig_as_the_readme_types_it(geodns: Proc) -> None:
    # By the source address, as `edge up` prints it, and by a client subnet.
    assert dig(geodns, "www.cdn.example", "+short", "-b", "127.2.255.1").split() == ["127.2.0.1"]
    for transport in ("+notcp", "+tcp"):
        out = dig(geodns, "www.cdn.example", "A", "+subnet=203.0.113.0/24", transport, "+short")
        assert out.split() == ["127.2.0.1"], transport
    assert "status: NXDOMAIN" in dig(geodns, "nope.cdn.example")
    assert "BADVERS" in dig(geodns, "www.cdn.example", "+edns=1", "+noednsneg")


@pytest.mark.system
def test_dig_retries_a_truncated_answer_over_tcp(procs: list[Proc], tmp_path: Path) -> None:
    edges = "".join(edge_block(f"edge-eu-{i}", "eu", f"127.1.1.{i}") for i in range(1, 41))
    server = start_dns(procs, tmp_path, BASE.format(answer_count=40) + edges)
    out = dig(server, "www.cdn.example", "+noedns", "-b", "127.1.0.9")
    assert "Truncated, retrying in TCP mode" in out and out.count("IN\tA\t127.1.1.") == 40


@pytest.mark.parametrize(
    ("subnet", "scope"),
    [("198.51.100.7/32", 24), ("127.1.0.0/24", 16), ("10.0.0.0/8", 8), ("0.0.0.0/0", 0)],
)
def test_ecs_scope_says_how_far_the_answer_holds(geodns: Proc, subnet: str, scope: int) -> None:
    address, prefix = subnet.split("/")
    ecs = dns.edns.ECSOption(address, int(prefix))
    r = ask(geodns, "www.cdn.example", use_edns=0, options=[ecs])
    (echo,) = [o for o in r.options if isinstance(o, dns.edns.ECSOption)]
    assert echo.srclen == int(prefix) and echo.scopelen == scope
    soa = ask(geodns, ZONE, "SOA", use_edns=0, options=[ecs])
    (echo,) = [o for o in soa.options if isinstance(o, dns.edns.ECSOption)]
    assert echo.scopelen == 0  # not a geographic answer: good for every client


def test_malformed_packets_get_formerr_or_nothing_and_never_stop_the_server(geodns: Proc) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    target = ("127.0.0.1", geodns.port)

    def send(packet: bytes) -> bytes | None:
        sock.sendto(packet, target)
        try:
            return sock.recv(4096)
        except TimeoutError:
            return None

    assert send(b"\x12") is None  # not even a header: dropped
    header = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
    reply = send(header + b"\x07garbage")  # a question that does not parse
    assert reply is not None
    ident, flags = struct.unpack("!HH", reply[:4])
    assert ident == 0xBEEF and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    two = dns.message.make_query("www.cdn.example", "A")
    two.question.append(two.question[0])
    assert dns.message.from_wire(send(two.to_wire()) or b"").rcode() == dns.rcode.FORMERR
    response_packet = dns.message.make_response(dns.message.make_query("www.cdn.example", "A"))
    assert send(response_packet.to_wire()) is None  # a response is never answered
    notify = dns.message.make_query("www.cdn.example", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(send(notify.to_wire()) or b"").rcode() == dns.rcode.NOTIMP
    for junk in (b"\xff" * 12, b"\x00" * 40, bytes(range(256))):
        send(junk)
    # Over TCP, a length prefix with garbage behind it.
    with socket.create_connection(target, timeout=2) as tcp:
        tcp.sendall(struct.pack("!H", 5) + b"\x00\x01\x02\x03\x04")
        tcp.recv(100)
    # Still answering.
    assert addresses(ask(geodns, "www.cdn.example", source="127.2.0.9")) == {"127.2.0.1"}
    assert geodns.popen.poll() is None
    sock.close()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "[zone] needs name"),
        ('[zone]\nname = "cdn.example."\n', "at least one [[regions]]"),
        (
            BASE.format(answer_count=2) + edge_block("e", "mars", "127.1.0.1"),
            "unknown region 'mars'",
        ),
        (BASE.format(answer_count=2) + edge_block("e", "eu", "not-an-ip"), "not an IP address"),
        (BASE.format(answer_count=0) + EDGES, "answer_count must be"),
        ("[zone\n", "not valid TOML"),
    ],
)
def test_topology_mistakes_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text)
    proc = subprocess.run(
        edge_cmd("dns", "--listen", f"127.0.0.1:{free_port()}", "--topology", str(path)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


async def test_health_from_the_coordinators_registry(
    procs: list[Proc], tmp_path: Path, upstream: Proc, node: NodeFactory
) -> None:
    """No probes here: edge dns learns that edge-eu-1 is gone from the coordinator,
    whose registry sees its subscription close."""
    from tests.support.procs import start

    cport = free_port()
    coordinator = start(
        edge_cmd(
            "coordinator",
            "--listen",
            f"127.0.0.1:{cport}",
            "--db",
            str(tmp_path / "c.db"),
            "--token",
            "op-token",
            "--node-token",
            "node-token",
        ),
        cport,
        tmp_path / "coordinator.log",
        health_path="/v1/health",
    )
    procs.append(coordinator)
    env = {"EDGE_NODE_TOKEN": "node-token"}
    eu = node(
        "serve",
        "--origin",
        upstream.url,
        "--coordinator",
        coordinator.url,
        name="edge-eu-1",
        env=env,
    )
    node(
        "serve",
        "--origin",
        upstream.url,
        "--coordinator",
        coordinator.url,
        name="edge-us-1",
        env=env,
    )
    topology = (
        BASE.format(answer_count=2).replace(
            "[health]\n", f'[health]\ncoordinator = "{coordinator.url}"\ntoken = "op-token"\n'
        )
        + edge_block("edge-eu-1", "eu", "127.1.0.1")
        + edge_block("edge-us-1", "us", "127.2.0.1")
    )
    server = start_dns(procs, tmp_path, topology)

    def eu_client() -> set[str]:
        return addresses(ask(server, "www.cdn.example", source="127.1.0.9"))

    assert eu_client() == {"127.1.0.1"}
    eu.stop()
    wait_for(lambda: eu_client() == {"127.2.0.1"}, 5)
    node(
        "serve",
        "--origin",
        upstream.url,
        "--coordinator",
        coordinator.url,
        name="edge-eu-1",
        env=env,
    )
    wait_for(lambda: eu_client() == {"127.1.0.1"}, 5)
