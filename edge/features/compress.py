"""Content codings: Accept-Encoding negotiation and the br / zstd / gzip codecs.

This module owns which content codings edge produces and in what order it prefers them,
how a request's Accept-Encoding picks one (RFC 9110 Section 12.5.3), which media types
are worth compressing and from what size, the compression levels of the two paths
(while a client waits, and once for keeps), the entity tag and Vary of an encoded
variant (RFC 9110 Sections 8.8.3 and 12.5.5), streaming encoders, and streaming
decoders that hand out their output in bounded pieces, as it is asked for, with a hard
cap on the whole (decompression bombs).

It does no I/O, reads no clock and imports nothing of aiohttp or the store: bytes in,
bytes out. `edge.fetch.derive` decides when to call it; `scenarios.compression` measures it.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Protocol

import brotli
import zstandard

#: The codings edge produces, in its order of preference: best ratio first. At the
#: store levels, where a variant spends its life, br leaves 14.6% of the demo texts,
#: zstd 15.0% and gzip 22.5% (scenarios.compression). While streaming, zstd 3 would beat
#: br 4 (78.5% saved at a third of the CPU), but the coding chosen then is the one the
#: stored variant keeps, so the order follows the store levels.
CODINGS = ("br", "zstd", "gzip")

#: Below this many bytes edge does not compress. Measured on slices of the demo texts
#: (`scenarios.compression`, small bodies; mean bytes saved per response net of the
#: `Content-Encoding` line, stream levels br 4 / zstd 3 / gzip 5):
#:
#:   128 B: +5 / -9 / -16     256 B: 58 / 42 / 38     512 B: 186 / 159 / 167
#:   1 KiB: 477 / 439 / 456 (all at 15-70 µs of CPU per response)
#:
#: At 128 bytes compression loses. At 256 it saves ~50 bytes of a 600-700-byte response
#: (edge's header block alone is a few hundred bytes), while each encoded variant is one
#: more store entry (a file: a 4 KiB disk block, for 50 bytes a response) and one more
#: Vary'd key in caches downstream. From 512 the saving is a third of the body and ~20%
#: of the response. Below ~1.4 KB nothing is gained in latency either way (one TCP
#: segment), so the floor is about bytes alone: 512 is where they start to count.
MIN_SIZE = 512

#: Levels by path, chosen from `python -m scenarios.compression` (13 demo texts, 6.1 MB,
#: fed in 64 KiB pieces; saved % / CPU ms per MB to encode, on a shared 2-core machine
#: where CPU figures vary by ~20% from run to run; br 7/8/10 and zstd 12/13 from one
#: extra run of the same code):
#:
#:   br    1 69.9/6    4 76.2/19   5 78.6/30-37   6 80.9/30-46   7 83.0/51   8 84.5/74
#:         9 85.4/87-115   10 87.3/1070   11 87.6/2150
#:   zstd  1 75.3/4    3 78.5/6    6 79.7/19   10 84.1/41-47   11 85.0/57-63
#:         12 85.0/55   13 85.4/166   15 86.3/244-300   19 87.1/656-780
#:   gzip  1 69.0/10   5 76.2/28   6 77.1/42-45   9 77.5/70-77
#:
#: "stream" compresses while a client waits for a body still arriving, one response at a
#: time per object, so it has to keep up with the upstream on one core: br 4 (~50 MB/s),
#: zstd 3 (~180 MB/s) and gzip 5 (~35 MB/s) are the knees of their curves: the next
#: step up (br 5-6, zstd 6, gzip 6) costs 50-250% more CPU for 1-5 points.
#: "store" makes a variant once, from a complete body, and keeps it, so it can spend
#: ~100 ms per MB (a 2 MB book: a fifth of a second, once): br 9 and zstd 11 save 9 and
#: 6.5 points more than the stream levels (30-40% fewer bytes to send). zstd 11 is the
#: last level before zstd's cost triples (13); br 10-11 and zstd 15+ would save 1-2 more
#: points for 4-25x the CPU, which an edge that recompresses after every purge or
#: eviction, in Python worker threads, cannot afford. gzip 9 is gzip's best, at gzip 6's
#: price plus 30 ms/MB.
LEVELS: dict[str, dict[str, int]] = {
    "stream": {"br": 4, "zstd": 3, "gzip": 5},
    "store": {"br": 9, "zstd": 11, "gzip": 9},
}

# ----------------------------------------------------------------- compressible types

_COMPRESSIBLE = frozenset(
    {
        "application/json",
        "application/json-seq",
        "application/x-ndjson",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/xml",
        "application/xml-dtd",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/csv",
        "application/sql",
        "application/graphql",
        "application/rtf",
        "application/x-sh",
        "application/x-tex",
        "application/x-tar",  # uncompressed tar: as compressible as what it holds
        "application/wasm",
        "image/svg+xml",
        "image/bmp",
        "image/x-icon",
        "image/vnd.microsoft.icon",
        # Uncompressed font formats; woff and woff2 are compressed already.
        "font/ttf",
        "font/otf",
        "font/sfnt",
        "font/collection",
        "application/font-sfnt",
        "application/x-font-ttf",
        "application/x-font-otf",
        "application/x-font-opentype",
        "application/vnd.ms-opentype",
        "application/vnd.ms-fontobject",
    }
)

#: Text that must reach the client as it is written, not when an encoder's buffer fills.
_NOT_COMPRESSIBLE = frozenset({"text/event-stream"})

#: RFC 6839 and RFC 9512 structured syntax suffixes that are text.
_TEXT_SUFFIXES = ("+json", "+xml", "+yaml")

_FONTS = frozenset(m for m in _COMPRESSIBLE if "font" in m or "opentype" in m)
#: Compressible, but not text.
_BINARY = frozenset(
    {
        "application/wasm",
        "application/x-tar",
        "image/bmp",
        "image/x-icon",
        "image/vnd.microsoft.icon",
    }
)


def media_type(content_type: str | None) -> str:
    """RFC 9110 Section 8.3.1: the type/subtype of a Content-Type, lower-cased, without
    parameters; "" when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_compressible(content_type: str | None) -> bool:
    """Text and structured text compress well; images, audio, video, archives and
    anything unknown (application/octet-stream) are compressed already or not worth a
    second pass. Parameters (charset) are ignored; the type is case-insensitive
    (RFC 9110 Section 8.3.1)."""
    media = media_type(content_type)
    if media in _NOT_COMPRESSIBLE:
        return False
    if media.startswith("text/") and len(media) > len("text/"):
        return True
    return media in _COMPRESSIBLE or media.endswith(_TEXT_SUFFIXES)


