"""The wire fast path of `edge dns` (origin/geodns/wire.py) against its dnspython path.

Two real `edge dns` processes serve one topology, one as shipped and one with
--no-fast-path; the same queries (by dnspython and by raw sockets, over UDP and TCP, from
source addresses in each region) must get the same replies: byte for byte, but for the
order of an RRset's records, which dnspython shuffles on every reply (so does the fast
path), and the weighted pick's distribution. A health change must reach warm answers.
In-process, random and mutated packets must never raise out of the fast path, and
whatever it answers must be what Authority.respond answers.
Here the parts with real processes or sockets; tests/unit/test_dns_fast.py has
the pure ones."""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.geodns import BASE, EDGES, ZONE, edge_block, same_reply, start_dns
from tests.support.procs import Proc, free_port

# -- two real servers -------------------------------------------------------------------------


@pytest.fixture
def pair(procs: list[Proc], tmp_path: Path) -> tuple[Proc, Proc]:
    topology = BASE.format(answer_count=2) + EDGES + edge_block("edge-eu-2", "eu", "127.1.0.2")
    return start_dns(procs, tmp_path, topology), start_dns(
        procs, tmp_path, topology, "--no-fast-path"
    )


def udp_exchange(port: int, packet: bytes, source: str = "127.0.0.1") -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(0.4)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def tcp_exchange(port: int, packet: bytes, source: str = "127.0.0.1") -> bytes | None:
    with socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0)) as s:
        s.sendall(struct.pack("!H", len(packet)) + packet)
        head = b""
        try:
            while len(head) < 2:
                chunk = s.recv(2 - len(head))
                if not chunk:
                    return None
                head += chunk
            (length,) = struct.unpack("!H", head)
            body = b""
            while len(body) < length:
                chunk = s.recv(length - len(body))
                if not chunk:
                    return None
                body += chunk
            return body
        except TimeoutError:
            return None


def queries() -> Iterator[tuple[str, bytes]]:
    """Every kind of question edge dns answers, with and without EDNS and ECS."""
    names = [
        "www.cdn.example",
        "WwW.CdN.ExAmPlE",
        "cdn.example",
        "files.static.cdn.example",
        "static.cdn.example",
        "ns1.cdn.example",
        "nope.cdn.example",
        "x.www.cdn.example",
        "example.org",
    ]
    types = ["A", "AAAA", "SOA", "NS", "MX", "TXT", "ANY", "HTTPS"]
    ecs_cases = {
        "none": None,
        "us/24": [dns.edns.ECSOption("203.0.113.0", 24)],
        "eu/32": [dns.edns.ECSOption("198.51.100.7", 32)],
        "ap/16": [dns.edns.ECSOption("127.3.0.0", 16)],
        "zero": [dns.edns.ECSOption("0.0.0.0", 0)],
        "located": [dns.edns.ECSOption("192.0.2.1", 32)],
        "unknown/8": [dns.edns.ECSOption("10.0.0.0", 8)],
        "v6/56": [dns.edns.ECSOption("2001:db8::", 56)],
        "cookie": [dns.edns.GenericOption(10, b"\x01" * 8)],
        "ecs+cookie": [dns.edns.ECSOption("203.0.113.0", 24), dns.edns.GenericOption(10, b"1" * 8)],
        "scope in query": [dns.edns.GenericOption(8, bytes.fromhex("00011810cb0071"))],
        "pad bits": [dns.edns.GenericOption(8, bytes.fromhex("00011500cb0071"))],
        "too long": [dns.edns.GenericOption(8, bytes.fromhex("00011800cb007100"))],
        "family 3": [dns.edns.GenericOption(8, bytes.fromhex("00031800cb0071"))],
    }
    for name in names:
        for rdtype in types:
            yield f"{name} {rdtype}", dns.message.make_query(name, rdtype).to_wire()
            for what, options in ecs_cases.items():
                for payload in (512, 1232, 4096):
                    q = dns.message.make_query(
                        name, rdtype, use_edns=0, payload=payload, options=options
                    )
                    yield f"{name} {rdtype} edns {payload} {what}", q.to_wire()
    q = dns.message.make_query("www.cdn.example", "A", want_dnssec=True)
    q.flags |= dns.flags.CD | dns.flags.AD
    q.flags &= ~dns.flags.RD
    yield "DO, CD, AD, no RD", q.to_wire()
    yield "EDNS version 1", dns.message.make_query("www.cdn.example", "A", use_edns=1).to_wire()
    yield "class CH", dns.message.make_query("version.bind", "TXT", "CH").to_wire()
    yield "AXFR", dns.message.make_query(ZONE, "AXFR").to_wire()


