"""The purge request: what one may select, its limits, and its validation. Pure.

This module is the one validation of purge bodies: a node's POST /_edge/purge, the
events a node receives from the coordinator and its own saved state, and the
coordinator's POST /v1/purge all go through `parse_purge` (or `parse_purge_body`), so
each refuses the same bodies with the same one-line reason.

URLs and prefixes come out canonical, as a request would be keyed with the query kept
as sent (edge.rfc.keys: scheme and host lower-cased, default port dropped, escapes of
unreserved characters decoded and the rest upper-cased, raw non-ASCII escaped). The
query is not cut or sorted here: key_query is each node's own setting, applied when the
node turns the purge into a ban (edge.purge.bans.Ban.of).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from edge.features.guard import authority
from edge.rfc.keys import AS_SENT, BadURL, prefix_key, url_key

SELECTORS = ("urls", "prefixes", "tags", "hosts")
FLAGS = ("all", "soft")
#: Limits of one purge: selectors in all, characters in each.
MAX_SELECTORS = 1000
MAX_STRING = 2048

# Tags are split from Surrogate-Key on whitespace and from Cache-Tag on commas: a tag
# holding either could never match.
_TAG = re.compile(r"[^\s,\x00-\x1f\x7f]+")


class PurgeError(ValueError):
    """A purge that cannot be applied or stored; its message is the 400 reason."""


@dataclass(frozen=True)
class Purge:
    """What a purge selects (any of), and how; selectors canonical, each once."""

    urls: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    all: bool = False
    soft: bool = False

    @classmethod
    def from_json(cls, data: Any) -> Purge:
        return parse_purge(data)

    def to_json(self) -> dict[str, Any]:
        return {
            "urls": list(self.urls),
            "prefixes": list(self.prefixes),
            "tags": list(self.tags),
            "hosts": list(self.hosts),
            "all": self.all,
            "soft": self.soft,
        }


def _url(value: str, where: str) -> str:
    try:
        return url_key(value, AS_SENT)
    except BadURL as exc:
        raise PurgeError(f"{where} {exc}: {value!r}") from None


def _prefix(value: str, where: str) -> str:
    try:
        return prefix_key(value)
    except BadURL as exc:
        raise PurgeError(f"{where} {exc}: {value!r}") from None


def _host(value: str, where: str) -> str:
    try:
        return authority(value).lower()  # the rule a Host field is held to
    except ValueError as exc:
        raise PurgeError(f"{where} {exc}: {value!r}") from None


def _tag(value: str, where: str) -> str:
    if not _TAG.fullmatch(value):
        raise PurgeError(f"{where} must be non-empty, without whitespace or commas: {value!r}")
    return value


_CHECKS: dict[str, Callable[[str, str], str]] = {
    "urls": _url,
    "prefixes": _prefix,
    "tags": _tag,
    "hosts": _host,
}


def parse_purge(body: Any) -> Purge:
    """A decoded purge body -> the Purge (selectors canonical and without duplicates).
    Raises PurgeError with the reason."""
    if not isinstance(body, Mapping):
        raise PurgeError("body must be a JSON object")
    unknown = sorted(set(body) - {*SELECTORS, *FLAGS})
    if unknown:
        raise PurgeError(f"unknown key: {unknown[0]!r} (known: {', '.join((*SELECTORS, *FLAGS))})")
    values: dict[str, Any] = {}
    for key in FLAGS:
        value = body.get(key, False)
        if not isinstance(value, bool):
            raise PurgeError(f"{key} must be true or false")
        values[key] = value
    total = 0
    for key in SELECTORS:
        items = body.get(key, [])
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise PurgeError(f"{key} must be a list of strings")
        total += len(items)
        if total > MAX_SELECTORS:
            raise PurgeError(f"too many selectors (at most {MAX_SELECTORS} in one purge)")
        checked: list[str] = []
        for index, value in enumerate(items):
            where = f"{key}[{index}]"
            if len(value) > MAX_STRING:
                raise PurgeError(f"{where} is longer than {MAX_STRING} characters")
            checked.append(_CHECKS[key](value, where))
        values[key] = tuple(dict.fromkeys(checked))
    if not values["all"] and not any(values[key] for key in SELECTORS):
        raise PurgeError("nothing to purge: give urls, prefixes, tags or hosts, or all: true")
    return Purge(**values)


def widen(body: Any) -> Purge:
    """The purge to apply for a logged event this node's validation refuses: a newer
    coordinator's selector, or a rule changed since the event was stored. Skipping it
    would keep serving what an operator purged, and stopping at it would stall every
    purge after it, so it is applied wider: the hosts it names when every selector names
    one (a URL's, a prefix's, a host), otherwise everything. Soft only if it said so."""
    soft = isinstance(body, Mapping) and body.get("soft") is True
    everything = Purge(all=True, soft=soft)
    if not isinstance(body, Mapping) or body.get("all", False) is not False:
        return everything
    known = {"urls", "prefixes", "hosts", *FLAGS}
    if set(body) - known:
        return everything
    hosts: list[str] = []
    for key in ("urls", "prefixes", "hosts"):
        items = body.get(key, [])
        if not isinstance(items, list):
            return everything
        for value in items:
            host = _host_of_selector(key, value)
            if host is None:
                return everything
            hosts.append(host)
    return Purge(hosts=tuple(dict.fromkeys(hosts)), soft=soft) if hosts else everything


def _host_of_selector(key: str, value: Any) -> str | None:
    """The host a selector names, without its port (a host ban matches every port)."""
    if not isinstance(value, str) or len(value) > MAX_STRING:
        return None
    try:
        host = urlsplit(value if key != "hosts" else f"//{value}").hostname
        if not host:
            return None
        authority(host if ":" not in host else f"[{host}]")  # the rule a Host is held to
    except ValueError:
        return None
    return host


def parse_purge_body(raw: bytes) -> Purge:
    """A purge request's body as received -> the Purge, or PurgeError."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise PurgeError("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise PurgeError(f"body is not valid JSON: {exc}") from None
    return parse_purge(body)
