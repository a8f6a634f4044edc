"""`edge dns` minding EDNS manners, against real processes (one with the wire fast path,
one with --no-fast-path), asked by dnspython's resolver and dns.query:

- the DO bit of a query is copied into the response (RFC 3225 §3) on every answer path:
  the edges' A/AAAA (with and without ECS), SOA, NS, NXDOMAIN, NODATA, REFUSED, ANY,
  BADVERS, a truncated UDP answer and TCP; a query without DO gets none;
- an ECS option with a non-zero SCOPE PREFIX-LENGTH (RFC 7871 §6: it MUST be 0 in
  queries) or a FAMILY other than IPv4 and IPv6 (§6, §7.1.1) is answered FORMERR.
"""

from __future__ import annotations

import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from tests.support.geodns import BASE, EDGES, edge_block, start_dns
from tests.support.procs import Proc

#: 40 edges in ap: their answer (40 A records) does not fit in 512 bytes.
MANY = "".join(edge_block(f"edge-ap-{i}", "ap", f"127.3.1.{i}") for i in range(2, 42))
TOPOLOGY = BASE.format(answer_count=40) + EDGES + MANY


@pytest.fixture(params=["fast", "slow"])
def server(request: pytest.FixtureRequest, procs: list[Proc], tmp_path: Path) -> Proc:
    extra = ("--no-fast-path",) if request.param == "slow" else ()
    return start_dns(procs, tmp_path, TOPOLOGY, *extra)


def ask(
    server: Proc,
    name: str,
    rdtype: str = "A",
    *,
    do: bool,
    tcp: bool = False,
    source: str = "127.1.0.9",
    edns: int = 0,
    payload: int = 1232,
    options: list[dns.edns.Option] | None = None,
) -> dns.message.Message:
    query = dns.message.make_query(
        name, rdtype, use_edns=edns, payload=payload, want_dnssec=do, options=options or []
    )
    send = dns.query.tcp if tcp else dns.query.udp
    for _ in range(2):  # a datagram lost on a loaded machine is asked again
        try:
            return send(query, "127.0.0.1", port=server.port, source=source, timeout=3)
        except dns.exception.Timeout:
            continue
    raise AssertionError(f"no answer to {name} {rdtype}")


#: (name, type, ask keywords, the rcode, a check of the answer)
PATHS = [
    ("www.cdn.example", "A", {}, dns.rcode.NOERROR, "answer"),
    ("www.cdn.example", "AAAA", {}, dns.rcode.NOERROR, "answer"),
    (
        "www.cdn.example",
        "A",
        {"options": [dns.edns.ECSOption("203.0.113.0", 24)]},
        dns.rcode.NOERROR,
        "answer",
    ),
    ("cdn.example", "SOA", {}, dns.rcode.NOERROR, "answer"),
    ("cdn.example", "NS", {}, dns.rcode.NOERROR, "answer"),
    ("nope.cdn.example", "A", {}, dns.rcode.NXDOMAIN, "authority"),
    ("www.cdn.example", "TXT", {}, dns.rcode.NOERROR, "authority"),
    ("example.org", "A", {}, dns.rcode.REFUSED, ""),
    ("www.cdn.example", "ANY", {}, dns.rcode.NOERROR, "answer"),
    ("www.cdn.example", "A", {"edns": 1}, dns.rcode.BADVERS, ""),
    ("www.cdn.example", "A", {"source": "127.3.0.9", "payload": 512}, dns.rcode.NOERROR, "tc"),
    ("www.cdn.example", "A", {"source": "127.3.0.9", "tcp": True}, dns.rcode.NOERROR, "answer"),
]


def test_the_do_bit_is_copied_on_every_answer_path(server: Proc) -> None:
    for name, rdtype, kw, rcode, check in PATHS:
        for do in (True, False, True):  # twice with DO: the second from what was kept
            r = ask(server, name, rdtype, do=do, **kw)
            where = f"{name} {rdtype} {kw} do={do}"
            assert r.rcode() == rcode, where
            assert r.edns == 0, where
            assert bool(r.ednsflags & dns.flags.DO) == do, where
            if check == "tc":
                assert r.flags & dns.flags.TC and not r.answer, where
            elif check:
                assert getattr(r, check), where


def test_the_resolver_asking_with_do_gets_do(server: Proc) -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port
    resolver.lifetime = 6
    resolver.use_edns(0, dns.flags.DO, 1232)
    answer = resolver.resolve("www.cdn.example", "A", source="127.2.0.9")
    assert [rr.to_text() for rr in answer] == ["127.2.0.1"]
    assert answer.response.ednsflags & dns.flags.DO


def ecs_raw(family: int, source: int, scope: int, address: bytes) -> dns.edns.Option:
    """An ECS option as bytes, whatever its fields say (dnspython refuses to build some)."""
    data = struct.pack("!HBB", family, source, scope) + address
    return dns.edns.GenericOption(dns.edns.OptionType.ECS, data)


BAD_ECS = {
    "scope /16 in a query": dns.edns.ECSOption("198.51.100.0", 24, 16),
    "scope /24 with source /0": dns.edns.ECSOption("0.0.0.0", 0, 24),
    "IPv6 scope /48": dns.edns.ECSOption("2001:db8::", 48, 48),
    "family 0": ecs_raw(0, 24, 0, b"\xc6\x33\x64"),
    "family 3": ecs_raw(3, 24, 0, b"\xc6\x33\x64"),
    "family 65535": ecs_raw(65535, 0, 0, b""),
}


@pytest.mark.parametrize("what", BAD_ECS)
def test_a_bad_ecs_option_is_formerr(server: Proc, what: str) -> None:
    option = BAD_ECS[what]
    for tcp in (False, True, False):  # the second UDP one from what the fast path kept
        r = ask(server, "www.cdn.example", do=False, tcp=tcp, options=[option])
        assert r.rcode() == dns.rcode.FORMERR, (what, tcp)
        assert not r.answer, (what, tcp)
    # The same subnet with scope 0 is a normal question, answered for the subnet.
    good = ask(server, "www.cdn.example", do=True, options=[dns.edns.ECSOption("203.0.113.0", 24)])
    assert good.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rrset in good.answer for rr in rrset] == ["127.2.0.1"]
