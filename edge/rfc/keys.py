"""Cache keys: the effective request URI a response is stored under (RFC 9111
Section 2), and the parts of one that routing and purging look at. Pure.

This module is the one place a URL becomes a key. The pipeline keys a request with
`request_key` (its target normalised by edge.features.guard, its query as the node's key_query
and key_query_ignore see it); a purge URL, a PURGE request, and a URI invalidated after
an unsafe method (RFC 9111 Section 4.4) are keyed by `url_key`, which parses the URL,
normalises its target with the same edge.features.guard function and ends in `request_key`. A
purge prefix is a key prefix: `prefix_key` normalises it the same way. So no spelling
of a URL selects other than what a request spelled that way stores.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge.features.guard import Refusal, Target, key_query, normalise_target
from edge.features.guard import authority as guard_authority

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


class KeyRules(Protocol):
    """What of a query the key keeps (edge.config.NodeConfig has these settings)."""

    @property
    def key_query(self) -> str: ...  # keep, sort or ignore

    @property
    def key_query_ignore(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class QueryRules:
    """KeyRules without a node's whole config (tests, tools); the defaults keep the
    query as it is."""

    key_query: str = "keep"
    key_query_ignore: tuple[str, ...] = ()


#: The query as sent: what a key shared by nodes of any settings looks like.
AS_SENT = QueryRules()


def cache_key(scheme: str, host: str, path_qs: str) -> str:
    """The primary cache key: the effective request URI, scheme and host lower-cased
    and the scheme's default port dropped (RFC 3986 Section 6.2.3)."""
    scheme, host = scheme.lower(), host.lower()
    default = _DEFAULT_PORTS.get(scheme, "")
    if default and host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}{path_qs}"


def key_target(target: Target, rules: KeyRules) -> str:
    """The origin-form target a key names: the normalised path, and the query as the
    key sees it (edge.features.guard.key_query). A fill asks its upstream for exactly this."""
    query = key_query(target.query, rules.key_query, rules.key_query_ignore)
    return target.path if query is None else f"{target.path}?{query}"


def request_key(scheme: str, authority: str, target: Target, rules: KeyRules) -> str:
    """The key of a request: its scheme, its authority (Host, or absolute-form's) and
    its target as edge.features.guard.normalise_target made it."""
    return cache_key(scheme, authority, key_target(target, rules))


class BadURL(ValueError):
    """A URL that names no key; the message says why, as a predicate of the URL
    ("has a fragment, ..."), so a caller can prefix where the URL came from."""


# RFC 3986 Section 3: scheme "://" authority, then the target up to a fragment.
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^#]*)(#.*)?", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True)
class URL:
    """An absolute http(s) URL split as a request carries it: scheme, authority
    (lower case, no default port) and normalised target."""

    scheme: str
    authority: str
    target: Target


def parse_url(url: str) -> URL:
    """An absolute http(s) URL -> its parts, or BadURL. Refused: other schemes,
    relative references, fragments (never sent, RFC 9110 Section 7.1), user
    information (deprecated, RFC 9110 Section 4.2.4), whitespace and control
    characters, bad ports, and whatever edge.features.guard refuses in a request target."""
    if _CONTROL.search(url):
        raise BadURL("contains whitespace or control characters")
    match = _ABSOLUTE.fullmatch(url)
    if match is None or match.group(1).lower() not in _DEFAULT_PORTS:
        raise BadURL("is not an absolute http(s) URL")
    scheme, authority, raw, fragment = match.groups()
    scheme = scheme.lower()
    if fragment is not None:
        raise BadURL("has a fragment, which never reaches a cache")
    if "@" in authority:
        raise BadURL("must not contain user information")
    try:
        authority = guard_authority(authority).lower()  # the rule a Host is held to
    except ValueError as exc:
        raise BadURL(str(exc)) from None
    # RFC 9112 Section 3.2.1: an empty path is sent as "/".
    raw = raw if raw.startswith("/") else "/" + raw
    target = normalise_target(raw)
    if isinstance(target, Refusal):
        raise BadURL(f"cannot be requested ({target.reason})")
    return URL(scheme, authority, target)


def url_key(url: str, rules: KeyRules) -> str:
    """The key a GET of `url` is stored under on a node with these rules; BadURL if
    no request could store anything under it."""
    parts = parse_url(url)
    return request_key(parts.scheme, parts.authority, parts.target, rules)


def location_key(uri: str, rules: KeyRules) -> str | None:
    """The key a Location or Content-Location names (RFC 9111 Section 4.4), without
    its fragment (RFC 9110 Section 10.2.2 allows one); None if it names none."""
    try:
        return url_key(uri.partition("#")[0], rules)
    except BadURL:
        return None


def prefix_key(url: str) -> str:
    """A purge prefix as a key prefix: scheme, host and path normalised as a request's
    are. A query in a prefix has its escapes normalised only: sorting or dropping
    parameters of part of a query has no meaning."""
    parts = parse_url(url)
    return cache_key(parts.scheme, parts.authority, parts.target.path_qs)


def authority_of(key: str) -> str:
    """host[:port] of a key (the port only when it is not the scheme's default)."""
    return key.partition("://")[2].split("/", 1)[0]


def host_of(key: str) -> str:
    """The host of a key, lower-cased, without its port."""
    authority = authority_of(key)
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if ":" in authority else authority
