"""RFC 9111 (HTTP Caching) as pure functions, for a shared cache.

This module owns every caching *decision*: parsing Cache-Control and its targeted
variants (RFC 9213 CDN-Cache-Control, Surrogate-Control), storability, freshness
lifetime, current age, whether a stored response may be used or served stale, Vary
matching, building a validation request, updating stored headers from a 304, and
which URLs an unsafe method invalidates. It must not do I/O, read the clock or import
aiohttp/diskcache: `now` and every time value are passed in (seconds since the epoch),
so every rule here is deterministic and tested on its own.

Headers are passed as any multi-mapping with case-insensitive `getall` (multidict's
CIMultiDict works), so repeated field lines are seen as the wire had them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urljoin, urlsplit

SPEC = "https://www.rfc-editor.org/rfc/rfc9111"

#: RFC 9111 Section 1.2.2: a delta-seconds too large to represent is 2^31.
MAX_DELTA = 2147483648

#: RFC 9110 Section 5.6.3: optional whitespace is SP and HTAB, nothing else. str.strip()
#: would also take NBSP, vertical tab, the C0 separators and more, and so accept
#: `max-age=60\x0b` or `5\xa0` as valid where the grammar does not.
OWS = " \t"


class Headers(Protocol):
    """The read side of a case-insensitive multi-mapping (multidict.CIMultiDict)."""

    def getall(self, key: str, default: list[str] = ...) -> list[str]: ...

    def get(self, key: str, default: str | None = None) -> str | None: ...

    def __contains__(self, key: object) -> bool: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


# --------------------------------------------------------------------------- parsing


def parse_delta_seconds(value: str | None) -> int | None:
    """RFC 9111 Section 1.2.2: Delta Seconds.

    A non-negative integer of digits only; anything else (sign, decimal point,
    quotes, empty) is invalid and returns None. Values beyond 2^31 saturate.
    """
    if value is None or not value or not value.isascii() or not value.isdigit():
        return None
    # Eleven digits or more are beyond 2^31 whatever they say; int() would also refuse
    # a string of thousands of digits (Python's integer-conversion limit).
    significant = value.lstrip("0") or "0"
    return MAX_DELTA if len(significant) > 10 else min(int(significant), MAX_DELTA)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def split_list(values: Iterable[str]) -> list[str]:
    """RFC 9110 Section 5.6.1: split field lines into list members.

    Commas inside quoted strings do not split; empty members are dropped, and OWS
    around a member (Section 5.6.3: SP and HTAB only) is removed.
    """
    members: list[str] = []
    for line in values:
        if '"' not in line:
            # No quoted string, so no comma is quoted and nothing is escaped: a plain
            # split says the same as the walk below, at a fraction of its cost (every
            # list field of every request and response passes here).
            for part in line.split(","):
                member = part.strip(OWS)
                if member:
                    members.append(member)
            continue
        current: list[str] = []
        in_quotes = escaped = False
        for ch in line:
            if escaped:
                current.append(ch)
                escaped = False
            elif ch == "\\" and in_quotes:
                current.append(ch)
                escaped = True
            elif ch == '"':
                current.append(ch)
                in_quotes = not in_quotes
            elif ch == "," and not in_quotes:
                member = "".join(current).strip(OWS)
                if member:
                    members.append(member)
                current = []
            else:
                current.append(ch)
        member = "".join(current).strip(OWS)
        if member:
            members.append(member)
    return members


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


@dataclass(frozen=True)
class CacheControl:
    """Parsed Cache-Control directives (RFC 9111 Section 5.2).

    `directives` maps each lower-cased directive name to its (unquoted) argument, or
    None when it had none. `conflicts` lists names that appeared more than once with
    different arguments: per Section 4.2.1 such a response is treated as stale.
    """

    directives: dict[str, str | None] = field(default_factory=dict)
    conflicts: frozenset[str] = frozenset()
    quoted: frozenset[str] = frozenset()

    def __contains__(self, name: str) -> bool:
        return name in self.directives

    def delta(self, name: str) -> int | None:
        """A delta-seconds argument, or None if absent or invalid.

        Section 5.2: senders generate the token form, but a recipient ought to accept
        the quoted form too, so `max-age="60"` is 60.
        """
        if name not in self.directives:
            return None
        return parse_delta_seconds(self.directives[name])

    def invalid_delta(self, name: str) -> bool:
        """The directive is present but its argument is unusable (or conflicting)."""
        return name in self.directives and (self.delta(name) is None or name in self.conflicts)

    def field_names(self, name: str) -> list[str] | None:
        """Section 5.2.2.4/5.2.2.7: qualified no-cache/private list field names."""
        if name not in self.directives or self.directives[name] is None:
            return None
        return [f.strip().lower() for f in (self.directives[name] or "").split(",") if f.strip()]


#: Parsed Cache-Control values by their field lines: a response's field is parsed by
#: the store decision, the freshness rules and delivery, and most origins send a few
#: distinct values. Bounded; a CacheControl is never changed after it is made.
_CC_MEMO: dict[tuple[str, ...], CacheControl] = {}
_CC_MEMO_MAX = 1024


def parse_cache_control(values: Iterable[str]) -> CacheControl:
    """RFC 9111 Section 5.2: Cache-Control.

    Directive names are case-insensitive (Section 5.2); arguments may be tokens or
    quoted strings, and commas inside quoted strings belong to the argument, so a
    `max-age` inside a quoted string is never mistaken for a directive.
    """
    lines = tuple(values)
    cc = _CC_MEMO.get(lines)
    if cc is None:
        cc = _parse_cache_control(lines)
        if len(_CC_MEMO) >= _CC_MEMO_MAX:
            _CC_MEMO.pop(next(iter(_CC_MEMO)))
        _CC_MEMO[lines] = cc
    return cc


def _parse_cache_control(values: tuple[str, ...]) -> CacheControl:
    directives: dict[str, str | None] = {}
    conflicts: set[str] = set()
    quoted: set[str] = set()
    for member in split_list(values):
        name, sep, arg = member.partition("=")
        name = name.strip(OWS)
        # Section 5.2: a directive name is a token, checked before lower-casing:
        # str.lower() maps some non-ASCII letters onto ASCII (KELVIN SIGN to "k").
        if not name or not _TOKEN.fullmatch(name):
            continue
        name = name.lower()
        value: str | None = None
        if sep:
            arg = arg.strip(OWS)
            if arg.startswith('"'):
                quoted.add(name)
            value = _unquote(arg)
        if name in directives and directives[name] != value:
            conflicts.add(name)
            continue  # first occurrence wins (Section 4.2.1), but it is marked
        directives.setdefault(name, value)
    return CacheControl(directives, frozenset(conflicts), frozenset(quoted))


_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
_SF_BARE_ITEM = (
    r'(?:-?\d{1,15}(?:\.\d{1,3})?|"(?:[^"\\\x00-\x1f\x7f]|\\["\\])*"'
    r"|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*|:[A-Za-z0-9+/=]*:|\?[01])"
)
_SF_PARAMS = rf"(?:\s*;\s*{_SF_KEY}(?:={_SF_BARE_ITEM})?)*"
_SF_MEMBER = re.compile(rf"{_SF_KEY}(?:={_SF_BARE_ITEM})?{_SF_PARAMS}")


#: Directives whose argument is delta-seconds (an Integer in a Structured Field).
_DELTA_DIRECTIVES = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})


def is_sf_dictionary(values: Iterable[str]) -> bool:
    """RFC 8941 Section 3.2: is this a syntactically valid Dictionary (of items;
    cache directives use no inner lists)? RFC 9213 Section 2.1: a cache ignores a
    targeted field that fails to parse as one."""
    text = ", ".join(values)
    if not text.strip():
        return False
    return all(_SF_MEMBER.fullmatch(m.strip()) for m in split_list([text]))


def _unquoted_semicolon(member: str) -> int:
    """Where the parameters of a list member start: its first `;` outside a quoted
    string (RFC 9110 Section 5.6.4; RFC 8941 Section 3.1.2), or -1."""
    in_quotes = escaped = False
    for i, ch in enumerate(member):
        if escaped:
            escaped = False
        elif ch == "\\" and in_quotes:
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == ";" and not in_quotes:
            return i
    return -1


def parse_targeted(
    values: Iterable[str], targets: Sequence[str] | None = None
) -> CacheControl | None:
    """RFC 9213 Section 2 (Targeted Cache-Control) and the W3C Edge Architecture's
    Surrogate-Control.

    Returns None when the field is absent or has no valid directive, in which case the
    cache falls back to Cache-Control. With `targets` (Surrogate-Control), directives
    may carry a `;target` suffix: those aimed at a device not in `targets` are ignored.
    Without (an RFC 9213 field), `;` starts parameters, which are ignored (Section 2).
    """
    lines = list(values)
    if not lines:
        return None
    kept: list[str] = []
    wanted = {t.lower() for t in targets} if targets is not None else None
    for member in split_list(lines):
        # A `;` inside a quoted argument (no-cache="a;b") is not a parameter.
        cut = _unquoted_semicolon(member)
        directive = member if cut < 0 else member[:cut]
        if cut >= 0 and wanted is not None and member[cut + 1 :].strip(OWS).lower() not in wanted:
            continue
        kept.append(directive.strip(OWS))
    if wanted is None:
        # RFC 8941 Section 4.2.2: in a Dictionary, a repeated key takes the last value.
        last: dict[str, str] = {}
        for directive in kept:
            name = directive.partition("=")[0].strip(OWS)
            last[name.lower() if name.isascii() else name] = directive
        kept = list(last.values())
    # One directive a line: joined and split again, a member with an unbalanced quote
    # would swallow the members after it.
    cc = parse_cache_control(kept)
    return cc if cc.directives else None


_DAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_LONG_DAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MON = "(" + "|".join(_MONTHS) + ")"
_TIME = r"(\d{2}):(\d{2}):(\d{2})"
# re.ASCII: DIGIT is 0-9 only (RFC 5234 Appendix B.1), where \d would take any Unicode
# digit ("\u0660\u0666" for "06"), and case-insensitive matching stays within ASCII,
# where it would take LONG S for "s" ("\u017fun" for "Sun") and KELVIN SIGN for "k".
_DATE_FLAGS = re.IGNORECASE | re.ASCII
_IMF_FIXDATE = re.compile(rf"{_DAY}, (\d{{2}}) {_MON} (\d{{4}}) {_TIME} gmt", _DATE_FLAGS)
_RFC850 = re.compile(rf"{_LONG_DAY}, (\d{{2}})-{_MON}-(\d{{2}}) {_TIME} gmt", _DATE_FLAGS)
_ASCTIME = re.compile(rf"{_DAY} {_MON} ([ \d]\d) {_TIME} (\d{{4}})", _DATE_FLAGS)


def parse_http_date(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110 Section 5.6.7: Date/Time Formats.

    Exactly the three forms a recipient must accept (IMF-fixdate, rfc850, asctime),
    names case-insensitively; anything else ("UTC", a two-digit year in IMF-fixdate,
    missing comma, extra spaces, one-digit hour) is invalid and returns None.
    A two-digit rfc850 year more than 50 years ahead of `now` is in the past century.
    A leap second (second 60, which RFC 5322 Section 3.3 allows) is the next second.
    """
    if not value:
        return None
    known = _FIXDATES.get(value)
    if known is not None:
        return known
    text = value.strip(OWS)
    fixdate = False
    if m := _IMF_FIXDATE.fullmatch(text):
        day, mon, year, hh, mm, ss = m.groups()
        fixdate = True
    elif m := _RFC850.fullmatch(text):
        day, mon, yy, hh, mm, ss = m.groups()
        if now is None:
            year = str((2000 if int(yy) < 70 else 1900) + int(yy))
        else:
            current = datetime.fromtimestamp(now, UTC).year
            full = current - current % 100 + int(yy)
            year = str(full - 100 if full > current + 50 else full)
    elif m := _ASCTIME.fullmatch(text):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    leap = ss == "60"
    try:
        moment = datetime(
            int(year),
            _MONTHS.index(mon.lower()) + 1,
            int(day),
            int(hh),
            int(mm),
            59 if leap else int(ss),
            tzinfo=UTC,
        ).timestamp() + (1 if leap else 0)
    except ValueError:
        return None
    if fixdate:
        # An origin's dates repeat within each second: remembered (bounded), as
        # IMF-fixdate's meaning, unlike rfc850's, does not depend on `now`.
        if len(_FIXDATES) >= 1024:
            _FIXDATES.clear()
        _FIXDATES[value] = moment
    return moment


