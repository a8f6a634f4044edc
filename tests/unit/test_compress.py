"""edge.features.compress on its own: Accept-Encoding negotiation (RFC 9110 Section 12.5.3), the
compressible types, variant entity tags (Section 8.8.3) and Vary, the encoders (checked
with the standard decoders) and the capped decoders (round trips, truncation, garbage,
decompression bombs with bounded memory)."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import brotli
import pytest
import zstandard

from edge.features import compress
from edge.features.compress import (
    CHUNK,
    CODINGS,
    LEVELS,
    DecodeError,
    DecodeLimitExceeded,
    decoder,
    encoder,
    is_compressible,
    negotiate,
    parse_accept_encoding,
    variant_etag,
    vary_with,
)
from origin.archive.demo import book_text

ALL = ["br", "zstd", "gzip", "identity"]
#: Prose as the demo archive has it: compresses like a real book.
TEXT = b"".join(book_text("A Test of Codings", "Anon", 200_000, seed=1851))
SMALL = TEXT[:12_000]
MIB = 1 << 20


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def encode(coding: str, level: int, data: bytes, piece: int = 1000) -> bytes:
    enc = encoder(coding, level)
    return b"".join(enc.compress(p) for p in pieces(data, piece)) + enc.finish()


def decode(coding: str, data: bytes, max_output: int, piece: int = 1000) -> bytes:
    dec = decoder(coding, max_output)
    out = b"".join(b"".join(dec.decompress(p)) for p in pieces(data, piece))
    return out + b"".join(dec.finish())


def drain(out: Iterator[bytes]) -> None:
    """Take every piece of a decoder's output (errors are raised as it is drained)."""
    for _ in out:
        pass


# ------------------------------------------------------------------ negotiation


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # weights, and ties going to the server's order (br, zstd, gzip, identity)
        (["br, gzip"], "br"),
        (["gzip, br"], "br"),
        (["gzip, zstd"], "zstd"),
        (["gzip;q=0.5, zstd;q=0.9"], "zstd"),
        (["br;q=0.5, gzip;q=0.8"], "gzip"),
        (["identity;q=1, br;q=1"], "br"),
        (["identity;q=0.5, gzip;q=0.4"], "identity"),
        (["zstd;q=0.001"], "zstd"),  # any named coding beats identity by default
        # case-insensitive codings and q; x-gzip is gzip
        (["GZIP"], "gzip"),
        (["Br;Q=1, gzip;q=0.5"], "br"),
        (["x-gzip"], "gzip"),
        (["X-GZIP;q=0.5, br;q=0.4"], "gzip"),
        # `*` covers every coding not named, identity included
        (["*"], "br"),
        (["*;q=0.5, gzip"], "gzip"),
        (["br;q=0, *"], "zstd"),
        (["br;q=0, zstd;q=0, *;q=0.2"], "gzip"),
        (["*;q=0.3, br;q=0.2"], "zstd"),
        (["*;q=0.3, br;q=0, zstd;q=0, gzip;q=0"], "identity"),
        # identity: acceptable unless identity;q=0, or *;q=0 with no identity member
        (["identity"], "identity"),
        (["identity;q=0, gzip;q=0.1"], "gzip"),
        (["br;q=0, zstd;q=0, gzip;q=0"], "identity"),
        (["identity;q=0"], None),
        (["*;q=0"], None),
        (["*;q=0, identity"], "identity"),
        (["*;q=0, identity;q=0.1"], "identity"),
        (["*;q=0, gzip;q=0.2"], "gzip"),
        (["identity;q=0, *;q=0.5"], "br"),
        # codings edge does not make
        (["deflate, compress"], "identity"),
        (["deflate, identity;q=0"], None),
        # an empty value: identity only
        ([""], "identity"),
        (["  "], "identity"),
        ([",, ,"], "identity"),
        # invalid weights drop the member, as if absent
        (["gzip;q=2"], "identity"),
        (["gzip;q=1.001"], "identity"),
        (["gzip;q=0.1234"], "identity"),
        (["gzip;q=-1"], "identity"),
        (["gzip;q=.5"], "identity"),
        (["gzip;q="], "identity"),
        (["gzip;q=high"], "identity"),
        (["br;q=5, gzip;q=0.1"], "gzip"),
        (["gzip;q=1.000"], "gzip"),
        (["gzip;q=0."], "identity"),  # "0." is a valid qvalue: zero, not acceptable
        # several field lines combine; whitespace and empty members are tolerated
        (["br", "gzip;q=0.1"], "br"),
        (["gzip;q=0.1", "br;q=0.2"], "br"),
        ([" , gzip ,"], "gzip"),
        (["gzip ; q=0.5 ,br ;q=0.4"], "gzip"),
        # junk members are skipped, not fatal
        (['"br", gzip'], "gzip"),
        (["b r, gzip;q=0.3"], "gzip"),
        (["gzip;level=9"], "gzip"),
        # the first mention of a coding wins
        (["gzip;q=0, gzip"], "identity"),
        # no field at all: identity (edge's choice; see negotiate's docstring)
        ([], "identity"),
    ],
)
def test_negotiate(accept: list[str], expected: str | None) -> None:
    assert negotiate(accept, ALL) == expected


