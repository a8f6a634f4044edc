"""The request pipeline: one client request walks named states, as in Varnish.

    recv ─▶ hash ─▶ lookup ─▶ hit ─────────────▶ deliver
                          ├─▶ stale (swr) ─────▶ deliver (+ background refresh)
                          ├─▶ miss ─▶ fetch ──▶ deliver (read-while-writer) / pass
                          └─▶ pass ─▶ deliver (streamed, never stored)
    any state ─▶ synth (an error or a refusal made here)

The steps and the moves between them are edge.pipeline.steps' table; each step is a method
`st_<name>` returning the next step, `run` drives them (refusing a move the table does
not list) and records the walk for the access log. The caching rules come from `edge.rfc.policy`;
this module owns the order of things and the client's I/O: the lookup in the store,
joining the in-flight fills, passes to the upstream and the client response. A fill's
own fetch is the fetch machine's (edge.fetch.machine): the fetch step hands it a frozen
request and delivers what the fill brings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any

from multidict import CIMultiDict, CIMultiDictProxy

from edge.config import NodeConfig
from edge.features import compress, guard, recv
from edge.features.guard import Refusal, Refused
from edge.features.waf import RuleSet
from edge.fetch import derive, machine
from edge.fetch.derive import Deriver
from edge.fetch.fill import Fill, FillHead, InFlight
from edge.fetch.machine import NEGOTIATED as _NEGOTIATED
from edge.fetch.machine import FetchRequest
from edge.fetch.slices import (
    BodySource,
    FileSegment,
    FileSource,
    FillSource,
    SlicedSource,
    Slicer,
)
from edge.observe.accesslog import AccessLog, request_line
from edge.observe.metrics import NodeMetrics
from edge.pipeline import fastpath, steps
from edge.pipeline.exchange import Channel, InterimRelay, Request, Response
from edge.pipeline.steps import Step
from edge.purge.bans import Purger
from edge.rfc import forwarding, policy
from edge.rfc.cachestatus import CacheStatus
from edge.rfc.keys import key_target, location_key, request_key
from edge.rfc.policy import ResponsePolicy, Reuse
from edge.rfc.ranges import (
    ByteRange,
    Unsatisfiable,
    first_position,
    forwardable,
    if_range_allows,
    parse_range,
    within,
)
from edge.store.disk import Entry, Store
from edge.upstream.h1client import Deferred
from edge.upstream.pools import UpstreamError, UpstreamResponse, Upstreams

log = logging.getLogger("edge.pipeline.transaction")

#: Request fields that belong to this hop or to the client's own cache; a fill asks
#: upstream for the whole, unconditional representation and answers them itself.
_CLIENT_CONDITIONALS = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since")
_RANGE_FIELDS = ("Range", "If-Range")
#: Consumed here (W3C Edge Architecture): never passed on to clients.
_SURROGATE_ONLY = ("surrogate-control",)
#: Bodies (or ranges) smaller than this are read and written, not sendfile'd.
_SENDFILE_MIN = 128 << 10

#: The walk of a plain hit, the only kind edge.pipeline.fastpath repeats.
_PLAIN_HIT = [Step.RECV, Step.HASH, Step.LOOKUP, Step.HIT, Step.DELIVER]

_PUBLIC_REASONS = {
    "upstream-unreachable": "the upstream server could not be reached or answered badly",
    "upstream-timeout": "the upstream server did not answer in time",
}


@dataclass
class Engine:
    """Everything a request needs from its node, shared by all its transactions."""

    config: NodeConfig
    store: Store
    upstream: Upstreams
    inflight: InFlight
    metrics: NodeMetrics
    slicer: Slicer
    deriver: Deriver
    purger: Purger | None = None
    trusted: tuple[forwarding.Network, ...] = ()
    hidden: frozenset[str] = frozenset()  # upstream fields clients do not see
    limiter: guard.RateLimiter | None = None
    rules: RuleSet | None = None
    # Request fields dropped before forwarding (unkeyed), and those that key instead.
    unkeyed: frozenset[str] = frozenset()
    keyed: tuple[str, ...] = ()
    hot: fastpath.HotTier | None = None  # plain hits kept for edge.pipeline.fastpath
    access: AccessLog = field(default_factory=lambda: AccessLog(enabled=False))
    # The clocks the client machine decides by, injected so a test sets `now`: the
    # wall clock (ages, freshness, dates) and a monotonic one (the rate limiter's
    # buckets, which the connection layer's hit fast path shares); and the pause of
    # the rate tarpit.
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    # The recv checks' settings (edge.features.recv), and the list as the hit fast
    # path runs it.
    checks: recv.Settings = field(init=False)
    hot_checks: recv.Remembered = field(init=False)
    # The stored fields a client is not shown (_client_headers), without and with Age
    # (recomputed when the response comes from storage).
    not_shown: tuple[frozenset[str], frozenset[str]] = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.checks = recv.Settings(
            max_body=cfg.max_body_size,
            max_header_bytes=cfg.max_header_bytes,
            allowed_methods=tuple(cfg.allowed_methods),
            rules=self.rules,
            limiter=self.limiter,
            cdn_name=cfg.cdn_name,
            node=cfg.name,
            loop_allowance=cfg.loop_allowance or 0,
            serves=lambda host: self.upstream.route_for(host) is not None,
        )
        self.hot_checks = recv.Remembered(self.checks)
        not_shown = frozenset({"content-length", *_SURROGATE_ONLY, *self.hidden})
        self.not_shown = (not_shown, not_shown | {"age"})

    def response_policy(self, headers: policy.Headers) -> ResponsePolicy:
        return policy.response_policy(
            headers, self.config.targeted_fields, surrogate_targets=(self.config.name,)
        )

    def age(self, entry: Entry, headers: policy.Headers, now: float) -> float:
        return policy.current_age(
            headers,
            entry.request_time,
            entry.response_time,
            now,
            invalid_age_is_stale=self.config.invalid_age_is_stale,
        )

    def lifetime(self, entry: Entry, headers: policy.Headers, rp: ResponsePolicy) -> float:
        lifetime, _ = policy.freshness_lifetime(
            entry.status,
            headers,
            rp,
            entry.response_time,
            heuristic_fraction=self.config.heuristic_fraction,
            heuristic_max=self.config.heuristic_max,
        )
        return lifetime


def guard_settings(config: NodeConfig) -> dict[str, Any]:
    """The Engine's guard parts from a node's config: rate limiter, request rules,
    and the request fields dropped before forwarding or added to the key."""
    classes = guard.rate_classes(config.rate_limit, config.rate_burst, config.rate_classes)
    keyed = tuple(h.lower() for h in config.keyed_headers)
    return {
        "limiter": guard.RateLimiter(classes) if classes else None,
        "rules": RuleSet.from_config(config.waf, config.waf_rules, config.waf_hosts),
        "unkeyed": frozenset(h.lower() for h in config.unkeyed_headers) - set(keyed),
        "keyed": keyed,
    }


class Transaction:
    """One client request on its walk through the states."""

    def __init__(self, engine: Engine, request: Request, channel: Channel) -> None:
        self.e = engine
        self.req = request
        self.channel = channel
        self.method = request.method
        self.headers: CIMultiDictProxy[str] = request.headers
        self.now = engine.clock()
        self.started = engine.monotonic()
        self.status = CacheStatus(engine.config.name)
        # Whether the peer is a trusted proxy (an edge, at a shield), and who the
        # client is: the peer, or the address that proxy forwarded for.
        self.trusted = forwarding.is_trusted(request.peer, engine.trusted)
        # The authority and target as the guard normalised them (st_recv).
        self.host = request.authority
        self.target = guard.Target("/", None)
        self.key_target = "/"
        self._request_id = ""
        self.client = forwarding.client_address(request.peer, request.headers, engine.trusted)
        self.request_cc = policy.request_cache_control(request.headers)
        self.walk: list[Step] = []  # the steps taken (edge.pipeline.steps), for the log
        self.key = ""
        self.entry: Entry | None = None
        self.entry_headers: CIMultiDict[str] = CIMultiDict()
        self.body: IO[bytes] | None = None
        self.reuse: Reuse | None = None
        self.fill: Fill | None = None
        self.head: FillHead | None = None
        self.upstream_response: UpstreamResponse | None = None
        # The response as described, sent (or about to be: synth) through channel.
        self.response: Response | None = None
        self.code = 0
        self.sent = 0
        self.upstream_ms: float | None = None
        self.synth_reason = ""
        self.client_gone = False
        self.cut = False  # the body was cut short on our side (upstream broke)
        self.soft_purged = False  # the stored response must be revalidated (edge.purge.bans)
        self._rounds = 0  # lookups again after another worker's fill (_look_again)
        self._looked_up: list[Entry] = []  # the variants the lookup saw
        self._part: Entry | None = None  # a stored part this request needs more than
        self._hot_candidate = False  # delivered as stored from the entry's own file
        self._prior_status: list[str] = []  # Cache-Status entries of the caches upstream
        self._relay: InterimRelay | None = None  # the upstream's 1xx on their way (_interim)
        self._body_read = False  # the request's body was read (or is being read)

    # -- the walk -------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the client machine: each step names the next, and every move is
        checked against edge.pipeline.steps.MOVES; a response synth made leaves at the end."""
        step = steps.FIRST
        try:
            while True:
                steps.move(self.walk, step)
                if step in steps.FINAL:
                    break
                step = await _STEPS[step](self)
            if self.response is not None and not self.channel.started:
                await self.channel.respond(self.response)  # made by synth
        finally:
            if self._relay is not None:  # a fill this client left may still tell it
                self._relay.stop()
            if self.body is not None:
                self.body.close()
            if self.upstream_response is not None:  # not read to the end: drop it
                self.upstream_response.close()
            self._account()

    # -- states ---------------------------------------------------------------------

    async def st_recv(self) -> Step:
        """The recv checks (edge.features.recv: framing, authority, target, rate,
        method, request rules, loops, route); then route by method."""
        refusal = self._guard()
        if refusal is not None:
            if refusal.status == 429 and self.e.config.rate_tarpit:
                # A client over its rate waits before it hears so: one connection then
                # costs the node one refusal per tarpit interval, not one per request.
                await self.e.sleep(self.e.config.rate_tarpit)
            return self.refuse(refusal)
        if self.method in policy.CACHEABLE_METHODS:
            return Step.HASH
        if self.method == "CONNECT":
            return self.synth(
                405,
                "CONNECT is not supported",
                allow=guard.allow_field(self.e.config.allowed_methods),
            )
        self.status.fwd = "method"
        return Step.PASS

    async def st_hash(self) -> Step:
        self.key = request_key(self.req.scheme, self.host, self.target, self.e.config)
        return Step.LOOKUP

    async def st_lookup(self) -> Step:
        """RFC 9111 Section 4: select a stored response (URI, Vary) and decide how it
        may be used."""
        self._looked_up = self.e.store.variants(self.key)
        chosen = self._select(self._looked_up)
        if chosen is None:
            # Another worker replaced the entry since it was read: look again, once.
            self._looked_up = self.e.store.variants(self.key)
            chosen = self._select(self._looked_up) or []
        variants = chosen
        if self.entry is not None and not self._purge_check(self.entry):
            if self.body is not None:
                self.body.close()
                self.body = None
            self.entry, self.entry_headers = None, CIMultiDict()
            variants = []
        if self.entry is not None and self.entry.part is not None and not self._part_answers():
            # RFC 9111 Section 3.4: a stored part that lacks bytes this request asks
            # for is a miss; the fetch asks for what it lacks, to combine.
            self._part = self.entry
            if self.body is not None:
                self.body.close()
                self.body = None
            self.entry, self.entry_headers = None, CIMultiDict()
        if not variants:
            # What this request removed itself (a hard purge, a lost body) is not another
            # process's change: st_fetch compares with the store as this left it.
            self._looked_up = self.e.store.variants(self.key)
        if self.entry is None:
            self.status.fwd = "vary-miss" if variants else "uri-miss"
            if self._part is not None:
                self.status.fwd = "partial"
            if "only-if-cached" in self.request_cc:
                return self.synth(504, "only-if-cached and not stored")
            if self.method == "HEAD":
                return Step.PASS  # a HEAD miss is not worth fetching a whole body for
            return Step.MISS
        rp = self.e.response_policy(self.entry_headers)
        lifetime = self.e.lifetime(self.entry, self.entry_headers, rp)
        age = self.e.age(self.entry, self.entry_headers, self.now)
        self.reuse = policy.evaluate_reuse(age, lifetime, self.request_cc, rp)
        if self.soft_purged:
            # Soft purge: stale from now on, whatever its freshness said.
            if "only-if-cached" in self.request_cc:
                return self.synth(504, "only-if-cached and the stored response was purged")
            self.status.fwd, self.status.detail = "stale", "soft-purged"
            return Step.MISS
        if self.reuse.kind in ("fresh", "stale-ok"):
            return Step.HIT
        if self.reuse.kind == "stale-while-revalidate":
            return Step.STALE
        if "only-if-cached" in self.request_cc:
            return self.synth(504, "only-if-cached and the stored response is stale")
        self.status.fwd = "request" if "no-cache" in self.request_cc else "stale"
        return Step.MISS

    def _part_answers(self) -> bool:
        """RFC 9111 Section 3.3: a stored part answers a GET whose ranges (after its
        If-Range) lie inside it; a range past the representation's end is answered
        416 from what is stored, its complete length being known."""
        entry = self.entry
        assert entry is not None and entry.part is not None
        if self.method != "GET" or "Range" not in self.headers:
            return False
        if not if_range_allows(self.headers, self.entry_headers):
            return False
        try:
            ranges = parse_range(
                self.headers.get("Range"), entry.size, self.entry_headers.get("Content-Type") or ""
            )
        except Unsatisfiable:
            return True
        return ranges is not None and within(ranges, entry.part)

    def _select(self, variants: list[Entry]) -> list[Entry] | None:
        """Choose the stored response for this request (Vary) and open its body;
        returns the variants (emptied when the chosen one's body was lost), or None
        when the store moved on since they were read (edge.store.disk.Store.drop_lost)."""
        for entry in variants:
            if entry.derived_from:
                continue  # encodings of a stored response are chosen at delivery
            if policy.vary_matches(entry.vary, self.headers, _NEGOTIATED):
                if entry.slice_size:  # segmented: slices are found as they are read
                    self.entry, self.entry_headers = entry, CIMultiDict(entry.headers)
                    break
                body = self.e.store.open_body(entry)
                if body is None:  # evicted under us: the metadata is stale
                    return [] if self.e.store.drop_lost(entry) else None
                self.entry, self.body = entry, body
                self.entry_headers = CIMultiDict(entry.headers)
                break
        return variants

    async def st_hit(self) -> Step:
        self.status.hit = True
        assert self.reuse is not None
        self.status.ttl = int(self.reuse.ttl)
        return Step.DELIVER

    async def st_stale(self) -> Step:
        """RFC 5861 Section 3: serve the stale response, refresh in the background."""
        assert self.entry is not None and self.reuse is not None
        self.status.hit = True
        self.status.ttl = int(self.reuse.ttl)
        self.status.detail = "stale-while-revalidate"
        inflight = self.e.inflight
        # A refresh under way, here or in another process, is as good as this one.
        claim = await inflight.join_or_start(self.key)
        if claim.kind == "started" and claim.fill is not None:
            machine.start(self.e, claim.fill, self._fetch_request())
        return Step.DELIVER

    async def st_miss(self) -> Step:
        return Step.FETCH

    async def st_fetch(self) -> Step:
        """Join the key's fill in flight, or start one; then act on what it became."""
        inflight = self.e.inflight
        purger = self.e.purger
        if purger is not None:
            purger.sync()
        looking = self._rounds < 3  # after three rounds: fetch, waiting on nobody
        # Unchanged: the store's memory cache still holds the very list looked up
        # (edge.store.disk re-reads a key another process changed).
        claim = await inflight.join_or_start(
            self.key,
            self._claim_timeout() if looking else 0.0,
            usable=lambda fill: not self._purged_since(fill),  # asked upstream before a purge
            unchanged=(lambda: self.e.store.variants(self.key) is self._looked_up)
            if looking
            else None,
        )
        if claim.kind == "again":
            return self._look_again()
        fill = claim.fill
        assert fill is not None
        initiator = claim.kind == "started"
        if initiator:
            request = self._fetch_request(
                stale_ok=self._stale_on_error(), probe=self._probe(), interim=self._interim()
            )
            machine.start(self.e, fill, request)
        else:
            self.status.collapsed = True
        started = time.monotonic()
        head = await asyncio.shield(fill.head)
        await self._interim_done()
        self.upstream_ms = (time.monotonic() - started) * 1000
        self._note(fill.note)
        if head.kind == "not-modified":
            assert head.entry is not None
            self.status.fwd_status = 304
            self._use_entry(head.entry)
            return Step.DELIVER
        if head.kind == "sliced":
            assert head.entry is not None
            if not initiator and not policy.vary_matches(
                head.entry.vary, self.headers, _NEGOTIATED
            ):
                self.status.collapsed = False
                return Step.PASS
            self.status.fwd_status = head.status
            self.status.stored = True
            self._use_entry(head.entry)
            return Step.DELIVER
        if head.kind == "body":
            self.status.fwd_status = head.status
            if not initiator and (
                # A part (RFC 9111 Section 3.3) answers the range its initiator asked.
                head.status == 206 or not policy.vary_matches(head.vary, self.headers, _NEGOTIATED)
            ):
                self.status.collapsed = False
                return Step.PASS
            if self.body is not None:
                self.body.close()
                self.body = None
            self.fill, self.head = fill, head
            self.status.stored = head.storable
            return Step.DELIVER
        if head.kind == "private":
            if initiator:
                self.upstream_response = head.response
                self.status.fwd_status = head.status
                return Step.DELIVER
            self.status.collapsed = False
            return Step.PASS
        # head.kind == "error"
        assert head.error is not None
        return self._upstream_failed(head.error)

    def _purged_since(self, fill: Fill) -> bool:
        purger = self.e.purger
        return purger is not None and purger.bans.matches_key_since(self.key, fill.started)

    def _claim_timeout(self) -> float:
        """How long to wait for another worker's fill before fetching alone: as long
        as that worker's own upstream timeouts could let it wait for a head."""
        cfg = self.e.config
        return cfg.upstream_connect_timeout + cfg.upstream_read_timeout

    def _look_again(self) -> Step:
        """Another worker's fill of this key ended: back to the lookup, which finds
        what it stored (a few rounds at most, then this request fetches alone)."""
        self._rounds += 1
        if self.body is not None:
            self.body.close()
            self.body = None
        self.entry, self.entry_headers, self.reuse = None, CIMultiDict(), None
        self.soft_purged = False
        self.status = CacheStatus(self.e.config.name)
        return Step.LOOKUP if self._rounds < 3 else Step.FETCH

    async def st_pass(self) -> Step:
        """Forward the request as it came (less hop-by-hop fields); nothing stored.
        Unsafe methods invalidate what they touch (RFC 9111 Section 4.4)."""
        if self.body is not None:
            self.body.close()
            self.body = None
        body: bytes | Deferred | None = None
        if self.req.has_body:
            try:
                body = await self._request_body()
            except Refused as exc:
                return self.refuse(exc.refusal)
        started = time.monotonic()
        effective = request_key(self.req.scheme, self.host, self.target, self.e.config)
        try:
            response = await self.e.upstream.request(
                self.method,
                self.target.path_qs,
                self._upstream_headers(),
                body,
                key=effective,
                client=self.client,
                interim=self._interim(),
            )
        except UpstreamError as exc:
            self.e.metrics.upstream_errors.labels(self.e.config.name, exc.detail).inc()
            return self.synth(exc.status, str(exc), detail=exc.detail)
        except Refused as exc:  # the body, read once the upstream asked for it
            return self.refuse(exc.refusal)
        finally:
            await self._interim_done()
        self.upstream_ms = (time.monotonic() - started) * 1000
        self.e.metrics.upstream_latency.labels(self.e.config.name).observe(self.upstream_ms / 1000)
        self.upstream_response = response
        self.status.fwd_status = response.status
        self.status.fwd = self.status.fwd or "bypass"
        self._note(response.note)
        for uri in policy.invalidated_uris(
            self.method, response.status, effective, response.headers
        ):
            key = uri if uri == effective else location_key(uri, self.e.config)
            removed = self.e.store.remove(key) if key is not None else 0
            log.debug("invalidated %s (%d variants) after %s", uri, removed, self.method)
        return Step.DELIVER

    @property
    def _body_unread(self) -> bool:
        """A body the client holds back until told to send it (`Expect:
        100-continue`) and nobody asked for: it may or may not come, so the
        connection cannot be read for a next request (RFC 9110 Section 10.1.1)."""
        if not self.req.has_body or self._body_read:
            return False
        return (self.req.headers.get("Expect") or "").strip().lower() == "100-continue"

    async def _request_body(self) -> bytes | Deferred:
        """The body a pass sends upstream. RFC 9110 Section 10.1.1: a client that sent
        `Expect: 100-continue` waits for a word before its body. A body edge would
        refuse by its length alone is refused at once; otherwise a proxy forwards the
        expectation: the body is read (after edge's 100 to the client) only once the
        upstream asked for it or stayed silent (edge.upstream.h1client.CONTINUE_WAIT),
        and never if it answered first. A body of unknown length (chunked) is read
        whole first, after edge's own 100: its Content-Length upstream is known only
        then."""
        cfg = self.e.config
        expects = (self.req.headers.get("Expect") or "").strip().lower() == "100-continue"
        expects = expects and self.req.version >= (1, 1)  # HTTP/1.0: ignored
        length = self.req.content_length
        if expects and length is not None and length > cfg.max_body_size:
            raise Refused(Refusal(413, "request body too large", close=True))
        whole: bytes | None = None

        async def supply() -> bytes:
            nonlocal whole
            if whole is None:
                if expects:
                    await self.channel.send_continue()
                self._body_read = True
                try:
                    whole = await guard.read_body(
                        self.req.body,
                        max_size=cfg.max_body_size,
                        timeout=cfg.body_timeout,
                        min_rate=cfg.body_min_rate,
                        clock=self.e.monotonic,
                    )
                except ConnectionError as exc:
                    # The client left mid-body: its failure, never the upstream's
                    # (edge.upstream.pools would count an OSError against the member).
                    raise Refused(Refusal(400, "the request body broke off", close=True)) from exc
            return whole

        if expects and length is not None:
            return Deferred(length, supply)
        return await supply()

    def _interim(self) -> Callable[[int, CIMultiDict[str]], None]:
        """What the upstream client tells of each 1xx before the final answer: those a
        proxy forwards (edge.rfc.policy.forwards_interim) go on to this client, less
        their hop-by-hop fields, in order; none is stored."""
        relay = self._relay = InterimRelay(self.channel)

        def told(status: int, fields: CIMultiDict[str]) -> None:
            if policy.forwards_interim(status):
                relay(status, policy.end_to_end(fields))

        return told

    async def _interim_done(self) -> None:
        """The final head is known: the 1xx told so far leave before it, none after."""
        if self._relay is not None:
            await self._relay.close()

    async def st_deliver(self) -> Step:
        try:
            if self.fill is not None and self.head is not None:
                await self._deliver_fill(self.fill, self.head)
            elif self.upstream_response is not None:
                await self._deliver_upstream(self.upstream_response)
            else:
                await self._deliver_entry()
        except ConnectionError:
            # The client went away mid-body (the channel raises a ConnectionError):
            # ordinary for downloads, not an error of ours. Fills carry on regardless.
            self.client_gone = True
        return Step.DONE

    # -- what a fetch takes from the client (edge.fetch.machine runs it) ---------------

    def _fetch_request(
        self,
        *,
        stale_ok: bool = False,
        probe: int | None = None,
        interim: Callable[[int, CIMultiDict[str]], None] | None = None,
    ) -> FetchRequest:
        """The fetch a fill of this key makes, taken from this request as the fill
        starts (edge.fetch.machine: the fill outlives this client and reads none of it):
        the client's end-to-end fields without its own conditionals and ranges, plus our
        validators when revalidating."""
        # Accept-Encoding too: edge negotiates codings with clients itself and keeps
        # one response per object, so it asks upstream for no particular coding.
        drop = (*_CLIENT_CONDITIONALS, *_RANGE_FIELDS, "accept-encoding")
        entry = self.entry
        validators = policy.conditional_headers(CIMultiDict(entry.headers)) if entry else []
        # A cold GET passes its one range on, unless its If-Range (dropped: it validates
        # the client's copy, not ours) could make the answer the whole. A stored part
        # is completed while small; a big object's is replaced by its slices.
        forward = None
        if (
            entry is None
            and probe is None
            and self.method == "GET"
            and "If-Range" not in self.headers
        ):
            forward = forwardable(self.headers.get("Range"))
        part = self._part
        if part is not None and (entry is not None or part.size > self.e.config.slice_threshold):
            part = None
        return FetchRequest(
            key=self.key,
            target=self.key_target,
            fields=tuple(self._upstream_headers(drop=drop)),
            client=self.client,
            cache_control=self.request_cc,
            revalidate=entry,
            validators=tuple(validators),
            stale_ok=stale_ok,
            probe=probe,
            range=None if part is not None else forward,
            complete=part,
            interim=interim,
        )

    def _probe(self) -> int | None:
        """The slice to ask for by range instead of the whole object: the first slice
        when revalidating a segmented entry (a changed object is then not fetched
        whole), or the slice a cold range request starts in when it starts beyond the
        slicing threshold (only a big object can satisfy it: fetch one slice)."""
        cfg = self.e.config
        if self.entry is not None:
            return 0 if self.entry.slice_size else None
        first = _range_start(self.headers.get("Range"))
        if self.method == "GET" and first is not None and first >= cfg.slice_threshold:
            return first // cfg.slice_size
        return None

    def _purge_check(self, entry: Entry) -> bool:
        """Whether the chosen entry survives the node's purges (edge.purge.bans): not before
        the node has caught up with the coordinator, not when a hard purge selects it;
        a soft-purged one survives to be revalidated."""
        purger = self.e.purger
        if purger is None:
            return True
        if not purger.ready:
            self.status.detail = "purges-resuming"
            return False
        verdict = purger.check(entry)
        if verdict == "hard":
            self.status.detail = "purged"
            return False
        self.soft_purged = verdict == "soft"
        return True

    def _stale_on_error(self) -> bool:
        if self.entry is None or self.reuse is None:
            return False
        if self.soft_purged and self.reuse.age < self.reuse.lifetime:
            return True  # still fresh by its own lifetime: it may stand in for a failure
        rp = self.e.response_policy(self.entry_headers)
        return policy.may_serve_stale_on_error(
            self.reuse.age,
            self.reuse.lifetime,
            self.request_cc,
            rp,
            self.e.config.stale_if_error_grace,
        )

    # -- delivery -------------------------------------------------------------------

    def _use_entry(self, entry: Entry) -> None:
        if self.body is not None:
            self.body.close()
        self.entry = entry
        self.entry_headers = CIMultiDict(entry.headers)
        self.body = None if entry.slice_size else self.e.store.open_body(entry)
        rp = self.e.response_policy(self.entry_headers)
        lifetime = self.e.lifetime(entry, self.entry_headers, rp)
        age = self.e.age(entry, self.entry_headers, self.e.clock())
        self.status.ttl = int(lifetime - age)

    def _upstream_failed(self, error: Exception) -> Step:
        """RFC 5861 Section 4 / RFC 9111 Section 4.2.4: a stale copy may stand in for
        a failed upstream; otherwise the client gets 502 or 504."""
        status = getattr(error, "status", 502)
        detail = getattr(error, "detail", "upstream-error")
        usable = self.entry is not None and (self.body is not None or self.entry.slice_size)
        if usable and self._stale_on_error():
            self.status.fwd = "stale"
            self.status.hit = True
            self.status.detail = f"stale-if-error {detail}"
            assert self.reuse is not None
            self.status.ttl = int(self.reuse.ttl)
            return Step.DELIVER
        return self.synth(status, str(error), detail=detail)

    def _client_headers(self, stored: list[tuple[str, str]], age: float | None) -> CIMultiDict[str]:
        """RFC 9111 Section 4: the header fields of a response built from storage or
        relayed from upstream: Age recomputed, Cache-Status and Via appended."""
        drop = self.e.not_shown[age is not None]
        headers = CIMultiDict([(k, v) for k, v in stored if k.lower() not in drop])
        if age is not None:
            headers["Age"] = str(min(int(age), policy.MAX_DELTA))
        # One line each, earlier hops first: simple clients read only one line.
        for name, value in (
            ("Via", f"1.1 {self.e.config.name}"),
            ("Cache-Status", self.status.render()),
        ):
            prior = headers.popall(name, [])
            headers[name] = ", ".join([*prior, value])
            if name == "Cache-Status":
                self._prior_status = prior
        return headers

    def _partial(
        self,
        source: SlicedSource,
        parts: list[tuple[bytes | None, ByteRange | None]],
        headers: CIMultiDict[str],
    ) -> None:
        """RFC 9211 Section 2.2: a stored segmented response that needs slices from
        upstream for this request is not a hit: `fwd=partial` (collapsed when fetches
        already under way bring them all), and its slices are stored."""
        spans = [(r.start, r.end + 1) for _, r in parts if r is not None]
        missing, coming = source.plan(spans)
        if not missing or not self.status.hit or self.status.fwd:
            return
        self.status.hit = False
        self.status.fwd = "partial"
        self.status.stored = True
        self.status.collapsed = missing == coming
        headers["Cache-Status"] = ", ".join([*self._prior_status, self.status.render()])

    async def _deliver_entry(self) -> None:
        entry, body = self.entry, self.body
        assert entry is not None
        age = self.e.age(entry, self.entry_headers, self.e.clock())
        stored = list(entry.headers)
        if self.status.fwd_status != 304:  # not validated on this request
            withheld = policy.withheld_unless_validated(self.e.response_policy(self.entry_headers))
            stored = [(k, v) for k, v in stored if k.lower() not in withheld]
        source: BodySource
        length: int | None = entry.size
        choice = derive.AS_STORED
        level: int | None = None
        if entry.slice_size:
            source = SlicedSource(self.e.slicer, entry, self._slice_headers(entry))
        elif entry.part is not None:
            # A stored part answers only ranges inside it (_part_answers), as stored.
            assert body is not None
            source = FileSource(body, offset=entry.part[0])
            self.body = None  # the source closes it
        else:
            assert body is not None
            source = FileSource(body)
            self.body = None  # the source closes it
            choice = derive.choose(
                self.method, entry.status, self.headers, self.entry_headers, entry.size
            )
            if choice.transform is not None:
                source, length, level = await self._derived_source(entry, choice, source)
            else:
                self._hot_candidate = True
        stored = derive.client_headers(stored, choice, level)
        headers = self._client_headers(stored, age)
        try:
            await self._respond_body(
                entry.status,
                headers,
                length,
                CIMultiDict(stored),
                source,
                derived=choice.transform is not None,
            )
        finally:
            source.close()

    async def _derived_source(
        self, entry: Entry, choice: derive.Choice, stored: BodySource
    ) -> tuple[BodySource, int | None, int | None]:
        """The encoded (or decoded) body of a stored response, and the level it is
        encoded at: kept from before (whatever its level: the bytes clients already
        have stay the bytes they get), or being made now (once, whoever asks)."""
        assert choice.coding is not None
        derived = derive.find_derived(self.e.store, entry, choice.coding)
        body = self.e.store.open_body(derived) if derived is not None else None
        if derived is not None and body is not None:
            stored.close()
            # Kept encodings are as fixed as the stored response: the hot tier may
            # hold them (its key has the request's Accept-Encoding).
            self._hot_candidate = True
            return FileSource(body), derived.size, derive.stored_level(derived)
        # Not made yet: make it now from the stored source.
        job = derive.Job(
            entry.key,
            entry.variant,
            entry.vary,
            choice,
            entry.size,
            derive.coding_of(self.entry_headers) or "identity",
            complete=True,
            content_type=self.entry_headers.get("Content-Type"),
        )
        fill = await self.e.deriver.fill(job, stored)
        return FillSource(fill.reader()), None, fill.head.result().level

    async def _deliver_fill(self, fill: Fill, head: FillHead) -> None:
        source: BodySource = FillSource(fill.reader())
        length = head.length
        stored = CIMultiDict(head.headers)
        choice = derive.choose(self.method, head.status, self.headers, stored, head.length)
        level: int | None = None
        if choice.transform is not None:
            assert choice.coding is not None
            job = derive.Job(
                self.key,
                head.variant,
                head.vary,
                choice,
                head.length,
                derive.coding_of(stored) or "identity",
                complete=False,
                content_type=stored.get("Content-Type"),
            )
            derived = await self.e.deriver.fill(job, source)
            source, length = FillSource(derived.reader()), None
            level = derived.head.result().level
        adjusted = derive.client_headers(head.headers, choice, level)
        headers = self._client_headers(adjusted, None)
        try:
            await self._respond_body(
                head.status,
                headers,
                length,
                CIMultiDict(adjusted),
                source,
                derived=choice.transform is not None,
            )
        finally:
            source.close()

    async def _deliver_upstream(self, response: UpstreamResponse) -> None:
        """Relay a response that is not stored; compressible text is still compressed
        (at the fast level: nothing is kept to pay for a strong one)."""
        length_field = response.headers.get("Content-Length")
        length = int(length_field) if length_field and length_field.isdigit() else None
        choice = derive.choose(self.method, response.status, self.headers, response.headers, length)
        if choice.transform == "decode":  # only kept copies are decoded (with a cap)
            choice = derive.Choice(vary=True)
        fields = derive.client_headers(
            policy.end_to_end(response.headers), choice, derive.encoding_level(choice, "stream")
        )
        headers = self._client_headers(fields, None)
        no_body = self.method == "HEAD" or response.status in (204, 304) or response.status < 200
        # An answer to a request whose body was never asked for (the upstream answered
        # before its 100): the client may or may not send it, so no request follows.
        resp = Response(response.status, headers, close=self._body_unread)
        encoder = None
        if choice.transform == "encode" and choice.coding:
            encoder = compress.encoder(
                choice.coding,
                compress.LEVELS["stream"][choice.coding],
                content_type=response.headers.get("Content-Type"),
                size_hint=length,
            )
        elif length is not None:
            resp.length = length
        if response.body is not None and encoder is None and not no_body:
            # Read whole upstream (edge.upstream.pools.WHOLE_BODY): head and body leave
            # in one write.
            resp.body, resp.length = response.body, None
            self.response, self.code = resp, resp.status
            await self.channel.respond(resp)
            self.sent = len(resp.body)
            response.release()
            self.upstream_response = None
            return
        await self._start(resp)
        if not no_body:
            try:
                async for chunk in response.chunks():
                    if encoder is not None:
                        chunk = await asyncio.to_thread(encoder.compress, chunk)
                    await self.channel.write(chunk)
                    self.sent += len(chunk)
                if encoder is not None:
                    tail = encoder.finish()
                    await self.channel.write(tail)
                    self.sent += len(tail)
            except UpstreamError as exc:
                log.warning("upstream body broke while relaying %s: %s", self.req.target, exc)
                self._abort()
                return
        # Read to the end: the upstream connection can go back to the pool. Trailers
        # describe the body as sent: one edge re-encoded gets none (a digest would lie).
        trailers = (
            policy.forwardable_trailers(response.trailers, response.headers)
            if encoder is None and not no_body
            else []
        )
        response.release()
        self.upstream_response = None
        if trailers:
            await self.channel.end(trailers)
        else:
            await self.channel.end()  # most answers: the plain end every Channel takes

    async def _respond_body(
        self,
        status: int,
        headers: CIMultiDict[str],
        length: int | None,
        stored: CIMultiDict[str],
        source: BodySource,
        *,
        derived: bool = False,
    ) -> None:
        """Conditionals, ranges and the body, from a stored file or a fill in flight;
        `derived`: the body is an encoding edge made, which its source's dates do not
        validate (If-Range by date never matches it)."""
        ts = self.entry.response_time if self.entry is not None else self.e.clock()
        if 200 <= status < 300:
            verdict = policy.evaluate_preconditions(self.method, self.headers, stored, ts)
            if verdict == 304:
                nm = CIMultiDict(policy.not_modified_headers(headers.items()))
                for name in ("Age", "Via", "Cache-Status"):
                    for value in headers.getall(name, []):
                        nm.add(name, value)
                return await self._send_simple(304, nm)
            if verdict == 412:
                return await self._send_simple(412, CIMultiDict(headers))
        ranges: list[ByteRange] | None = None
        if (
            status == 200
            and length is not None
            and self.method == "GET"
            and "Range" in self.headers
            and if_range_allows(self.headers, stored, dates=not derived)
        ):
            try:
                ranges = parse_range(
                    self.headers.get("Range"), length, headers.get("Content-Type") or ""
                )
            except Unsatisfiable:
                headers["Content-Range"] = f"bytes */{length}"
                return await self._send_simple(416, headers)
        if ranges is None:
            parts = [(None, ByteRange(0, length - 1) if length else None)]
            resp = Response(status, headers, length=length)
        elif len(ranges) == 1:
            r = ranges[0]
            headers["Content-Range"] = f"bytes {r.start}-{r.end}/{length}"
            resp = Response(206, headers, length=r.length)
            parts = [(None, r)]
        else:
            boundary = uuid.uuid4().hex
            ctype = headers.get("Content-Type")
            headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
            parts = []
            total = 0
            for r in ranges:
                head = f"\r\n--{boundary}\r\n"
                if ctype:
                    head += f"Content-Type: {ctype}\r\n"
                head += f"Content-Range: bytes {r.start}-{r.end}/{length}\r\n\r\n"
                parts.append((head.encode(), r))
                total += len(head) + r.length
            tail = f"\r\n--{boundary}--\r\n".encode()
            resp = Response(206, headers, length=total + len(tail))
            parts.append((tail, None))
        if isinstance(source, SlicedSource) and self.method != "HEAD":
            self._partial(source, parts, resp.headers)
        small = self.method != "HEAD" and resp.length is not None and resp.length <= _SENDFILE_MIN
        if small and isinstance(source, FileSource | FillSource):
            # Small: one buffer, so head and body leave in one write. A fill's body is
            # whole in memory upstream (edge.upstream.pools.WHOLE_BODY) and arrives
            # at once; it is gathered before the head, so a fill that breaks on the
            # way cuts no answer short.
            if isinstance(source, FileSource):
                fd = source.file.fileno()
                at = source.offset
                data = b"".join(
                    (preamble or b"") + (os.pread(fd, r.length, r.start - at) if r else b"")
                    for preamble, r in parts
                )
            else:
                try:
                    data = await _gather(source, parts)
                except UpstreamError as exc:
                    # Nothing has left yet: the client hears a clean 502, not a cut.
                    log.warning("fill broke before delivering %s: %s", self.key, exc)
                    self.synth(502, f"upstream body broke: {exc}", detail="upstream-unreachable")
                    assert self.response is not None
                    await self.channel.respond(self.response)
                    return
            resp.body, resp.length = data, None
            self.response, self.code = resp, resp.status
            written = await self.channel.respond(resp)
            self.sent = len(data)
            if self._hot_candidate and ranges is None:
                self._offer_hot(data, written)
            return
        await self._start(resp)
        if self.method == "HEAD" or status in (204, 304):
            await self.channel.end()
            return
        try:
            for preamble, r in parts:
                if preamble:
                    await self.channel.write(preamble)
                if r is None and length is not None:
                    continue
                start = r.start if r is not None else 0
                end = r.end + 1 if r is not None else None
                async for piece in source.pieces(start, end):
                    if isinstance(piece, FileSegment):
                        await self._sendfile(piece.file, piece.offset, piece.count)
                    else:
                        await self.channel.write(piece)
                        self.sent += len(piece)
        except UpstreamError as exc:
            log.warning("fill broke while delivering %s: %s", self.key, exc)
            self._abort()
            return
        finally:
            if isinstance(source, SlicedSource) and source.upstream_s is not None:
                self.upstream_ms = (self.upstream_ms or 0.0) + source.upstream_s * 1000
        await self.channel.end()

    def _offer_hot(self, body: bytes, written: list[tuple[str, str]]) -> None:
        """A plain fresh hit from a small file, for an ordinary GET, just sent with
        the fields `written`: keep exactly what was sent for edge.pipeline.fastpath to answer
        the same request with."""
        hot, entry, reuse = self.e.hot, self.entry, self.reuse
        if (
            hot is None
            or entry is None
            or reuse is None
            or self.walk != _PLAIN_HIT
            or reuse.kind != "fresh"
            or self.code != 200
            or self.status.detail
            or self.soft_purged
            # The hot key holds Accept-Encoding only: other selecting fields (Vary,
            # keyed_headers) would need their values in it too.
            or any(name != "accept-encoding" for name, _ in entry.vary)
        ):
            return
        key = fastpath.request_key(self.method, self.req.version, self.req.target, self.req.raw)
        if key is None:
            return
        now = self.e.clock()
        hot.offer(
            key,
            self.key,
            entry.variant,
            self.target.path,
            f"HTTP/1.1 {self.code} {_reason(self.code)}",
            written,
            body,
            self.e.age(entry, self.entry_headers, now),
            reuse.lifetime,
            now,
        )

    async def _sendfile(self, body: IO[bytes], offset: int, count: int) -> None:
        """Zero-copy from the stored file to the socket where the transport allows;
        small bodies are cheaper as one read and write than a sendfile round."""
        if count <= 0:
            return
        if count <= _SENDFILE_MIN:
            await self.channel.write(os.pread(body.fileno(), count, offset))
        else:
            await self.channel.send_file(body, offset, count)
        self.sent += count

    async def _start(self, head: Response) -> None:
        """Send a head whose body follows (the connection layer frames it)."""
        self.response, self.code = head, head.status
        await self.channel.start(head)

    async def _send_simple(self, status: int, headers: CIMultiDict[str]) -> None:
        for name in ("Content-Length", "Transfer-Encoding"):
            headers.popall(name, None)
        await self._start(Response(status, headers, length=None if status in (204, 304) else 0))
        await self.channel.end()

    def _abort(self) -> None:
        """The body cannot be completed: close the connection so the client sees a
        truncated response rather than a short one that looks whole."""
        self.cut = True
        self.channel.abort()

    # -- the guard ----------------------------------------------------------------------

    def _guard(self) -> Refusal | None:
        """The recv checks (edge.features.recv), the rate limit counting the client
        (the forwarded one behind a trusted proxy); the authority and target they settle
        are this request's from here on."""
        req = self.req
        inbound = recv.Inbound(req.method, req.version, req.target, self.headers, req.authority)
        failed = recv.run(inbound, self.e.checks, client=self.client, now=self.started)
        if inbound.host:
            self.host = inbound.host
        if inbound.settled:
            self.target = inbound.path
            self.key_target = key_target(inbound.path, self.e.config)
        if failed is None:
            return None
        if failed.refusal.log:
            log.warning(
                "refused %s %s from %s: %s, request id %s",
                self.method,
                self.target.path_qs[:200],
                self.client,
                failed.refusal.log,
                self.request_id,
            )
        return failed.refusal

    def refuse(self, refusal: Refusal) -> Step:
        """A guard refusal as a synthetic response, closing the connection when its
        framing cannot be trusted any further."""
        self.status.detail = "refused"
        state = self.synth(refusal.status, refusal.reason, allow=refusal.allow)
        assert self.response is not None
        if refusal.retry_after:
            self.response.headers["Retry-After"] = str(refusal.retry_after)
        if refusal.close:
            self.response.close = True
        self.e.metrics.refused.labels(self.e.config.name, str(refusal.status)).inc()
        return state

    @property
    def request_id(self) -> str:
        """An id for a response made here, shown to the client and logged with it."""
        if not self._request_id:
            self._request_id = os.urandom(8).hex()
        return self._request_id

    # -- synthetic responses ----------------------------------------------------------

    def synth(self, code: int, reason: str, *, detail: str | None = None, allow: str = "") -> Step:
        """The synth state: a response made here (an error or a refusal); it ends the
        walk, so states call it and return its result."""
        self.synth_reason = reason
        if detail:  # upstream error text can quote a whole garbled response: cut it
            log.warning("%s %s: %.300s", self.method, self.req.target, reason)
        self.status.detail = detail or self.status.detail
        headers = CIMultiDict(
            {
                "Content-Type": "text/plain; charset=utf-8",
                "Cache-Control": "no-store",
                "Cache-Status": self.status.render(),
            }
        )
        if allow:
            headers["Allow"] = allow
        # Upstream error text can echo upstream bytes: clients get a plain reason only.
        public = _PUBLIC_REASONS.get(detail or "", reason)
        text = f"{code} {_reason(code)}: {public}\nrequest id: {self.request_id}\n"
        headers["X-Request-Id"] = self.request_id
        self.response = Response(code, headers, body=text.encode(), close=self._body_unread)
        self.code = code
        return Step.SYNTH

    # -- upstream request headers ----------------------------------------------------

    def _slice_headers(self, entry: Entry) -> list[tuple[str, str]]:
        """Upstream fields for a slice's range request: this hop's own, and the
        selecting fields the manifest was stored under (its Vary key)."""
        headers = self._upstream_headers(drop=(*_CLIENT_CONDITIONALS, *_RANGE_FIELDS))
        names = {name for name, _ in entry.vary}
        headers = [(k, v) for k, v in headers if k.lower() not in names]
        headers += [(name, value) for name, value in entry.vary if value is not None]
        return headers

    def _upstream_headers(self, drop: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """RFC 9110 Section 7.6: forward end-to-end fields, append Via, CDN-Loop
        (RFC 8586) and the forwarding fields (edge.rfc.forwarding)."""
        cfg = self.e.config
        # Host is the authority the guard settled on (absolute-form targets name it);
        # unkeyed fields that could change a response are not forwarded (edge.features.guard).
        headers = policy.end_to_end(
            self.headers,
            drop=("content-length", "host", *forwarding.FORWARDING_FIELDS, *self.e.unkeyed, *drop),
        )
        if not cfg.underscores_in_headers:
            headers = guard.without_underscores(headers)
        headers.insert(0, ("Host", self.host))
        # RFC 9110 Section 7.6.3: the protocol the request was received in.
        headers = _appended(headers, "Via", f"{_received_protocol(self.req.version)} {cfg.name}")
        headers = _appended(headers, "CDN-Loop", forwarding.cdn_loop_entry(cfg.cdn_name, cfg.name))
        # W3C Edge Architecture: advertise this surrogate so the origin can target
        # Surrogate-Control directives at it by name.
        headers.append(("Surrogate-Capability", f'{cfg.name}="Surrogate/1.0"'))
        headers += forwarding.forwarding_fields(
            self.headers,
            peer=self.req.peer,
            scheme=self.req.scheme,
            host=self.host,
            trusted=self.trusted,
        )
        return headers

    def _note(self, note: str) -> None:
        """Say in Cache-Status how the upstream was reached when it is worth knowing
        (e.g. origin-direct: no shield could answer)."""
        if note:
            self.status.detail = f"{self.status.detail} {note}" if self.status.detail else note

    # -- accounting ------------------------------------------------------------------

    def _account(self) -> None:
        label = self.status.label
        self.e.metrics.count_request(label, self.code, self.sent)
        if self.e.access.enabled:
            self.e.access.line(
                request_line(
                    self.req.peer,
                    self.method,
                    self.req.target,
                    self.code,
                    label,
                    self.sent,
                    (self.e.monotonic() - self.started) * 1000,
                    self.upstream_ms,
                    steps.render_walk(self.walk),
                    request_id=self._request_id,
                    end="client-gone" if self.client_gone else ("cut" if self.cut else ""),
                    protocol=f"HTTP/{self.req.version[0]}.{self.req.version[1]}",
                )
            )


#: Each step of the client machine and the method that takes it.
_STEPS = {
    Step.RECV: Transaction.st_recv,
    Step.HASH: Transaction.st_hash,
    Step.LOOKUP: Transaction.st_lookup,
    Step.HIT: Transaction.st_hit,
    Step.STALE: Transaction.st_stale,
    Step.MISS: Transaction.st_miss,
    Step.FETCH: Transaction.st_fetch,
    Step.PASS: Transaction.st_pass,
    Step.DELIVER: Transaction.st_deliver,
}
assert set(_STEPS) | steps.FINAL == set(Step), "every step has a method, or ends the walk"


def _received_protocol(version: tuple[int, int]) -> str:
    """Via's received-protocol (RFC 9110 Section 7.6.3): "1.1" for HTTP/1.x, as edge
    has always written it, the major version alone from HTTP/2 on."""
    return "1.1" if version[0] == 1 else str(version[0])


def _appended(headers: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    """The list field `name` as one line with `value` appended (RFC 9110 Section 5.3)."""
    lower = name.lower()
    prior: list[str] = []
    rest: list[tuple[str, str]] = []
    for field_ in headers:
        if field_[0].lower() == lower:
            prior.append(field_[1])
        else:
            rest.append(field_)
    prior.append(value)
    rest.append((name, ", ".join(prior)))
    return rest


async def _gather(source: FillSource, parts: list[tuple[bytes | None, ByteRange | None]]) -> bytes:
    """The bytes of `parts` (preambles and ranges) of a fill, whole."""
    out: list[bytes] = []
    for preamble, r in parts:
        if preamble:
            out.append(preamble)
        if r is None:
            continue
        data = source.reader.ready(r.start, r.end + 1)
        if data is not None:  # the usual small body: whole in memory already
            out.append(data)
            continue
        async for data in source.reader.read_range(r.start, r.end + 1):
            out.append(data)
    return b"".join(out)


def _range_start(value: str | None) -> int | None:
    """The first byte a Range field asks for, if it names one plainly."""
    return first_position(value)


def _reason(code: int) -> str:
    from http import HTTPStatus

    with contextlib.suppress(ValueError):
        return HTTPStatus(code).phrase
    return "Error"
