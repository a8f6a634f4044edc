"""How large an HTTP/3 field section can be once decoded, known before it is decoded.

A QPACK field section names dynamic-table entries by index (RFC 9204 Section 4.5.2):
one byte can stand for an entry of up to the table's capacity (4 KiB), so a HEADERS
frame of a few kilobytes can decode to hundreds of megabytes (a "QPACK bomb"). The
decoder aioquic uses has no limit of its own, so the frames are weighed first:

- `EncoderStream` follows the peer's encoder stream (RFC 9204 Section 4.3) and keeps
  an upper bound of each dynamic entry's size, by absolute index, evicting as the
  table would (Section 3.2.2);
- `section_bound` reads a field section's representations (Section 4.5) and adds up
  an upper bound of what each decodes to: a literal's length (a Huffman string at most
  8/5 of its bytes, the shortest code being 5 bits, RFC 7541 Appendix B), a static
  entry at most STATIC_ENTRY, a dynamic one its bound, or the table's capacity when
  it is not known (the section is blocked on inserts not yet seen);
- `RequestGate` splits a request stream into frames (RFC 9114 Section 7.1) and holds
  each HEADERS frame back until it has been weighed; DATA passes as it comes.

Pure: bytes in, numbers and verdicts out; nothing here decodes a field.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: The longest name and value of RFC 9204 Appendix A's static table ("content-security-
#: policy: script-src 'none'; object-src 'none'; base-uri 'none'" is 76 bytes), rounded up.
STATIC_ENTRY = 128
STATIC_NAME = 64
#: RFC 9204 Section 3.2.1: an entry's size is its name and value plus 32.
ENTRY_OVERHEAD = 32

#: RFC 9114 Section 7.2: frame types.
DATA = 0x0
HEADERS = 0x1


class QpackError(ValueError):
    """Bytes that are not QPACK (the decoder would refuse them too)."""


def _int(data: bytes | bytearray, at: int, prefix: int) -> tuple[int, int] | None:
    """RFC 9204 Section 4.1.1 (RFC 7541 Section 5.1): a prefixed integer at `at`; its
    value and the position after it, None when the bytes end first."""
    if at >= len(data):
        return None
    mask = (1 << prefix) - 1
    value = data[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    while True:
        if at >= len(data):
            return None
        byte = data[at]
        at += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if shift > 62:
            raise QpackError("integer too large")
        if not byte & 0x80:
            return value, at


def _string(data: bytes | bytearray, at: int, prefix: int) -> tuple[int, int] | None:
    """A string literal whose H bit sits just above a `prefix`-bit length: the bound of
    its decoded length and the position after it, None when the bytes end first."""
    if at >= len(data):
        return None
    huffman = data[at] & (1 << prefix)
    read = _int(data, at, prefix)
    if read is None:
        return None
    length, at = read
    if at + length > len(data):
        return None
    return (length * 8 // 5 if huffman else length), at + length


class EncoderStream:
    """The peer's encoder stream as far as sizes go (RFC 9204 Section 4.3)."""

    def __init__(self, max_capacity: int) -> None:
        self.max_capacity = max_capacity
        self.capacity = 0
        self.inserted = 0  # the table's insert count
        self.sizes: OrderedDict[int, int] = OrderedDict()  # absolute index -> size bound
        self._used = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Read instructions; an unfinished one waits for more bytes."""
        self._buffer += data
        at = 0
        buf = self._buffer
        while at < len(buf):
            done = self._instruction(buf, at)
            if done is None:
                break
            at = done
        del buf[:at]

    def _instruction(self, buf: bytearray, at: int) -> int | None:
        first = buf[at]
        if first & 0x80:  # Insert with Name Reference: 1 T index(6)
            read = _int(buf, at, 6)
            if read is None:
                return None
            index, at = read
            name = STATIC_NAME if first & 0x40 else self.entry(self.inserted - 1 - index)
            value = _string(buf, at, 7)
            if value is None:
                return None
            self._insert(name + value[0])
            return value[1]
        if first & 0x40:  # Insert with Literal Name: 01 H length(5)
            name = _string(buf, at, 5)
            if name is None:
                return None
            value = _string(buf, name[1], 7)
            if value is None:
                return None
            self._insert(name[0] + value[0])
            return value[1]
        read = _int(buf, at, 5)
        if read is None:
            return None
        number, at = read
        if first & 0x20:  # Set Dynamic Table Capacity: 001 capacity(5)
            if number > self.max_capacity:
                raise QpackError("dynamic table capacity above the advertised one")
            self.capacity = number
            self._evict(0)
        else:  # Duplicate: 000 index(5)
            self._insert(self.entry(self.inserted - 1 - number))
        return at

    def entry(self, absolute: int) -> int:
        """An upper bound of an entry's name and value, the capacity when unknown."""
        return self.sizes.get(absolute, self.max_capacity)

    def _insert(self, size: int) -> None:
        size = min(size, self.max_capacity)
        self._evict(size + ENTRY_OVERHEAD)
        self.sizes[self.inserted] = size
        self._used += size + ENTRY_OVERHEAD
        self.inserted += 1

    def _evict(self, room: int) -> None:
        # The bounds are at least the real sizes: this evicts no later than the table
        # does, and an entry evicted here counts as unknown (the capacity) later.
        while self.sizes and self._used + room > self.capacity:
            _, size = self.sizes.popitem(last=False)
            self._used -= size + ENTRY_OVERHEAD