#: parse_http_date's IMF-fixdate values as read before.
_FIXDATES: dict[str, float] = {}


def _date_or(value: str | None, fallback: float) -> float:
    """A Date field's time, or `fallback` (when it arrived) if absent or invalid.
    A valid date of the epoch itself (0.0) is still a date."""
    parsed = parse_http_date(value)
    return fallback if parsed is None else parsed


def parse_age(headers: Headers) -> int | None:
    """RFC 9111 Section 5.1: Age.

    A list-valued Age (several members or field lines) is read by its first member.
    An invalid value returns None: Section 5.1 says a cache SHOULD ignore it, which
    `current_age` does unless told to treat the response as stale instead.
    """
    values = headers.getall("Age", [])
    if not values:
        return 0
    members = split_list(values)
    if not members:
        return None
    return parse_delta_seconds(members[0])


def has_invalid_age(headers: Headers) -> bool:
    return parse_age(headers) is None


# ------------------------------------------------------------------ status code sets

#: RFC 9110 Section 15.1: heuristically cacheable status codes.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

#: Status codes whose semantics this cache implements (for must-understand, Section
#: 5.2.2.3). 206 is excluded: partial content is not stored as a complete response.
UNDERSTOOD_STATUS = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501, 502}
    | {503, 504}
)

