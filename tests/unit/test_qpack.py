"""edge.rfc.qpack: bounds of decoded field sections (RFC 9204), checked against the QPACK
codec aioquic uses (pylsqpack) where it can say what a section really decodes to."""

from __future__ import annotations

import pylsqpack
import pytest

from edge.rfc.qpack import (
    STATIC_ENTRY,
    EncoderStream,
    QpackError,
    Refuse,
    RequestGate,
    section_bound,
)
from tests.support.qpackwire import insert_literal, qpack_int


def frame(kind: int, payload: bytes) -> bytes:
    return bytes([kind, 0x40 | (len(payload) >> 8), len(payload) & 0xFF]) + payload


def test_bounds_hold_for_what_the_real_codec_encodes() -> None:
    """pylsqpack encodes (Huffman, static and dynamic references as it likes); the bound
    is never below what its decoder makes of the same bytes."""
    encoder = pylsqpack.Encoder()
    decoder = pylsqpack.Decoder(4096, 16)
    table = EncoderStream(4096)
    settings = encoder.apply_settings(max_table_capacity=4096, blocked_streams=16)
    decoder.feed_encoder(settings)
    table.feed(settings)
    for sid in range(0, 40, 4):
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", b"archive.test"),
            (b":path", b"/books/%d" % sid),
            (b"cookie", b"session=" + b"abc123" * 40),
            (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64)"),
            (b"x-repeat", b"value"),
        ]
        stream, section = encoder.encode(sid, fields)
        decoder.feed_encoder(stream)
        table.feed(stream)
        _, decoded = decoder.feed_header(sid, section)
        bound, blocked = section_bound(section, table)
        assert not blocked
        assert bound >= sum(len(n) + len(v) for n, v in decoded)
        # and not wildly above it: a browser's request passes a limit of 4x.
        assert bound < 4 * sum(len(n) + len(v) for n, v in decoded)
    assert table.inserted > 0  # the encoder did use the dynamic table


def test_a_reference_bomb_is_weighed_by_its_entry() -> None:
    table = EncoderStream(4096)
    table.feed(qpack_int(4096, 5, 0x20) + insert_literal(b"x-a", b"v" * 4000))
    assert table.inserted == 1 and table.entry(0) == 4003
    section = b"\x02\x00" + b"\x80" * 1000  # Required Insert Count 1, Base 1: entry 0
    assert section_bound(section, table) == (4003 * 1000, False)


def test_static_references_and_literals() -> None:
    table = EncoderStream(4096)
    # :method GET (static 17), then x-a: "hello" as a literal name and value.
    section = b"\x00\x00\xd1" + b"\x23x-a" + b"\x05hello"
    assert section_bound(section, table) == (STATIC_ENTRY + 3 + 5, False)
    # A Huffman value of 5 bytes decodes to at most 8 (5-bit shortest code).
    huffman = b"\x00\x00" + b"\x23x-a" + b"\x85" + b"\xff" * 5
    assert section_bound(huffman, table) == (3 + 8, False)


def test_a_section_naming_inserts_not_yet_seen_is_blocked_at_capacity() -> None:
    table = EncoderStream(4096)
    table.feed(qpack_int(4096, 5, 0x20))
    section = b"\x02\x00\x80"  # needs one insert; none seen
    assert section_bound(section, table) == (4096, True)
    table.feed(insert_literal(b"x-a", b"b"))
    assert section_bound(section, table) == (4, False)


def test_encoder_instructions_may_arrive_in_pieces_and_duplicates_evict() -> None:
    table = EncoderStream(200)
    data = qpack_int(200, 5, 0x20) + insert_literal(b"x-a", b"v" * 60)
    for i in range(len(data)):
        table.feed(data[i : i + 1])
    assert table.inserted == 1 and table.entry(0) == 63
    table.feed(b"\x00")  # Duplicate the newest: 95 + 95 fits in 200
    assert table.inserted == 2 and table.entry(1) == 63
    table.feed(b"\x00")  # a third does not: the oldest goes
    assert table.inserted == 3 and 0 not in table.sizes and table.entry(0) == 200
    with pytest.raises(QpackError):
        table.feed(qpack_int(4097, 5, 0x20))


def test_the_gate_holds_headers_until_weighed_and_passes_data_as_it_comes() -> None:
    table = EncoderStream(4096)
    gate = RequestGate(table, max_frame=1000, max_decoded=5000)
    headers = frame(1, b"\x00\x00\xd1\xd7\xc1" + b"\x50\x09localhost")
    assert gate.feed(headers[:4]) == b"" and gate.holding
    assert gate.feed(headers[4:]) == headers and not gate.holding
    data = frame(0, b"x" * 300)
    assert gate.feed(data[:100]) == data[:100]  # DATA is not held
    assert gate.feed(data[100:]) == data[100:]


def test_the_gate_refuses_bombs_and_oversized_frames() -> None:
    table = EncoderStream(4096)
    table.feed(qpack_int(4096, 5, 0x20) + insert_literal(b"x-a", b"v" * 4000))
    gate = RequestGate(table, max_frame=1000, max_decoded=5000)
    assert gate.feed(frame(1, b"\x02\x00" + b"\x80" * 10)) == Refuse(
        431, "a field section that decodes too large"
    )
    gate = RequestGate(table, max_frame=1000, max_decoded=5000)
    assert gate.feed(frame(1, b"\x00\x00" + b"\xd1" * 1001)[:10]) == Refuse(
        431, "a HEADERS frame larger than the field section limit"
    )


def test_a_blocked_section_waits_for_its_inserts_then_passes() -> None:
    table = EncoderStream(4096)
    table.feed(qpack_int(4096, 5, 0x20))
    gate = RequestGate(table, max_frame=1000, max_decoded=3000)
    headers = frame(1, b"\x02\x00" + b"\x80")  # 4096 while unknown: above 3000
    assert gate.feed(headers) == b"" and gate.holding
    table.feed(insert_literal(b"x-a", b"small"))
    assert gate.feed(b"") == headers and not gate.holding