# ----------------------------------------------------------------------- negotiation

# RFC 9110 Section 5.6.2: token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 Section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")

#: RFC 9110 Section 8.4.1.3: x-gzip is gzip (and x-compress is compress).
_ALIASES = {"x-gzip": "gzip", "x-compress": "compress"}

# The weight identity gets when the client names neither it nor `*`: acceptable
# (Section 12.5.3, rule 2) yet below any coding the client named, even one at q=0.001.
_IDENTITY_DEFAULT = 0.0005


def _coding(name: str) -> str:
    name = name.lower()
    return _ALIASES.get(name, name)


def parse_accept_encoding(values: Sequence[str]) -> dict[str, float]:
    """RFC 9110 Section 12.5.3: Accept-Encoding, as {coding: weight}.

    `values` are the field lines as received; several lines are one list (Section 5.3).
    Codings are case-insensitive and returned lower-cased, `x-gzip` as `gzip`; `*` and
    `identity` are kept as such. A member whose weight is not a valid qvalue (Section
    12.4.2: 0 to 1, at most three decimals) is dropped as if absent, as is a member that
    is not a token; empty members and whitespace are tolerated. When a coding is named
    twice the first mention wins. Parameters other than `q` are ignored.
    """
    weights: dict[str, float] = {}
    for line in values:
        for member in line.split(","):
            # OWS is SP and HTAB (Section 5.6.3); str.strip() would also take NBSP and
            # control characters, and read "q=0.5\xa0" as a valid weight.
            name, *params = (part.strip(" \t") for part in member.split(";"))
            if not name or not _TOKEN.fullmatch(name):
                continue
            q: float | None = 1.0
            for param in params:
                key, _, value = param.partition("=")
                if key.strip(" \t").lower() == "q":  # Section 12.4.2: case-insensitive
                    value = value.strip(" \t")
                    q = float(value) if _QVALUE.fullmatch(value) else None
                    break
            if q is not None:
                weights.setdefault(_coding(name), q)
    return weights