@pytest.mark.parametrize(
    ("accept", "available", "expected"),
    [
        (["gzip, br"], ["gzip", "br"], "gzip"),  # ties follow `available`'s order
        (["br"], ["gzip", "identity"], "identity"),
        (["br"], ["gzip"], None),  # identity not offered, gzip not accepted
        (["gzip;q=0.5"], ["gzip"], "gzip"),
        ([], ["br", "gzip"], "gzip"),  # no field, no identity: the most understood
        ([], ["br", "zstd"], "br"),  # ... else the server's first choice
        ([], [], None),
        (["*"], [], None),
        (["x-gzip"], ["x-gzip", "identity"], "x-gzip"),  # the spelling offered comes back
        (["gzip"], ["GZIP", "identity"], "GZIP"),
        (["identity;q=0, gzip"], ["identity"], None),
    ],
)
def test_negotiate_among_available(
    accept: list[str], available: list[str], expected: str | None
) -> None:
    assert negotiate(accept, available) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["gzip;q=0.2, gzip;q=0.9, br;Q=0.5"], {"gzip": 0.2, "br": 0.5}),
        (["x-gzip;q=0.3", "GZIP"], {"gzip": 0.3}),
        (["*;q=0, Identity"], {"*": 0.0, "identity": 1.0}),
        (["gzip;q=5, br"], {"br": 1.0}),
        (["gzip;q=0.000, zstd;q=1.0, br;q=0.5;foo=bar"], {"gzip": 0.0, "zstd": 1.0, "br": 0.5}),
        (["", " ,  ,"], {}),
        ([], {}),
        # RFC 9110 Section 5.6.3: OWS is SP and HTAB; NBSP and controls are not.
        (["gzip;q=0.5\xa0, br\x0b, \tzstd ;\tq=0.2\t"], {"zstd": 0.2}),
    ],
)
def test_parse_accept_encoding(values: list[str], expected: dict[str, float]) -> None:
    assert parse_accept_encoding(values) == expected


@pytest.mark.parametrize(
    ("qvalue", "weight"),
    [
        ("0", 0.0),
        ("0.", 0.0),
        ("0.5", 0.5),
        ("0.12", 0.12),
        ("0.123", 0.123),
        ("1", 1.0),
        ("1.", 1.0),
        ("1.0", 1.0),
        ("1.000", 1.0),
        ("1.001", None),
        ("1.5", None),
        ("2", None),
        ("-0", None),
        ("0.1234", None),
        (".5", None),
        ("01", None),
        ("0.5x", None),
        ("", None),
    ],
)
def test_qvalue_grammar(qvalue: str, weight: float | None) -> None:
    """RFC 9110 Section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )."""
    assert parse_accept_encoding([f"br;q={qvalue}"]).get("br") == weight


