"""The guard: what a client may send before anything is looked up or forwarded.

Owns the rules the recv checks (edge.features.recv, which holds their order and runs
them for the pipeline and the hit fast path alike) apply to a parsed request — framing the HTTP
parser lets through (versions, transfer codings, bodies on GET), header totals,
methods, the authority (Host, which every listener holds to `check_host`), the request
target (normalised; traversal refused), fields never forwarded, rate limits — and the
bounded reading of request bodies (size and time). The connection-level limits
(request line, header count and size, slowloris, keep-alive, connections per
client) live with the connection handler in edge.server.http1; request rules in edge.features.waf.

Everything but `read_body` is pure: `now` is passed in. A refusal carries a plain
reason, never request bytes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from edge.rfc.policy import Headers, split_list


@dataclass(frozen=True)
class Refusal:
    """A request the node will not handle: the status, a plain reason for the client,
    whether to close the connection, and what a 405 or 429 must add."""

    status: int
    reason: str
    close: bool = False
    allow: str = ""
    retry_after: int = 0
    log: str = ""  # what the node's log says of it besides the reason (never sent)


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


# -- framing --------------------------------------------------------------------------

#: Methods whose request must not carry content here: a GET or HEAD body has no
#: defined meaning (RFC 9110 Section 9.3.1) and would let a request be cached by
#: what the key does not see, or smuggle a second request past a lenient origin.
NO_BODY_METHODS = frozenset({"GET", "HEAD"})


def check_framing(
    version: tuple[int, int],
    method: str,
    headers: Headers,
    *,
    max_body: int,
    max_header_bytes: int,
) -> Refusal | None:
    """What aiohttp's strict parser (llhttp) accepts but a proxy must still refuse.

    llhttp already refuses Content-Length with Transfer-Encoding, duplicated or listed
    Content-Length, a Transfer-Encoding not ending in chunked, obs-fold, bare CR or LF
    and bad chunk sizes (edge checks that in tests). The framing of anything forwarded
    is the node's own: bodies are read whole and re-framed with a Content-Length.
    """
    if version not in ((1, 0), (1, 1), (2, 0), (3, 0)):
        # RFC 9110 Section 15.6.6; HTTP/0.9 cannot carry a status line at all. HTTP/2
        # and HTTP/3 come framed by edge.server.http2 (h2 refuses Transfer-Encoding and
        # checks Content-Length against the DATA frames) and edge.server.http3.
        if version[0] == 0:
            return Refusal(400, "HTTP/0.9 is not supported", close=True)
        return Refusal(505, "only HTTP/1.0, HTTP/1.1 and HTTP/2 are served here", close=True)
    te = headers.getall("Transfer-Encoding", [])
    if te:
        if version == (1, 0):
            # RFC 9112 Section 6.1: treat as faulty framing, close the connection.
            return Refusal(400, "Transfer-Encoding in an HTTP/1.0 request", close=True)
        codings = [c.lower() for c in split_list(te)]
        if codings != ["chunked"]:
            # RFC 9112 Section 6.1: a transfer coding the server does not understand.
            return Refusal(501, "only the chunked transfer coding is accepted", close=True)
    lengths = headers.getall("Content-Length", [])
    if len(lengths) > 1 or (lengths and te):
        return Refusal(400, "ambiguous message framing", close=True)
    length = int(lengths[0]) if lengths and lengths[0].isdigit() else 0
    if method in NO_BODY_METHODS and (length > 0 or te):
        return Refusal(400, f"a {method} request must not have a body", close=True)
    if length > max_body:
        return Refusal(413, "request body too large", close=True)
    total = sum(len(k) + len(v) + 4 for k, v in headers.items())
    if total > max_header_bytes:
        return Refusal(431, "request header fields too large", close=True)
    expect = headers.get("Expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        return Refusal(417, "only Expect: 100-continue is understood")
    return None


def check_method(method: str, allowed: Sequence[str]) -> Refusal | None:
    """RFC 9110 Section 15.5.6: a method this node does not serve: 405 with Allow.
    "*" in `allowed` admits any method but TRACE (it would echo the request's
    fields, cookies included) and CONNECT (a cache node tunnels nothing)."""
    if method in allowed or ("*" in allowed and method not in ("TRACE", "CONNECT")):
        return None
    return Refusal(405, f"method {method} is not allowed", allow=allow_field(allowed))


_COMMON_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allow_field(allowed: Sequence[str]) -> str:
    """The Allow field for a 405: the allowed methods; "*" spelled as the common ones
    (Allow lists methods, it has no wildcard)."""
    names: list[str] = []
    for m in allowed:
        for name in _COMMON_METHODS if m == "*" else (m,):
            if name not in names:
                names.append(name)
    return ", ".join(names)


# -- the request target ---------------------------------------------------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


_NON_ASCII = re.compile(rb"[\x80-\xff]")
# Searched, not walked octet by octet in Python: every request's target passes here.
_CTL_OR_SPACE = re.compile(rb"[\x00-\x20\x7f]")
_CTL = re.compile(r"[\x00-\x1f\x7f]")


def _normalise_escapes(part: bytes) -> bytes:
    """RFC 3986 Section 6.2.2: escapes of unreserved characters decoded, the others
    in upper case, and raw non-ASCII octets (which a URI cannot hold) escaped, so
    equivalent forms share one key and reach the origin as one."""

    def fix(match: re.Match[bytes]) -> bytes:
        octet = int(match.group(1), 16)
        if octet in _UNRESERVED:
            return bytes((octet,))
        return b"%" + match.group(1).upper()

    escaped = _ESCAPE.sub(fix, part)
    return _NON_ASCII.sub(lambda m: b"%%%02X" % m.group(0)[0], escaped)


@dataclass(frozen=True)
class Target:
    """A request target in origin-form, normalised: what is forwarded and keyed."""

    path: str
    query: str | None  # None: no '?' at all

    @property
    def path_qs(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"


def normalise_target(raw: str) -> Target | Refusal:
    """The path and query of a request target, or why it is refused.

    Refused (400): anything but origin-form (absolute-form is split by the caller),
    control characters, NUL, backslashes and dot-segments in any spelling (`..`,
    `%2e%2e`, `.%2E`): an origin that resolves them could serve a file the key does not
    name. Invalid escapes (`%zz`) are refused too.
    """
    if not raw.startswith("/"):
        return Refusal(400, "the request target must be a path")
    data = raw.encode("utf-8", "surrogateescape")
    if _CTL_OR_SPACE.search(data):
        return Refusal(400, "control characters in the request target")
    if _BAD_ESCAPE.search(data):
        return Refusal(400, "invalid percent-encoding in the request target")
    path, sep, query = data.partition(b"?")
    decoded = unquote(path.decode("latin-1"), encoding="latin-1")
    if "\x00" in decoded or "\\" in decoded:
        return Refusal(400, "NUL or backslash in the path")
    segments = decoded.split("/")
    if "." in segments or ".." in segments:
        return Refusal(400, "dot-segments in the path")
    if _CTL.search(decoded):
        return Refusal(400, "control characters in the path")
    npath = _normalise_escapes(path).decode("latin-1")
    nquery = _normalise_escapes(query).decode("latin-1") if sep else None
    return Target(npath, nquery)


# -- the authority (Host) ---------------------------------------------------------------

# RFC 3986 Section 3.2.2: a reg-name (unreserved and sub-delims; no escapes: a DNS
# name holds none) or an IP literal in brackets; Section 3.2.3: a port of digits.
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=-]+")


def authority(text: str) -> str:
    """host[:port] written one way, or ValueError whose message says what is wrong as
    a predicate ("has a bad port"). The one rule for a Host field, absolute-form's
    authority and the authority of a purge URL.

    Anything but host[:port] (RFC 3986 Section 3.2) is refused: spaces, "/", "?", "#"
    (they would move part of the target into the key's authority), "@" (user
    information), an empty host, a port that is not 1..65535. An empty port is dropped
    and a port's leading zeros too (RFC 3986 Section 6.2.3), so "h:", "h" and "h:080"
    name one host, as "h:8080" and "h:08080" do.
    """
    if text.startswith("["):
        end = text.find("]") + 1
        host, rest = (text[:end], text[end:]) if end else (text, "")
    else:
        host, colon, port = text.partition(":")
        rest = colon + port
    if not host:
        raise ValueError("has no host")
    if not _HOST.fullmatch(host):
        raise ValueError("has a host that is not an ASCII name or an IP literal")
    if rest and not rest.startswith(":"):
        raise ValueError("has a bad port")
    port = rest[1:]
    if not port:
        return host
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise ValueError("has a bad port")
    return f"{host}:{int(port)}"


def check_authority(text: str) -> str | Refusal:
    """A Host field's value (or absolute-form's authority) as edge keys and forwards
    it, or a 400 (RFC 9112 Section 3.2: a Host with an invalid value is refused)."""
    try:
        return authority(text)
    except ValueError as exc:
        return Refusal(400, f"the Host {exc}", close=True)


def check_host(values: Sequence[str], version: tuple[int, int]) -> str | Refusal:
    """The request's authority from its Host field lines, or a 400 (RFC 9112 Section
    3.2): HTTP/1.1 needs exactly one; HTTP/1.0 may have none (then ""), never two."""
    if len(values) > 1:
        return Refusal(400, "more than one Host field", close=True)
    if not values:
        if version >= (1, 1):
            return Refusal(400, "an HTTP/1.1 request needs a Host field", close=True)
        return ""
    return check_authority(values[0])


def without_underscores(fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Request fields whose names hold "_" left out of what is forwarded, as nginx
    does by default (underscores_in_headers off): a CGI-style origin reads
    `X_Original_URL` as X-Original-URL (both become HTTP_X_ORIGINAL_URL), so that
    spelling would carry an unkeyed field past the list that strips it. RFC 9110
    Section 5.1 allows "_" in a name; no field edge or an origin needs uses it."""
    return [(name, value) for name, value in fields if "_" not in name]