def negotiate(accept: Sequence[str], available: Sequence[str]) -> str | None:
    """RFC 9110 Section 12.5.3: the coding of `available` to send, or None.

    `accept` holds the request's Accept-Encoding field lines (empty when it has none);
    `available` the codings the server can send, in its order of preference, "identity"
    among them when the unencoded representation may be sent. The answer is the
    acceptable coding with the highest weight, ties going to the earlier in `available`:

    - a coding the client names has its weight; q=0 means "not acceptable";
    - `*` gives its weight to every coding the client does not name, identity included;
    - identity is acceptable unless excluded by `identity;q=0`, or by `*;q=0` without an
      identity member (rule 2); named by neither, it comes after every coding the client
      did name;
    - an empty field value means identity only (the client wants no coding);
    - no field at all: identity when available. Rule 1 lets a server send any coding
      then, but "no preference" is not "can decode": clients that say nothing are
      mostly scripts and tools (curl without --compressed, wget, urllib) that would
      save the encoded bytes as the file, and nginx's gzip module too compresses only
      for clients that ask. When identity is not available, gzip, the coding such
      clients most likely understand (RFC 2616 Section 14.3 said as much), else the
      first of `available`.

    None means nothing available is acceptable: the client excluded identity and takes
    none of the codings offered. Recommendation to the caller: send identity anyway,
    with Vary: Accept-Encoding, rather than a 406 (Not Acceptable). Section 12.1 allows
    it (a server may decide that a response not matching the preferences is better than
    a 406); such a client is misconfigured or probing, and for an archive the file is
    more use to it than an error page, which would also be one more variant to cache.
    """
    offered = [(_coding(c), c) for c in available]
    if not accept:
        for fallback in ("identity", "gzip"):
            for coding, original in offered:
                if coding == fallback:
                    return original
        return offered[0][1] if offered else None
    weights = parse_accept_encoding(accept)
    star = weights.get("*")
    best: tuple[float, int] | None = None
    chosen: str | None = None
    for rank, (coding, original) in enumerate(offered):
        if coding in weights:
            q = weights[coding]
        elif star is not None:
            q = star
        elif coding == "identity":
            q = _IDENTITY_DEFAULT
        else:
            continue
        if q <= 0:
            continue
        if best is None or (q, -rank) > best:
            best, chosen = (q, -rank), original
    return chosen


# ----------------------------------------------------------------- variant metadata

_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def variant_etag(etag: str | None, coding: str, level: int | None = None) -> str | None:
    """RFC 9110 Section 8.8.3: each content coding of a resource is a different
    representation, so it needs an entity tag of its own: `"abc"` -> `"abc-br"`,
    `W/"abc"` -> `W/"abc-br"`. An encoding made at a compression `level` names it
    (`"abc-br.9"`): the same source encoded at another level is other bytes, and a
    strong tag (Section 8.8.1) must never name two byte sequences. Identity keeps the
    tag. None stays None, and so does a value that is not an entity tag (it cannot be
    extended safely, and reusing it would claim the encoded bytes equal the unencoded
    ones)."""
    if etag is None:
        return None
    if coding == "identity":
        return etag
    match = _ENTITY_TAG.fullmatch(etag.strip())
    if match is None:
        return None
    weak, opaque = match.groups()
    suffix = coding if level is None else f"{coding}.{level}"
    return f'{weak or ""}"{opaque}-{suffix}"'


def vary_with(existing: str | None, name: str) -> str:
    """RFC 9110 Section 12.5.5: a Vary value that lists `name` once (field names are
    case-insensitive; a name already there keeps its spelling and place). `*` already
    says the response varies on everything, so it stays `*`."""
    members = [m.strip() for m in (existing or "").split(",") if m.strip()]
    if "*" in members:
        return "*"
    if name.lower() not in {m.lower() for m in members}:
        members.append(name)
    return ", ".join(members)


# ----------------------------------------------------------------------- encoders


