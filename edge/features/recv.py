"""The recv checks: the one ordered list of what a request must pass before this node
answers it from its cache or forwards it.

Owns the list (`CHECKS`), its order, what each check reads and settles, and the two
ways it is run: whole, by the pipeline's recv step (edge.pipeline.transaction), and by
the hit fast path (edge.server.http1 with edge.pipeline.fastpath), which answers a hot
hit only when the same list admits it. The rules themselves live in
edge.features.guard (framing, authority, target, methods, rate), edge.features.waf
(request rules), edge.rfc.forwarding (loops, RFC 8586) and the node's routes.

Where the two callers differ it is a parameter of the run, never a second list:
`client`, whom the rate limit counts (the fast path: the peer, as it takes no
forwarding field; the pipeline: the forwarded client behind a trusted proxy), and how
pure verdicts are had (the fast path remembers them by the request's bytes).

Pure but for the rate limiter's buckets: `now` is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from edge.features import guard
from edge.features.guard import Refusal, Target
from edge.features.waf import RuleSet
from edge.rfc import forwarding
from edge.rfc.policy import Headers

#: RFC 9112 Section 3.2.2: absolute-form, as a client talking to a proxy sends it.
_ABSOLUTE_FORM = re.compile(r"^https?://([^/?#@]+)([/?][^#]*)?$", re.IGNORECASE)


@dataclass
class Inbound:
    """A request as the checks see it, and what they settle about it on the way."""

    method: str
    version: tuple[int, int]
    target: str  # the request target as sent
    fields: Headers
    reached: str  # the authority the client connected to (an HTTP/1.0 request without Host)
    # Settled by the checks: the authority (Host, or absolute-form's) and the target,
    # normalised; what later checks, the key and the forwarded request use.
    host: str = ""
    path: Target = field(default_factory=lambda: Target("/", None))
    settled: bool = False  # host and path are the checks' (the target check passed)


@dataclass(frozen=True)
class Settings:
    """The node's settings the checks read."""

    max_body: int
    max_header_bytes: int
    allowed_methods: tuple[str, ...]
    rules: RuleSet | None
    limiter: guard.RateLimiter | None
    cdn_name: str
    node: str
    loop_allowance: int
    #: Whether an origin is configured for a (normalised) host.
    serves: Callable[[str], bool]


#: A check: the request, the settings, whom the rate limit counts, now (monotonic).
Run = Callable[[Inbound, Settings, str, float], Refusal | None]


@dataclass(frozen=True)
class Check:
    name: str
    run: Run
    #: Its verdict follows from the request and the settings alone (so it may be
    #: remembered for the same request bytes); False: it reads state that moves.
    pure: bool


def _framing(req: Inbound, s: Settings, client: str, now: float) -> Refusal | None:
    return guard.check_framing(
        req.version,
        req.method,
        req.fields,
        max_body=s.max_body,
        max_header_bytes=s.max_header_bytes,
    )


def _host(req: Inbound, s: Settings, client: str, now: float) -> Refusal | None:
    host = guard.check_host(req.fields.getall("Host", []), req.version)
    if isinstance(host, Refusal):
        return host
    # HTTP/1.0 without Host: the address the client reached.
    req.host = host or req.reached
    return None


def _target(req: Inbound, s: Settings, client: str, now: float) -> Refusal | None:
    raw = req.target
    if not raw.startswith("/"):
        absolute = _ABSOLUTE_FORM.match(raw)
        if absolute is None:
            return Refusal(400, "the request target must be a path", close=True)
        # RFC 9112 Section 3.2.2: the target's authority replaces Host, checked alike.
        authority = guard.check_authority(absolute.group(1))
        if isinstance(authority, Refusal):
            return authority
        req.host, raw = authority, absolute.group(2) or "/"
        raw = raw if raw.startswith("/") else "/" + raw
    target = guard.normalise_target(raw)
    if isinstance(target, Refusal):
        return target
    req.path, req.settled = target, True
    return None


