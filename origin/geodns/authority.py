"""The GeoDNS authority: answers for the CDN's zone, sending each client to the nearest
healthy edge.

Three parts, each with one job:
  Selector    (pure, origin/geodns/select.py) which edges answer a client
  Authority   (pure, no sockets) one DNS message in, one out, with a real authority's
              manners: AA, SOA and NS at the apex, NXDOMAIN vs NODATA with the SOA for
              negative caching, REFUSED outside the zone, the question's case, EDNS0
              (payload size, BADVERS), truncation over UDP, minimal ANY (RFC 8482),
              FORMERR or silence for malformed packets
  HealthView  whether each edge is up: its own HTTP probes of each edge's health URL
              (rise/fall) and, when configured, the coordinator's node registry

`serve` runs them over UDP and TCP on one port (and, when asked, the HTTP steering
listener of origin/geodns/steer.py beside them): the common queries are answered from
precomputed wire bytes (origin/geodns/wire.py), UDP in batches (origin/geodns/udpbatch.py), and
everything else by Authority through dnspython, which stays the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
import struct
import time
from collections.abc import Callable

import aiohttp
import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from edge.upstream.balance import Health, Member, Thresholds
from origin.deploy.topology import Address, Edge, Topology
from origin.geodns.geoip import WatchedDatabase
from origin.geodns.select import Decision, Selector, address_of
from origin.geodns.udpbatch import open_udp
from origin.geodns.wire import FastPath, packed_source

log = logging.getLogger("origin.geodns")

#: EDNS payload this server offers (RFC 8900 / DNS flag day 2020: avoids fragmentation).
OUR_PAYLOAD = 1232
#: A TCP connection with no query for this long is closed.
TCP_IDLE = 10.0
NS_TTL = 3600


# -- answering ------------------------------------------------------------------------------


def _formerr(wire: bytes) -> bytes | None:
    """A FORMERR carrying the query's id and opcode, when at least the header parsed;
    None (drop) when even that did not, or the packet is itself a response."""
    if len(wire) < 12:
        return None
    ident, flags = struct.unpack("!HH", wire[:4])
    if flags & dns.flags.QR:
        return None
    opcode_bits = flags & 0x7800
    return struct.pack("!HHHHHH", ident, dns.flags.QR | opcode_bits | dns.rcode.FORMERR, 0, 0, 0, 0)


def _do_bit(query: dns.message.Message) -> int:
    """RFC 3225 Section 3: the DO bit a response carries is the query's."""
    return query.ednsflags & dns.flags.DO if query.edns >= 0 else 0


def _ecs_acceptable(query: dns.message.Message) -> bool:
    """RFC 7871 Section 6: SCOPE PREFIX-LENGTH MUST be 0 in queries, and a query with a
    malformed option is answered FORMERR (Section 7.1.1). A FAMILY other than 1 or 2
    never gets here: dnspython refuses to parse it, which is FORMERR too."""
    return all(o.scopelen == 0 for o in query.options if isinstance(o, dns.edns.ECSOption))


