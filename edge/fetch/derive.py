"""Content codings at the edge: which coding a response goes out in, and the encoded
(or decoded) copy of a stored response, made once and kept as a derived variant.

A derived variant is stored under the same cache key as its source, names the source
variant, and has no headers of its own: they are the source's with Content-Encoding,
Content-Length, ETag (RFC 9110 Section 8.8.3) and Vary adjusted at delivery, so a 304
that refreshes the source refreshes its encodings too. While a derived body is being
made, clients read it as it is produced (it is an ordinary Fill).

Once made, an encoding is kept as it is for as long as its source: a download resumed
with a bare Range (`curl -C -`) continues the very bytes it began with. Its ETag names
the level it was made at (`"abc-br.4"`), so an encoding made again later (evicted,
then made from the stored source at another level) never shares a tag with other bytes.

Making one is a walk of a small machine of its own (`DeriveStep`, `MOVES`, checked by
edge.steptable as the fetch machine's moves are): codec -> pour -> keep -> done, or
error. It is not a variant of the fetch machine: it sends no request and reads no
answer's head, so of the fetch machine's steps it would share only the names of body
and store, whose work (a codec's output, a variant kept only while its source is) is
not theirs; forced into that table, every fetch step would branch on which it is. It
starts, as every fill does, only through InFlight.join_or_start (`Deriver.fill`).

This module owns the choice and the making; codecs and negotiation rules live in
`edge.features.compress`, and the pipeline decides when to ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from edge.features import compress
from edge.fetch.fill import Fill, FillHead, InFlight
from edge.fetch.slices import BodySource, FileSegment
from edge.rfc import policy
from edge.steptable import Table
from edge.store.disk import BodyWriter, Entry, Store, new_variant_id
from edge.upstream.pools import UpstreamError

log = logging.getLogger("edge.fetch.derive")

#: Content codings edge can undo for a client that does not accept them.
DECODABLE = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"})
#: Bodies above this are sent as stored, never transformed.
MAX_TRANSFORM_SIZE = 64 << 20
#: A decoded body may be at most this many times its encoded size (and at most
#: MAX_TRANSFORM_SIZE): beyond it, it is treated as a decompression bomb.
MAX_DECODE_RATIO = 100
#: An arriving body up to this long is encoded at the strong level at once (256 KiB of
#: text: br 9 ~9 ms, zstd 11 ~20 ms, gzip 9 ~40 ms), since an encoding is never remade.
STRONG_WHILE_ARRIVING = 256 << 10
#: Chunks at least this big are (de)compressed in a worker thread; the codecs release
#: the GIL, so the event loop keeps serving meanwhile.
THREAD_CHUNK = 64 << 10
#: Output written per trip to a worker thread: readers of the body hear of it this often.
WRITE_BATCH = 256 << 10
#: Decodes made at once, from the store and following an upstream (each their own
#: slots). A decoder's output is bounded pieces, but while it lives it holds its
#: coding's window: 32 KiB for gzip, up to 8 MiB for zstd (RFC 9659) and 16 MiB for
#: brotli (4 MiB as usually sent), so a crowd of clients that refuse a coding is decoded
#: a few objects at a time, each at full speed, enough for the cores.
DECODE_SLOTS = 4
#: How long a decode following an upstream waits for a slot before going ahead without
#: one: such decodes hold their slots while their upstreams are slow, and must not
#: stall the others. Decodes from the store only ever wait for CPU and disk, so they
#: wait for theirs.
DECODE_PATIENCE = 2.0


@dataclass(frozen=True)
class Choice:
    """How a response goes out: `coding` is the Content-Encoding to send (None: as
    stored), `transform` "encode" or "decode" when a derived body is needed, and
    `vary` whether the answer depended on Accept-Encoding."""

    coding: str | None = None
    transform: str | None = None
    vary: bool = False


AS_STORED = Choice()


def choose(
    method: str,
    status: int,
    request: policy.Headers,
    response: policy.Headers,
    length: int | None,
) -> Choice:
    """RFC 9110 Section 12.5.3 (Accept-Encoding) and Section 8.4 (Content-Encoding),
    with RFC 9111 Section 5.2.2.6 (no-transform): the coding for this response."""
    if method not in ("GET", "HEAD") or status != 200:
        return AS_STORED
    if length is not None and length > MAX_TRANSFORM_SIZE:
        return AS_STORED
    cc = policy.parse_cache_control(response.getall("Cache-Control", []))
    if "no-transform" in cc:
        return AS_STORED
    accept = request.getall("Accept-Encoding", [])
    stored = coding_of(response)
    if stored is None:  # several codings stacked, or one edge cannot undo
        return AS_STORED
    if stored != "identity":
        if stored not in DECODABLE:
            return AS_STORED
        chosen = compress.negotiate(accept, [stored, "identity"])
        if chosen == "identity":
            return Choice("identity", "decode", True)
        return Choice(vary=True)
    if not compress.is_compressible(response.get("Content-Type")):
        return AS_STORED
    if length is not None and length < compress.MIN_SIZE:
        return AS_STORED
    chosen = compress.negotiate(accept, [*compress.CODINGS, "identity"])
    if chosen in (None, "identity"):
        return Choice(vary=True)
    return Choice(chosen, "encode", True)


def coding_of(headers: policy.Headers) -> str | None:
    codings = [c.lower() for c in policy.split_list(headers.getall("Content-Encoding", []))]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return "identity"
    return codings[0] if len(codings) == 1 else None


def client_headers(
    stored: Iterable[tuple[str, str]], choice: Choice, level: int | None = None
) -> list[tuple[str, str]]:
    """The source's fields, adjusted for the coding actually sent; `level` is the
    compression level the encoded bytes were made at (`encoding_level`)."""
    headers = list(stored)
    if choice.transform is not None:
        drop = {"content-length", "content-encoding", "etag", "content-md5", "accept-ranges"}
        etag = next((v for k, v in headers if k.lower() == "etag"), None)
        headers = [(k, v) for k, v in headers if k.lower() not in drop]
        if choice.coding and choice.coding != "identity":
            headers.append(("Content-Encoding", choice.coding))
        encoded = choice.transform == "encode" and level is not None
        new_etag = compress.variant_etag(etag, choice.coding or "identity", level)
        if new_etag:
            # An encoding names its level and is as strong as its source's tag: one
            # (source, coding, level) is one byte sequence, never remade (Deriver).
            # Anything else is weak (RFC 9110 Section 8.8.1): equivalent, not the same.
            weak = not encoded and not new_etag.startswith("W/")
            headers.append(("ETag", f"W/{new_etag}" if weak else new_etag))
    if choice.vary:
        vary = [v for k, v in headers if k.lower() == "vary"]
        headers = [(k, v) for k, v in headers if k.lower() != "vary"]
        headers.append(("Vary", compress.vary_with(", ".join(vary) or None, "Accept-Encoding")))
    return headers


def encoding_level(choice: Choice, path: str) -> int | None:
    """The compression level an encoding made on `path` ("stream": while its source
    arrives, or for a response not kept; "store": from a stored source) uses; None
    for a decoded body."""
    if choice.transform != "encode" or choice.coding is None:
        return None
    return compress.LEVELS[path][choice.coding]


def stored_level(entry: Entry) -> int | None:
    """The level a kept encoding was made at."""
    level = entry.extra.get("quality")
    if isinstance(level, int):
        return level
    path = entry.extra.get("level")  # kept before the level itself was recorded
    if entry.coding in ("br", "zstd", "gzip") and path in compress.LEVELS:
        return compress.LEVELS[path][entry.coding]
    return None


def find_derived(store: Store, source: Entry, coding: str) -> Entry | None:
    for entry in store.variants(source.key):
        if entry.derived_from == source.variant and entry.coding == coding:
            return entry
    return None


@dataclass(frozen=True)
class Job:
    """What to derive: from which stored (or arriving) response, in which coding."""

    key: str
    source_variant: str
    vary: tuple[tuple[str, str | None], ...]
    choice: Choice
    source_length: int | None
    source_coding: str
    complete: bool  # the source is stored whole: use the strong level
    content_type: str | None = None  # picks brotli's mode

    @property
    def name(self) -> str:
        return f"{self.key}#{self.source_variant}#{self.choice.coding}"

    @property
    def path(self) -> str:
        """The level an encoding is made at, kept for as long as its source: the strong
        one from a stored source, or from an arriving one small enough that the strong
        level keeps up with it; the fast one for a longer body still arriving."""
        if self.complete or (
            self.source_length is not None and self.source_length <= STRONG_WHILE_ARRIVING
        ):
            return "store"
        return "stream"


class Deriver:
    """Makes derived bodies: one task per (source variant, coding), followed by readers."""

    def __init__(self, store: Store, inflight: InFlight) -> None:
        self.store = store
        self.inflight = inflight
        self.decode_slots = {
            "store": asyncio.Semaphore(DECODE_SLOTS),
            "upstream": asyncio.Semaphore(DECODE_SLOTS),
        }
        self.decoding = 0  # decodes running, with a slot or without
        self._trimming = False  # a `_release_freed` is running
        self._freed = False  # a decode ended since it started

    async def fill(self, job: Job, source: BodySource) -> Fill:
        """The fill making this derived body, started here if nobody is making it.
        `source` is consumed by the task (and closed by it) only when it starts one."""
        assert job.choice.coding is not None
        # Made from this process's source (a stored file or a fill it follows): each
        # process of a node makes its own, joined by its own readers.
        claim = await self.inflight.join_or_start(job.name, local=True)
        assert claim.fill is not None
        if claim.kind == "joined":
            source.close()
            return claim.fill
        self.start(job, claim.fill, source)
        return claim.fill

    def start(self, job: Job, fill: Fill, source: BodySource) -> Derive:
        """Make the body of `fill`, just started by InFlight.join_or_start: its head now,
        its bytes on a walk of the derive machine, in a task of its own."""
        fill.attach_writer(self.store.begin())
        # Whoever joins this fill gets these bytes: their level goes with the fill.
        level = encoding_level(job.choice, job.path)
        fill.head.set_result(FillHead("body", status=200, storable=True, level=level))
        walk = Derive(self, job, fill, source)
        self.inflight.spawn(walk.run())
        return walk

    @contextlib.asynccontextmanager
    async def slot(self, job: Job) -> AsyncIterator[None]:
        """For a decode, one of DECODE_SLOTS, held for the whole decode (its window
        lives that long); following an upstream, none after DECODE_PATIENCE seconds of
        waiting. When it ends, what it freed goes back to the system (`_trim`)."""
        if job.choice.transform != "decode":
            yield
            return
        slots = self.decode_slots["store" if job.complete else "upstream"]
        patience = None if job.complete else DECODE_PATIENCE
        self.decoding += 1
        try:
            try:
                await asyncio.wait_for(slots.acquire(), patience)
            except TimeoutError:
                log.debug("decoding without a slot: %d decodes running", self.decoding)
                yield
                return
            try:
                yield
            finally:
                slots.release()
        finally:
            self.decoding -= 1
            self._freed = True
            if not self._trimming:
                self._trim()

    def _trim(self) -> None:
        """`_release_freed` off the loop, one at a time, again when more decodes ended
        meanwhile: freed windows would otherwise pile up in the arenas of the threads
        that freed them for as long as a crowd of decodes lasts."""
        self._trimming, self._freed = True, False
        with contextlib.suppress(RuntimeError):  # the executor is shut down
            done = asyncio.get_running_loop().run_in_executor(None, _release_freed)
            done.add_done_callback(self._trimmed)
            return
        self._trimming = False

    def _trimmed(self, _: asyncio.Future[None]) -> None:
        self._trimming = False
        if self._freed:
            self._trim()


class DeriveStep(enum.Enum):
    CODEC = "codec"  # the encoder (at the job's level) or the decoder the choice names
    POUR = "pour"  # the source through it into the body file, readers following
    KEEP = "keep"  # stored as a variant of its source, unless that went meanwhile
    ERROR = "error"  # the source or the codec failed: readers hear of it, nothing is kept
    DONE = "done"  # the body is whole, and stored or let go


#: Where each step may go; every step may end in ERROR, so no reader waits forever.
MOVES: dict[DeriveStep, tuple[DeriveStep, ...]] = {
    DeriveStep.CODEC: (DeriveStep.POUR, DeriveStep.ERROR),
    DeriveStep.POUR: (DeriveStep.KEEP, DeriveStep.ERROR),
    DeriveStep.KEEP: (DeriveStep.DONE, DeriveStep.ERROR),
    DeriveStep.ERROR: (),
    DeriveStep.DONE: (),
}
TABLE = Table("derive machine", MOVES, DeriveStep.CODEC, max_steps=4)
render_table = TABLE.render

Codec = tuple[Callable[[bytes], bytes | Iterable[bytes]], Callable[[], bytes | Iterable[bytes]]]


class Derive:
    """One walk of the derive machine: making the body of one derived variant into its
    fill, whose head (`Deriver.start`) its readers already have."""

    def __init__(self, deriver: Deriver, job: Job, fill: Fill, source: BodySource) -> None:
        assert fill.writer is not None and job.choice.coding is not None
        self.deriver = deriver
        self.job = job
        self.fill = fill
        self.writer: BodyWriter = fill.writer
        self.coding: str = job.choice.coding
        self.source = source
        self.walk: list[DeriveStep] = []
        self.codec: Codec | None = None
        # Why it failed, as text: the exception itself would hold, through its
        # traceback, the step's frame and the codec (a 4 MiB brotli window) in a cycle
        # with this walk and its fill, which only the cyclic collector would free.
        self.failure = ""

    async def run(self) -> None:
        """Drive the machine: each step names the next, every move checked by TABLE."""
        step: DeriveStep | None = TABLE.first
        try:
            while step is not None:
                TABLE.move(self.walk, step)
                try:
                    step = await _STEPS[step](self)
                except Exception as exc:  # a bad body must not leave readers waiting
                    self.failure, step = str(exc) or type(exc).__name__, DeriveStep.ERROR
        finally:
            self.codec = None
            self.source.close()
            if not self.fill.finished:  # stopped (the node is closing), or a bug
                self.writer.discard()
                self.fill.finish(UpstreamError(f"the {self.coding} variant was not finished"))
            self.deriver.inflight.done(self.fill)
            if log.isEnabledFor(logging.DEBUG):  # the walk is not joined for nobody
                log.debug("derive of %s: %s", self.job.name, ">".join(s.value for s in self.walk))

    # -- steps ------------------------------------------------------------------------

    async def st_codec(self) -> DeriveStep:
        """The encoder for the job's coding at its path's level, or the decoder of the
        source's coding, bounded against decompression bombs."""
        job = self.job
        if job.choice.transform == "encode":
            # The size hint fits the codec's window and tables to the body: much cheaper
            # set-up for small bodies, the same output.
            codec = compress.encoder(
                self.coding,
                compress.LEVELS[job.path][self.coding],
                content_type=job.content_type,
                size_hint=job.source_length,
            )
            self.codec = codec.compress, codec.finish
        else:
            limit = min(MAX_TRANSFORM_SIZE, MAX_DECODE_RATIO * (job.source_length or 1 << 20))
            decoder = compress.decoder(job.source_coding, limit)
            self.codec = decoder.decompress, decoder.finish
        return DeriveStep.POUR

    async def st_pour(self) -> DeriveStep:
        """The source through the codec into the body, readers following as it grows
        (a decode holds one of the Deriver's slots meanwhile)."""
        assert self.codec is not None
        step, last = self.codec
        async with self.deriver.slot(self.job):
            async for piece in self.source.pieces(0, self.job.source_length):
                for chunk in _chunks(piece):
                    await self._pour(functools.partial(step, chunk), len(chunk) >= THREAD_CHUNK)
            await self._pour(last, False)
        self.codec = None  # its window goes now, not when the walk does
        return DeriveStep.KEEP

    async def st_keep(self) -> DeriveStep:
        """Stored as a variant of its source, if that is still kept and this coding of
        it was not kept meanwhile (by another worker): then its bytes stay the ones
        clients get, so a resumed download continues what it started."""
        job, writer, store = self.job, self.writer, self.deriver.store
        entry = Entry(
            key=job.key,
            variant=new_variant_id(),
            status=200,
            headers=(),
            vary=(*job.vary, ("\x00coding", self.coding)),
            request_time=0.0,
            response_time=0.0,
            size=writer.written,
            derived_from=job.source_variant,
            coding=self.coding,
            extra={"level": job.path, "quality": self.fill.head.result().level},
        )
        variants = store.variants(job.key)
        kept = any(v.variant == job.source_variant for v in variants)
        made = any(
            v.derived_from == job.source_variant and v.coding == self.coding for v in variants
        )
        if kept and not made:
            store.commit(entry, writer)
        else:
            writer.discard()
        self.fill.finish()
        return DeriveStep.DONE

    async def st_error(self) -> None:
        """Nothing is kept; readers get a failure of their own, as for an upstream body
        that broke: one warning each, not a traceback."""
        log.warning(
            "could not make the %s variant of %s: %s", self.coding, self.job.key, self.failure
        )
        self.writer.discard()
        if not self.fill.finished:
            self.fill.finish(
                UpstreamError(f"could not make the {self.coding} variant: {self.failure}")
            )

    async def st_done(self) -> None:
        """The body is whole: stored, or let go."""

    # -- helpers ------------------------------------------------------------------------

    async def _pour(self, make: Callable[[], bytes | Iterable[bytes]], offload: bool) -> None:
        """Write the output of one codec call to the body, each piece before the next
        is made (a decoder makes them only as they are taken), so a few bytes that
        decode to MiBs are never held whole. In a worker thread for a big input, or
        once the output has outgrown one batch."""
        pieces = _output(make)
        while True:
            if offload:
                written, done = await asyncio.to_thread(_write, pieces, self.writer, WRITE_BATCH)
            else:
                written, done = _write(pieces, self.writer, THREAD_CHUNK)
            if written:
                self.fill.advance(written)
            if done:
                return
            offload = True


