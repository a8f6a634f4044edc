"""A request's field section as HTTP/2 and HTTP/3 carry it, read as the HTTP/1.1-shaped
request the rest of edge works on.

Pure: a list of (name, value) byte pairs in, a `Head` (method, target, authority and
the ordinary fields, a Host first) or a refusal out. The rules are the same in both
protocols (RFC 9113 Section 8.2-8.3, RFC 9114 Section 4.2-4.3); this module decides
nothing about framing, flow control or what is served.

Refused as malformed (RFC 9113 Section 8.1.1, RFC 9114 Section 4.1.2): a missing,
repeated, unknown or late pseudo-header; `:path` empty or not origin-form (but `*` for
OPTIONS); a scheme other than the listener's; uppercase or invalid field names; CR, LF
or NUL in a value, or whitespace around it (RFC 9113 Section 8.2.1, RFC 9110 Section
5.5); connection-specific fields (RFC 9113 Section 8.2.2, RFC 9114 Section 4.2); TE
other than "trailers"; an `:authority` and Host that disagree (one authority for the
cache key); several differing Content-Length values. Refused as too large (RFC 6585
Section 5): more than `max_fields` fields. `trailers_malformed` holds a trailer
section to the same rules, with no pseudo-header at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: RFC 9114 Section 4.2 / RFC 9113 Section 8.2.2: fields that are HTTP/1.1's own.
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)

_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))

#: RFC 9110 Section 5.1 token characters, lowercase only (RFC 9114 Section 4.2).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: RFC 9110 Section 9.1: a method is a token.
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Head:
    """The request head: `fields` are the ordinary fields with Host first (from
    `:authority`), Cookie lines joined (RFC 9114 Section 4.2.1)."""

    method: str
    target: str
    authority: str
    fields: tuple[tuple[bytes, bytes], ...]
    content_length: int | None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request refused before it is served: `status` and a reason for the log."""

    status: int
    reason: str


def read_request(
    fields: Sequence[tuple[bytes, bytes]], *, scheme: str, max_fields: int
) -> Head | Malformed:
    """RFC 9114 Section 4.3.1 (RFC 9113 Section 8.3.1): the request pseudo-header
    fields, then the ordinary ones; see the module's head for what is refused."""
    pseudo: dict[bytes, bytes] = {}
    ordinary: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    hosts: list[bytes] = []
    lengths: set[bytes] = set()
    for name, value in fields:
        bad = _bad_value(name, value)
        if bad is not None:
            return Malformed(400, bad)
        if name.startswith(b":"):
            if ordinary or cookies or hosts:
                return Malformed(400, "a pseudo-header field after the ordinary ones")
            if name not in _REQUEST_PSEUDO:
                return Malformed(400, f"unknown pseudo-header field {_show(name)}")
            if name in pseudo:
                return Malformed(400, f"repeated pseudo-header field {_show(name)}")
            pseudo[name] = value
            continue
        if not _NAME.fullmatch(name):
            return Malformed(400, "a field name that is not a lowercase token")
        if name in CONNECTION_SPECIFIC:
            return Malformed(400, f"connection-specific field {_show(name)}")
        if name == b"te" and value.strip().lower() != b"trailers":
            return Malformed(400, "TE other than trailers")
        if name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            hosts.append(value)
        else:
            if name == b"content-length":
                lengths.add(value.strip())
            ordinary.append((name, value))
    if len(ordinary) + len(cookies) + len(hosts) > max_fields:
        return Malformed(431, "too many request header fields")
    method = pseudo.get(b":method")
    if method is None or not _METHOD.fullmatch(method):
        return Malformed(400, "no valid :method")
    authority = pseudo.get(b":authority")
    if len(hosts) > 1:
        return Malformed(400, "more than one Host field")
    if authority is not None and hosts and hosts[0].lower() != authority.lower():
        # RFC 9114 Section 4.3.1: both present, they MUST agree.
        return Malformed(400, ":authority and Host disagree")
    authority = authority if authority is not None else (hosts[0] if hosts else None)
    if not authority:
        return Malformed(400, "no :authority")
    if method == b"CONNECT":
        # RFC 9114 Section 4.4: CONNECT names no scheme or path; its target is the authority.
        if b":scheme" in pseudo or b":path" in pseudo:
            return Malformed(400, "CONNECT with :scheme or :path")
        target = authority
    else:
        if pseudo.get(b":scheme") != scheme.encode():
            return Malformed(400, f":scheme must be {scheme}")
        path = pseudo.get(b":path", b"")
        if not (path.startswith(b"/") or (path == b"*" and method == b"OPTIONS")):
            return Malformed(400, ":path must be a path")
        target = path
    if len(lengths) > 1:
        return Malformed(400, "Content-Length values disagree")
    length = None
    if lengths:
        (text,) = lengths
        if not text.isdigit():
            return Malformed(400, "Content-Length is not a number")
        length = int(text)
        # Repeated equal values are one (RFC 9110 Section 8.6).
        ordinary = [(n, v) for n, v in ordinary if n != b"content-length"]
        ordinary.append((b"content-length", text))
    head_fields = [(b"host", authority), *ordinary]
    if cookies:
        head_fields.append((b"cookie", b"; ".join(cookies)))
    return Head(
        method=method.decode("ascii"),
        target=target.decode("utf-8", "surrogateescape"),
        authority=authority.decode("latin-1"),
        fields=tuple(head_fields),
        content_length=length,
    )


def trailers_malformed(fields: Sequence[tuple[bytes, bytes]]) -> str | None:
    """Why a trailer section is malformed (RFC 9113 Section 8.1, RFC 9114 Section
    4.1.2: no pseudo-header; names and values as in a header section), None if not."""
    for name, value in fields:
        if name.startswith(b":"):
            return "a pseudo-header field in trailers"
        if not _NAME.fullmatch(name):
            return "a field name that is not a lowercase token"
        bad = _bad_value(name, value)
        if bad is not None:
            return bad
    return None


def _bad_value(name: bytes, value: bytes) -> str | None:
    if b"\r" in value or b"\n" in value or b"\0" in value:
        return "CR, LF or NUL in a field value"
    if value and (value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t")):
        return f"whitespace around the value of {_show(name)}"
    return None


def _show(name: bytes) -> str:
    return name[:40].decode("latin-1")
