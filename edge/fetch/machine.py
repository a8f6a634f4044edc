"""The fetch machine: one backend fetch of a cache key, from the request sent upstream to
what is stored, apart from the client machine as Varnish's cache_fetch.c is from its
cache_req_fsm.c.

A fetch starts from a FetchRequest: a frozen value the client machine takes from its
request when it starts a fill (edge.pipeline.transaction). The fill outlives that client
and serves every client that joins it, so the fetch reads nothing of any client. Each
step is a method that decides one thing and names the next; the driver checks every
move against MOVES (edge.steptable) and refuses one the table does not list. What the
fetch turns out to be is the fill's head (edge.fetch.fill.FillHead): every client that
joined the fill acts on it. The one exception is the interim responses (102, 103)
the upstream sends before its head: they go to the client that started the fill alone
(FetchRequest.interim), never stored, never replayed to a joiner.

This module owns the backend side of a fill: asking, reading what the answer's head
makes of it, and storing (whole, as slices, as the part a 206 carries, combined with
a stored part, or freshened by a 304), and so whether an object is kept as slices
(`sliceable`). The caching rules come from edge.rfc.policy. Which fetch to make (a
conditional one, a probe for one slice, stale allowed to stand in for a failure) is
the client machine's decision, carried in the request; a fill is started only through
InFlight.join_or_start.

One slice of an object already kept as slices is a walk of its own (`start_slice`, for
edge.fetch.slices): bereq, headers, match (is the answer that slice of the stored
representation?), slice_body. A derived encoding asks no upstream and has its own small
machine (edge.fetch.derive).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Protocol, cast

from multidict import CIMultiDict

from edge.config import NodeConfig
from edge.fetch.fill import Fill, FillHead, InFlight
from edge.observe.metrics import NodeMetrics
from edge.rfc import policy
from edge.rfc.policy import CacheControl, ResponsePolicy
from edge.rfc.ranges import combinable, completes, completion, parse_content_range
from edge.steptable import Table
from edge.store.disk import BodyWriter, Entry, Store, new_variant_id
from edge.upstream.h1client import InterimSink
from edge.upstream.pools import UpstreamError, UpstreamResponse, Upstreams

if TYPE_CHECKING:  # edge.fetch.slices starts its range fills here: it imports this module
    from edge.fetch.slices import SliceNode, SliceOf, Slicer

log = logging.getLogger("edge.fetch.machine")

Fields = tuple[tuple[str, str], ...]

#: Selecting fields the cache negotiates itself rather than keying on (RFC 9111 4.1).
NEGOTIATED = frozenset({"accept-encoding"})
#: RFC 5861 Section 4: the statuses that count as errors for stale-if-error.
ERROR_STATUSES = frozenset({500, 502, 503, 504})


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a server error while a stale copy may be served."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.detail = f"upstream-{status}"


class ObjectChanged(UpstreamError):
    """The upstream's representation changed under a segmented entry."""

    detail = "object-changed"


@dataclass(frozen=True)
class FetchRequest:
    """What a fetch asks and may do, taken from the client that started the fill."""

    key: str  # the primary cache key: what the fill brings, and the route it asks (its host)
    target: str  # path and query as the key names them: every reader gets what was asked
    fields: Fields  # the upstream request's fields (Host first), computed by the client
    client: str  # the client's address, for balancing (edge.upstream.balance)
    cache_control: CacheControl  # the request's own directives (RFC 9111 Section 3)
    revalidate: Entry | None = None  # the stored response this fetch validates
    validators: Fields = ()  # RFC 9111 Section 4.3.1: sent when revalidating
    stale_ok: bool = False  # a 5xx is an error: a stale copy stands in for it
    probe: int | None = None  # ask for this slice by range instead of the whole
    method: str = "GET"  # what a fill asks: a HEAD that misses is passed, never filled
    # The client's own Range, passed on (edge.rfc.ranges.forwardable): a 206 to it is
    # kept as the part it is (RFC 9111 Section 3.3).
    range: str | None = None
    # A stored part (Entry.part) this fetch asks the rest of, to combine (Section 3.4).
    complete: Entry | None = None
    # A slice of a stored manifest, brought by range (edge.fetch.slices): the walk
    # checks the answer against the manifest and stores it as that slice.
    slice_of: SliceOf | None = None
    # Told of each 1xx before the head: the starting client's relay (RFC 9110 Section
    # 15.2). Only that client asked; whether the answer is shared is not known until
    # its head, so a joiner (who may yet be passed to a private answer) gets none.
    interim: InterimSink | None = field(default=None, compare=False)


