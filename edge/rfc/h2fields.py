"""RFC 9113 Section 8.2 and 8.3: when an HTTP/2 request's header block is malformed.

Pure: a decoded header block in, the reason it is malformed (or None) out. A malformed
request is a stream error of type PROTOCOL_ERROR (RFC 9113 Section 8.1.1): edge.server.http2
resets that stream and serves the connection's others, where the h2 library's own
checks would end the whole connection. Nothing here is forwarded anywhere: a block
that passes is what edge.server.http2 turns into a request.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: RFC 9110 Section 5.1: a field name is a token; RFC 9113 Section 8.2.1: in lower case.
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
#: RFC 9113 Section 8.2.1: NUL, CR and LF are never valid in a value.
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_WHITESPACE = (0x20, 0x09)

#: RFC 9113 Section 8.2.2: connection-specific fields.
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade")
)
#: RFC 9113 Section 8.3.1: the request pseudo-header fields.
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))


def malformed(block: Sequence[tuple[bytes, bytes]], *, trailers: bool = False) -> str | None:
    """Why a request's header block (or its trailers) is malformed, None when it is not.

    RFC 9113 Section 8.2.1: names in lower case and tokens; values without NUL, CR or
    LF, nor whitespace at either end. Section 8.2.2: no connection-specific field, TE
    only as "trailers". Section 8.3: pseudo-fields before the others, each once, only
    the request's four, none in trailers; :method always, :scheme and a non-empty
    :path unless CONNECT (which has :authority and neither). Section 8.3.1: a Host
    beside :authority names the same authority (one authority for the cache key)."""
    seen: dict[bytes, bytes] = {}
    regular = False
    host: bytes | None = None
    for name, value in block:
        if name.startswith(b":"):
            if trailers:
                return "a pseudo-header field in trailers"  # Section 8.1
            if regular:
                return f"pseudo-header field {_show(name)} after a regular field"
            if name not in REQUEST_PSEUDO:
                return f"pseudo-header field {_show(name)} is not a request's"
            if name in seen:
                return f"pseudo-header field {_show(name)} repeated"
            seen[name] = value
        else:
            regular = True
            if not _NAME.fullmatch(name):
                return f"field name {_show(name)} is not a lower-case token"
            if name in CONNECTION_SPECIFIC:
                return f"connection-specific field {_show(name)}"
            if name == b"te" and value.strip().lower() != b"trailers":
                return "TE other than trailers"
            if name == b"host":
                if host is not None:
                    return "more than one Host field"
                host = value
        if _BAD_VALUE.search(value):
            return f"NUL, CR or LF in the value of {_show(name)}"
        if value and (value[0] in _WHITESPACE or value[-1] in _WHITESPACE):
            return f"whitespace around the value of {_show(name)}"
    if trailers:
        return None
    method = seen.get(b":method")
    if not method:
        return "no :method"
    authority = seen.get(b":authority")
    if method == b"CONNECT":
        if b":scheme" in seen or b":path" in seen or not authority:
            return "CONNECT with :scheme or :path, or without :authority"
        return None
    if not seen.get(b":scheme"):
        return "no :scheme"
    path = seen.get(b":path")
    if not path:
        return "no :path, or an empty one"
    if not path.startswith(b"/") and not (path == b"*" and method == b"OPTIONS"):
        return ":path is neither origin-form nor * for OPTIONS"
    if authority is None and host is None:
        return "neither :authority nor Host"
    if authority is not None and host is not None and authority.lower() != host.lower():
        return "Host disagrees with :authority"
    return None


def _show(name: bytes) -> str:
    """A field name for a log line, cut short and without control characters."""
    return repr(name[:40].decode("latin-1"))