#: RFC 9110 Section 9.2.1: safe methods; the others invalidate (RFC 9111 Section 4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

#: Methods whose responses this cache stores and reuses (Section 2).
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


# --------------------------------------------------------------- header categories

#: RFC 9110 Section 7.6.1 hop-by-hop fields, plus those RFC 9111 Section 3.1 says a
#: cache must not store (Proxy-Authenticate and friends apply to the hop only).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
    }
)

#: Fields that a 304 must not change in the stored response (Section 3.2 and
#: Section 4.3.4): the stored body depends on them.
NOT_UPDATED_BY_304 = frozenset(
    {"content-length", "content-encoding", "content-md5", "content-range", "etag"}
)

#: Fields that set state at one client (RFC 6265 Section 4.1; Set-Cookie2, RFC 2965,
#: obsolete but still a cookie).
COOKIE_FIELDS = frozenset({"set-cookie", "set-cookie2"})

#: How a response that sets a cookie may be shared (`set_cookie`, is_storable): not
#: at all by default, as nginx, Varnish and Cloudflare do; the others are opt-ins,
#: from the narrowest to RFC 9111 alone.
SET_COOKIE_MODES = ("never", "public", "explicit", "rfc")
SET_COOKIE_DEFAULT = "never"


def connection_listed(headers: Headers) -> set[str]:
    """RFC 9110 Section 7.6.1: field names listed in Connection are hop-by-hop too."""
    return {m.lower() for m in split_list(headers.getall("Connection", []))}


def end_to_end(headers: Headers, *, drop: Sequence[str] = ()) -> list[tuple[str, str]]:
    """RFC 9111 Section 3.1: the fields a cache keeps (and a proxy forwards).

    Removes hop-by-hop fields, those nominated by Connection, and `drop`.
    """
    excluded = _excluded(tuple(drop))
    if "Connection" in headers:
        excluded = excluded | connection_listed(headers)
    return [(k, v) for k, v in headers.items() if k.lower() not in excluded]