#: Each step of the derive machine and the method that takes it.
_STEPS: dict[DeriveStep, Callable[[Derive], Awaitable[DeriveStep | None]]] = {
    DeriveStep.CODEC: Derive.st_codec,
    DeriveStep.POUR: Derive.st_pour,
    DeriveStep.KEEP: Derive.st_keep,
    DeriveStep.ERROR: Derive.st_error,
    DeriveStep.DONE: Derive.st_done,
}
assert set(_STEPS) == set(DeriveStep), "every step of the derive machine has its method"


def _libc_malloc_trim() -> Callable[[int], int] | None:
    try:  # the symbols the process is linked with: the C library's among them
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def _release_freed() -> None:
    """Hand the memory the decodes freed back to the system. glibc keeps freed blocks
    in its per-thread arenas, and once a window bigger than its mmap threshold has been
    freed it raises the threshold, so the next windows come from (and stay in) the
    arenas: a crowd of brotli or zstd decodes would leave tens of MiB resident for good.
    malloc_trim (glibc) returns the arenas' free pages; elsewhere this does nothing."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _output(make: Callable[[], bytes | Iterable[bytes]]) -> Iterator[bytes]:
    """One codec call's output as pieces, the call made when the first is asked for: an
    encoder's bytes (no bigger than its input) whole, a decoder's pieces as it makes
    them."""
    out = make()
    if isinstance(out, bytes):
        yield out
    else:
        yield from out


def _write(pieces: Iterator[bytes], writer: BodyWriter, budget: int) -> tuple[int, bool]:
    """Write pieces, each before the next is made, until `budget` bytes are out or none
    are left: how many bytes were written, and whether none are left."""
    written = 0
    for piece in pieces:
        writer.write(piece)
        written += len(piece)
        if written >= budget:
            return written, False
    return written, True


def _chunks(piece: bytes | FileSegment) -> Iterable[bytes]:
    """A piece as bytes, reading file segments in bounded chunks."""
    if isinstance(piece, bytes):
        yield piece
        return
    fd, offset, left = piece.file.fileno(), piece.offset, piece.count
    while left > 0:
        data = os.pread(fd, min(left, 1 << 20), offset)
        if not data:
            return
        offset += len(data)
        left -= len(data)
        yield data