class Encoder(Protocol):
    """A streaming encoder: `compress` returns what is ready (often nothing: encoders
    buffer a block), `finish` the rest and the end of the stream. Feeding the pieces of
    a body one by one gives a stream any standard decoder reads."""

    def compress(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _GzipEncoder:
    def __init__(self, level: int) -> None:
        # wbits 31: a gzip member (RFC 1952 header and CRC-32 trailer), not a zlib stream.
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def finish(self) -> bytes:
        return self._z.flush()


#: brotli's default window (4 MiB), and the smallest it takes.
_BROTLI_LGWIN, _BROTLI_MIN_LGWIN = 22, 10


class _BrotliEncoder:
    def __init__(self, level: int, mode: int, size_hint: int | None) -> None:
        lgwin = _BROTLI_LGWIN
        if size_hint is not None:
            # A window no larger than the body: the encoder's tables shrink with it.
            lgwin = max(_BROTLI_MIN_LGWIN, min(lgwin, (max(size_hint, 1) - 1).bit_length()))
        self._c = brotli.Compressor(quality=level, mode=mode, lgwin=lgwin)

    def compress(self, data: bytes) -> bytes:
        return self._c.process(data)

    def finish(self) -> bytes:
        return self._c.finish()


#: RFC 9659 Section 3: a "zstd" content coding MUST NOT need a window over 8 MB, the
#: most browsers allocate (windowLog 23). Levels 20-22 would ask for 32-128 MB.
ZSTD_MAX_WINDOW_LOG = 23


class _ZstdEncoder:
    def __init__(self, level: int, size_hint: int | None) -> None:
        # source_size only picks parameters (window, tables) for that size; it is not
        # pledged, so a wrong hint costs ratio, never correctness.
        source_size = 0 if size_hint is None else max(size_hint, 1)
        window_log = zstandard.ZstdCompressionParameters.from_level(
            level, source_size=source_size
        ).window_log
        # A checksum (4 bytes) lets the client tell a damaged body from a good one. The
        # content size is not in the frame header: the body may still be arriving.
        params = zstandard.ZstdCompressionParameters.from_level(
            level,
            source_size=source_size,
            window_log=min(window_log, ZSTD_MAX_WINDOW_LOG),
            write_checksum=True,
        )
        self._c = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def finish(self) -> bytes:
        return self._c.flush()


_LEVEL_RANGE = {"br": (0, 11), "gzip": (0, 9), "zstd": (1, 22)}


def _brotli_mode(content_type: str | None) -> int:
    """The hint brotli's encoder takes (RFC 7932 leaves it to the encoder): fonts and
    UTF-8 text have their own models; what edge compresses is text unless said."""
    media = media_type(content_type)
    if media in _FONTS:
        return brotli.MODE_FONT
    if media in _BINARY:
        return brotli.MODE_GENERIC
    return brotli.MODE_TEXT


def encoder(
    coding: str, level: int, content_type: str | None = None, size_hint: int | None = None
) -> Encoder:
    """A streaming encoder for `coding` ("br", "zstd" or "gzip") at `level`; finished,
    its output is one gzip member, one brotli stream or one zstd frame.

    `content_type` picks brotli's mode (text when None). `size_hint`, the body's length
    when known (a stored body, a Content-Length), sizes brotli's and zstd's window and
    tables to the body: for a 512-byte body at the store levels that makes the encoder
    20-30x cheaper (br 9: ~1.1 ms -> ~50 µs; zstd 11: ~1.4 ms -> ~45 µs, measured by
    scenarios.compression) for the same output. A wrong hint only costs ratio.

    Unknown codings and levels outside the coding's range raise ValueError."""
    coding = _coding(coding)
    if coding not in _LEVEL_RANGE:
        raise ValueError(f"edge does not encode {coding!r}")
    low, high = _LEVEL_RANGE[coding]
    if not low <= level <= high:
        raise ValueError(f"{coding} level {level} is outside {low}..{high}")
    if coding == "gzip":
        return _GzipEncoder(level)
    if coding == "br":
        return _BrotliEncoder(level, _brotli_mode(content_type), size_hint)
    return _ZstdEncoder(level, size_hint)


# ----------------------------------------------------------------------- decoders


class DecodeError(Exception):
    """The encoded body is malformed, truncated, or followed by data that is not part of
    it."""


class DecodeLimitExceeded(DecodeError):
    """Decoding would produce more than the allowed output: a decompression bomb, or a
    body larger than the caller is willing to hold."""


class Decoder(Protocol):
    """A streaming decoder that hands out its output in pieces of at most CHUNK bytes,
    each made only when the caller asks for it: `decompress` takes a piece of the
    encoded body and returns an iterator over what it decodes to, `finish` one over
    what is left once the body has ended (and raises DecodeError, as it is drained, if
    the stream did not end properly). A caller that writes each piece before taking the
    next holds one piece at a time, however much a few input bytes stand for.

    Each iterator must be drained before the next call. Errors are raised as the
    iterator is drained: DecodeError for malformed input, DecodeLimitExceeded as soon
    as the output passes `max_output` (by at most one piece). A decoder that raised is
    done."""

    max_output: int
    produced: int

    def decompress(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


#: The most output a decoder hands out at once.
CHUNK = 1 << 16


class _Capped:
    """The pattern the decoders share: each turns input into a generator of bounded
    pieces (`_pieces`, and `_rest` at the end); this class counts them against the cap,
    turns the library's errors into DecodeError, and refuses new input while the last
    output is still undrained (it would come out in the wrong order)."""

    #: The library's exception (set by each decoder), and the coding's name for messages.
    _library_error: type[Exception]
    _name: str

    def __init__(self, max_output: int) -> None:
        if max_output < 0:
            raise ValueError("max_output must be >= 0")
        self.max_output = max_output
        self.produced = 0
        self._draining = False

    def decompress(self, data: bytes) -> Iterator[bytes]:
        self._enter()
        return self._counted(self._pieces(data))

    def finish(self) -> Iterator[bytes]:
        self._enter()
        return self._counted(self._rest())

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def _rest(self) -> Iterator[bytes]:
        raise NotImplementedError

    def _limit(self) -> int:
        """How much to ask the library for next: one byte past the cap is enough to know
        it is exceeded."""
        return max(1, min(CHUNK, self.max_output - self.produced + 1))

    def _enter(self) -> None:
        if self._draining:
            raise RuntimeError("the decoder's previous output was not drained")
        self._draining = True

    def _counted(self, pieces: Iterator[bytes]) -> Iterator[bytes]:
        try:
            for piece in pieces:
                self.produced += len(piece)
                if self.produced > self.max_output:
                    raise DecodeLimitExceeded(f"decoded body exceeds {self.max_output} bytes")
                yield piece
        except self._library_error as exc:
            raise DecodeError(f"bad {self._name} data: {exc}") from exc
        # Only a drained iterator frees the decoder: one that raised, or was dropped
        # half-way, has lost output, and the decoder with it.
        self._draining = False


def _is_zlib_header(head: bytes) -> bool:
    """RFC 1950 Section 2.2: CM 8 (deflate), a window of at most 32 KiB, and the FCHECK
    bits making CMF*256 + FLG a multiple of 31."""
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


#: Input given to zlib at once: what it does not get to is copied into unconsumed_tail
#: at every call, so a whole body given at once would be copied at every piece.
_ZLIB_INPUT = CHUNK // 4


class _ZlibDecoder(_Capped):
    """gzip (RFC 1952, any number of members) and deflate: RFC 9110 Section 8.4.1.2
    says zlib-wrapped (RFC 1950), but some servers send raw deflate (RFC 1951), so the
    first two bytes decide, as browsers do. zlib's max_length bounds each piece; the
    input it did not get to waits in unconsumed_tail."""

    _library_error = zlib.error

    def __init__(self, coding: str, max_output: int) -> None:
        super().__init__(max_output)
        self._gzip = coding == "gzip"
        self._name = coding
        self._z = zlib.decompressobj(31) if self._gzip else None
        self._head = b""  # deflate: the first bytes, until the wrapping is known

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            self._z = zlib.decompressobj(15 if _is_zlib_header(data) else -15)
        view = memoryview(data)
        for start in range(0, len(view), _ZLIB_INPUT):
            yield from self._inflate(view[start : start + _ZLIB_INPUT])

    def _inflate(self, buf: bytes | memoryview) -> Iterator[bytes]:
        assert self._z is not None
        while True:
            if self._z.eof:
                if not buf:
                    return
                if not self._gzip:
                    raise DecodeError("data after the end of the deflate stream")
                # RFC 1952 Section 2.2: a gzip file is a series of members.
                self._z = zlib.decompressobj(31)
            limit = self._limit()
            piece = self._z.decompress(buf, limit)
            if piece:
                yield piece
            buf = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            # A full `limit` may leave output inside zlib even with no input left.
            if not self._z.eof and not buf and len(piece) < limit:
                return

    def _rest(self) -> Iterator[bytes]:
        if self._z is None:
            raise DecodeError("truncated deflate stream")
        yield from self._inflate(b"")  # what zlib still holds
        if not self._z.eof:
            raise DecodeError(f"truncated {self._name} stream")


#: brotli's output_buffer_limit is soft: the output buffer grows in blocks (the first
#: just under 32 KiB, then ~64 KiB, ~128 KiB...) and stops growing once it has reached
#: the limit. A quarter of a CHUNK is within the first block: pieces of under 32 KiB.
_BROTLI_LIMIT = CHUNK // 4


class _BrotliDecoder(_Capped):
    """brotli (RFC 7932). Each call's output stops at output_buffer_limit; the rest is
    asked for with empty calls until one returns nothing, since the decoder must not be
    given new input while it still holds output."""

    _library_error = brotli.error
    _name = "brotli"

    def __init__(self, max_output: int) -> None:
        super().__init__(max_output)
        self._b = brotli.Decompressor()

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        if data and self._b.is_finished():
            raise DecodeError("data after the end of the brotli stream")
        piece = self._b.process(data, output_buffer_limit=min(self._limit(), _BROTLI_LIMIT))
        while piece:
            yield piece
            piece = self._b.process(b"", output_buffer_limit=min(self._limit(), _BROTLI_LIMIT))

    def _rest(self) -> Iterator[bytes]:
        yield from self._pieces(b"")
        if not self._b.is_finished():
            raise DecodeError("truncated brotli stream")


# RFC 8878 Section 3.1: frame magic numbers.
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50


class _ZstdFrames:
    """Follows the frame structure of zstd input (RFC 8878 Section 3.1) without decoding
    it: to tell a stream cut short from a complete one (libzstd's streaming writer does
    not say where frames end), and to say where each block ends, so that the decoder
    can be given one block at a time. Only headers are buffered (at most 13 bytes);
    block contents and checksums are passed over by count."""

    def __init__(self) -> None:
        self.frames = 0  # complete frames seen (skippable ones not counted)
        self._state = "magic"
        self._want = 4  # bytes to collect for the current header
        self._buf = bytearray()
        self._skip = 0  # bytes of content to pass over, then go to _after_skip
        self._after_skip = "magic"
        self._checksum = False
        self._block_ended = False

    @property
    def at_boundary(self) -> bool:
        return self._state == "magic" and not self._buf and not self._skip

    def feed(self, data: bytes | memoryview) -> int:
        """Walk `data` up to the end of the first block (or frame header) that ends in
        it, or to its end; returns how many bytes were walked."""
        view = memoryview(data)
        i, n = 0, len(view)
        self._block_ended = False
        while i < n and not self._block_ended:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                if not self._skip:
                    self._goto(self._after_skip)
                continue
            take = min(self._want - len(self._buf), n - i)
            self._buf += view[i : i + take]
            i += take
            if len(self._buf) == self._want:
                header = int.from_bytes(self._buf, "little")
                self._buf.clear()
                self._header(header)
        return i

    def _goto(self, state: str, want: int = 0) -> None:
        if state in ("block", "end"):  # a frame header or a block is through
            self._block_ended = True
        if state == "end":  # the last block (and checksum) of a frame are through
            self.frames += 1
            state = "magic"
        self._state = state
        self._want = want or {"magic": 4, "descriptor": 1, "block": 3, "skippable": 4}[state]

    def _pass(self, count: int, then: str) -> None:
        if count:
            self._skip, self._after_skip = count, then
        else:
            self._goto(then)

    def _header(self, value: int) -> None:
        if self._state == "magic":
            if value == _ZSTD_MAGIC:
                self._goto("descriptor")
            elif value & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._goto("skippable")
            else:
                raise DecodeError("not a zstd frame")
        elif self._state == "skippable":  # Frame_Size, then that many bytes of user data
            self._pass(value, "magic")
        elif self._state == "descriptor":
            # Frame_Header_Descriptor: FCS flag (bits 7-6), Single_Segment (5),
            # Content_Checksum (2), Dictionary_ID flag (1-0); then the optional
            # Window_Descriptor, Dictionary_ID and Frame_Content_Size fields.
            fcs_flag, single = value >> 6, value >> 5 & 1
            self._checksum = bool(value >> 2 & 1)
            rest = (0 if single else 1) + (0, 1, 2, 4)[value & 3]
            rest += (single, 2, 4, 8)[fcs_flag]
            if rest:
                self._goto("frame-header", rest)
            else:
                self._goto("block")
        elif self._state == "frame-header":
            self._goto("block")
        else:  # "block"
            # Block_Header: Last_Block (bit 0), Block_Type (bits 2-1), Block_Size (23-3).
            last, kind, size = value & 1, value >> 1 & 3, value >> 3
            if kind == 3:
                raise DecodeError("reserved zstd block type")
            content = 1 if kind == 1 else size  # an RLE block holds its one byte
            if last:
                self._pass(content + (4 if self._checksum else 0), "end")
            else:
                self._pass(content, "block")


class _Sink:
    """Where libzstd's writer puts its output, in pieces of at most CHUNK bytes."""

    def __init__(self) -> None:
        self.pieces: deque[bytes] = deque()

    def write(self, data: bytes) -> int:
        self.pieces.append(data)
        return len(data)


#: RFC 9659 Section 3: zstd content needs no window over 8 MB; refusing larger ones
#: also bounds the decoder's own memory (libzstd would allow 128 MB).
ZSTD_MAX_WINDOW = 1 << ZSTD_MAX_WINDOW_LOG


class _ZstdDecoder(_Capped):
    """zstd (RFC 8878), any number of frames. libzstd's writer decodes all the input it
    is given at once, handing its sink pieces of at most CHUNK bytes; so it is given one
    block at a time (the frame walker knows where blocks end), and a block decodes to at
    most Block_Maximum_Size, 128 KiB (RFC 8878 Section 3.1.1.2.3): two pieces. Four
    bytes of zstd can stand for a whole block (an RLE block), so slices of input of any
    fixed size would not bound it."""

    _library_error = zstandard.ZstdError
    _name = "zstd"

    def __init__(self, max_output: int) -> None:
        super().__init__(max_output)
        self._sink = _Sink()
        self._frames = _ZstdFrames()
        self._w = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_writer(
            self._sink, write_size=CHUNK, write_return_read=True, closefd=False
        )

    def _pieces(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        while view:
            walked = self._frames.feed(view)
            self._w.write(view[:walked])
            view = view[walked:]
            while self._sink.pieces:
                yield self._sink.pieces.popleft()

    def _rest(self) -> Iterator[bytes]:
        if not self._frames.frames or not self._frames.at_boundary:
            raise DecodeError("truncated zstd stream")
        yield from ()


#: The codings edge decodes (to serve identity to a client that cannot take what the
#: upstream sent): x-gzip is gzip (RFC 9110 Section 8.4.1.3).
DECODABLE = ("gzip", "x-gzip", "deflate", "br", "zstd")


def decoder(coding: str, max_output: int) -> Decoder:
    """A streaming decoder for `coding` (any of DECODABLE, case-insensitive) that hands
    out bounded pieces as they are asked for, raises DecodeLimitExceeded once its
    output passes `max_output` bytes and DecodeError on malformed or truncated input;
    unknown codings raise ValueError."""
    coding = _coding(coding)
    if coding in ("gzip", "deflate"):
        return _ZlibDecoder(coding, max_output)
    if coding == "br":
        return _BrotliDecoder(max_output)
    if coding == "zstd":
        return _ZstdDecoder(max_output)
    raise ValueError(f"edge does not decode {coding!r}")