@functools.lru_cache(maxsize=64)
def _excluded(drop: tuple[str, ...]) -> frozenset[str]:
    """HOP_BY_HOP and `drop`, lower-cased: a caller drops the same few lists each time."""
    return HOP_BY_HOP | {d.lower() for d in drop}


# ---------------------------------------------------------- interim responses, trailers


def forwards_interim(status: int) -> bool:
    """RFC 9110 Section 15.2: whether a proxy passes an upstream `1xx` on to its client.

    A proxy forwards interim responses unless it asked for them itself. edge never
    forwards `Expect: 100-continue` (it answers the client's expectation itself and
    sends the body whole), so an upstream `100 Continue` answers nothing the client
    asked; it never asks to upgrade, so a `101` is refused, not relayed. The others
    (102 Processing, 103 Early Hints, and any 1xx not yet defined) pass. Interim
    responses are never stored (RFC 9111 Section 3: only final responses are)."""
    return 102 <= status < 200


#: RFC 9110 Section 6.5.1: fields a sender must not put in trailers (framing, routing,
#: request modifiers, authentication, response control and content handling), so a
#: trailer that names one is not passed on: the head already decided these.
TRAILER_FORBIDDEN = frozenset(
    {
        "content-length",
        "content-type",
        "content-encoding",
        "content-range",
        "host",
        "cache-control",
        "expires",
        "age",
        "date",
        "location",
        "retry-after",
        "vary",
        "warning",
        "set-cookie",
        "www-authenticate",
        "authorization",
        "max-forwards",
        "expect",
        "range",
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
        "if-range",
    }
)


def forwardable_trailers(trailers: Headers, head: Headers) -> list[tuple[str, str]]:
    """RFC 9110 Section 6.5: the trailer fields of a chunked response that a proxy
    passes on in its own chunked ending (RFC 9112 Section 7.1.2).

    Hop-by-hop fields (and those the head's Connection names) are the hop's own, and
    fields that may not be trailers are dropped, never merged into the header section
    (Section 6.5.1). The trailers of a stored response are not kept: only the header
    section is (RFC 9111 Section 3)."""
    excluded = HOP_BY_HOP | connection_listed(head) | TRAILER_FORBIDDEN
    return [(k, v) for k, v in trailers.items() if k.lower() not in excluded]


# ---------------------------------------------------------------- response policy


@dataclass(frozen=True)
class ResponsePolicy:
    """The directives that govern a stored response for this cache.

    `cc` is the response's Cache-Control; `targeted` the first valid targeted field
    (RFC 9213) aimed at this cache, which, when present, replaces Cache-Control for
    every caching decision (RFC 9213 Section 2.1).
    """

    cc: CacheControl
    targeted: CacheControl | None = None

    @property
    def effective(self) -> CacheControl:
        return self.targeted if self.targeted is not None else self.cc


def response_policy(
    headers: Headers,
    targeted_fields: Sequence[str] = ("CDN-Cache-Control", "Surrogate-Control"),
    surrogate_targets: Sequence[str] = (),
) -> ResponsePolicy:
    """RFC 9213 Section 2.1: a cache uses the first targeted field in its list that is
    present and valid, and otherwise Cache-Control."""
    cc = parse_cache_control(headers.getall("Cache-Control", []))
    for name in targeted_fields:
        values = headers.getall(name, [])
        if name.lower() == "surrogate-control":
            targeted = parse_targeted(values, surrogate_targets)
        elif not values or not is_sf_dictionary(values):
            continue
        else:
            targeted = parse_targeted(values)
            if targeted is not None and targeted.quoted & _DELTA_DIRECTIVES:
                # RFC 9213 Section 2.1: a Structured Field whose delta-seconds directive
                # is a String has the wrong type: the whole field is ignored.
                continue
        if targeted is not None:
            return ResponsePolicy(cc, targeted)
    return ResponsePolicy(cc, None)


@dataclass(frozen=True)
class Decision:
    """A yes/no with the reason and the section behind it (logged on refusals)."""

    ok: bool
    reason: str
    section: str = ""

    def __bool__(self) -> bool:
        return self.ok


