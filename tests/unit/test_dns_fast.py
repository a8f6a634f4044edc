"""The wire fast path of `edge dns` (origin/geodns/wire.py) against its dnspython path.

Two real `edge dns` processes serve one topology, one as shipped and one with
--no-fast-path; the same queries (by dnspython and by raw sockets, over UDP and TCP, from
source addresses in each region) must get the same replies: byte for byte, but for the
order of an RRset's records, which dnspython shuffles on every reply (so does the fast
path), and the weighted pick's distribution. A health change must reach warm answers.
In-process, random and mutated packets must never raise out of the fast path, and
whatever it answers must be what Authority.respond answers.
Here the parts that open no socket and start no process;
tests/integration/test_dns_fast.py has the ones with real processes."""

from __future__ import annotations

import ipaddress
import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from origin.deploy.topology import parse_topology
from origin.geodns.authority import OUR_PAYLOAD, Authority
from origin.geodns.select import Selector
from origin.geodns.wire import FastPath, parse_ecs, plain_name_end
from tests.support.geodns import same_reply

# -- comparing replies ----------------------------------------------------------------------


def test_same_reply_sees_order_but_nothing_else() -> None:
    q = dns.message.make_query("www.cdn.example", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.cdn.example.", 5, "IN", "A", "127.1.0.1", "127.1.0.2"))
    one, two = r.to_wire(want_shuffle=False), None
    for _ in range(50):  # dnspython shuffles; find the other order
        two = r.to_wire()
        if two != one:
            break
    assert two is not None and two != one and same_reply(one, two)
    other = dns.message.make_response(q)
    other.answer.append(
        dns.rrset.from_text("www.cdn.example.", 5, "IN", "A", "127.1.0.1", "127.1.0.3")
    )
    assert not same_reply(one, other.to_wire())
    assert not same_reply(one, None) and same_reply(None, None)


# -- two real servers -------------------------------------------------------------------------


# -- in-process: the parser on bad input ----------------------------------------------------------

TOPOLOGY = parse_topology(
    {
        "zone": {
            "name": "cdn.example.",
            "names": ["@", "www", "files.static"],
            "ns": ["ns1.cdn.example.", "ns2.cdn.example."],
            "glue": {"ns1.cdn.example.": ["127.0.0.53"], "ns2.cdn.example.": ["127.0.0.54"]},
        },
        "regions": [
            {"name": "eu", "lat": 50.1, "lon": 8.7, "networks": ["127.1.0.0/16"], "default": True},
            {"name": "us", "lat": 40.7, "lon": -74.0, "networks": ["127.2.0.0/16"]},
        ],
        "edges": [
            {"name": "eu-1", "region": "eu", "ipv4": "127.1.0.1"},
            {"name": "eu-2", "region": "eu", "ipv4": "127.1.0.2", "ipv6": "fd00::2"},
            {"name": "eu-3", "region": "eu", "ipv4": "127.1.0.3", "weight": 3},
            {"name": "us-1", "region": "us", "ipv4": "127.2.0.1"},
        ],
    }
)
SOURCE = ipaddress.ip_address("127.1.0.9")


@pytest.fixture(scope="module")
def paths() -> tuple[FastPath, Authority]:
    authority = Authority(TOPOLOGY, Selector(TOPOLOGY), lambda e: True)
    return FastPath(authority, OUR_PAYLOAD), authority


def check_alike(paths: tuple[FastPath, Authority], wire: bytes) -> None:
    """The fast path never raises; what it answers, the dnspython path answers too
    (weighted picks aside: those are compared by distribution, above)."""
    fast, authority = paths
    for tcp in (False, True):
        reply = fast.answer(wire, SOURCE.packed, tcp)
        if reply is None:
            continue
        slow = authority.respond(wire, SOURCE, tcp=tcp)
        msg = dns.message.from_wire(reply)
        weighted = any(
            rrset.rdtype == dns.rdatatype.A and rrset.name.to_text().lower() != "ns1.cdn.example."
            for rrset in msg.answer
        )
        if weighted:  # three eu edges for two places: compare the shape only
            assert slow is not None and len(reply) == len(slow) and reply[:4] == slow[:4]
        else:
            assert same_reply(reply, slow), (wire.hex(), reply.hex(), slow)


def valid_packets() -> list[bytes]:
    out = []
    for name in ("www.cdn.example", "CDN.example", "ns2.cdn.example", "nope.cdn.example", "a.b"):
        for rdtype in ("A", "AAAA", "NS", "SOA", "TXT"):
            out.append(dns.message.make_query(name, rdtype).to_wire())
            ecs = [dns.edns.ECSOption("127.2.0.0", 16)]
            out.append(dns.message.make_query(name, rdtype, use_edns=0, options=ecs).to_wire())
    return out


VALID = valid_packets()


def test_every_valid_packet_is_answered_alike(paths: tuple[FastPath, Authority]) -> None:
    for wire in VALID:
        check_alike(paths, wire)
    fast, _ = paths
    # Several NS records (and their glue) are shuffled by dnspython: left to it.
    ns = dns.message.make_query("cdn.example", "NS").to_wire()
    assert fast.answer(ns, SOURCE.packed, False) is None


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=80))
def test_random_bytes_never_raise(paths: tuple[FastPath, Authority], junk: bytes) -> None:
    fast, _ = paths
    header = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for wire in (junk, header + junk):
        try:
            check_alike(paths, wire)
        except dns.exception.DNSException:
            # dnspython cannot read the fast path's reply: only acceptable if it made none
            assert fast.answer(wire, SOURCE.packed, False) is None


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=3),
    st.integers(0, 200),
)
def test_mutated_queries_are_answered_alike_or_left_to_dnspython(
    paths: tuple[FastPath, Authority], wire: bytes, changes: list[tuple[int, int]], cut: int
) -> None:
    mutated = bytearray(wire)
    for position, value in changes:
        if position < len(mutated):
            mutated[position] = value
    for candidate in (bytes(mutated), bytes(mutated[: max(cut, 12)])):
        fast, authority = paths
        reply = fast.answer(candidate, SOURCE.packed, False)
        if reply is None:
            continue
        try:
            slow = authority.respond(candidate, SOURCE, tcp=False)
        except Exception as exc:  # the server would answer FORMERR; so must we not
            raise AssertionError(
                f"fast answered what dnspython fails on: {candidate.hex()}"
            ) from exc
        assert slow is not None, candidate.hex()
        check_alike(paths, candidate)


