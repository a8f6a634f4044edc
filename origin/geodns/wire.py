"""The wire-level fast path of `edge dns`: the common query answered from bytes made
ahead of time, without dnspython's message objects (which cost ~0.4 ms a query).

Owns: reading a query by hand (the 12-byte header, one question, an optional OPT record
with its payload size, version and an EDNS Client Subnet option); the answer table,
keyed by the question's lower-cased name, type and class; putting a response together
(the query's ID, RD and DO bits, the question exactly as asked, the OPT record with the
ECS echo and its scope, truncation to the UDP limit).

Where answers come from, so that they are dnspython's byte for byte:
  - every answer that does not depend on the client (SOA, NS and glue, NXDOMAIN, NODATA,
    REFUSED, ANY, ...) is what Authority.respond rendered for the same question, once,
    kept as the bytes after the question. Compressed names in it point into the question,
    whose layout depends on the name's labels, not their case, so the bytes fit any
    spelling of the name;
  - the geographic A/AAAA answers are the Selector's plan for the client's placement
    (its region by ECS or source address, through the topology's networks or the
    geolocation database, the healthy edges there or next door), kept per placement
    until health changes, and one resource record per edge; the weighted pick runs per
    query with the Selector's own random generator. Placements are kept per source
    address and per ECS option (a client prefix), so the database is read once per
    prefix, and forgotten when the database is reloaded.

Anything else (another opcode, several questions or records, EDNS version != 0, options
other than one well-formed ECS, compressed or odd question names, a response sent to us)
returns None, and Authority.respond answers it.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import math
import random
import struct
from typing import TYPE_CHECKING

import dns.edns
import dns.message
import dns.name
import dns.rdatatype

if TYPE_CHECKING:
    from origin.deploy.topology import Edge
    from origin.geodns.authority import Authority
    from origin.geodns.select import Placement, Plan

log = logging.getLogger("origin.geodns")

#: Bytes 4..9 of the header of a plain query: one question, no answer or authority records.
_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"
_COUNTS = struct.Struct("!HHHH")  # QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT
_OPT = struct.Struct("!HBBHH")  # payload, extended rcode, version, flags, RDLENGTH
_ECS = struct.Struct("!HHHBB")  # option code, length, family, source prefix, scope prefix
_OPT_CODE = b"\x00\x00\x29"  # the root name, then type 41
_ECS_CODE = 8
_TC = 0x02  # in the header's third byte
_DO = 0x8000  # in the OPT record's flags (RFC 3225 Section 3)
#: Answers cached per question (name, type, class) and clients placed per address or ECS
#: option, each at most this many; past it the table starts over (a flood of random
#: names or subnets costs what it costs without the fast path, and no more memory).
TABLE_LIMIT = 50_000
#: Orders of an answer's records kept ready (4 records: 24); more are shuffled per query.
MAX_ORDERS = 24
_ZERO_SOURCE = ipaddress.IPv4Address(0)


class Static:
    """An answer that is the same for every client: header bits, the record sections,
    and whether an ECS option is echoed (not with REFUSED, for one)."""

    __slots__ = ("body", "echo", "heads")

    def __init__(self, third: int, fourth: int, counts: tuple[int, int, int], body: bytes) -> None:
        self.body = body
        self.heads = _heads(third, fourth, *counts)
        self.echo = False


class Geo:
    """A name answered with edges for one address family."""

    __slots__ = ("family", "negative")

    def __init__(self, family: int) -> None:
        self.family = family
        self.negative: Static | None = None  # NODATA, when no edge has the family


class Where:
    """One placement and its answers per family, good while the health generation holds."""

    __slots__ = ("answers", "gen", "placement")

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.gen = -1
        self.answers: dict[int, GeoAnswer] = {}


class GeoAnswer:
    """A plan as bytes. dnspython shuffles an RRset's records each time it renders one,
    so when there is no pick to make this keeps the answer section in every order (up to
    MAX_ORDERS of them) to choose from at random; else each candidate's record."""

    __slots__ = ("bodies", "heads", "plan", "records")

    def __init__(self, plan: Plan, records: dict[str, bytes], answer_count: int) -> None:
        self.plan = plan
        self.records = records
        rrs = list(dict.fromkeys(records[e.name] for e in plan.candidates))  # as an RRset
        self.heads = _heads(0x84, 0, len(rrs), 0, 0)  # QR AA, NOERROR
        self.bodies: tuple[bytes, ...] | None = None
        if len(plan.candidates) <= answer_count and math.factorial(len(rrs)) <= MAX_ORDERS:
            self.bodies = tuple(b"".join(order) for order in itertools.permutations(rrs))


