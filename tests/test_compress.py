"""edge.compress on its own: Accept-Encoding negotiation (RFC 9110 Section 12.5.3),
compressible types, variant entity tags (Section 8.8.3), encoders and capped decoders."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest
import zstandard

from edge import compress
from edge.compress import (
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

ALL = ["br", "zstd", "gzip", "identity"]
TEXT = b"It is a truth universally acknowledged, that a single archive " * 4000


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (["br, gzip"], "br"),
        (["gzip, br"], "br"),  # equal weights: the server's preference
        (["gzip;q=0.5, zstd;q=0.9"], "zstd"),
        (["GZIP"], "gzip"),
        (["x-gzip"], "gzip"),
        (["*"], "br"),
        (["*;q=0.5, gzip"], "gzip"),
        (["br;q=0, *"], "zstd"),
        (["identity"], "identity"),
        (["identity;q=0, gzip;q=0.1"], "gzip"),
        (["br;q=0, zstd;q=0, gzip;q=0"], "identity"),
        (["*;q=0"], None),
        (["*;q=0, identity;q=0.1"], "identity"),
        (["deflate, compress"], "identity"),
        ([""], "identity"),
        ([], "identity"),
        (["gzip;q=2"], "identity"),  # invalid weight: the member is ignored
        (["gzip;q=0.1234"], "identity"),
        (["br", "gzip;q=0.1"], "br"),  # several field lines combine
        ([" , gzip ,"], "gzip"),
    ],
)
def test_negotiate(accept: list[str], expected: str | None) -> None:
    assert negotiate(accept, ALL) == expected


def test_parse_accept_encoding_keeps_first_mention() -> None:
    assert parse_accept_encoding(["gzip;q=0.2, gzip;q=0.9, br;Q=0.5"]) == {
        "gzip": 0.2,
        "br": 0.5,
    }


@pytest.mark.parametrize(
    ("ctype", "expected"),
    [
        ("text/plain; charset=utf-8", True),
        ("TEXT/HTML", True),
        ("application/json", True),
        ("application/vnd.api+json", True),
        ("application/javascript", True),
        ("application/atom+xml", True),
        ("image/svg+xml", True),
        ("image/png", False),
        ("audio/wav", False),
        ("application/octet-stream", False),
        ("application/zip", False),
        ("application/gzip", False),
        (None, False),
        ("", False),
    ],
)
def test_is_compressible(ctype: str | None, expected: bool) -> None:
    assert is_compressible(ctype) is expected


@pytest.mark.parametrize(
    ("etag", "coding", "expected"),
    [
        ('"abc"', "br", '"abc-br"'),
        ('W/"abc"', "gzip", 'W/"abc-gzip"'),
        ('"abc"', "identity", '"abc"'),
        (None, "br", None),
        ("garbage", "br", "garbage"),
    ],
)
def test_variant_etag(etag: str | None, coding: str, expected: str | None) -> None:
    assert variant_etag(etag, coding) == expected


def test_vary_with() -> None:
    assert vary_with(None, "Accept-Encoding") == "Accept-Encoding"
    assert vary_with("Origin", "Accept-Encoding") == "Origin, Accept-Encoding"
    assert vary_with("accept-encoding", "Accept-Encoding") == "accept-encoding"
    assert vary_with("*", "Accept-Encoding") == "*"


def _standard_decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return brotli.decompress(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


@pytest.mark.parametrize("coding", compress.CODINGS)
@pytest.mark.parametrize("path", ["stream", "store"])
def test_encoders_stream_to_standard_formats(coding: str, path: str) -> None:
    enc = encoder(coding, compress.LEVELS[path][coding])
    out = b"".join(enc.compress(TEXT[i : i + 1000]) for i in range(0, len(TEXT), 1000))
    out += enc.finish()
    assert _standard_decode(coding, out) == TEXT
    assert len(out) < len(TEXT) // 10


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", lambda d: gzip.compress(d)),
        ("x-gzip", lambda d: gzip.compress(d)),
        ("deflate", lambda d: zlib.compress(d)),
        ("deflate", lambda d: zlib.compress(d, wbits=-15)),  # raw deflate, as some send
        ("br", brotli.compress),
        ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
    ],
)
def test_decoders_round_trip_in_small_pieces(coding: str, encode) -> None:  # type: ignore[no-untyped-def]
    data = encode(TEXT)
    dec = decoder(coding, len(TEXT))
    out = b"".join(dec.decompress(data[i : i + 7]) for i in range(0, len(data), 7))
    assert out + dec.finish() == TEXT


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", lambda d: gzip.compress(d)),
        ("br", brotli.compress),
        ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
    ],
)
def test_decompression_bombs_are_stopped_with_bounded_memory(coding: str, encode) -> None:  # type: ignore[no-untyped-def]
    bomb = encode(bytes(256 << 20))  # 256 MiB of zeros, a few hundred KiB encoded
    dec = decoder(coding, 1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeLimitExceeded):
            for i in range(0, len(bomb), 1 << 16):
                dec.decompress(bomb[i : i + (1 << 16)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_malformed_input_is_a_decode_error(coding: str) -> None:
    dec = decoder(coding, 1 << 20)
    with pytest.raises(DecodeError):
        dec.decompress(b"\x1f\x8b\x08 this is not what it claims" * 4)
        dec.finish()


def test_truncated_stream_is_a_decode_error() -> None:
    data = gzip.compress(TEXT)
    dec = decoder("gzip", len(TEXT))
    dec.decompress(data[: len(data) // 2])
    with pytest.raises(DecodeError):
        dec.finish()


def test_unknown_codings_are_refused() -> None:
    with pytest.raises(ValueError):
        encoder("compress", 1)
    with pytest.raises(ValueError):
        decoder("arizona", 10)