def _rate(req: Inbound, s: Settings, client: str, now: float) -> Refusal | None:
    # Counted by the settled authority: "h:" and "h:080" are the class of "h" and "h:80".
    if s.limiter:
        wait = s.limiter.take(client, req.host.lower(), req.path.path, now)
        if wait:
            return guard.too_many(wait)
    return None


def _method(req: Inbound, s: Settings, client: str, now: float) -> Refusal | None:
    return guard.check_method(req.method, s.allowed_methods)


def _rules(req: Inbound, s: Settings, client: str, now: float) -> Refusal | None:
    if s.rules is None:
        return None
    rule = s.rules.check(req.host, req.path.path, req.path.query, req.fields)
    if rule is None:
        return None
    return Refusal(403, f"refused by rule {rule.id}", log=f"rule {rule.id} ({rule.message})")


def _loop(req: Inbound, s: Settings, client: str, now: float) -> Refusal | None:
    if forwarding.is_loop(req.fields, cdn_name=s.cdn_name, node=s.node, allowance=s.loop_allowance):
        return Refusal(508, "loop detected (CDN-Loop)")
    return None


def _route(req: Inbound, s: Settings, client: str, now: float) -> Refusal | None:
    if not s.serves(req.host):
        # RFC 9110 Section 15.5.20: not an authority this node answers for. Never a
        # default origin by accident.
        return Refusal(421, "no origin is configured for this host")
    return None


#: The list, in order, cheapest first: framing, then what the later checks read (the
#: authority and the target), the client's rate (before the method and the rules, so
#: probes count against it), the method, the request rules, loops, the route.
CHECKS: tuple[Check, ...] = (
    Check("framing", _framing, pure=True),
    Check("host", _host, pure=True),
    Check("target", _target, pure=True),
    Check("rate", _rate, pure=False),
    Check("method", _method, pure=True),
    Check("rules", _rules, pure=True),
    Check("loop", _loop, pure=True),
    Check("route", _route, pure=True),
)


@dataclass(frozen=True)
class Failed:
    """The first check a request failed, and its refusal."""

    check: str
    refusal: Refusal


def run(
    req: Inbound,
    settings: Settings,
    *,
    client: str,
    now: float,
    checks: tuple[Check, ...] = CHECKS,
) -> Failed | None:
    """Run `checks` in order on `req` (settling its host and path); the first refusal."""
    for check in checks:
        refusal = check.run(req, settings, client, now)
        if refusal is not None:
            return Failed(check.name, refusal)
    return None


_PURE = tuple(c for c in CHECKS if c.pure)
_STATEFUL = tuple(c for c in CHECKS if not c.pure)


class Remembered:
    """The list as the hit fast path runs it: the pure checks' verdicts remembered by
    the request they were given (a client sends the same head again and again; bounded),
    then the others. The fast path never refuses: what it declines the pipeline
    answers by running the whole list. So it asks the pure verdicts first, and a
    request it declines for them has taken nothing from the rate limiter: the
    pipeline counts it, once."""

    def __init__(self, settings: Settings, limit: int = 4096) -> None:
        self.settings = settings
        self.limit = limit
        self._pure: dict[Hashable, tuple[Failed | None, Inbound]] = {}

    def pure(self, key: Hashable, make: Callable[[], Inbound]) -> tuple[Failed | None, Inbound]:
        """The pure checks' verdict for the request `make()` builds, which `key` names
        exactly (its bytes), and the request as they settled it."""
        found = self._pure.get(key)
        if found is None:
            req = make()
            found = (run(req, self.settings, client="", now=0.0, checks=_PURE), req)
            if len(self._pure) >= self.limit:
                self._pure.clear()
            self._pure[key] = found
        return found

    def stateful(self, req: Inbound, client: str, now: float) -> Failed | None:
        """The checks that read moving state, on a request the pure ones admitted."""
        return run(req, self.settings, client=client, now=now, checks=_STATEFUL)

    def admit(
        self, key: Hashable, make: Callable[[], Inbound], client: str, now: float
    ) -> tuple[Failed | None, Inbound]:
        """The fast path's verdict: the first check that refuses, or None."""
        failed, req = self.pure(key, make)
        if failed is None:
            failed = self.stateful(req, client, now)
        return failed, req