def key_query(query: str | None, mode: str, ignore: Sequence[str]) -> str | None:
    """The query as the cache key sees it: kept, with its parameters sorted, or
    ignored; parameters named in `ignore` (a trailing * matches a prefix) left out."""
    if query is None or mode == "ignore":
        return None
    if not ignore and mode == "keep":
        return query
    params = [p for p in query.split("&") if p]
    if ignore:
        exact = {i for i in ignore if not i.endswith("*")}
        prefixes = tuple(i[:-1] for i in ignore if i.endswith("*"))

        def dropped(param: str) -> bool:
            name = unquote(param.split("=", 1)[0])
            return name in exact or (bool(prefixes) and name.startswith(prefixes))

        params = [p for p in params if not dropped(p)]
    if mode == "sort":
        params.sort()
    return "&".join(params) if params else None


# -- rate limits ----------------------------------------------------------------------


@dataclass
class Bucket:
    tokens: float
    at: float


@dataclass(frozen=True)
class RateClass:
    """A token bucket per client for requests matching host and path (regex)."""

    name: str
    rate: float
    burst: float
    host: str = "*"
    path: re.Pattern[str] | None = None

    def matches(self, host: str, path: str) -> bool:
        if self.host != "*":
            if self.host.startswith("*."):
                if not host.endswith(self.host[1:]):
                    return False
            elif host != self.host:
                return False
        return self.path is None or self.path.search(path) is not None