class Node(Protocol):
    """What a fetch needs of its node (edge.pipeline.transaction.Engine is one)."""

    @property
    def config(self) -> NodeConfig: ...
    @property
    def store(self) -> Store: ...
    @property
    def upstream(self) -> Upstreams: ...
    @property
    def inflight(self) -> InFlight: ...
    @property
    def metrics(self) -> NodeMetrics: ...
    @property
    def slicer(self) -> Slicer: ...
    @property
    def keyed(self) -> tuple[str, ...]: ...
    def response_policy(self, headers: policy.Headers) -> ResponsePolicy: ...


class FetchStep(enum.Enum):
    BEREQ = "bereq"  # the request sent upstream: fields, validators, the probe's range
    HEADERS = "headers"  # send it; what the answer's status makes of the fetch
    FRESHEN = "freshen"  # RFC 9111 Section 4.3.4: a 304 refreshes the stored response
    SLICE = "slice"  # a 206 to the probe: keep the object as slices, from this one on
    MATCH = "match"  # the answer to a slice's range fill: that slice of the stored object?
    SLICE_BODY = "slice_body"  # its bytes into the slice's file, stored as that slice
    PARTIAL = "partial"  # a 206 to the client's range: keep it as the part it is
    COMBINE = "combine"  # a 206 with what a stored part lacks: the two make the whole
    REFETCH = "refetch"  # the answer to the probe is not the object's: ask for it whole
    BERESP = "beresp"  # RFC 9111 Section 3: may it be stored, and how
    PRIVATE = "private"  # not storable: the fill's initiator alone relays it
    STREAM = "stream"  # big and storable: cut into slices as it arrives
    BODY = "body"  # the body into a new file, readers following it
    STORE = "store"  # commit it (or drop what outgrew the limit)
    ERROR = "error"  # no response to store: the upstream failed, or any step raised
    ABANDON = "abandon"  # the body broke mid-way: its readers see it cut
    DONE = "done"  # the fill has its head; the body is stored or on its way

    # Hashed by identity (members are singletons and compare by identity), in C:
    # Enum hashes by name in Python, and every move of a walk looks its step up.
    __hash__ = object.__hash__


_ERROR = FetchStep.ERROR

#: Where each step may go. Every step may end in ERROR: an exception a step raises is
#: the fetch's failure, so the clients waiting on it are never left hanging.
MOVES: dict[FetchStep, tuple[FetchStep, ...]] = {
    FetchStep.BEREQ: (FetchStep.HEADERS, _ERROR),
    FetchStep.HEADERS: (
        FetchStep.FRESHEN,
        FetchStep.SLICE,
        FetchStep.MATCH,
        FetchStep.PARTIAL,
        FetchStep.COMBINE,
        FetchStep.REFETCH,
        FetchStep.BERESP,
        _ERROR,
    ),
    FetchStep.FRESHEN: (FetchStep.DONE, _ERROR),
    FetchStep.SLICE: (FetchStep.DONE, FetchStep.REFETCH, _ERROR),
    FetchStep.MATCH: (FetchStep.SLICE_BODY, _ERROR),
    FetchStep.SLICE_BODY: (FetchStep.DONE, FetchStep.ABANDON, _ERROR),
    FetchStep.PARTIAL: (
        FetchStep.SLICE,
        FetchStep.BERESP,
        FetchStep.PRIVATE,
        FetchStep.BODY,
        FetchStep.REFETCH,
        _ERROR,
    ),
    FetchStep.COMBINE: (FetchStep.BODY, FetchStep.REFETCH, _ERROR),
    FetchStep.REFETCH: (FetchStep.HEADERS, _ERROR),
    FetchStep.BERESP: (FetchStep.PRIVATE, FetchStep.STREAM, FetchStep.BODY, _ERROR),
    FetchStep.PRIVATE: (FetchStep.DONE, _ERROR),
    FetchStep.STREAM: (FetchStep.DONE, _ERROR),
    FetchStep.BODY: (FetchStep.STORE, FetchStep.ABANDON, _ERROR),
    FetchStep.STORE: (FetchStep.DONE, _ERROR),
    FetchStep.ERROR: (),
    FetchStep.ABANDON: (),
    FetchStep.DONE: (),
}