def malformed() -> Iterator[tuple[str, bytes]]:
    good = dns.message.make_query("www.cdn.example", "A").to_wire()
    with_opt = dns.message.make_query(
        "www.cdn.example", "A", use_edns=0, options=[dns.edns.ECSOption("203.0.113.0", 24)]
    ).to_wire()
    yield "one byte", b"\x12"
    yield "header only", good[:12]
    yield "question cut", good[:20]
    yield "trailing byte", good + b"\x00"
    yield "OPT cut", with_opt[:-3]
    yield "OPT with trailing", with_opt + b"\x01"
    yield "response", bytes([good[0], good[1], good[2] | 0x80]) + good[3:]
    yield "NOTIFY", bytes([good[0], good[1], (good[2] & 0x87) | 0x20]) + good[3:]
    yield "two questions", good[:4] + b"\x00\x02" + good[6:] + good[12:]
    yield "an answer count", good[:6] + b"\x00\x01" + good[8:]
    yield "pointer name", good[:12] + b"\xc0\x0c\x00\x01\x00\x01"
    yield "label 64", good[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"
    yield "zero inside", good[:12] + b"\x03w\x00w\x03cdn\x07example\x00\x00\x01\x00\x01"
    yield "OPT not root", with_opt[:33] + b"\x01a" + with_opt[34:]
    yield "garbage", bytes(range(256))
    yield "ones", b"\xff" * 40


def test_fast_and_dnspython_paths_answer_alike_over_udp_and_tcp(pair: tuple[Proc, Proc]) -> None:
    fast, slow = pair
    differ = []
    cases = 0
    for source in ("127.0.0.1", "127.2.0.9", "127.3.0.9"):
        for what, packet in [*queries(), *malformed()]:
            a, b = udp_exchange(fast.port, packet, source), udp_exchange(slow.port, packet, source)
            cases += 1
            if not same_reply(a, b):
                differ.append(f"UDP {what} from {source}: {a!r} != {b!r}")
    for what, packet in list(queries())[::7]:
        a, b = tcp_exchange(fast.port, packet), tcp_exchange(slow.port, packet)
        cases += 1
        if not same_reply(a, b):
            differ.append(f"TCP {what}: {a!r} != {b!r}")
    assert not differ, f"{len(differ)} of {cases} differ:\n" + "\n".join(differ[:10])
    assert fast.popen.poll() is None and slow.popen.poll() is None


def test_the_fast_path_keeps_the_id_case_flags_and_ecs_scope(pair: tuple[Proc, Proc]) -> None:
    fast, _ = pair
    q = dns.message.make_query(
        "WwW.CdN.ExAmPlE", "A", use_edns=0, options=[dns.edns.ECSOption("198.51.100.7", 32)]
    )
    q.id = 0xBEEF
    q.flags &= ~dns.flags.RD
    r = dns.query.udp(q, "127.0.0.1", port=fast.port, timeout=2)
    assert r.id == 0xBEEF and r.flags & dns.flags.AA and not r.flags & dns.flags.RD
    assert r.question[0].name.to_text() == "WwW.CdN.ExAmPlE."
    (echo,) = r.options
    assert isinstance(echo, dns.edns.ECSOption) and (echo.srclen, echo.scopelen) == (32, 24)
    assert {rr.to_text() for rrset in r.answer for rr in rrset} == {"127.1.0.1", "127.1.0.2"}
    # Asked again (now from the reply cache): another ID, RD set this time.
    q.id, q.flags = 0x0102, q.flags | dns.flags.RD
    again = dns.query.udp(q, "127.0.0.1", port=fast.port, timeout=2)
    assert again.id == 0x0102 and again.flags & dns.flags.RD


def test_both_orders_of_an_rrset_come_from_the_fast_path(pair: tuple[Proc, Proc]) -> None:
    fast, _ = pair
    packet = dns.message.make_query("www.cdn.example", "A").to_wire()
    firsts = Counter()
    for _ in range(200):
        reply = dns.message.from_wire(udp_exchange(fast.port, packet) or b"")
        firsts[reply.answer[0][0].to_text()] += 1
    assert set(firsts) == {"127.1.0.1", "127.1.0.2"} and min(firsts.values()) > 60


def test_truncation_is_decided_alike(procs: list[Proc], tmp_path: Path) -> None:
    edges = "".join(edge_block(f"edge-eu-{i}", "eu", f"127.1.1.{i}") for i in range(1, 41))
    topology = BASE.format(answer_count=40) + edges
    fast = start_dns(procs, tmp_path, topology)
    slow = start_dns(procs, tmp_path, topology, "--no-fast-path")
    cases = [
        dns.message.make_query("www.cdn.example", "A"),  # 512: TC
        dns.message.make_query("www.cdn.example", "A", use_edns=0, payload=512),
        dns.message.make_query("www.cdn.example", "A", use_edns=0, payload=600),
        dns.message.make_query("www.cdn.example", "A", use_edns=0, payload=684),
        dns.message.make_query("www.cdn.example", "A", use_edns=0, payload=683),
        dns.message.make_query("www.cdn.example", "A", use_edns=0, payload=1232),
        dns.message.make_query(
            "www.cdn.example",
            "A",
            use_edns=0,
            payload=684,
            options=[dns.edns.ECSOption("127.1.0.0", 16)],
        ),
    ]
    tc = []
    for q in cases:
        wire = q.to_wire()
        a, b = (
            udp_exchange(fast.port, wire, "127.1.0.9"),
            udp_exchange(slow.port, wire, "127.1.0.9"),
        )
        assert same_reply(a, b), q.to_text()
        tc.append(bool(dns.message.from_wire(a or b"").flags & dns.flags.TC))
        a, b = (
            tcp_exchange(fast.port, wire, "127.1.0.9"),
            tcp_exchange(slow.port, wire, "127.1.0.9"),
        )
        assert same_reply(a, b) and not dns.message.from_wire(a or b"").flags & dns.flags.TC
    # 12 + 21 (question) + 40 * 16 + 11 (OPT) = 684 bytes: TC below that, not from it on.
    assert tc == [True, True, True, False, True, False, True]


def test_weighted_picks_have_the_same_distribution(procs: list[Proc], tmp_path: Path) -> None:
    edges = "".join(edge_block(f"edge-eu-{i}", "eu", f"127.1.0.{i}") for i in range(1, 5))
    edges = edges.replace('ipv4 = "127.1.0.1"\n', 'ipv4 = "127.1.0.1"\nweight = 4\n')
    topology = BASE.format(answer_count=2) + edges
    servers = {
        "fast": start_dns(procs, tmp_path, topology),
        "slow": start_dns(procs, tmp_path, topology, "--no-fast-path"),
    }
    packet = dns.message.make_query("www.cdn.example", "A").to_wire()
    n = 600
    seen: dict[str, Counter[str]] = {}
    first: dict[str, Counter[str]] = {}
    for kind, server in servers.items():
        seen[kind], first[kind] = Counter(), Counter()
        for _ in range(n):
            reply = dns.message.from_wire(udp_exchange(server.port, packet, "127.1.0.9") or b"")
            (rrset,) = reply.answer
            assert len(rrset) == 2
            seen[kind].update(rr.to_text() for rr in rrset)
            first[kind][rrset[0].to_text()] += 1
    # P(heavy in a pick of 2 of weights 4,1,1,1) = 0.8 + 0.2 * ... = 0.9; others ~0.37.
    for address in [f"127.1.0.{i}" for i in range(1, 5)]:
        p_fast, p_slow = seen["fast"][address] / n, seen["slow"][address] / n
        assert abs(p_fast - p_slow) < 0.1, (address, p_fast, p_slow)
        f_fast, f_slow = first["fast"][address] / n, first["slow"][address] / n
        assert abs(f_fast - f_slow) < 0.1, (address, f_fast, f_slow)
    assert seen["fast"]["127.1.0.1"] / n > 0.8


async def test_a_health_change_reaches_warm_fast_answers(
    procs: list[Proc], tmp_path: Path, upstream: Proc, node: NodeFactory
) -> None:
    ports = {"eu": free_port(), "us": free_port()}
    eu = node("serve", "--origin", upstream.url, name="edge-eu-1", port=ports["eu"])
    node("serve", "--origin", upstream.url, name="edge-us-1", port=ports["us"])
    edges = edge_block(
        "edge-eu-1", "eu", "127.1.0.1", health=f"http://127.0.0.1:{ports['eu']}/_edge/health"
    ) + edge_block(
        "edge-us-1", "us", "127.2.0.1", health=f"http://127.0.0.1:{ports['us']}/_edge/health"
    )
    server = start_dns(procs, tmp_path, BASE.format(answer_count=2) + edges)
    packets = {
        "source": dns.message.make_query("www.cdn.example", "A").to_wire(),
        "ecs": dns.message.make_query(
            "www.cdn.example", "A", use_edns=0, options=[dns.edns.ECSOption("198.51.100.0", 24)]
        ).to_wire(),
    }

    def answers() -> set[str]:
        out = set()
        for packet in packets.values():
            reply = dns.message.from_wire(udp_exchange(server.port, packet, "127.1.0.9") or b"")
            out |= {rr.to_text() for rrset in reply.answer for rr in rrset}
        return out

    wait_for(lambda: answers() == {"127.1.0.1"}, 5)
    for _ in range(20):  # warm
        assert answers() == {"127.1.0.1"}
    eu.stop()
    wait_for(lambda: answers() == {"127.2.0.1"}, 5)
    node("serve", "--origin", upstream.url, name="edge-eu-1", port=ports["eu"])
    wait_for(lambda: answers() == {"127.1.0.1"}, 5)


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("not within the time allowed")


# -- in-process: the parser on bad input ----------------------------------------------------------