def rate_classes(rate: float, burst: float, classes: Iterable[dict[str, Any]]) -> list[RateClass]:
    """The configured classes (first match wins), then the node-wide default; a
    ValueError names what is wrong."""
    out = []
    for item in classes:
        if not isinstance(item, dict):
            raise ValueError("each rate class is a table {name, host, path, rate, burst}")
        unknown = set(item) - {"name", "host", "path", "rate", "burst"}
        if unknown:
            raise ValueError(f"unknown rate class setting: {sorted(unknown)[0]}")
        name = str(item.get("name", f"class{len(out) + 1}"))
        r = item.get("rate")
        if isinstance(r, bool) or not isinstance(r, int | float) or r <= 0:
            raise ValueError(f"rate class {name}: rate must be a number > 0")
        b = item.get("burst", 2 * r)
        if isinstance(b, bool) or not isinstance(b, int | float) or b < 1:
            raise ValueError(f"rate class {name}: burst must be a number >= 1")
        try:
            path = re.compile(str(item["path"])) if "path" in item else None
        except re.error as exc:
            raise ValueError(f"rate class {name}: bad path pattern: {exc}") from exc
        out.append(RateClass(name, float(r), float(b), str(item.get("host", "*")).lower(), path))
    if rate > 0:
        out.append(RateClass("default", rate, burst or 2 * rate))
    return out


class RateLimiter:
    """Token buckets per (class, client address); the oldest idle buckets are dropped
    beyond `max_clients` so a flood of addresses cannot grow memory without bound
    (a dropped bucket was full or nearly so: refilling is what made it old)."""

    def __init__(self, classes: Sequence[RateClass], max_clients: int = 100_000) -> None:
        self.classes = list(classes)
        self.max_clients = max_clients
        self._buckets: OrderedDict[tuple[str, str], Bucket] = OrderedDict()

    def __bool__(self) -> bool:
        return bool(self.classes)

    def take(self, client: str, host: str, path: str, now: float) -> float:
        """Take a token for this request: 0 if allowed, else seconds until one is free."""
        for cls in self.classes:
            if cls.matches(host, path):
                break
        else:
            return 0.0
        key = (cls.name, client)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = Bucket(cls.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(cls.burst, bucket.tokens + (now - bucket.at) * cls.rate)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / cls.rate


def too_many(wait: float) -> Refusal:
    """RFC 6585 Section 4: 429 with Retry-After in whole seconds (at least 1)."""
    return Refusal(429, "too many requests", retry_after=max(1, int(wait + 0.999)))


# -- request bodies -------------------------------------------------------------------


async def read_body(
    content: asyncio.StreamReader | Any,
    *,
    max_size: int,
    timeout: float,
    min_rate: int,
    clock: Any = time.monotonic,
) -> bytes:
    """Read a request body whole, within `max_size` bytes and in time: `timeout`
    seconds, plus one for every `min_rate` bytes received (Apache's mod_reqtimeout
    rule), so a large upload at a fair rate finishes and a trickle does not hold a
    connection and a buffer open. Raises Refused with 413 or 408."""
    started = clock()
    received = 0
    chunks: list[bytes] = []
    while True:
        allowed = timeout + (received / min_rate if min_rate > 0 else 0)
        remaining = started + allowed - clock()
        if remaining <= 0:
            raise Refused(Refusal(408, "the request body was not sent in time", close=True))
        try:
            chunk = await asyncio.wait_for(content.readany(), remaining)
        except TimeoutError:
            raise Refused(
                Refusal(408, "the request body was not sent in time", close=True)
            ) from None
        if not chunk:
            return b"".join(chunks)
        received += len(chunk)
        if received > max_size:
            raise Refused(Refusal(413, "request body too large", close=True))
        chunks.append(chunk)