class Ecs:
    """What a query's ECS option means: where its subnet is (None for source prefix 0:
    the source address decides) and the OPT records that echo it (RFC 7871 7.2.1)."""

    __slots__ = ("geo_opt", "plain_opt", "where")

    def __init__(self, where: Where | None, geo_opt: bytes, plain_opt: bytes) -> None:
        self.where, self.geo_opt, self.plain_opt = where, geo_opt, plain_opt


_INVALID = Ecs(None, b"", b"")
_UNKNOWN = object()


def _heads(third: int, fourth: int, an: int, ns: int, ar: int) -> tuple[bytes, ...]:
    """Header bytes 2..11, indexed by RD (1) + 2 when an OPT record follows."""
    return tuple(
        bytes((third | rd, fourth)) + _COUNTS.pack(1, an, ns, ar + opt)
        for opt in (0, 1)
        for rd in (0, 1)
    )


def opt_record(payload: int, option: bytes = b"") -> bytes:
    """An OPT pseudo-record: root owner, version 0, no flags, `option` as its data."""
    return b"\x00" + struct.pack("!HHIH", 41, payload, 0, len(option)) + option


def _with_do(opt: bytes) -> bytes:
    """An OPT record made by opt_record with the DO bit set: RFC 3225 Section 3 copies
    it from the query into the response."""
    return opt[:7] + struct.pack("!H", _DO) + opt[9:]


def ecs_option(family: int, source: int, scope: int, address: bytes) -> bytes:
    return struct.pack("!HHHBB", _ECS_CODE, 4 + len(address), family, source, scope) + address


def parse_ecs(data: bytes) -> tuple[int, int, bytes] | None:
    """(family, source prefix, address bytes) of OPT data that is exactly one ECS option
    of a well-formed query (RFC 7871 6: a known family, lengths within it, the address
    cut to the prefix's bytes with zero padding bits, SCOPE PREFIX-LENGTH 0); None for
    anything else, which Authority.respond answers (FORMERR, when it is malformed)."""
    if len(data) < 8:
        return None
    code, length, family, source, scope = _ECS.unpack_from(data)
    bits = 32 if family == 1 else 128 if family == 2 else 0
    if code != _ECS_CODE or not bits or source > bits or scope:
        return None
    address = data[8:]
    if length != len(data) - 4 or len(address) != (source + 7) // 8:
        return None
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        return None
    return family, source, address


def plain_name_end(wire: bytes, start: int) -> int | None:
    """The offset just past a question name of plain labels (no compression pointer,
    no extended label type, 255 octets at most) starting at `start`, else None."""
    i = start
    while i < len(wire) and wire[i]:
        if wire[i] > 63:
            return None
        i += wire[i] + 1
    if i >= len(wire) or i + 1 - start > 255:
        return None
    return i + 1