class Authority:
    """Answers DNS messages for one zone."""

    def __init__(
        self, topology: Topology, selector: Selector, healthy: Callable[[Edge], bool]
    ) -> None:
        self.t = topology
        self.zone = topology.zone
        self.selector = selector
        self.healthy = healthy
        origin = self.zone.origin
        self.soa = dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            f"{self.zone.mname} {self.zone.rname} {self.zone.serial} 3600 600 604800 "
            f"{self.zone.negative_ttl}",
        )
        # Record data made once: parsing text per query was a third of the work.
        self.rdata = {
            (e.name, family): dns.rdata.from_text(
                dns.rdataclass.IN, dns.rdatatype.A if family == 4 else dns.rdatatype.AAAA, str(a)
            )
            for e in topology.edges
            for family in (4, 6)
            if (a := address_of(e, family)) is not None
        }
        # Names that exist: the CDN names, the glue names, and every name between them
        # and the apex (empty non-terminals answer NODATA, not NXDOMAIN).
        self.existing: set[dns.name.Name] = {origin}
        for name in (*self.zone.names, *self.zone.glue):
            while name != origin and name.is_subdomain(origin):
                self.existing.add(name)
                name = name.parent()

    def respond(
        self, wire: bytes, source: Address, *, tcp: bool, explain: bool = True
    ) -> bytes | None:
        """The response to one message, or None to say nothing. `explain`: log each
        geographic decision at debug level (not when the fast path renders an answer
        ahead of time)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            return None
        except dns.exception.DNSException:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: never answer it
        response = dns.message.make_response(query, our_payload=OUR_PAYLOAD)  # RD copied, no RA
        # RFC 3225 Section 3: the DO bit of the query is copied into the response, on
        # every path (use_edns below keeps the flags set here).
        response.ednsflags |= _do_bit(query)
        if query.edns > 0:
            # RFC 6891 Section 6.1.3: only version 0 exists.
            response.use_edns(0, response.ednsflags, OUR_PAYLOAD)
            response.set_rcode(dns.rcode.BADVERS)
            return response.to_wire()
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response.to_wire()
        if len(query.question) != 1 or not _ecs_acceptable(query):
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        self._answer(query, response, source, explain)
        limit = (
            65535
            if tcp
            else (max(512, min(query.payload, OUR_PAYLOAD)) if query.edns == 0 else 512)
        )
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 1035 4.2.1 / RFC 2181 9: say it did not fit; the client asks over TCP.
            response.answer, response.authority, response.additional = [], [], []
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    def _answer(
        self,
        query: dns.message.Message,
        response: dns.message.Message,
        source: Address,
        explain: bool = True,
    ) -> None:
        q = query.question[0]
        qname, rdtype = q.name, q.rdtype
        if q.rdclass != dns.rdataclass.IN or not qname.is_subdomain(self.zone.origin):
            response.set_rcode(dns.rcode.REFUSED)  # not our zone: no referral, no recursion
            return
        if rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        ecs = next((o for o in query.options if isinstance(o, dns.edns.ECSOption)), None)
        scope = 0
        if qname not in self.existing:
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._negative(response)
        elif rdtype == dns.rdatatype.ANY:
            # RFC 8482 Section 4.2: one synthesised HINFO instead of everything.
            response.answer.append(
                dns.rrset.from_text(qname, self.zone.ttl, "IN", "HINFO", '"RFC8482" ""')
            )
        elif qname == self.zone.origin and rdtype == dns.rdatatype.SOA:
            response.answer.append(dns.rrset.from_rdata(qname, self.zone.negative_ttl, self.soa))
        elif qname == self.zone.origin and rdtype == dns.rdatatype.NS:
            rrset = dns.rrset.from_text_list(
                qname, NS_TTL, "IN", "NS", [str(n) for n in self.zone.ns]
            )
            response.answer.append(rrset)
            self._glue(response)
        elif rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and qname in self.zone.names:
            scope = self._edges(qname, rdtype, response, source, ecs, explain)
        elif rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and qname in self.zone.glue:
            want = 4 if rdtype == dns.rdatatype.A else 6
            addrs = [str(a) for a in self.zone.glue[qname] if a.version == want]
            if addrs:
                response.answer.append(
                    dns.rrset.from_text_list(
                        qname, NS_TTL, "IN", dns.rdatatype.to_text(rdtype), addrs
                    )
                )
            else:
                self._negative(response)
        else:
            self._negative(response)  # the name exists, the type does not: NODATA
        if ecs is not None:
            # RFC 7871 Section 7.2.1: echo family, source prefix and address; say for how
            # much of the address space the answer holds (0: for all of it).
            response.use_edns(
                0,
                response.ednsflags,
                OUR_PAYLOAD,
                options=[dns.edns.ECSOption(ecs.address, ecs.srclen, scope)],
            )

    def _edges(
        self,
        qname: dns.name.Name,
        rdtype: int,
        response: dns.message.Message,
        source: Address,
        ecs: dns.edns.ECSOption | None,
        explain: bool = True,
    ) -> int:
        family = 4 if rdtype == dns.rdatatype.A else 6
        client, prefix = source, None
        if ecs is not None and ecs.srclen > 0:
            client, prefix = ipaddress.ip_address(ecs.address), ecs.srclen
        decision = self.selector.decide(client, family, self.healthy, prefix)
        rdatas = [
            self.rdata[(e.name, family)] for e in decision.edges if (e.name, family) in self.rdata
        ]
        if explain:
            self.explain(qname, rdtype, source, ecs, decision)
        if rdatas:
            response.answer.append(dns.rrset.from_rdata_list(qname, self.zone.ttl, rdatas))
        else:
            self._negative(response)  # no edge has an address of this family
        return decision.scope if ecs is not None and ecs.srclen > 0 else 0

    def explain(
        self,
        qname: dns.name.Name,
        rdtype: int,
        source: Address,
        ecs: dns.edns.ECSOption | None,
        decision: Decision,
    ) -> None:
        log.debug(
            "%s %s from %s%s: region %s, %s (%s)",
            qname,
            dns.rdatatype.to_text(rdtype),
            source,
            f" ecs {ecs.address}/{ecs.srclen}" if ecs is not None else "",
            decision.region,
            ", ".join(e.name for e in decision.edges) or "none",
            decision.why,
        )

    def _negative(self, response: dns.message.Message) -> None:
        """RFC 2308 Section 3: the SOA in the authority section, for negative caching."""
        response.authority.append(
            dns.rrset.from_rdata(self.zone.origin, self.zone.negative_ttl, self.soa)
        )

    def _glue(self, response: dns.message.Message) -> None:
        for name, addrs in self.zone.glue.items():
            for version, rdtype in ((4, "A"), (6, "AAAA")):
                values = [str(a) for a in addrs if a.version == version]
                if values:
                    response.additional.append(
                        dns.rrset.from_text_list(name, NS_TTL, "IN", rdtype, values)
                    )


# -- health ---------------------------------------------------------------------------------


class HealthView:
    """Whether each edge may be in answers: its own probes (rise/fall thresholds) of
    each edge's health URL, and the coordinator's registry when one is configured. An
    edge is left out when either says it is down; a source that cannot be reached says
    nothing."""

    def __init__(self, topology: Topology, token: str = "") -> None:
        self.t = topology
        s = topology.health
        self.health = Health(Thresholds(rise=s.rise, fall=s.fall, active=True))
        self.probes = {e.name: Member(e.health) for e in topology.edges if e.health}
        self.registry: dict[str, bool] = {}
        self.token = token or s.token or os.environ.get("EDGE_TOKEN", "")
        self._tasks: list[asyncio.Task[None]] = []

    def healthy(self, edge: Edge) -> bool:
        probe = self.probes.get(edge.name)
        if probe is not None and not probe.up:
            return False
        return self.registry.get(edge.name, True)

    async def start(self) -> None:
        # https health URLs are verified, with the topology's CA when it names one.
        ssl_context = ssl.create_default_context(cafile=self.t.health.ca or None)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.t.health.timeout),
            connector=aiohttp.TCPConnector(ssl=ssl_context),
        )
        if self.probes:
            self._tasks.append(asyncio.create_task(self._probe_loop()))
        if self.t.health.coordinator:
            self._tasks.append(asyncio.create_task(self._registry_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if hasattr(self, "_session"):
            await self._session.close()

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(n, m) for n, m in self.probes.items()))
            await asyncio.sleep(self.t.health.interval)

    async def _probe(self, name: str, member: Member) -> None:
        try:
            async with self._session.get(member.url, allow_redirects=False) as resp:
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        was = member.up
        self.health.on_probe(member, ok, time.monotonic())
        if member.up != was:
            log.warning(
                "edge %s is %s (health probe %s)", name, "up" if member.up else "down", member.url
            )

    async def _registry_loop(self) -> None:
        url = self.t.health.coordinator.rstrip("/") + "/v1/nodes"
        headers = {"Authorization": f"Bearer {self.token}"}
        while True:
            try:
                async with self._session.get(url, headers=headers) as resp:
                    if resp.status == 200:
                        nodes = (await resp.json())["nodes"]
                        self.registry = {n["name"]: bool(n["healthy"]) for n in nodes}
                    else:
                        log.warning("coordinator %s answered %d", url, resp.status)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
                log.debug("coordinator %s unreachable: %s", url, exc)
                self.registry = {}
            await asyncio.sleep(self.t.health.interval)


# -- sockets --------------------------------------------------------------------------------


class _Answers:
    """Each message to the fast path first, then to Authority.respond; one bad packet
    never stops the server."""

    def __init__(self, authority: Authority, fast: FastPath | None) -> None:
        self.authority = authority
        self.fast = fast
        self.sync = fast.sync if fast is not None else _nothing

    def udp(self, wire: bytes, source: bytes) -> bytes | None:
        return self.respond(wire, source, False)

    def respond(self, wire: bytes, source: bytes, tcp: bool) -> bytes | None:
        try:
            if self.fast is not None:
                reply = self.fast.answer(wire, source, tcp)
                if reply is not None:
                    return reply
            return self.authority.respond(wire, ipaddress.ip_address(source), tcp=tcp)
        except Exception:
            peer = ipaddress.ip_address(source)
            log.exception("error answering a %s query from %s", "TCP" if tcp else "UDP", peer)
            return _formerr(wire)


def _nothing() -> None:
    pass


async def _tcp_client(
    answers: _Answers, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """RFC 7766: length-prefixed messages, several per connection, until idle."""
    peer = writer.get_extra_info("peername")
    source = packed_source(peer[0])
    try:
        while True:
            head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
            (length,) = struct.unpack("!H", head)
            wire = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
            answers.sync()
            reply = answers.respond(wire, source, True)
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(
    topology: Topology,
    host: str,
    port: int,
    ready: Callable[[int], None] | None = None,
    *,
    fast: bool = True,
    geo: WatchedDatabase | None = None,
    steer: tuple[str, int] | None = None,
    steer_ready: Callable[[int], None] | None = None,
) -> None:
    """Answer on UDP and TCP host:port until cancelled. `fast`: answer the common
    queries on the wire-level fast path (origin/geodns/wire.py); without it every query goes
    through dnspython's messages (the same answers, for comparison). `geo`: the
    geolocation database, looked at every [geoip] reload seconds for a new version.
    `steer`: HOST, PORT of the HTTP steering listener (origin/geodns/steer.py), which
    shares the selector and the health view."""
    view = HealthView(topology)
    await view.start()
    selector = Selector(topology, geo=geo)
    authority = Authority(topology, selector, view.healthy)
    answers = _Answers(authority, FastPath(authority, OUR_PAYLOAD) if fast else None)
    watch = asyncio.create_task(_watch(geo, topology.geoip.reload)) if geo is not None else None
    stop_steer = None
    if steer is not None:
        from origin.geodns.steer import start_steering

        stop_steer, steer_port = await start_steering(selector, view.healthy, *steer)
        if steer_ready is not None:
            steer_ready(steer_port)
    tcp = await asyncio.start_server(
        lambda r, w: _tcp_client(answers, r, w), host, port, reuse_address=True
    )
    bound = tcp.sockets[0].getsockname()[1]
    close_udp = await open_udp(host, bound, answers.udp, answers.sync)
    if ready is not None:
        ready(bound)
    try:
        await asyncio.Event().wait()
    finally:
        close_udp()
        tcp.close()
        await tcp.wait_closed()
        if stop_steer is not None:
            await stop_steer()
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        await view.close()


async def _watch(geo: WatchedDatabase, interval: float) -> None:
    """Look at the database file every `interval` seconds; a new one is read in a
    thread (a city database is tens of megabytes) and swapped in whole. The fast path
    notices the swap at its next sync."""
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(geo.check)
