"""edge.features.recv: one list of recv checks, run whole by the pipeline and by the
hit fast path (`Remembered`, which edge.server.http1 asks). Each check is given a
request that fails it alone; both runs must name that check and give its refusal.
No sockets, no sleeps: the rate limiter's clock is passed in."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from edge.features import guard, recv
from edge.features.waf import DEFAULT_RULES, RuleSet
from edge.server.http1 import fields_of

PEER = "192.0.2.7"
NOW = 1000.0


def settings(**changes: object) -> recv.Settings:
    base = recv.Settings(
        max_body=1 << 20,
        max_header_bytes=2048,
        allowed_methods=("GET", "HEAD"),
        rules=RuleSet(DEFAULT_RULES),
        limiter=guard.RateLimiter([guard.RateClass("a", rate=0.001, burst=1, host="a.test")]),
        cdn_name="cdn",
        node="e1",
        loop_allowance=0,
        serves=lambda host: host in ("a.test", "a.test:8080"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def head(*fields: bytes, target: str = "/book/1", host: bytes = b"a.test") -> tuple:
    """Raw fields as the connection hands them over: a plain request for a.test."""
    return ((b"Host", host), (b"User-Agent", b"reader/1"), *fields)


def inbound(raw: tuple, target: str = "/book/1", method: str = "GET") -> recv.Inbound:
    return recv.Inbound(method, (1, 1), target, fields_of(raw), "127.0.0.1:8080")


@dataclasses.dataclass
class Case:
    """A request failing one check: what the connection parsed, and the settings."""

    raw: tuple
    target: str = "/book/1"
    method: str = "GET"
    settings: Callable[[], recv.Settings] = settings
    before: Callable[[recv.Settings], None] = lambda s: None  # e.g. spend the client's tokens
    status: int = 0


def _spend(s: recv.Settings) -> None:
    assert s.limiter is not None
    assert s.limiter.take(PEER, "a.test", "/book/1", NOW) == 0


#: One request per check, failing it and no other (named by the check).
CASES: dict[str, Case] = {
    "framing": Case(head((b"Accept", b"x" * 3000)), status=431),
    "host": Case(head((b"Host", b"a.test")), status=400),
    "target": Case(head(), target="/book/../etc/1", status=400),
    "rate": Case(head(), before=_spend, status=429),
    "method": Case(head(), settings=lambda: settings(allowed_methods=("HEAD",)), status=405),
    "rules": Case(head((b"User-Agent", b"${jndi:ldap://x/a}")), status=403),
    "loop": Case(head((b"CDN-Loop", b"e1")), status=508),
    "route": Case(head(host=b"b.test"), status=421),
}


def test_every_check_has_a_case() -> None:
    assert [c.name for c in recv.CHECKS] == list(CASES)


def test_a_plain_request_passes_both_runs() -> None:
    s = settings()
    req = inbound(head())
    assert recv.run(req, s, client=PEER, now=NOW) is None
    assert (req.host, req.path) == ("a.test", guard.Target("/book/1", None))
    failed, fast = recv.Remembered(settings()).admit(
        ("/book/1", head()), lambda: inbound(head()), PEER, NOW
    )
    assert failed is None and (fast.host, fast.path) == (req.host, req.path)


@pytest.mark.parametrize("check", [c.name for c in recv.CHECKS])
def test_the_fast_path_refuses_what_the_pipeline_refuses(check: str) -> None:
    case = CASES[check]
    general, fast = case.settings(), case.settings()
    case.before(general)
    case.before(fast)
    failed = recv.run(inbound(case.raw, case.target, case.method), general, client=PEER, now=NOW)
    assert failed is not None and failed.check == check and failed.refusal.status == case.status
    declined, _ = recv.Remembered(fast).admit(
        (case.method, case.target, case.raw),
        lambda: inbound(case.raw, case.target, case.method),
        PEER,
        NOW,
    )
    assert declined == failed


def test_remembered_verdicts_take_no_token_for_a_request_refused_anyway() -> None:
    """The fast path declines a request the rules refuse before the rate limit counts
    it: the pipeline then counts it, once (the client keeps the rest of its burst)."""
    s = settings(
        limiter=guard.RateLimiter([guard.RateClass("a", rate=0.001, burst=2, host="a.test")])
    )
    raw = head((b"User-Agent", b"${jndi:ldap://x/a}"))
    fast = recv.Remembered(s)
    failed, _ = fast.admit(("/book/1", raw), lambda: inbound(raw), PEER, NOW)
    assert failed is not None and failed.check == "rules"
    assert recv.run(inbound(raw), s, client=PEER, now=NOW) == failed  # takes one token
    assert recv.run(inbound(head()), s, client=PEER, now=NOW) is None  # the second
    assert recv.run(inbound(head()), s, client=PEER, now=NOW).check == "rate"  # type: ignore[union-attr]


def test_the_rate_class_is_the_settled_authority() -> None:
    """ "a.test:" and "a.test" name one host (edge.features.guard.authority): the rate
    class for a.test counts both spellings, on either path."""
    s = settings()
    fast = recv.Remembered(s)
    raw = head(host=b"a.test:")
    assert fast.admit(("/book/1", raw), lambda: inbound(raw), PEER, NOW)[0] is None
    failed, _ = fast.admit(("/book/1", raw), lambda: inbound(raw), PEER, NOW)
    assert failed is not None and failed.check == "rate"


def test_header_rules_judge_the_text_the_pipeline_judges() -> None:
    """A field's bytes are read as UTF-8 by both: "\\xc2\\xa0" is a no-break space,
    which the Shellshock rule's \\s matches."""
    raw = head((b"User-Agent", b"()\xc2\xa0{ :; }; /bin/id"))
    failed, _ = recv.Remembered(settings()).admit(("/book/1", raw), lambda: inbound(raw), PEER, 0)
    assert failed is not None and failed.refusal.status == 403
    assert recv.run(inbound(raw), settings(), client=PEER, now=NOW) == failed


def test_pure_verdicts_are_remembered_by_the_request_and_the_rate_is_not() -> None:
    s = settings()
    fast = recv.Remembered(s)
    made: list[int] = []

    def make() -> recv.Inbound:
        made.append(1)
        return inbound(head())

    assert fast.admit("k", make, PEER, NOW)[0] is None
    failed, _ = fast.admit("k", make, PEER, NOW)
    assert len(made) == 1 and failed is not None and failed.check == "rate"
    assert fast.admit("k", make, "192.0.2.8", NOW)[0] is None  # another client's bucket