def _required_insert_count(encoded: int, inserted: int, max_capacity: int) -> int:
    """RFC 9204 Section 4.5.1.1."""
    if encoded == 0:
        return 0
    max_entries = max_capacity // 32
    full_range = 2 * max_entries
    if encoded > full_range:
        raise QpackError("bad Required Insert Count")
    max_value = inserted + max_entries
    required = (max_value // full_range) * full_range + encoded - 1
    if required > max_value:
        if required <= full_range:
            raise QpackError("bad Required Insert Count")
        required -= full_range
    if required == 0:
        raise QpackError("bad Required Insert Count")
    return required


def section_bound(section: bytes | bytearray, table: EncoderStream) -> tuple[int, bool]:
    """An upper bound of the bytes of names and values `section` decodes to, and
    whether the section is blocked (names inserts the encoder stream has not brought
    yet: those count as the table's capacity)."""
    read = _int(section, 0, 8)
    if read is None:
        raise QpackError("truncated field section prefix")
    encoded, at = read
    if at >= len(section):
        raise QpackError("truncated field section prefix")
    negative = section[at] & 0x80
    read = _int(section, at, 7)
    if read is None:
        raise QpackError("truncated field section prefix")
    delta, at = read
    required = _required_insert_count(encoded, table.inserted, table.max_capacity)
    base = required - delta - 1 if negative else required + delta
    blocked = required > table.inserted

    def dynamic(absolute: int) -> int:
        return table.max_capacity if blocked else table.entry(absolute)

    total = 0
    while at < len(section):
        first = section[at]
        if first & 0x80:  # Indexed Field Line: 1 T index(6)
            read = _int(section, at, 6)
            if read is None:
                raise QpackError("truncated field line")
            index, at = read
            total += STATIC_ENTRY if first & 0x40 else dynamic(base - 1 - index)
            continue
        if first & 0x40:  # Literal with Name Reference: 01 N T index(4)
            read = _int(section, at, 4)
            if read is None:
                raise QpackError("truncated field line")
            index, at = read
            name = STATIC_NAME if first & 0x10 else dynamic(base - 1 - index)
        elif first & 0x20:  # Literal with Literal Name: 001 N H length(3)
            literal = _string(section, at, 3)
            if literal is None:
                raise QpackError("truncated field line")
            name, at = literal
        elif first & 0x10:  # Indexed Field Line with Post-Base Index: 0001 index(4)
            read = _int(section, at, 4)
            if read is None:
                raise QpackError("truncated field line")
            index, at = read
            total += dynamic(base + index)
            continue
        else:  # Literal with Post-Base Name Reference: 0000 N index(3)
            read = _int(section, at, 3)
            if read is None:
                raise QpackError("truncated field line")
            index, at = read
            name = dynamic(base + index)
        value = _string(section, at, 7)
        if value is None:
            raise QpackError("truncated field line")
        total += name + value[0]
        at = value[1]
    return total, blocked


def varint(data: bytes | bytearray, at: int) -> tuple[int, int] | None:
    """RFC 9000 Section 16: a variable-length integer."""
    if at >= len(data):
        return None
    length = 1 << (data[at] >> 6)
    if at + length > len(data):
        return None
    value = data[at] & 0x3F
    for byte in data[at + 1 : at + length]:
        value = (value << 8) | byte
    return value, at + length


@dataclass(slots=True)
class Refuse:
    """The gate's verdict on a stream: answer `status` and read nothing more of it."""

    status: int
    reason: str


class RequestGate:
    """A request stream's bytes, passed on frame by frame: a HEADERS frame only once
    whole and weighed (its encoded size at most `max_frame`, its decoded bound at most
    `max_decoded`); other frames' bytes as they come."""

    def __init__(self, table: EncoderStream, *, max_frame: int, max_decoded: int) -> None:
        self.table = table
        self.max_frame = max_frame
        self.max_decoded = max_decoded
        self._held = bytearray()
        self._passing = 0  # bytes of a non-HEADERS frame's payload still to pass

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def feed(self, data: bytes) -> bytes | Refuse:
        """The bytes that may go on to the HTTP/3 layer now, or a refusal; `feed(b"")`
        weighs a held HEADERS frame again (after the encoder stream moved on)."""
        out = bytearray()
        held = self._held
        held += data
        at = 0
        while at < len(held):
            if self._passing:
                take = min(self._passing, len(held) - at)
                self._passing -= take
                at += take
                continue
            kind = varint(held, at)
            if kind is None:
                break
            length = varint(held, kind[1])
            if length is None:
                break
            frame_type, (size, payload_at) = kind[0], length
            if frame_type != HEADERS:
                self._passing = size
                at = payload_at
                continue
            if size > self.max_frame:
                return Refuse(431, "a HEADERS frame larger than the field section limit")
            if payload_at + size > len(held):
                break
            try:
                bound, blocked = section_bound(held[payload_at : payload_at + size], self.table)
            except QpackError:
                bound, blocked = 0, False  # the decoder refuses it (QPACK_DECOMPRESSION_FAILED)
            if bound > self.max_decoded:
                if blocked:
                    break  # weighed again once the encoder stream has brought the inserts
                return Refuse(431, "a field section that decodes too large")
            at = payload_at + size
        out += held[:at]
        del held[:at]
        return bytes(out)