# ------------------------------------------------------------------ compressible types


@pytest.mark.parametrize(
    ("ctype", "expected"),
    [
        ("text/plain; charset=utf-8", True),
        ("TEXT/HTML", True),
        ("text/css", True),
        ("text/csv", True),
        ("text/javascript", True),
        ("application/json", True),
        ("Application/JSON; charset=UTF-8", True),
        ("application/vnd.api+json", True),
        ("application/problem+json", True),
        ("application/ld+json", True),
        ("application/x-ndjson", True),
        ("application/javascript", True),
        ("application/xml", True),
        ("application/atom+xml", True),
        ("image/svg+xml", True),
        ("application/wasm", True),
        ("application/yaml", True),
        ("application/x-tar", True),
        ("font/ttf", True),
        ("font/otf", True),
        ("application/vnd.ms-fontobject", True),
        ("text/event-stream", False),  # must reach the client as written
        ("font/woff", False),
        ("font/woff2", False),
        ("image/png", False),
        ("image/jpeg", False),
        ("image/webp", False),
        ("audio/wav", False),
        ("audio/mpeg", False),
        ("video/mp4", False),
        ("application/octet-stream", False),
        ("application/zip", False),
        ("application/gzip", False),
        ("application/zstd", False),
        ("application/pdf", False),
        ("application/epub+zip", False),
        ("text/", False),
        ("text", False),
        (None, False),
        ("", False),
    ],
)
def test_is_compressible(ctype: str | None, expected: bool) -> None:
    assert is_compressible(ctype) is expected


# ------------------------------------------------------------------ variant metadata


@pytest.mark.parametrize(
    ("etag", "coding", "expected"),
    [
        ('"abc"', "br", '"abc-br"'),
        ('"abc"', "zstd", '"abc-zstd"'),
        ('W/"abc"', "gzip", 'W/"abc-gzip"'),
        (' "abc" ', "br", '"abc-br"'),
        ('""', "br", '"-br"'),
        ('"abc"', "identity", '"abc"'),
        ("garbage", "identity", "garbage"),  # identity is the representation as it was
        (None, "br", None),
        ("garbage", "br", None),  # not an entity tag: dropped, never reused
        ('"a"b"', "br", None),
        ('w/"abc"', "br", None),  # the weak prefix is case-sensitive
        ('"abc', "br", None),
    ],
)
def test_variant_etag(etag: str | None, coding: str, expected: str | None) -> None:
    assert variant_etag(etag, coding) == expected


def test_variant_etags_differ_per_coding() -> None:
    tags = {variant_etag('"5f-1a2b"', c) for c in (*CODINGS, "identity")}
    assert len(tags) == len(CODINGS) + 1


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, "Accept-Encoding"),
        ("", "Accept-Encoding"),
        ("Origin", "Origin, Accept-Encoding"),
        ("accept-encoding", "accept-encoding"),
        ("Origin, ACCEPT-ENCODING", "Origin, ACCEPT-ENCODING"),
        (" Origin ,, Accept-Language", "Origin, Accept-Language, Accept-Encoding"),
        ("*", "*"),
        ("Origin, *", "*"),
    ],
)
def test_vary_with(existing: str | None, expected: str) -> None:
    assert vary_with(existing, "Accept-Encoding") == expected


# ------------------------------------------------------------------ encoders


def standard_decode(coding: str, data: bytes) -> bytes:
    """The reference decoders, not edge's."""
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return brotli.decompress(data)
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = dobj.decompress(data)
    assert dobj.eof
    return out


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("path", ["stream", "store"])
def test_encoders_write_standard_formats(coding: str, path: str) -> None:
    data = encode(coding, LEVELS[path][coding], TEXT)
    assert standard_decode(coding, data) == TEXT
    assert len(data) < len(TEXT) // 3  # prose: the demo books save 70-87%