def test_parse_ecs_takes_only_what_dnspython_takes() -> None:
    def option(hexdata: str) -> bytes:
        data = bytes.fromhex(hexdata)
        return struct.pack("!HH", 8, len(data)) + data

    assert parse_ecs(option("00011800cb0071")) == (1, 24, bytes.fromhex("cb0071"))
    assert parse_ecs(option("00010000")) == (1, 0, b"")
    assert parse_ecs(option("00023800" + "20010db8000000")) == (
        2,
        56,
        bytes.fromhex("20010db8000000"),
    )
    for bad in (
        "00011500cb0071",  # padding bits set past /21
        "00011800cb007100",  # an address byte too many
        "00011800cb00",  # one too few
        "00012100cb007100ff",  # source /33
        "00011821cb0071",  # scope /33
        "00031800cb0071",  # family 3
        "0001",  # cut short
    ):
        assert parse_ecs(option(bad)) is None, bad
        wire = dns.message.make_query("www.cdn.example", "A").to_wire()
        with pytest.raises(dns.exception.DNSException):
            dns.message.from_wire(
                wire[:11]
                + b"\x01"
                + wire[12:]
                + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
                + struct.pack("!H", len(option(bad)))
                + option(bad)
            )
    assert parse_ecs(struct.pack("!HH", 10, 8) + b"\x00" * 8) is None  # a cookie


def test_plain_name_end() -> None:
    assert plain_name_end(b"\x03www\x00rest", 0) == 5
    assert plain_name_end(b"\x00", 0) == 1
    assert plain_name_end(b"\xc0\x0c", 0) is None  # compression pointer
    assert plain_name_end(b"\x41" + b"a" * 65 + b"\x00", 0) is None  # extended label type
    assert plain_name_end(b"\x05ab", 0) is None  # runs off the end
    assert plain_name_end((b"\x3f" + b"a" * 63) * 4 + b"\x00", 0) is None  # 257 octets
    assert plain_name_end((b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"a" * 61 + b"\x00", 0) == 255
