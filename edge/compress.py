"""Content codings: Accept-Encoding negotiation and the br / zstd / gzip codecs.

This module owns which codings edge produces, how a request's Accept-Encoding picks
one (RFC 9110 Section 12.5.3), which media types are worth compressing, the levels
used, entity tags of encoded variants (RFC 9110 Section 8.8.3), and streaming
encoders and size-capped decoders. It does no I/O; `edge.derive` drives it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Protocol

import brotli
import zstandard

#: The codings edge produces, in its order of preference (best ratio first).
CODINGS = ("br", "zstd", "gzip")

#: Below this many bytes a compressed body plus its headers is rarely smaller enough
#: to pay for the CPU and the extra Vary; nginx's gzip_min_length-style floor.
MIN_SIZE = 512

#: Levels by path. "stream": compressing while a client waits for a body that is still
#: arriving (fast). "store": a complete body compressed once and kept (stronger).
#: Measured on the demo archive's texts (python -m scenarios.compression, saved % /
#: CPU ms per MB): br 4 76.2/21, br 9 85.3/120, br 11 87.4/2147; zstd 3 78.5/6,
#: zstd 10 84.0/45, zstd 15 86.0/364; gzip 5 76.2/35, gzip 9 77.5/77. Beyond these the
#: last few percent cost 3-20x the CPU.
LEVELS: dict[str, dict[str, int]] = {
    "stream": {"br": 4, "zstd": 3, "gzip": 5},
    "store": {"br": 9, "zstd": 10, "gzip": 9},
}

_COMPRESSIBLE_PREFIXES = ("text/",)
_COMPRESSIBLE = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/x-ndjson",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/xml",
        "application/xhtml+xml",
        "application/rss+xml",
        "application/atom+xml",
        "application/wasm",
        "application/x-tar",
        "application/pdf",
        "application/rtf",
        "application/x-sh",
        "application/manifest+json",
        "application/geo+json",
        "image/svg+xml",
        "image/x-icon",
        "image/bmp",
        "font/ttf",
        "font/otf",
        "application/vnd.ms-fontobject",
    }
)


def is_compressible(content_type: str | None) -> bool:
    """Text and structured text compress well; images, audio, video and archives are
    already compressed (or, like PNG, JPEG, MP3, ZIP, not worth a second pass)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith(_COMPRESSIBLE_PREFIXES):
        return True
    return media in _COMPRESSIBLE or media.endswith(("+json", "+xml"))


_Q = re.compile(r"^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$")


def parse_accept_encoding(values: Sequence[str]) -> dict[str, float]:
    """RFC 9110 Section 12.5.3: codings (case-insensitive) with their q-values.

    A member with an invalid weight is dropped; `x-gzip` means gzip (Section 8.4.1.3);
    the first mention of a coding wins.
    """
    accepted: dict[str, float] = {}
    for line in values:
        for member in line.split(","):
            name, *params = (p.strip() for p in member.split(";"))
            name = name.lower()
            if not name:
                continue
            q = 1.0
            valid = True
            for param in params:
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    value = value.strip()
                    valid = bool(_Q.match(value))
                    q = float(value) if valid else 0.0
            if not valid:
                continue
            name = "gzip" if name == "x-gzip" else name
            accepted.setdefault(name, q)
    return accepted


def negotiate(accept: Sequence[str], available: Sequence[str]) -> str | None:
    """RFC 9110 Section 12.5.3: the acceptable coding of `available` with the highest
    weight, ties going to the earlier in `available`; None when none is acceptable
    (the caller sends the representation as it is rather than a 406: a client that
    refuses identity still prefers bytes to an error page).

    No Accept-Encoding at all means any coding is acceptable, but edge then sends
    identity: clients that say nothing are mostly tools that cannot decode.
    """
    if not accept:
        return "identity" if "identity" in available else None
    weights = parse_accept_encoding(accept)
    star = weights.get("*")
    best: tuple[float, int] | None = None
    chosen: str | None = None
    for rank, coding in enumerate(available):
        if coding in weights:
            q = weights[coding]
        elif coding == "identity":
            # identity is acceptable unless excluded, explicitly or by *;q=0.
            q = 0.0 if star == 0.0 else 0.001
        elif star is not None:
            q = star
        else:
            continue
        if q <= 0:
            continue
        if best is None or (q, -rank) > best:
            best, chosen = (q, -rank), coding
    return chosen


def variant_etag(etag: str | None, coding: str) -> str | None:
    """RFC 9110 Section 8.8.3: each content coding of a resource is a different
    representation and needs its own entity tag: "abc" -> "abc-br"."""
    if not etag or coding == "identity":
        return etag
    weak = etag.startswith("W/")
    opaque = etag[2:] if weak else etag
    if len(opaque) < 2 or not (opaque.startswith('"') and opaque.endswith('"')):
        return etag
    tagged = f'"{opaque[1:-1]}-{coding}"'
    return f"W/{tagged}" if weak else tagged


