"""QPACK bytes written by hand (RFC 9204), for tests that send what an encoder would:
the tests of edge.rfc.qpack's weights and the QPACK-bomb test against a real node."""

from __future__ import annotations


def qpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    """RFC 9204 Section 4.1.1: a prefixed integer."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes([first | value])
    out = [first | top]
    value -= top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes([*out, value])


def insert_literal(name: bytes, value: bytes) -> bytes:
    """Insert with Literal Name (RFC 9204 Section 4.3.3), on the encoder stream."""
    return qpack_int(len(name), 5, 0x40) + name + qpack_int(len(value), 7) + value