@pytest.mark.parametrize("coding", CODINGS)
def test_small_pieces_decode_like_one_piece(coding: str) -> None:
    level = LEVELS["stream"][coding]
    one_shot = encode(coding, level, SMALL, piece=len(SMALL))
    tiny = encode(coding, level, SMALL, piece=7)
    assert standard_decode(coding, tiny) == standard_decode(coding, one_shot) == SMALL


def test_gzip_output_is_one_gzip_member() -> None:
    data = encode("gzip", LEVELS["stream"]["gzip"], SMALL)
    assert data[:3] == b"\x1f\x8b\x08"  # RFC 1952: ID1 ID2, CM deflate
    member = zlib.decompressobj(31)
    assert member.decompress(data) == SMALL
    assert member.eof
    assert member.unused_data == b""


@pytest.mark.parametrize("level", [LEVELS["stream"]["zstd"], LEVELS["store"]["zstd"], 19, 22])
def test_zstd_frames_keep_to_8_mb_windows_and_carry_a_checksum(level: int) -> None:
    """RFC 9659 Section 3: no zstd content coding may need a window over 8 MB."""
    data = encode("zstd", level, SMALL, piece=4096)
    frame = zstandard.get_frame_parameters(data)
    assert frame.window_size <= 8 * MIB
    assert frame.has_checksum
    assert standard_decode("zstd", data) == SMALL


@pytest.mark.parametrize("coding", CODINGS)
@pytest.mark.parametrize("hint", [None, 0, 1, 512, 10**9])
def test_size_hint_never_changes_the_bytes_decoded(coding: str, hint: int | None) -> None:
    """A hint smaller than the body (wrong), absent or huge only changes the ratio."""
    enc = encoder(coding, LEVELS["store"][coding], "text/plain", size_hint=hint)
    data = b"".join(enc.compress(p) for p in pieces(TEXT, 4096)) + enc.finish()
    assert standard_decode(coding, data) == TEXT


@pytest.mark.parametrize("coding", CODINGS)
def test_store_levels_save_more_than_stream_levels(coding: str) -> None:
    stream = encode(coding, LEVELS["stream"][coding], TEXT, piece=64 << 10)
    store = encode(coding, LEVELS["store"][coding], TEXT, piece=64 << 10)
    assert len(store) < len(stream)


@pytest.mark.parametrize("coding", CODINGS)
def test_an_empty_body_encodes_to_a_valid_empty_stream(coding: str) -> None:
    enc = encoder(coding, LEVELS["stream"][coding])
    data = enc.compress(b"") + enc.finish()
    assert standard_decode(coding, data) == b""
    assert decode(coding, data, 0) == b""


@pytest.mark.parametrize(
    ("ctype", "mode"),
    [
        ("font/ttf", brotli.MODE_FONT),
        ("application/vnd.ms-fontobject", brotli.MODE_FONT),
        ("application/wasm", brotli.MODE_GENERIC),
        ("text/plain; charset=utf-8", brotli.MODE_TEXT),
        ("application/json", brotli.MODE_TEXT),
        (None, brotli.MODE_TEXT),
    ],
)
def test_brotli_mode_follows_the_content_type(ctype: str | None, mode: int) -> None:
    assert compress._brotli_mode(ctype) == mode
    enc = encoder("br", LEVELS["stream"]["br"], ctype)
    assert brotli.decompress(enc.compress(SMALL) + enc.finish()) == SMALL


@pytest.mark.parametrize(
    ("coding", "level"),
    [
        ("br", 12),
        ("br", -1),
        ("gzip", 10),
        ("zstd", 0),
        ("zstd", 23),
        ("deflate", 6),
        ("identity", 1),
    ],
)
def test_encoder_refuses_unknown_codings_and_levels(coding: str, level: int) -> None:
    with pytest.raises(ValueError):
        encoder(coding, level)


def test_levels_cover_every_coding_and_store_is_never_weaker() -> None:
    assert set(LEVELS) == {"stream", "store"}
    for coding in CODINGS:
        assert LEVELS["stream"][coding] <= LEVELS["store"][coding]
        for path in LEVELS:
            encoder(coding, LEVELS[path][coding])  # within the coding's range