class FastPath:
    """Answers the common queries from bytes; None means: ask Authority.respond."""

    def __init__(self, authority: Authority, our_payload: int) -> None:
        self.authority = authority
        self.selector = authority.selector
        self.healthy = authority.healthy
        self.edges = authority.t.edges
        self.answer_count = authority.zone.answer_count
        self.our_payload = our_payload
        self.opt_plain = opt_record(self.our_payload)
        ttl = authority.zone.ttl
        # One answer record per edge and family: the owner is a pointer to the question.
        self.records: dict[int, dict[str, bytes]] = {4: {}, 6: {}}
        for e in self.edges:
            for family, rdtype, address in ((4, 1, e.ipv4), (6, 28, e.ipv6)):
                if address is not None:
                    packed = address.packed
                    rr = struct.pack("!HHHIH", 0xC00C, rdtype, 1, ttl, len(packed)) + packed
                    self.records[family][e.name] = rr
        self.geo: dict[bytes, Geo] = {}
        for name in authority.zone.names:
            wire = name.canonicalize().to_wire()
            for family, rdtype in ((4, 1), (6, 28)):
                self.geo[wire + struct.pack("!HH", rdtype, 1)] = Geo(family)
        # None: a question the dnspython path answers every time.
        self.table: dict[bytes, Static | Geo | None] = dict(self.geo)
        self.replies: dict[bytes, tuple[bytes, ...]] = {}
        self.by_source: dict[bytes, Where] = {}
        self.by_ecs: dict[bytes, Ecs] = {}
        self.wheres: dict[Placement, Where] = {}
        self.gen = 0
        self.state: tuple[bool, ...] = ()
        self.geo_version = self.selector.geo_version()
        self.sync()

    def sync(self) -> None:
        """Notice health changes and a reloaded geolocation database (call before each
        batch of queries): plans made under another health state are made again when
        next used, clients are placed again after a reload, and the remembered replies
        are dropped: new tables, so that a reply being composed meanwhile (UDP has a
        thread of its own) goes into the old ones."""
        version = self.selector.geo_version()
        if version != self.geo_version:
            self.geo_version = version
            self.by_source, self.by_ecs, self.wheres = {}, {}, {}
            self.state = ()  # and so a new generation below
        state = tuple(map(self.healthy, self.edges))
        if state != self.state:
            self.state = state
            self.gen += 1
            self.replies = {}

    def answer(self, wire: bytes, source: bytes, tcp: bool) -> bytes | None:
        """The response to `wire` from `source` (its packed address), or None."""
        # Most queries were seen before from the same place: the reply after the ID is
        # a function of the rest of the query, the source and health, but for the order
        # of its records.
        key = source + wire[2:]
        memo = self.replies
        replies = memo.get(key)
        if replies is None or tcp:
            replies = self._compose(wire, source, tcp)
            if replies is None:
                return None
            if replies[0] and not tcp:
                if len(memo) >= TABLE_LIMIT:
                    memo.clear()
                memo[key] = replies[1]
            replies = replies[1]
        if len(replies) == 1:
            return wire[:2] + replies[0]
        return wire[:2] + replies[int(random.random() * len(replies))]

    def _compose(
        self, wire: bytes, source: bytes, tcp: bool
    ) -> tuple[bool, tuple[bytes, ...]] | None:
        """The reply after its ID, in each order its records may come in, and whether
        the same query from the same place may be given it again."""
        try:
            # QR, opcode; one question, nothing else but perhaps one additional record.
            if wire[2] & 0xF8 or wire[4:10] != _ONE_QUESTION or wire[10]:
                return None
            end = wire.find(0, 12) + 1  # past the root label (checked when learned)
            if end == 0:
                return None
            qend = end + 4
            ecs = None
            do = 0
            if wire[11] == 0:
                if len(wire) != qend:
                    return None
                limit, opt = 512, b""
            else:
                if wire[11] != 1 or wire[qend : qend + 3] != _OPT_CODE:
                    return None
                payload, _, version, flags, rdlen = _OPT.unpack_from(wire, qend + 3)
                if version or qend + 11 + rdlen != len(wire):
                    return None  # BADVERS, or trailing or missing bytes: dnspython's to say
                limit = min(max(payload, 512), self.our_payload)
                opt = self.opt_plain
                do = flags & _DO
                if rdlen:
                    data = wire[qend + 11 :]
                    ecs = self.by_ecs.get(data) or self._learn_ecs(data)
                    if ecs is _INVALID:
                        return None
            question = wire[12:end].lower() + wire[end:qend]
            entry = self.table.get(question, _UNKNOWN)
            if entry is _UNKNOWN:
                entry = self._learn(question)
            if entry is None:
                return None
            keep = True  # the same query from the same place gets the same replies
            if type(entry) is Geo:
                where = ecs.where if ecs is not None else None
                if where is None:
                    where = self.by_source.get(source) or self._place_source(source)
                if ecs is not None:
                    opt = ecs.geo_opt
                heads, bodies, keep = self._geo(entry, where, wire, source)
            else:
                if ecs is not None and entry.echo:
                    opt = ecs.plain_opt
                heads, bodies = entry.heads, (entry.body,)
            if do:
                opt = _with_do(opt)
            head = heads[(wire[2] & 1) | (2 if opt else 0)]
            asked = wire[12:qend]
            replies = tuple(b"".join((head, asked, body, opt)) for body in bodies)
            if not tcp and len(replies[0]) + 2 > limit:
                # RFC 1035 4.2.1 / RFC 2181 9: empty sections and TC; the client asks over TCP.
                counts = _COUNTS.pack(1, 0, 0, 1 if opt else 0)
                replies = (bytes((head[0] | _TC, head[1])) + counts + asked + opt,)
        except (IndexError, struct.error):
            return None
        return keep, replies

    # -- the geographic answer ----------------------------------------------------------

    def _geo(
        self, entry: Geo, where: Where, wire: bytes, source: bytes
    ) -> tuple[tuple[bytes, ...], tuple[bytes, ...], bool]:
        """Header variants, answer sections to choose from, and whether the same query
        from the same place may be given them again (not after a weighted pick)."""
        if where.gen != self.gen:
            where.gen, where.answers = self.gen, {}
        geo = where.answers.get(entry.family)
        if geo is None:
            plan = self.selector.plan(where.placement, entry.family, self.healthy)
            geo = where.answers[entry.family] = GeoAnswer(
                plan, self.records[entry.family], self.answer_count
            )
        picks, keep = geo.plan.candidates, True
        if not picks:  # no edge has an address of this family: NODATA
            negative = entry.negative or self._negative(entry, wire)
            heads, bodies = negative.heads, (negative.body,)
        elif geo.bodies is not None:
            heads, bodies = geo.heads, geo.bodies
        else:
            # The weighted pick with the Selector's generator, then dnspython's shuffle.
            picks = self.selector.pick(picks)
            rrs = list(dict.fromkeys(geo.records[e.name] for e in picks))
            random.shuffle(rrs)
            heads, bodies, keep = _heads(0x84, 0, len(rrs), 0, 0), (b"".join(rrs),), False
        if log.isEnabledFor(logging.DEBUG):
            self._explain(wire, source, geo.plan, picks)
            keep = False  # each answer explained, as the dnspython path does
        return heads, bodies, keep

    def _negative(self, entry: Geo, wire: bytes) -> Static:
        end = wire.find(0, 12) + 5
        static = self._render(wire[12:end].lower())
        if static is None:  # pragma: no cover - the zone's own names always render
            raise RuntimeError("no NODATA answer for a name of the zone")
        entry.negative = static
        return static

    def _explain(self, wire: bytes, source: bytes, plan: Plan, picks: tuple[Edge, ...]) -> None:
        """The slow path's debug line for this decision (only when debug logging is on)."""
        from origin.geodns.select import Decision

        query = dns.message.from_wire(wire)
        q = query.question[0]
        ecs = next((o for o in query.options if isinstance(o, dns.edns.ECSOption)), None)
        decision = Decision(picks, plan.region, plan.scope, plan.why)
        self.authority.explain(q.name, q.rdtype, ipaddress.ip_address(source), ecs, decision)

    # -- learning ------------------------------------------------------------------------

    def _learn(self, question: bytes) -> Static | None:
        """The answer to a question not yet in the table, rendered by Authority.respond;
        None when it is not one answer for every client (then the dnspython path answers
        the question every time)."""
        if plain_name_end(question, 0) != len(question) - 4:
            return None  # not even a plain name: nothing to remember
        static = self._render(question)
        if len(self.table) >= TABLE_LIMIT:
            self.table = dict(self.geo)
        self.table[question] = static
        return static

    def _render(self, question: bytes) -> Static | None:
        """Authority.respond's answer to `question`, kept as the header bits and the
        sections after the question. Asked over TCP (never truncated) with EDNS and an
        ECS option for 0.0.0.0/0, to learn whether the answer echoes ECS; the OPT record
        is the last of the message and is left out of the body."""
        echo = opt_record(self.our_payload, ecs_option(1, 0, 0, b""))
        query = b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x01" + question
        query += opt_record(self.our_payload, ecs_option(1, 0, 0, b""))
        reply = self.authority.respond(query, _ZERO_SOURCE, tcp=True, explain=False)
        end = 12 + len(question)
        if reply is None or len(reply) < end or reply[12:end] != question:
            return None
        third, fourth = reply[2], reply[3]
        qd, an, ns, ar = _COUNTS.unpack_from(reply, 4)
        if third & 0xFB != 0x80 or fourth & 0xF0 or qd != 1 or ar < 1:  # QR, AA; rcode
            return None
        sections = dns.message.from_wire(reply)
        if any(len(rrset) > 1 for rrset in (*sections.answer, *sections.authority)) or any(
            len(rrset) > 1 for rrset in sections.additional
        ):
            return None  # records dnspython shuffles, and compression pointers with them
        if reply.endswith(echo):
            opt = echo
        elif reply.endswith(self.opt_plain):
            opt = self.opt_plain
        else:
            return None
        static = Static(third, fourth, (an, ns, ar - 1), reply[end : len(reply) - len(opt)])
        static.echo = opt is echo
        return static

    def _place_source(self, source: bytes) -> Where:
        where = self._where(self.selector.place(ipaddress.ip_address(source)))
        if len(self.by_source) >= TABLE_LIMIT:
            self.by_source.clear()
        self.by_source[source] = where
        return where

    def _learn_ecs(self, data: bytes) -> Ecs:
        parsed = parse_ecs(data)
        if parsed is None:
            ecs = _INVALID
        else:
            family, source, address = parsed
            plain = opt_record(self.our_payload, ecs_option(family, source, 0, address))
            if source == 0:
                ecs = Ecs(None, plain, plain)  # located by the source address, scope 0
            else:
                padded = address + bytes((4 if family == 1 else 16) - len(address))
                where = self._where(self.selector.place(ipaddress.ip_address(padded), source))
                scope = where.placement.scope
                geo = opt_record(self.our_payload, ecs_option(family, source, scope, address))
                ecs = Ecs(where, geo, plain)
        if len(self.by_ecs) >= TABLE_LIMIT:
            self.by_ecs.clear()
        self.by_ecs[data] = ecs
        return ecs

    def _where(self, placement: Placement) -> Where:
        where = self.wheres.get(placement)
        if where is None:
            if len(self.wheres) >= TABLE_LIMIT:
                self.wheres.clear()
            where = self.wheres[placement] = Where(placement)
        return where


def packed_source(host: str) -> bytes:
    """A peer's address as the fast path keys it: 4 or 16 bytes."""
    return ipaddress.ip_address(host).packed
