"""The hit fast path: small, fresh, plain cache hits answered from memory by the
connection (edge.server.http1, edge.server.http2) from the parsed head, before any request
value is built or a task woken, with the bytes (HTTP/2: the fields) the general path would
have sent.

Owns the hot tier (responses the general pipeline has just delivered as plain hits,
kept as pre-rendered header blocks and bodies) and the decision, per parsed request,
whether one of them may answer it. Everything else goes the general way.

How a response gets here: when the pipeline serves a fresh stored 200 from a small
body file, as stored, to a GET whose fields are all ordinary (edge.pipeline.transaction calls
`HotTier.offer` with the exact header fields the connection wrote), the head is kept with
the two values that change with time cut out: Age and Cache-Status' ttl. A request
reuses it only if it asks the same: the same target bytes, Host and Accept-Encoding,
no field outside `ORDINARY`, HTTP/1.1 or HTTP/2, GET, no body. So the decisions the
pipeline made after recv for the first request (route, key, Vary, encoding, freshness)
hold for it too. The recv checks are the pipeline's own list (edge.features.recv), run
again per request by the connection (their pure verdicts remembered by the request's
bytes); what else can change is re-checked per request: freshness (from the entry's
clock), the stored variant still being the one in the store, purges (which empty the
tier).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.rfc import policy

#: Request fields that change nothing about a stored hit. Any other field (Range,
#: conditionals, Cache-Control, Pragma, Authorization, Cookie, X-Forwarded-For,
#: CDN-Loop, Content-Length, ...) sends the request the general way.
ORDINARY = frozenset(
    {
        b"host",
        b"user-agent",
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"connection",
        b"referer",
    }
)

#: Bodies up to this size are kept in memory (the general path's single-write size).
MAX_BODY = 128 << 10
MAX_ENTRIES = 4096
#: Request heads up to this size are remembered whole (edge.server.http1), to skip parsing.
MAX_REQUEST_BYTES = 4096


@dataclass
class Hot:
    """One pre-rendered response: head before Age, Age, head between Age and ttl,
    ttl, rest of the head; and the body."""

    key: str
    variant: str
    path: str  # the normalised path, for rate classes
    before_age: bytes
    between: bytes
    after_ttl: bytes
    body: bytes
    age0: float  # the response's age at `at`
    at: float  # wall clock when it was captured
    lifetime: float
    version: Hashable = None  # the store's version when the variant was last seen


def render(hot: Hot, now: float, close: bool = False) -> bytes | None:
    """The response for `now`, or None once it is no longer fresh; `close` adds the
    Connection: close edge.server.http1 writes last for a request that asked to close."""
    age = hot.age0 + (now - hot.at)
    if not age < hot.lifetime:
        return None
    return b"".join(
        (
            hot.before_age,
            str(min(int(age), policy.MAX_DELTA)).encode(),
            hot.between,
            str(int(hot.lifetime - age)).encode(),
            hot.after_ttl,
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            hot.body,
        )
    )


class HotTier:
    """The hot responses of one node, by (target, Host, Accept-Encoding), bounded
    in count (least recently used out)."""

    def __init__(
        self, is_current: Callable[[str, str], bool], version: Callable[[], Hashable]
    ) -> None:
        """`is_current(key, variant)`: is that stored variant still in the store?
        `version()`: the store's change token (edge.store.disk.Store.version); while it
        stands still, what was current stays current and is not looked up again."""
        self._entries: OrderedDict[tuple[bytes, bytes, bytes], Hot] = OrderedDict()
        self._current = is_current
        self._version = version

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def offer(
        self,
        request_key: tuple[bytes, bytes, bytes],
        entry_key: str,
        variant: str,
        path: str,
        status_line: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        age: float,
        lifetime: float,
        now: float,
    ) -> None:
        """Keep a delivered hit: `headers` exactly as written, Age and a Cache-Status
        ending in this node's `ttl=N` among them."""
        if len(body) > MAX_BODY:
            return
        lines = []
        age_at = ttl_at = -1
        for name, value in headers:
            lower = name.lower()
            if lower == "connection":
                continue  # about the connection it was captured on: set per request
            if lower == "age":
                age_at = len(lines)
            elif lower == "cache-status":
                if ttl_at >= 0 or "; ttl=" not in value:
                    return
                ttl_at = len(lines)
            lines.append(f"{name}: {value}\r\n")
        if age_at < 0 or ttl_at < 0 or ttl_at < age_at:
            return
        head = [f"{status_line}\r\n", *lines]
        age_line = 1 + age_at
        ttl_line = 1 + ttl_at
        before_age = "".join(head[:age_line]) + "Age: "
        cache_status = head[ttl_line]
        cut = cache_status.rindex("; ttl=") + len("; ttl=")
        end = cut
        while end < len(cache_status) and cache_status[end].isdigit():
            end += 1
        between = "\r\n" + "".join(head[age_line + 1 : ttl_line]) + cache_status[:cut]
        after_ttl = cache_status[end:] + "".join(head[ttl_line + 1 :])
        self._entries[request_key] = Hot(
            entry_key,
            variant,
            path,
            before_age.encode("latin-1"),
            between.encode("latin-1"),
            after_ttl.encode("latin-1"),
            body,
            age,
            now,
            lifetime,
            # Not verified yet: the store may have moved since this response's lookup.
            None,
        )
        self._entries.move_to_end(request_key)
        if len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)

    def answer(
        self, request_key: tuple[bytes, bytes, bytes], now: float, close: bool = False
    ) -> tuple[Hot, bytes] | None:
        """The response for a request, if a hot one still stands for it."""
        hot = self._entries.get(request_key)
        if hot is None:
            return None
        data = render(hot, now, close)
        if data is not None:
            version = self._version()
            if version is None or version != hot.version:
                if self._current(hot.key, hot.variant):
                    hot.version = version
                else:
                    data = None
        if data is None:
            del self._entries[request_key]  # stale, replaced or gone: the general way
            return None
        return hot, data


def request_key(
    method: str, version: Any, path: str, raw_headers: Sequence[tuple[bytes, bytes]]
) -> tuple[bytes, bytes, bytes] | None:
    """The hot-tier key of a parsed request, or None when it must go the general way:
    not a plain HTTP/1.1 or HTTP/2 GET, or a field outside ORDINARY. Whether the Host
    and the rest are acceptable is the recv checks' (edge.features.recv) to say. An
    HTTP/2 request (its :authority as Host) asks what the same HTTP/1.1 request would:
    the fields edge.server.http2 writes for a whole 200 are HTTP/1.1's, less the
    connection-specific ones a kept-alive HTTP/1.1 answer does not carry."""
    if method != "GET" or version not in ((1, 1), (2, 0)):
        return None
    host = accept_encoding = b""
    for name, value in raw_headers:
        lower = name.lower()
        if lower not in ORDINARY:
            return None
        if lower == b"host":
            host = value
        elif lower == b"accept-encoding":
            if accept_encoding:
                return None  # several lines: leave the joining to the general path
            accept_encoding = value
        elif lower == b"connection" and value.lower() not in (b"keep-alive", b"close"):
            return None
    return (path.encode("utf-8", "surrogateescape"), host, accept_encoding)