# ------------------------------------------------------------------ decoders

Encode = Callable[[bytes], bytes]
UPSTREAM: list[tuple[str, Encode]] = [
    ("gzip", lambda d: gzip.compress(d)),
    ("x-gzip", lambda d: gzip.compress(d)),
    ("deflate", lambda d: zlib.compress(d)),  # RFC 9110 8.4.1.2: zlib-wrapped
    ("deflate", lambda d: zlib.compress(d, wbits=-15)),  # raw deflate, as some servers send
    ("br", lambda d: brotli.compress(d)),
    ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),  # single segment, with size
    ("zstd", lambda d: encode("zstd", 3, d)),  # streamed, checksummed
]
IDS = ["gzip", "x-gzip", "deflate-zlib", "deflate-raw", "br", "zstd-oneshot", "zstd-stream"]


@pytest.mark.parametrize(("coding", "make"), UPSTREAM, ids=IDS)
@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 30])
def test_decoders_round_trip_in_any_pieces(coding: str, make: Encode, piece: int) -> None:
    data = make(SMALL if piece == 1 else TEXT)
    expected = SMALL if piece == 1 else TEXT
    assert decode(coding, data, len(expected), piece) == expected


@pytest.mark.parametrize(("coding", "make"), UPSTREAM, ids=IDS)
def test_a_body_of_exactly_max_output_passes_and_one_byte_more_does_not(
    coding: str, make: Encode
) -> None:
    data = make(TEXT)
    assert decode(coding, data, len(TEXT)) == TEXT
    with pytest.raises(DecodeLimitExceeded):
        decode(coding, data, len(TEXT) - 1)


@pytest.mark.parametrize("coding", ["GZIP", "X-Gzip", "Br", "ZSTD"])
def test_decoder_codings_are_case_insensitive(coding: str) -> None:
    make = dict(UPSTREAM)[coding.lower()]
    assert decode(coding, make(SMALL), len(SMALL)) == SMALL


def test_gzip_with_several_members_is_their_concatenation() -> None:
    """RFC 1952 Section 2.2: a gzip file is a series of members."""
    data = gzip.compress(b"first,") + gzip.compress(b"") + gzip.compress(b"second")
    for piece in (1, 5, len(data)):
        assert decode("gzip", data, 100, piece) == b"first,second"


def test_zstd_with_several_frames_and_a_skippable_one() -> None:
    """RFC 8878 Section 3.1: frames in sequence; skippable frames carry no content."""
    skippable = struct.pack("<II", 0x184D2A53, 5) + b"notes"
    data = encode("zstd", 3, b"first,") + skippable + zstandard.ZstdCompressor().compress(b"2nd")
    for piece in (1, 3, len(data)):
        assert decode("zstd", data, 100, piece) == b"first,2nd"