def is_storable(
    method: str,
    status: int,
    request_cc: CacheControl,
    request_headers: Headers,
    policy: ResponsePolicy,
    response_headers: Headers,
    *,
    set_cookie: str = SET_COOKIE_DEFAULT,
) -> Decision:
    """RFC 9111 Section 3: Storing Responses in Caches (for a shared cache).

    Section 3.5 (Authorization) and Section 4.1 (Vary: *) are applied here too.

    A response that sets a cookie (COOKIE_FIELDS) is personal: the cookie is one
    client's, and a page that sets one is often that client's page (web cache
    deception: a personal page reached by a URL that looks static). Section 3 lets a
    cache store it and Section 7.3 leaves the control to the origin's Cache-Control;
    edge does not share it unless the node opts in (`set_cookie`): "never" (the
    default) not at all; "public" with public, s-maxage or a targeted field;
    "explicit" also with explicit freshness (max-age, Expires), never heuristically;
    "rfc" as Section 3 alone allows.
    """
    cc = policy.effective
    if method not in CACHEABLE_METHODS:
        return Decision(False, f"method {method} is not cached", "3")
    if status < 200 or status in (206, 304):
        # Section 3: the status must be final; 206 and 304 are not complete responses.
        return Decision(False, f"status {status} is not a complete response", "3")
    must_understand = "must-understand" in cc
    if must_understand and status not in UNDERSTOOD_STATUS:
        return Decision(False, "must-understand with a status not understood", "5.2.2.3")
    if "no-store" in cc and not must_understand:
        return Decision(False, "no-store in the response", "5.2.2.5")
    if "no-store" in request_cc:
        return Decision(False, "no-store in the request", "5.2.1.5")
    if "private" in cc and cc.field_names("private") is None:
        return Decision(False, "private response, shared cache", "5.2.2.7")
    if "authorization" in {k.lower() for k, _ in request_headers.items()} and not (
        "public" in cc or "must-revalidate" in cc or "s-maxage" in cc
    ):
        return Decision(False, "request had Authorization", "3.5")
    if "*" in vary_field_names(response_headers):
        return Decision(False, "Vary: * never matches", "4.1")
    explicit = (
        "public" in cc
        or "max-age" in cc
        or "s-maxage" in cc
        or (policy.targeted is None and "Expires" in response_headers)
    )
    if set_cookie != "rfc" and any(name in response_headers for name in COOKIE_FIELDS):
        shared = "public" in cc or "s-maxage" in cc or policy.targeted is not None
        if set_cookie == "never" or not (shared or (set_cookie == "explicit" and explicit)):
            return Decision(False, "sets a cookie and the origin did not say to share it", "3")
    if explicit or status in HEURISTICALLY_CACHEABLE:
        return Decision(True, "storable", "3")
    return Decision(False, f"status {status} has no explicit freshness", "3")


def strip_private_fields(
    headers: list[tuple[str, str]], policy: ResponsePolicy
) -> list[tuple[str, str]]:
    """RFC 9111 Section 5.2.2.7: a shared cache must not store the fields named by a
    qualified `private`."""
    named = policy.effective.field_names("private")
    if not named:
        return headers
    names = set(named)
    return [(k, v) for k, v in headers if k.lower() not in names]


def withheld_unless_validated(policy: ResponsePolicy) -> frozenset[str]:
    """RFC 9111 Section 5.2.2.4: the fields named by a qualified no-cache must not be
    sent in a response to a later request without successful revalidation."""
    return frozenset(policy.effective.field_names("no-cache") or ())


# ------------------------------------------------------------------------ freshness


def freshness_lifetime(
    status: int,
    headers: Headers,
    policy: ResponsePolicy,
    response_time: float,
    *,
    heuristic_fraction: float = 0.1,
    heuristic_max: float = 86400.0,
) -> tuple[float, bool]:
    """RFC 9111 Section 4.2.1: Calculating Freshness Lifetime.

    Returns (lifetime in seconds, whether it is heuristic). Order for a shared cache:
    s-maxage, max-age, Expires minus Date, then the Section 4.2.2 heuristic.
    A targeted field (RFC 9213) replaces Cache-Control and Expires entirely.
    """
    cc = policy.effective
    # Section 4.2.1: duplicated, conflicting directives make the response stale.
    for name in ("s-maxage", "max-age"):
        if name in cc:
            if cc.invalid_delta(name):
                return 0.0, False
            return float(cc.delta(name) or 0), False
    if policy.targeted is None:
        expires_values = headers.getall("Expires", [])
        if expires_values:
            # Section 5.3: an invalid Expires (e.g. "0") represents a time in the past.
            expires = parse_http_date(expires_values[0]) if len(expires_values) == 1 else None
            if expires is None:
                return 0.0, False
            date = _date_or(headers.get("Date"), response_time)
            return max(0.0, expires - date), False
    return heuristic_lifetime(status, headers, cc, response_time, heuristic_fraction, heuristic_max)


def heuristic_lifetime(
    status: int,
    headers: Headers,
    cc: CacheControl,
    response_time: float,
    fraction: float = 0.1,
    maximum: float = 86400.0,
) -> tuple[float, bool]:
    """RFC 9111 Section 4.2.2: Calculating Heuristic Freshness.

    Only for heuristically cacheable status codes or responses marked `public`;
    a fraction (typically 10%) of the time since Last-Modified, capped.
    """
    if status not in HEURISTICALLY_CACHEABLE and "public" not in cc:
        return 0.0, False
    last_modified = parse_http_date(headers.get("Last-Modified"))
    if last_modified is None:
        return 0.0, False
    date = _date_or(headers.get("Date"), response_time)
    return max(0.0, min(maximum, (date - last_modified) * fraction)), True


def current_age(
    headers: Headers,
    request_time: float,
    response_time: float,
    now: float,
    *,
    invalid_age_is_stale: bool = False,
) -> float:
    """RFC 9111 Section 4.2.3: Calculating Age.

    An invalid Age field is ignored, as Section 5.1 says a cache SHOULD; with
    `invalid_age_is_stale` it yields MAX_DELTA instead, so the response is stale.
    """
    age_value = parse_age(headers)
    if age_value is None:
        if invalid_age_is_stale:
            return float(MAX_DELTA)
        age_value = 0
    date_value = _date_or(headers.get("Date"), response_time)
    apparent_age = max(0.0, response_time - date_value)
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = max(0.0, now - response_time)
    return corrected_initial_age + resident_time


