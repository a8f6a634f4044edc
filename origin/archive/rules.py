"""Per-path Cache-Control for the archive origin.

This module owns one policy: an ordered list of (glob on the URL path, Cache-Control
value), where the first match wins and a fallback covers the rest, the way an nginx
operator writes `location` blocks with `expires`. It parses `--rule 'GLOB=VALUE'` options
and validates the values so nothing malformed reaches a response header. It does no I/O
and knows nothing of aiohttp.

Globs use fnmatch syntax on the decoded URL path: `*` also matches `/`, so `/books/*`
covers the whole collection, and `*/` matches every directory listing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

#: What a path that no rule matches gets.
DEFAULT_CACHE_CONTROL = "public, max-age=300"


class RuleError(ValueError):
    """A rule a person must fix; its message is one line."""


@dataclass(frozen=True)
class CacheRule:
    glob: str
    cache_control: str

    def matches(self, path: str) -> bool:
        return fnmatchcase(path, self.glob)


#: The built-in rules, first match wins. The catalogue and listings change whenever an
#: item is added, so they are short; items themselves rarely change; bundles are large and
#: effectively immutable, so a long lifetime saves the most origin traffic.
DEFAULT_RULES: tuple[CacheRule, ...] = (
    CacheRule("/catalogue.json", "public, max-age=60"),
    CacheRule("*.json", "public, max-age=60"),
    CacheRule("*/", "public, max-age=60"),
    CacheRule("/books/*", "public, max-age=3600"),
    CacheRule("/images/*", "public, max-age=3600"),
    CacheRule("/audio/*", "public, max-age=3600"),
    CacheRule("/bundles/*", "public, max-age=86400"),
)

# RFC 9111 Section 5.2: Cache-Control = #cache-directive,
# cache-directive = token [ "=" ( token / quoted-string ) ].
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\x09\x20-\x7e\x80-\xff])*"'
_DIRECTIVE = re.compile(rf"{_TOKEN}(?:=(?:{_TOKEN}|{_QUOTED}))?")


def validate_cache_control(value: str) -> str:
    """Return `value` normalised (directives joined by ", ") or raise RuleError."""
    directives = [d.strip() for d in value.split(",")]
    if not any(directives):
        raise RuleError(f"empty Cache-Control value: {value!r}")
    for directive in directives:
        if directive and not _DIRECTIVE.fullmatch(directive):
            raise RuleError(f"not a Cache-Control directive: {directive!r}")
    return ", ".join(d for d in directives if d)


def parse_rule(text: str) -> CacheRule:
    """'GLOB=CACHE-CONTROL' -> CacheRule. Split at the first `=`: globs rarely hold one,
    Cache-Control values usually do (max-age=60). A glob without a leading `/` or `*`
    is taken as relative to the root (`books/*` is `/books/*`)."""
    glob, sep, value = text.partition("=")
    glob = glob.strip()
    if not sep or not glob or not value.strip():
        raise RuleError(f"rule must be GLOB=CACHE-CONTROL, got {text!r}")
    if not glob.startswith(("/", "*")):
        glob = "/" + glob
    return CacheRule(glob, validate_cache_control(value))


@dataclass(frozen=True)
class CacheRules:
    """An ordered rule list with a fallback; first match wins."""

    rules: tuple[CacheRule, ...] = DEFAULT_RULES
    fallback: str = DEFAULT_CACHE_CONTROL

    def cache_control(self, path: str) -> str:
        """The Cache-Control value for a decoded URL path (listings end in `/`)."""
        for rule in self.rules:
            if rule.matches(path):
                return rule.cache_control
        return self.fallback

    def prepend(self, rules: Iterable[CacheRule]) -> CacheRules:
        """These rules first, then the existing ones: operator rules override defaults."""
        return CacheRules((*rules, *self.rules), self.fallback)

    @classmethod
    def from_options(cls, options: Iterable[str]) -> CacheRules:
        """The defaults with `--rule` options in front, in the order given."""
        return cls().prepend(parse_rule(option) for option in options)