@pytest.mark.parametrize(("coding", "make"), UPSTREAM, ids=IDS)
def test_truncated_streams_are_decode_errors(coding: str, make: Encode) -> None:
    data = make(SMALL)
    for cut in sorted({0, 1, 2, len(data) // 3, len(data) // 2, len(data) - 1}):
        dec = decoder(coding, len(SMALL))
        with pytest.raises(DecodeError):
            drain(dec.decompress(data[:cut]))
            drain(dec.finish())


def test_zstd_cut_at_any_byte_is_a_decode_error() -> None:
    """Where libzstd's writer is silent, the frame walker knows a frame is unfinished."""
    first = encode("zstd", 3, b"a first frame, with a checksum")
    data = first + zstandard.ZstdCompressor().compress(b"and a second frame, without")
    for cut in range(len(data)):
        if cut == len(first):
            continue  # the first frame alone is a whole stream
        dec = decoder("zstd", 1000)
        with pytest.raises(DecodeError):
            drain(dec.decompress(data[:cut]))
            drain(dec.finish())


@pytest.mark.parametrize(("coding", "make"), UPSTREAM, ids=IDS)
def test_data_after_the_end_is_a_decode_error(coding: str, make: Encode) -> None:
    data = make(SMALL) + b"trailing garbage"
    dec = decoder(coding, 2 * len(SMALL))
    with pytest.raises(DecodeError):
        for piece in pieces(data, 1000):
            drain(dec.decompress(piece))
        drain(dec.finish())


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
@pytest.mark.parametrize(
    "junk",
    [b"this is not what it claims to be" * 4, b"\x1f\x8b\x08 not gzip after all" * 4, b"\x00" * 64],
)
def test_malformed_input_is_a_decode_error(coding: str, junk: bytes) -> None:
    dec = decoder(coding, MIB)
    with pytest.raises(DecodeError):
        drain(dec.decompress(junk))
        drain(dec.finish())


def test_a_gzip_crc_mismatch_is_a_decode_error() -> None:
    data = bytearray(gzip.compress(SMALL))
    data[-8] ^= 0xFF  # RFC 1952: CRC32 of the uncompressed data, first of the trailer
    with pytest.raises(DecodeError):
        decode("gzip", bytes(data), len(SMALL))


def test_a_zstd_checksum_mismatch_is_a_decode_error() -> None:
    data = bytearray(encode("zstd", 3, SMALL))
    data[-1] ^= 0xFF  # the frame's Content_Checksum
    with pytest.raises(DecodeError):
        decode("zstd", bytes(data), len(SMALL))


def test_zstd_windows_over_8_mb_are_refused() -> None:
    """RFC 9659 Section 3: a decoder may refuse more; edge does, which bounds its memory."""
    cctx = zstandard.ZstdCompressor(level=22).compressobj()  # streamed: window 128 MiB
    data = cctx.compress(SMALL) + cctx.flush()
    assert zstandard.get_frame_parameters(data).window_size > 8 * MIB
    with pytest.raises(DecodeError):
        decode("zstd", data, len(SMALL))


@pytest.mark.parametrize("coding", ["compress", "identity", "arizona", ""])
def test_decoder_refuses_unknown_codings(coding: str) -> None:
    with pytest.raises(ValueError):
        decoder(coding, MIB)


def test_decoder_refuses_a_negative_cap() -> None:
    with pytest.raises(ValueError):
        decoder("gzip", -1)


# ------------------------------------------------------------------ decompression bombs


def _stream(compressor_chunks: Callable[[bytes], bytes], finish: Callable[[], bytes]) -> bytes:
    zeros = bytes(MIB)
    return b"".join(compressor_chunks(zeros) for _ in range(1024)) + finish()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """1 GiB of zeros in each coding (a few hundred KB each), built without ever holding
    1 GiB: gzip as 16 members of 64 MiB (RFC 1952 allows a series), brotli and zstd
    streamed a MiB at a time. deflate cannot be concatenated: 64 MiB."""
    member = zlib.compressobj(9, zlib.DEFLATED, 31)
    gzip_member = member.compress(bytes(64 * MIB)) + member.flush()
    br = brotli.Compressor(quality=1)
    zs = zstandard.ZstdCompressor(level=3).compressobj()
    return {
        "gzip": gzip_member * 16,
        "deflate": zlib.compress(bytes(64 * MIB), 9),
        "br": _stream(br.process, br.finish),
        "zstd": _stream(zs.compress, zs.flush),
    }


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_decompression_bombs_stop_at_the_cap_in_bounded_memory(
    coding: str, bombs: dict[str, bytes]
) -> None:
    bomb = bombs[coding]
    assert len(bomb) < 2 * MIB
    dec = decoder(coding, MIB)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeLimitExceeded):
            for piece in pieces(bomb, 64 << 10):
                drain(dec.decompress(piece))
            drain(dec.finish())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The cap plus about one CHUNK of output was made, never the whole GiB.
    assert MIB < dec.produced <= MIB + 2 * CHUNK
    assert peak < 16 * MIB