# ------------------------------------------------------------------------ reuse


@dataclass(frozen=True)
class Reuse:
    """How a stored response may answer a request (RFC 9111 Section 4).

    kind: "fresh" (serve), "stale-ok" (serve stale: client or origin allows it),
    "stale-while-revalidate" (serve stale and refresh in the background),
    "revalidate" (validate with the origin first), or "no" (cannot be used at all:
    only-if-cached then gives 504).
    """

    kind: str
    age: float
    lifetime: float
    reason: str

    @property
    def ttl(self) -> float:
        return self.lifetime - self.age


def request_cache_control(headers: Headers) -> CacheControl:
    """RFC 9111 Section 5.2.1, with Section 5.4: `Pragma: no-cache` means
    `Cache-Control: no-cache` only when the request has no Cache-Control."""
    values = headers.getall("Cache-Control", [])
    if not values and any(
        m.lower() == "no-cache" for m in split_list(headers.getall("Pragma", []))
    ):
        return CacheControl({"no-cache": None})
    return parse_cache_control(values)


def stale_forbidden(policy: ResponsePolicy) -> bool:
    """RFC 9111 Section 4.2.4: a stale response must not be served without validation
    under must-revalidate, proxy-revalidate (shared), s-maxage (which implies
    proxy-revalidate, Section 5.2.2.10) or no-cache."""
    cc = policy.effective
    return any(d in cc for d in ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache"))


def evaluate_reuse(
    age: float,
    lifetime: float,
    request_cc: CacheControl,
    policy: ResponsePolicy,
) -> Reuse:
    """RFC 9111 Section 4: Constructing Responses from Caches, for one stored response
    that already matches the request (URI, method, Vary).

    Applies response no-cache (Section 5.2.2.4), the request directives max-age,
    min-fresh, max-stale and no-cache (Section 5.2.1), and stale-while-revalidate
    (RFC 5861 Section 3).
    """
    cc = policy.effective
    if "no-cache" in cc and cc.field_names("no-cache") is None:
        return Reuse("revalidate", age, lifetime, "response no-cache")
    if "no-cache" in request_cc:
        return Reuse("revalidate", age, lifetime, "request no-cache")
    fresh = age < lifetime
    req_max_age = request_cc.delta("max-age")
    if req_max_age is not None and age > req_max_age:
        return Reuse("revalidate", age, lifetime, "older than request max-age")
    min_fresh = request_cc.delta("min-fresh")
    if fresh and min_fresh is not None and lifetime - age < min_fresh:
        return Reuse("revalidate", age, lifetime, "less fresh than request min-fresh")
    if fresh:
        return Reuse("fresh", age, lifetime, "fresh")
    staleness = age - lifetime
    if stale_forbidden(policy):
        return Reuse("revalidate", age, lifetime, "stale and must revalidate")
    if "max-stale" in request_cc:
        limit = request_cc.directives["max-stale"]
        bound = parse_delta_seconds(limit) if limit is not None else None
        if limit is None or (bound is not None and staleness <= bound):
            return Reuse("stale-ok", age, lifetime, "within request max-stale")
    swr = cc.delta("stale-while-revalidate")
    if swr is not None and staleness <= swr:
        return Reuse("stale-while-revalidate", age, lifetime, "stale-while-revalidate")
    return Reuse("revalidate", age, lifetime, "stale")


def may_serve_stale_on_error(
    age: float, lifetime: float, request_cc: CacheControl, policy: ResponsePolicy, grace: float
) -> bool:
    """RFC 5861 Section 4 (stale-if-error) and RFC 9111 Section 4.2.4 (a disconnected
    cache may serve stale unless forbidden).

    `grace` is the operator's allowance for serving stale when the upstream fails and
    the response did not say; stale-if-error in the response or request extends it.
    """
    if stale_forbidden(policy):
        return False
    staleness = max(0.0, age - lifetime)
    allowance = grace
    for cc in (policy.effective, request_cc):
        sie = cc.delta("stale-if-error")
        if sie is not None:
            allowance = max(allowance, float(sie))
    return staleness <= allowance


# ---------------------------------------------------------------------------- Vary


def vary_field_names(headers: Headers) -> list[str]:
    """RFC 9110 Section 12.5.5: Vary, as lower-cased field names ("*" kept).

    A member that is not a field name (a token, Section 5.1) cannot be matched against
    any request, and guessing what the origin meant could serve one client's variant
    to another: it is read as "*", so the response is never reused unvalidated (RFC
    9111 Section 4.1). Names are checked before lower-casing, which would turn some
    non-ASCII letters into ASCII ones (KELVIN SIGN into "k").
    """
    names = []
    for member in split_list(headers.getall("Vary", [])):
        names.append(member.lower() if member == "*" or _TOKEN.fullmatch(member) else "*")
    return names


#: RFC 9110 Section 12.4.2: weight = OWS ";" OWS "q=" qvalue, "q" case-insensitive;
#: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_WEIGHT = re.compile(r"[qQ]=(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
#: RFC 4647 Section 2.1: language-range, the member of Accept-Language (RFC 9110
#: Section 12.5.4). ASCII only: str.lower() would turn some other letters into ASCII.
_LANGUAGE_RANGE = re.compile(r"\*|[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")


def _ascii_lower(text: str) -> str:
    return "".join(c.lower() if c.isascii() else c for c in text)


def _language_preferences(members: Sequence[str]) -> list[tuple[str, float]] | None:
    """Accept-Language members as (range, weight), or None when one is not a
    language-range with at most a valid weight, or a range comes twice (which of its
    weights counts is up to the origin)."""
    prefs: list[tuple[str, float]] = []
    for member in members:
        tag, *params = (p.strip(OWS) for p in member.split(";"))
        if not _LANGUAGE_RANGE.fullmatch(tag) or len(params) > 1:
            return None
        weight = _WEIGHT.fullmatch(params[0]) if params else None
        if params and weight is None:
            return None
        prefs.append((tag.lower(), float(weight.group(1)) if weight else 1.0))
    if len({tag for tag, _ in prefs}) != len(prefs):
        return None
    return prefs


def _normalise_language(members: Sequence[str]) -> str:
    """Accept-Language (RFC 9110 Section 12.5.4) written one way: ranges lower-cased
    (RFC 4647 Section 2.1: case-insensitive), each with its weight as a number, by
    descending weight. Only an order that cannot change the choice is changed:
    members of equal weight keep the order they came in, since a client's `de, en`
    prefers German where `en, de` prefers English (RFC 4647 Section 3.4 takes ranges
    in the order given; RFC 9110 Section 12.4.2 leaves ties to the server). A value
    edge cannot read that way (a weight that is not a qvalue, an unknown parameter, a
    range given twice) keeps its order as written, only its ASCII lower-cased: what
    the origin makes of it is unknown, so it is conflated with no other order."""
    prefs = _language_preferences(members)
    if prefs is None:
        return ",".join(_ascii_lower(m) for m in members)
    # sorted() is stable: equal weights stay in the order written.
    return ",".join(f"{tag};q={q:g}" for tag, q in sorted(prefs, key=lambda p: -p[1]))


def normalise_selecting(name: str, values: Sequence[str]) -> str | None:
    """RFC 9111 Section 4.1: selecting header fields may be normalised before they are
    compared, but only in ways that cannot change the response the origin selects.
    Field lines are combined and whitespace around list separators removed (RFC 9110
    Section 5.3, 5.6.1); the order of members is kept, since it can carry preference
    (Accept's ties, RFC 9110 Section 12.5.1). Accept-Language also ignores case and
    orders members of different weights by weight (_normalise_language).
    """
    if not values:
        return None
    members = split_list(values)
    if name == "accept-language":
        return _normalise_language(members)
    return ",".join(members)


def vary_key(
    vary_names: Sequence[str], request_headers: Headers, handled: frozenset[str] = frozenset()
) -> tuple[tuple[str, str | None], ...]:
    """The secondary cache key (Section 4.1): each selecting field's normalised value
    in the request, None when absent. Fields in `handled` are negotiated by the cache
    itself for every stored response (edge does Accept-Encoding), so their value is
    left out: one stored response serves every value."""
    return tuple(
        (
            name,
            "" if name in handled else normalise_selecting(name, request_headers.getall(name, [])),
        )
        for name in sorted(set(vary_names))
    )


def vary_matches(
    stored_key: Sequence[tuple[str, str | None]],
    request_headers: Headers,
    handled: frozenset[str] = frozenset(),
) -> bool:
    """RFC 9111 Section 4.1: Calculating Cache Keys with the Vary Header Field.

    Every selecting field must match (absent in both also matches); `*` never does.
    """
    names = [name for name, _ in stored_key]
    if "*" in names:
        return False
    return tuple(stored_key) == vary_key(names, request_headers, handled)


# --------------------------------------------------------------------- validation


def conditional_headers(stored: Headers) -> list[tuple[str, str]]:
    """RFC 9111 Section 4.3.1: Sending a Validation Request.

    An entity tag goes in If-None-Match; Last-Modified in If-Modified-Since (kept
    alongside, for servers that ignore If-None-Match).
    """
    out: list[tuple[str, str]] = []
    etag = stored.get("ETag")
    if etag:
        out.append(("If-None-Match", etag))
    last_modified = stored.get("Last-Modified")
    if last_modified:
        out.append(("If-Modified-Since", last_modified))
    return out


def validator_matches(stored: Headers, not_modified: Headers) -> bool:
    """RFC 9111 Section 4.3.4: a 304 updates the stored response whose validator it
    carries (a strong entity tag by strong comparison, a weak one by weak comparison).
    A 304 with no validator may update a stored response without one."""
    new_etag = not_modified.get("ETag")
    if new_etag is not None:
        old = stored.get("ETag")
        if old is None:
            return False
        if new_etag.strip().startswith("W/"):
            return weak_etag_equal(old, new_etag)
        return strong_etag_equal(old, new_etag)
    new_lm = not_modified.get("Last-Modified")
    if new_lm is not None:
        return stored.get("Last-Modified") == new_lm
    return stored.get("ETag") is None and stored.get("Last-Modified") is None


def freshen_headers(
    stored: Sequence[tuple[str, str]],
    not_modified: Headers,
    *,
    set_cookie: str = SET_COOKIE_DEFAULT,
) -> list[tuple[str, str]]:
    """RFC 9111 Section 3.2: Updating Stored Header Fields.

    Each end-to-end field in the 304 replaces the stored field of that name, except
    those the stored body depends on (Content-Length, Content-Encoding, Content-Range,
    Content-MD5, ETag). The stored Age is dropped: the new response's age starts from
    the 304 (its own Age, if any, is taken instead).

    A cookie set on the 304 is not taken either, unless `set_cookie` is "rfc" (RFC
    9111 alone, which takes it): the 304 answers the cache's own validation request,
    made for whichever clients waited on it (or none, in the background), so the
    cookie belongs to none of the clients the stored response is served to.
    """
    drop = NOT_UPDATED_BY_304 if set_cookie == "rfc" else NOT_UPDATED_BY_304 | COOKIE_FIELDS
    incoming = [(k, v) for k, v in end_to_end(not_modified) if k.lower() not in drop]
    replaced = {k.lower() for k, _ in incoming} | {"age"}
    kept = [(k, v) for k, v in stored if k.lower() not in replaced]
    return kept + incoming


# -------------------------------------------------------- conditionals from cache


def parse_etag_list(value: str) -> list[str] | None:
    """RFC 9110 Section 8.8.3: a list of entity tags, or None for `*`."""
    if value.strip(OWS) == "*":
        return None
    return re.findall(r'(?:W/)?"[^"]*"', value)


def weak_etag_equal(a: str, b: str) -> bool:
    """RFC 9110 Section 8.8.3.2: weak comparison ignores the W/ prefix."""
    return a.strip(OWS).removeprefix("W/") == b.strip(OWS).removeprefix("W/")


def strong_etag_equal(a: str, b: str) -> bool:
    """RFC 9110 Section 8.8.3.2: strong comparison; both must be strong."""
    a, b = a.strip(OWS), b.strip(OWS)
    return not a.startswith("W/") and not b.startswith("W/") and a == b


def not_modified_from_cache(
    method: str, request_headers: Headers, stored: Headers, response_time: float
) -> bool:
    """RFC 9111 Section 4.3.2 with RFC 9110 Section 13.2.2: a cache answers a
    conditional GET/HEAD with 304 when the stored response satisfies it.

    If-None-Match (weak comparison) takes precedence over If-Modified-Since, which
    compares against Last-Modified, else Date, else the time the response arrived.
    """
    if method not in ("GET", "HEAD"):
        return False
    inm = request_headers.getall("If-None-Match", [])
    if inm:
        etag = stored.get("ETag")
        tags = parse_etag_list(", ".join(inm))
        if tags is None:
            return True
        return etag is not None and any(weak_etag_equal(etag, t) for t in tags)
    ims = parse_http_date(request_headers.get("If-Modified-Since"))
    if ims is None:
        return False
    modified = parse_http_date(stored.get("Last-Modified"))
    if modified is None:
        modified = _date_or(stored.get("Date"), response_time)
    return modified <= ims


#: RFC 9110 Section 15.4.5: fields a 304 carries when the 200 would have.
NOT_MODIFIED_FIELDS = (
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
)


def not_modified_headers(stored: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """RFC 9110 Section 15.4.5: the header fields of a 304 built from a stored 200."""
    return [(k, v) for k, v in stored if k.lower() in NOT_MODIFIED_FIELDS]


# ----------------------------------------------------------------- invalidation


def invalidated_uris(method: str, status: int, effective_uri: str, response: Headers) -> list[str]:
    """RFC 9111 Section 4.4: Invalidating Stored Responses.

    After a non-error response (2xx, 3xx) to an unsafe method, the target URI is
    invalidated, and so are Location and Content-Location when they share its origin
    (to prevent denial-of-service by invalidating another site's entries).
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    out = [effective_uri]
    origin = urlsplit(effective_uri)[:2]
    for name in ("Location", "Content-Location"):
        value = response.get(name)
        if not value:
            continue
        absolute = urljoin(effective_uri, value.strip())
        if urlsplit(absolute)[:2] == origin and absolute not in out:
            out.append(absolute)
    return out


def evaluate_preconditions(
    method: str, request_headers: Headers, stored: Headers, response_time: float
) -> int | None:
    """RFC 9110 Section 13.2.2: Evaluation of preconditions against a stored
    representation, in the order the section sets. Returns 412, 304, or None (go on).

    If-Match uses strong comparison; If-Unmodified-Since is ignored when If-Match is
    present; If-None-Match gives 304 for GET/HEAD and 412 otherwise.
    """
    if_match = request_headers.getall("If-Match", [])
    etag = stored.get("ETag")
    if if_match:
        tags = parse_etag_list(", ".join(if_match))
        if tags is not None and not (etag and any(strong_etag_equal(etag, t) for t in tags)):
            return 412
    else:
        ius = parse_http_date(request_headers.get("If-Unmodified-Since"))
        last_modified = parse_http_date(stored.get("Last-Modified"))
        if ius is not None and last_modified is not None and last_modified > ius:
            return 412
    inm = request_headers.getall("If-None-Match", [])
    if inm and method not in ("GET", "HEAD"):
        tags = parse_etag_list(", ".join(inm))
        if tags is None or (etag is not None and any(weak_etag_equal(etag, t) for t in tags)):
            return 412
        return None
    if not_modified_from_cache(method, request_headers, stored, response_time):
        return 304
    return None