#: A refetch asks without a range, but for the re-probe of a big object's part (which
#: asks for one slice): 12 steps is the longest walk (bereq, headers, partial, refetch,
#: headers, slice, refetch, headers, beresp, body, store, done).
TABLE = Table("fetch machine", MOVES, FetchStep.BEREQ, max_steps=12)
FINAL = TABLE.final
render_table = TABLE.render


def start(node: Node, fill: Fill, request: FetchRequest) -> Fetch:
    """Run the fetch machine for a fill `InFlight.join_or_start` just started, on a
    task of its own: the client that started it may go, the fetch carries on."""
    fetch = Fetch(node, request, fill)
    node.inflight.spawn(fetch.run())
    return fetch


def start_slice(node: SliceNode, fill: Fill, of: SliceOf, fields: list[tuple[str, str]]) -> Fetch:
    """Run the slice walk for the fill of one slice (edge.fetch.slices.Slicer.slice
    started it through `InFlight.join_or_start`): `fields` are the hop's own and the
    manifest's selecting fields; the walk adds the slice's range and precondition."""
    request = FetchRequest(
        key=of.entry.key,  # the object's route; the fill's own key names the slice
        target=of.target,
        fields=tuple(fields),
        client="",
        cache_control=CacheControl(),
        slice_of=of,
    )
    # The walk (bereq, headers, match, slice_body) asks only what a SliceNode has: no
    # storage decision is made of a slice, the manifest's was.
    return start(cast(Node, node), fill, request)