def vary_with(existing: str | None, name: str) -> str:
    """A Vary value that lists `name` once (case-insensitively); `*` stays `*`."""
    members = [m.strip() for m in (existing or "").split(",") if m.strip()]
    if "*" in members:
        return "*"
    if name.lower() not in {m.lower() for m in members}:
        members.append(name)
    return ", ".join(members)


# ----------------------------------------------------------------------- encoders


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Zlib:
    def __init__(self, level: int, wbits: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, wbits)

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data)

    def finish(self) -> bytes:
        return self._z.flush()


class _Brotli:
    def __init__(self, level: int) -> None:
        self._c = brotli.Compressor(quality=level, mode=brotli.MODE_TEXT)

    def compress(self, data: bytes) -> bytes:
        return bytes(self._c.process(data))

    def finish(self) -> bytes:
        return bytes(self._c.finish())


class _Zstd:
    def __init__(self, level: int) -> None:
        self._c = zstandard.ZstdCompressor(level=level).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._c.compress(data)

    def finish(self) -> bytes:
        return self._c.flush()


def encoder(coding: str, level: int) -> Encoder:
    """A streaming encoder producing a complete gzip member / brotli stream / zstd
    frame once finished."""
    if coding == "gzip":
        return _Zlib(level, 31)
    if coding == "br":
        return _Brotli(level)
    if coding == "zstd":
        return _Zstd(level)
    raise ValueError(f"unknown coding: {coding}")


# ----------------------------------------------------------------------- decoders


class DecodeError(Exception):
    """The encoded body is malformed."""


class DecodeLimitExceeded(DecodeError):
    """Decoding would produce more than the allowed output: a decompression bomb."""


class Decoder:
    """Decodes a stream in pieces, never holding more than one chunk of output beyond
    the cap: each step asks its codec for at most `room + 1` bytes."""

    CHUNK = 1 << 16

    def __init__(self, coding: str, max_output: int) -> None:
        self.coding = coding
        self.max_output = max_output
        self.produced = 0
        if coding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(31)
        elif coding == "deflate":
            self._z = None  # zlib-wrapped or raw: decided by the first bytes
        elif coding == "br":
            self._b = brotli.Decompressor()
        elif coding == "zstd":
            self._zs = zstandard.ZstdDecompressor().decompressobj()
        else:
            raise ValueError(f"unknown coding: {coding}")
        self._pending = b""

    def _account(self, out: bytes) -> bytes:
        self.produced += len(out)
        if self.produced > self.max_output:
            raise DecodeLimitExceeded(f"decoded body exceeds {self.max_output} bytes")
        return out

    def decompress(self, data: bytes) -> bytes:
        try:
            if self.coding in ("gzip", "x-gzip", "deflate"):
                return self._zlib_step(data)
            if self.coding == "br":
                return self._brotli_step(data)
            return self._zstd_step(data)
        except DecodeError:
            raise
        except (zlib.error, brotli.error, zstandard.ZstdError) as exc:
            raise DecodeError(str(exc)) from exc

    def _zlib_step(self, data: bytes) -> bytes:
        if self.coding == "deflate" and self._z is None:
            # RFC 9110 Section 8.4.1.2 says zlib-wrapped; some servers send raw deflate.
            raw = not data or (data[0] & 0x0F) != 8
            self._z = zlib.decompressobj(-15 if raw else 15)
        assert self._z is not None
        out = bytearray()
        buf = data
        while True:
            room = self.max_output - self.produced - len(out) + 1
            piece = self._z.decompress(buf, max(1, min(room, self.CHUNK)))
            out += piece
            if self.produced + len(out) > self.max_output:
                return self._account(bytes(out))
            buf = self._z.unconsumed_tail
            if not buf:
                break
        return self._account(bytes(out))

    def _brotli_step(self, data: bytes) -> bytes:
        # output_buffer_limit bounds each call's output (softly); what is left is
        # drained with empty calls, stopping as soon as the cap is passed.
        out = bytearray(self._b.process(data, output_buffer_limit=self.CHUNK))
        while self.produced + len(out) <= self.max_output:
            more = self._b.process(b"", output_buffer_limit=self.CHUNK)
            if not more:
                break
            out += more
        return self._account(bytes(out))

    def _zstd_step(self, data: bytes) -> bytes:
        # The streaming object returns all output of a call at once, and a zstd block
        # of 4 bytes can stand for 128 KiB: feed small pieces, so one step overshoots
        # the cap by at most a few MiB.
        out = bytearray()
        for i in range(0, len(data), 256):
            out += self._zs.decompress(data[i : i + 256])
            if self.produced + len(out) > self.max_output:
                break
        return self._account(bytes(out))

    def finish(self) -> bytes:
        if self.coding in ("gzip", "x-gzip", "deflate") and self._z is not None:
            if not self._z.eof:
                raise DecodeError("truncated deflate stream")
            return self._account(self._z.flush())
        if self.coding == "br" and not self._b.is_finished():
            raise DecodeError("truncated brotli stream")
        return b""


def decoder(coding: str, max_output: int) -> Decoder:
    return Decoder(coding.lower(), max_output)
