"""Bounded memory under decoding, with real processes: a node that decodes a gzip, br or
zstd body for clients that refuse the coding holds a bounded piece of the output at a
time, whether the encoded body is arriving from upstream or read from the store.

32 clients at once ask for 32 different objects of 16 MiB, each ~25-45 times smaller
encoded, sent by the origin with Content-Encoding; every body is read whole and
checked. The decoding node's resident set (VmRSS, sampled throughout) grows by less
than 100 MiB over what the same crowd costs without decoding, and comes back near
where it started. So do crowds of decompression bombs, cut short at the cap. At one
tier (the edge decodes) and through a shield (the edge asks the shield for no coding,
so the shield decodes; both are measured). Also the decoders on their own: every piece
they hand out is bounded, they make nothing until asked, they refuse input while output
is undrained, and their cap on the whole output still holds.
Here the parts that open no socket and start no process;
tests/integration/test_integrity_decode.py has the ones with real processes."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator

import pytest

from edge.features.compress import CHUNK, DecodeLimitExceeded, decoder
from tests.support.upstream import encode_body, sparse_for

MIB = 1 << 20
SIZE = 16 * MIB
CODINGS = ["gzip", "br", "zstd"]


# ------------------------------------------------------------------ the decoders alone


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture(scope="module")
def sparse() -> bytes:
    return sparse_for("/unit", SIZE)


@pytest.fixture(scope="module")
def encoded(sparse: bytes) -> dict[str, bytes]:
    return {coding: encode_body(coding, sparse) for coding in CODINGS}


@pytest.mark.parametrize("coding", CODINGS)
def test_every_piece_a_decoder_hands_out_is_bounded(
    coding: str, sparse: bytes, encoded: dict[str, bytes]
) -> None:
    """Given its whole input at once, a decoder still hands out at most CHUNK bytes a
    piece, and the pieces are the body."""
    dec = decoder(coding, SIZE)
    digest, total, biggest = hashlib.sha256(), 0, 0
    for out in (lambda: dec.decompress(encoded[coding]), dec.finish):
        for piece in out():
            biggest = max(biggest, len(piece))
            total += len(piece)
            digest.update(piece)
    assert 0 < biggest <= CHUNK
    assert total == dec.produced == SIZE
    assert digest.digest() == hashlib.sha256(sparse).digest()


@pytest.mark.parametrize("coding", CODINGS)
def test_a_decoder_makes_output_only_as_it_is_drained(
    coding: str, encoded: dict[str, bytes]
) -> None:
    """Output is made as the caller asks for it: a piece taken, at most about one more
    made; so a caller that writes each piece before taking the next holds one."""
    dec = decoder(coding, SIZE)
    out = iter(dec.decompress(encoded[coding]))
    assert dec.produced == 0
    first = next(out)
    assert 0 < len(first) <= CHUNK and dec.produced <= 2 * CHUNK
    second = next(out)
    assert 0 < len(second) <= CHUNK and dec.produced <= 3 * CHUNK


@pytest.mark.parametrize("coding", CODINGS)
def test_draining_a_decoder_holds_about_one_piece(coding: str, encoded: dict[str, bytes]) -> None:
    """16 MiB decoded from one input, each piece dropped once used: Python's own
    allocations stay within a few pieces (the old decoders returned the whole output
    of an input as one bytes, copied from a bytearray: 2 x 16 MiB)."""
    dec = decoder(coding, SIZE)
    tracemalloc.start()
    try:
        total = 0
        for piece in dec.decompress(encoded[coding]):
            total += len(piece)
        for piece in dec.finish():
            total += len(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == SIZE
    assert peak < 8 * CHUNK


@pytest.mark.parametrize("coding", CODINGS)
def test_the_cap_on_the_whole_output_holds_piece_by_piece(
    coding: str, encoded: dict[str, bytes]
) -> None:
    """The cap counts every piece handed out, across inputs: one byte short of the body
    is refused, having made no more than about one piece past it."""
    dec = decoder(coding, SIZE - 1)
    with pytest.raises(DecodeLimitExceeded):
        for part in pieces(encoded[coding], 100_000):
            for _ in dec.decompress(part):
                pass
        for _ in dec.finish():
            pass
    assert SIZE - 1 < dec.produced <= SIZE - 1 + CHUNK


def test_new_input_waits_until_the_last_output_is_drained(encoded: dict[str, bytes]) -> None:
    """Output is made lazily, so input given before the last output was taken would come
    out in the wrong order: the decoder refuses it."""
    dec = decoder("gzip", SIZE)
    out = dec.decompress(encoded["gzip"][:1000])
    with pytest.raises(RuntimeError):
        dec.decompress(encoded["gzip"][1000:2000])
    assert sum(len(piece) for piece in out) > 0
    assert sum(len(piece) for piece in dec.decompress(encoded["gzip"][1000:2000])) > 0