class Fetch:
    """One walk of the fetch machine: its request, its fill, what the steps found."""

    def __init__(self, node: Node, request: FetchRequest, fill: Fill) -> None:
        self.node = node
        self.request = request
        self.fill = fill
        self.walk: list[FetchStep] = []
        self.bereq: list[tuple[str, str]] = []
        self.ranged = False  # the bereq asks for a range: the probe's slice, or the client's
        # The slice to ask for by range: the request's probe, or the one a 206 to the
        # client's range of a big object lands in (st_partial), asked for by st_refetch.
        self.probe = request.probe
        self.reprobe = False
        self.conditional = False  # the bereq validates request.revalidate
        self.response: UpstreamResponse | None = None  # held until handed on or let go
        self.error: Exception | None = None
        # What is kept of a storable response (_keep): fields, secondary key, tags, and
        # its request and response times (RFC 9111 Section 4.2.3).
        self.stored: list[tuple[str, str]] = []
        self.vary: policy.VaryKey = ()
        self.tags: tuple[str, ...] = ()
        self.times = (0.0, 0.0)
        self.length: int | None = None
        self.writer: BodyWriter | None = None
        self.head: FillHead | None = None
        # What the answer is, as stored: its status and fields (a 206 holding the whole
        # representation is its 200), and, of a part, the span [first, end) it holds.
        self.answer: tuple[int, policy.Headers] | None = None
        self.part: tuple[int, int] | None = None
        self.size: int | None = None  # the complete length a 206 stated
        # Of a combine: the stored part's bytes go before (or after) the new ones.
        self.before: tuple[int, int] | None = None
        self.after: tuple[int, int] | None = None
        # What the fetch asked with, as the storage rules read it (RFC 9111 Sections 3, 4.1).
        self.asked = CIMultiDict([*request.fields, *request.validators])

    async def run(self) -> None:
        """Drive the machine: each step names the next (a final step, none), and every
        move is checked against MOVES."""
        step: FetchStep | None = TABLE.first
        try:
            while step is not None:
                TABLE.move(self.walk, step)
                try:
                    step = await _STEPS[step](self)
                except Exception as exc:  # never leave the fill's waiters hanging
                    self.error, step = exc, FetchStep.ERROR
        finally:
            if self.response is not None:  # neither handed on nor read to the end
                self.response.close()
            if not self.fill.head.done():  # stopped (the node is closing), or a bug
                self.fill.head.set_result(FillHead("error", error=UpstreamError("fetch stopped")))
            if not self.fill.finished:
                self.fill.finish()
            self.node.inflight.done(self.fill)
            if log.isEnabledFor(logging.DEBUG):  # the walk is not joined for nobody
                log.debug("fetch of %s: %s", self.fill.key, ">".join(s.value for s in self.walk))

    # -- steps --------------------------------------------------------------------------

    async def st_bereq(self) -> FetchStep:
        """The request upstream: the client's fields, our validators when revalidating
        (RFC 9111 Section 4.3.1), and the probe's slice as a range."""
        request = self.request
        self.bereq = [*request.fields, *request.validators]
        self.conditional = request.revalidate is not None
        if request.slice_of is not None:
            self.bereq += request.slice_of.fields()
            self.ranged = True
        elif self.probe is not None:
            self._ask_slice(self.probe)
        elif request.complete is not None and request.complete.part is not None:
            # RFC 9111 Section 3.4: ask only for what the stored part lacks; If-Range
            # (RFC 9110 Section 13.1.5) with its strong validator turns a changed
            # object's answer into the new whole.
            entry = request.complete
            assert entry.part is not None
            wanted = completion(entry.part, entry.size)
            if wanted is not None:
                self.bereq.append(("Range", wanted))
                etag = CIMultiDict(entry.headers).get("ETag")
                if etag and not etag.startswith("W/"):
                    self.bereq.append(("If-Range", etag))
                self.ranged = True
        elif request.range is not None:
            self.bereq.append(("Range", request.range))
            self.ranged = True
        return FetchStep.HEADERS

    async def st_headers(self) -> FetchStep:
        """Send the bereq; the answer's status says what the fetch became."""
        node, request = self.node, self.request
        name = node.config.name
        try:
            response = await node.upstream.request(
                request.method,
                request.target,
                self.bereq,
                key=request.key,
                client=request.client,
                interim=request.interim,
            )
        except UpstreamError as exc:
            node.metrics.upstream_errors.labels(name, exc.detail).inc()
            self.error = exc
            return FetchStep.ERROR
        node.metrics.upstream_answered(response.response_time - response.request_time)
        if "Date" not in response.headers:
            # RFC 9110 Section 6.6.1: a recipient with a clock adds Date to a response it
            # stores or forwards that lacks one; here, once, so every step sees it (a
            # 304's own Date then refreshes the stored one, RFC 9111 Section 4.3.4).
            response.headers["Date"] = _http_date(response.response_time)
        self.response, self.fill.note = response, response.note
        if request.slice_of is not None:
            return FetchStep.MATCH  # whatever it says, it is checked against the manifest
        status = response.status
        if status == 304 and self.conditional:
            return FetchStep.FRESHEN
        stale_error = request.stale_ok and status in ERROR_STATUSES
        if self.ranged and status != 200:
            if status == 206:
                if self.probe is not None:
                    return FetchStep.SLICE
                if self.request.complete is not None:
                    return FetchStep.COMBINE
                return FetchStep.PARTIAL
            if not stale_error:
                # Only a 200 (Range ignored) is the object's own answer. Anything else
                # answers edge's range (a 416 for an object shorter than the probe, RFC
                # 9110 Section 15.5.17) and is never stored as the object for everyone.
                return FetchStep.REFETCH
        if stale_error:
            response.release()
            self.response, self.error = None, UpstreamStatusError(status)
            return FetchStep.ERROR
        return FetchStep.BERESP

    async def st_freshen(self) -> FetchStep:
        """RFC 9111 Section 4.3.3/3.2: we validated exactly this entry, so the 304 speaks
        for it (Section 4.3.4); the refreshed stored response answers every request
        waiting on this validation (so a cookie set on the 304 reaches none of them:
        edge.rfc.policy.freshen_headers). Fields its body depends on, ETag included,
        are kept."""
        node, entry, response = self.node, self.request.revalidate, self.response
        assert entry is not None and response is not None
        headers = policy.freshen_headers(
            entry.headers, response.headers, set_cookie=node.config.set_cookie
        )
        # Section 5.2.2.7: what the refreshed response names in a qualified private is
        # not stored, as for a full response (st_beresp).
        headers = policy.strip_private_fields(headers, node.response_policy(CIMultiDict(headers)))
        updated = entry.with_headers(headers, response.request_time, response.response_time)
        node.store.update(updated)
        self.fill.head.set_result(FillHead("not-modified", status=304, entry=updated))
        response.release()
        self.response = None
        return FetchStep.DONE

    async def st_slice(self) -> FetchStep:
        """A 206 to the probe: if the whole object is big, storable and validated, record
        its manifest and keep this slice on; otherwise fetch the object whole."""
        node, response = self.node, self.response
        assert response is not None
        span = parse_content_range(response.headers.get("Content-Range"))
        size = node.config.slice_size
        if span is None or span[0] % size:
            return FetchStep.REFETCH
        first, _, total = span
        as_whole = _whole_fields(response.headers)
        rp = node.response_policy(as_whole)
        storable = self._storable(200, as_whole, rp)
        if not storable or not sliceable(200, as_whole, total, node.config.slice_threshold):
            return FetchStep.REFETCH
        self._keep(list(as_whole.items()), as_whole, rp)
        manifest = self._manifest(total)
        await node.slicer.start_stream(manifest, response, first // size)
        self.response = None  # the stream has it now
        self.fill.head.set_result(FillHead("sliced", status=206, entry=manifest))
        return FetchStep.DONE

    async def st_match(self) -> FetchStep:
        """Whether the answer to a slice's range fill is that slice of the stored
        representation (edge.fetch.slices.SliceOf.answered_by). If not (a 412, RFC 9110
        Section 13.1.4, or an origin that ignored If-Match), the stored slices can no
        longer be put together: the object is dropped, the next request fetches it
        afresh, and the readers of this slice get the error."""
        of, response = self.request.slice_of, self.response
        assert of is not None and response is not None
        if of.answered_by(response.status, response.headers):
            return FetchStep.SLICE_BODY
        self.node.store.remove(of.entry.key)
        self.error = ObjectChanged(f"upstream answered {response.status} for a slice")
        return FetchStep.ERROR

    async def st_slice_body(self) -> FetchStep:
        """The slice's bytes into a file of its own that its readers follow, stored as
        that slice of the manifest once whole (edge.fetch.slices.Slicer.bring)."""
        of, response, fill = self.request.slice_of, self.response, self.fill
        assert of is not None and response is not None
        slicer = self.node.slicer
        slicer.begin(fill, of)
        self.writer = fill.writer
        try:
            await slicer.bring(fill, of, response)
        except (UpstreamError, OSError) as exc:
            self.error = exc
            return FetchStep.ABANDON
        finally:
            # Closed, not released: the pump stops at the slice's last byte, not at
            # the body's end the connection would need to be reused.
            response.close()
            self.response = None
        return FetchStep.DONE

    async def st_partial(self) -> FetchStep:
        """RFC 9111 Section 3.3: a 206 to the client's range is stored as the part it
        is (its Content-Range), with the fields of the representation it belongs to;
        a 206 holding every byte is the whole response. The client that asked gets it
        as it came; later range requests inside it are hits (edge.rfc.ranges.within)."""
        node, response = self.node, self.response
        assert response is not None
        span = parse_content_range(response.headers.get("Content-Range"))
        if span is None:
            return FetchStep.REFETCH  # a 206 that says not what it holds is not kept
        first, last, total = span
        framed = response.headers.get("Content-Length")
        if framed is not None and framed != str(last - first + 1):
            # RFC 9110 Section 14.4: its body is not the span it names, so none of its
            # bytes has a known place: relayed as it came, never kept.
            return FetchStep.PRIVATE
        as_whole = _whole_fields(response.headers)
        if first == 0 and last == total - 1:
            as_whole["Content-Length"] = str(total)
            self.answer = (200, as_whole)
            return FetchStep.BERESP
        rp = node.response_policy(as_whole)
        decision = self._storable(200, as_whole, rp)
        if decision and sliceable(200, as_whole, total, node.config.slice_threshold):
            # A big object: kept as slices, as a seek into it past the threshold is
            # (edge.pipeline.transaction._probe). A 206 holding the slice it starts in
            # is that slice; otherwise that slice is asked for.
            size = node.config.slice_size
            self.probe = first // size
            if first % size == 0 and last + 1 >= min(first + size, total):
                return FetchStep.SLICE
            self.reprobe = True
            return FetchStep.REFETCH
        if decision and last - first + 1 > node.config.max_object_size:
            decision = policy.Decision(False, "larger than max_object_size")
        if not decision:
            return FetchStep.PRIVATE  # the initiator relays the 206 it asked for
        self._keep(list(as_whole.items()), as_whole, rp)
        self.part, self.size, self.length = (first, last + 1), total, last - first + 1
        return FetchStep.BODY

    async def st_combine(self) -> FetchStep:
        """RFC 9111 Section 3.4: a 206 with exactly what the stored part lacks, under
        the same strong validator, is combined with it into the whole representation,
        with the new response's fields. Anything else (another representation, a
        span that does not fit) is not combined: the whole is fetched."""
        node, response, entry = self.node, self.response, self.request.complete
        assert response is not None and entry is not None and entry.part is not None
        span = parse_content_range(response.headers.get("Content-Range"))
        stored = CIMultiDict(entry.headers)
        if (
            span is None
            or not completes(entry.part, entry.size, span)
            or not combinable(stored, entry.size, response.headers)
        ):
            return FetchStep.REFETCH
        as_whole = _whole_fields(response.headers)
        rp = node.response_policy(as_whole)
        if not self._storable(200, as_whole, rp):
            return FetchStep.REFETCH
        self._keep(list(as_whole.items()), as_whole, rp)
        self.length = entry.size
        if entry.part[0] == 0:
            self.before = entry.part
        else:
            self.after = entry.part
        return FetchStep.BODY

    async def st_refetch(self) -> FetchStep:
        """Ask again for the whole object: no range, no validators; or, for a big
        object's part (st_partial), for the slice it starts in."""
        if self.response is not None:
            self.response.close()
            self.response = None
        self.bereq = list(self.request.fields)
        self.ranged = self.conditional = False
        self.answer = self.part = self.size = self.before = self.after = None
        if self.reprobe and self.probe is not None:
            self.reprobe = False
            self._ask_slice(self.probe)
        else:
            self.probe = None
        return FetchStep.HEADERS

    async def st_beresp(self) -> FetchStep:
        """RFC 9111 Section 3: whether the response may be stored, and how: whole, as
        slices, or not at all."""
        node, response = self.node, self.response
        assert response is not None
        status, headers = self.answer or (response.status, response.headers)
        rp = node.response_policy(headers)
        decision = self._storable(status, headers, rp)
        length_field = headers.get("Content-Length")
        self.length = int(length_field) if length_field and length_field.isdigit() else None
        if decision and self.length is not None and self.length > node.config.max_object_size:
            decision = policy.Decision(False, "larger than max_object_size")
        if not decision:
            log.debug(
                "not storing %s: %s (RFC 9111 Section %s)",
                self.request.key,
                decision.reason,
                decision.section,
            )
            return FetchStep.PRIVATE
        self._keep(policy.end_to_end(headers), headers, rp)
        threshold = node.config.slice_threshold
        if sliceable(status, headers, self.length, threshold):
            return FetchStep.STREAM
        return FetchStep.BODY

    async def st_private(self) -> FetchStep:
        """Not shareable: the fill's initiator relays the response; those who joined
        ask for their own."""
        response, self.response = self.response, None
        assert response is not None
        self.fill.head.set_result(FillHead("private", status=response.status, response=response))
        return FetchStep.DONE

    async def st_stream(self) -> FetchStep:
        """A big object: its manifest now, its slices as the body arrives."""
        response, self.response = self.response, None
        assert response is not None and self.length is not None
        manifest = self._manifest(self.length)
        await self.node.slicer.start_stream(manifest, response, 0, whole=True)
        self.fill.head.set_result(FillHead("sliced", status=200, entry=manifest))
        return FetchStep.DONE

    async def st_body(self) -> FetchStep:
        """The body into a new file that every client of the fill reads as it grows:
        the answer's body, or a stored part's bytes and the new ones it is combined
        with (st_combine). A part's readers get the 206 as it came (st_partial)."""
        node, fill, response = self.node, self.fill, self.response
        assert response is not None
        self.writer = writer = node.store.begin(self.length)
        fill.attach_writer(writer)
        status = self.answer[0] if self.answer else response.status
        headers = self.stored
        if self.before or self.after:
            status = 200
        elif self.part is not None:
            status, headers = (
                206,
                [*self.stored, ("Content-Range", response.headers["Content-Range"])],
            )
        self.head = head = FillHead(
            "body",
            variant=new_variant_id(),
            status=status,
            headers=headers,
            vary=self.vary,
            length=self.length,
            storable=True,
        )
        fill.head.set_result(head)
        limit = node.config.max_object_size
        try:
            if self.before is not None:
                await self._copy_part(writer, *self.before)
            async for chunk in response.chunks():
                writer.write(chunk)
                fill.advance(len(chunk))
                if head.storable and writer.written > limit:
                    head.storable = False
            if self.after is not None:
                await self._copy_part(writer, *self.after)
            if self.length is not None and writer.written != self.length:
                # RFC 9111 Section 3.3: an incomplete response is not stored as complete.
                raise UpstreamError(f"upstream sent {writer.written} of {self.length} bytes")
        except (UpstreamError, OSError) as exc:
            self.error = exc
            return FetchStep.ABANDON
        finally:
            response.release()
            self.response = None
        return FetchStep.STORE

    async def st_store(self) -> FetchStep:
        """The complete body becomes the stored response, unless it outgrew the limit."""
        writer, head = self.writer, self.head
        assert writer is not None and head is not None
        if head.storable:
            entry = Entry(
                key=self.fill.key,
                variant=head.variant,
                # A part is kept as what it is of its 200 (RFC 9111 Section 3.3).
                status=200 if self.part is not None else head.status,
                headers=tuple(self.stored),
                vary=head.vary,
                request_time=self.times[0],
                response_time=self.times[1],
                size=self.size if self.size is not None else writer.written,
                tags=self.tags,
                part=self.part,
            )
            self.node.store.commit(entry, writer)
        else:
            writer.discard()
        self.fill.finish()
        return FetchStep.DONE

    async def st_error(self) -> None:
        """No response to store: the clients of the fill hear why (a stale copy may
        stand in for it: that is the client machine's to decide)."""
        error = self.error or UpstreamError("upstream failed")
        if not isinstance(error, UpstreamError):
            log.error("fill of %s failed", self.fill.key, exc_info=error)
        if not self.fill.head.done():
            failure = error if isinstance(error, UpstreamError) else UpstreamError(str(error))
            self.fill.head.set_result(FillHead("error", error=failure))
        if self.writer is not None:
            self.writer.discard()
        if not self.fill.finished:
            self.fill.finish(error)

    async def st_abandon(self) -> None:
        """The body broke mid-way: what was written is dropped, readers see it cut."""
        assert self.writer is not None and self.error is not None
        self.writer.discard()
        self.fill.finish(self.error)
        log.warning("fill of %s broke: %s", self.fill.key, self.error)

    async def st_done(self) -> None:
        """The fill has its head; its body is stored, or on its way in a stream."""

    # -- helpers ------------------------------------------------------------------------

    def _ask_slice(self, index: int) -> None:
        size = self.node.config.slice_size
        first = index * size
        self.bereq.append(("Range", f"bytes={first}-{first + size - 1}"))
        self.ranged = True

    async def _copy_part(self, writer: BodyWriter, first: int, end: int) -> None:
        """The stored part's bytes [first, end) into the combined body, as they are
        read; a part gone from the store (evicted) breaks the fill."""
        part = self.request.complete
        assert part is not None
        body = self.node.store.open_body(part)
        if body is None:
            raise UpstreamError("the stored part went before it was combined")
        with body:
            offset, fd = 0, body.fileno()
            while offset < end - first:
                data = os.pread(fd, min(1 << 16, end - first - offset), offset)
                if not data:
                    raise UpstreamError("the stored part is shorter than it says")
                offset += len(data)
                writer.write(data)
                self.fill.advance(len(data))
                await asyncio.sleep(0)  # readers follow as it is copied

    def _storable(
        self, status: int, headers: policy.Headers, rp: ResponsePolicy
    ) -> policy.Decision:
        return policy.is_storable(
            self.request.method,
            status,
            self.request.cache_control,
            self.asked,
            rp,
            headers,
            set_cookie=self.node.config.set_cookie,
        )

    def _keep(
        self, fields: list[tuple[str, str]], headers: policy.Headers, rp: ResponsePolicy
    ) -> None:
        """The fields stored of a storable response, and its secondary key."""
        response = self.response
        assert response is not None
        # RFC 9111 Section 5.2.2.7: not what a qualified private names.
        self.stored = policy.strip_private_fields(fields, rp)
        names = [*policy.vary_field_names(response.headers), *self.node.keyed]
        self.vary = policy.vary_key(names, self.asked, NEGOTIATED)
        self.tags = _tags(response.headers)
        self.times = (response.request_time, response.response_time)

    def _manifest(self, length: int) -> Entry:
        """Record a segmented entry: the object's headers and size; no body."""
        manifest = Entry(
            key=self.request.key,
            variant=new_variant_id(),
            status=200,
            headers=tuple(self.stored),
            vary=self.vary,
            request_time=self.times[0],
            response_time=self.times[1],
            size=length,
            tags=self.tags,
            slice_size=self.node.config.slice_size,
        )
        return self.node.store.commit_manifest(manifest)


#: Each step of the fetch machine and the method that takes it; a final step's method
#: names no next step.
_STEPS: dict[FetchStep, Callable[[Fetch], Awaitable[FetchStep | None]]] = {
    FetchStep.BEREQ: Fetch.st_bereq,
    FetchStep.HEADERS: Fetch.st_headers,
    FetchStep.FRESHEN: Fetch.st_freshen,
    FetchStep.SLICE: Fetch.st_slice,
    FetchStep.MATCH: Fetch.st_match,
    FetchStep.SLICE_BODY: Fetch.st_slice_body,
    FetchStep.PARTIAL: Fetch.st_partial,
    FetchStep.COMBINE: Fetch.st_combine,
    FetchStep.REFETCH: Fetch.st_refetch,
    FetchStep.BERESP: Fetch.st_beresp,
    FetchStep.PRIVATE: Fetch.st_private,
    FetchStep.STREAM: Fetch.st_stream,
    FetchStep.BODY: Fetch.st_body,
    FetchStep.STORE: Fetch.st_store,
    FetchStep.ERROR: Fetch.st_error,
    FetchStep.ABANDON: Fetch.st_abandon,
    FetchStep.DONE: Fetch.st_done,
}
assert set(_STEPS) == set(FetchStep), "every step of the fetch machine has its method"


def sliceable(status: int, headers: policy.Headers, length: int | None, threshold: int) -> bool:
    """A response may be kept as slices when it is a complete 200 larger than the
    threshold, the upstream serves byte ranges, and a validator lets slices fetched
    later be checked against the same representation (RFC 9110 Section 13.1.1)."""
    if status != 200 or length is None or length <= threshold:
        return False
    if "bytes" not in {v.strip().lower() for v in headers.getall("Accept-Ranges", [])}:
        return False
    etag = headers.get("ETag")
    return bool(etag and not etag.startswith("W/")) or "Last-Modified" in headers


def _whole_fields(headers: policy.Headers) -> CIMultiDict[str]:
    """The fields of the representation a 206 carries part of (RFC 9110 Section 15.3.7):
    its end-to-end fields less those that describe the part."""
    return CIMultiDict(
        (k, v)
        for k, v in policy.end_to_end(headers)
        if k.lower() not in ("content-range", "content-length")
    )


def _tags(headers: policy.Headers) -> tuple[str, ...]:
    """Surrogate-Key (space-separated) and Cache-Tag (comma-separated) tags."""
    tags: list[str] = []
    for value in headers.getall("Surrogate-Key", []):
        tags += value.split()
    for value in headers.getall("Cache-Tag", []):
        tags += [t.strip() for t in value.split(",") if t.strip()]
    return tuple(dict.fromkeys(tags))


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)
