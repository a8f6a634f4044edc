"""Request rules: regular expressions over a request's path, query and header fields
that refuse common injection and probing attempts before they reach an origin.

Owns the rule format, the shipped default set, loading more rules from TOML, and the
per-host switch. Pure: the pipeline asks `RuleSet.check` and answers 403 itself.

A rule file:

    [[rules]]
    id = "no-admin"
    where = ["path"]            # path, query, headers, or header:NAME
    pattern = "^/admin/"
    message = "admin is internal"

Patterns are matched case-insensitively against the raw text and its percent-decoded
form, so `%3Cscript` is `<script`. The shipped set is deliberately small: probes that
no archive's legitimate URL or header carries.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

from edge.rfc.policy import Headers

WHERES = ("path", "query", "headers")


@dataclass(frozen=True)
class Rule:
    id: str
    where: tuple[str, ...]  # "path", "query", "headers" (all), "header:name"
    pattern: re.Pattern[str]
    message: str


def _rule(id: str, where: Iterable[str], pattern: str, message: str) -> Rule:
    return Rule(id, tuple(where), re.compile(pattern, re.IGNORECASE), message)


#: The flags every rule's pattern is compiled with.
_FLAGS = re.compile("", re.IGNORECASE).flags


#: The shipped rules. Each names the attack it answers; none matches a plain path.
DEFAULT_RULES: tuple[Rule, ...] = (
    _rule(
        "sqli-union",
        ("path", "query"),
        r"\bunion\b[\s/*+()]+(?:all[\s/*+()]+)?select\b",
        "SQL injection (UNION SELECT)",
    ),
    _rule(
        "sqli-tautology",
        ("query",),
        r"['\"`]\s*\)?\s*(?:or|and)\s+['\"`]?\w+['\"`]?\s*(?:=|like)\s*['\"`]?\w+",
        "SQL injection (quoted tautology)",
    ),
    _rule(
        "sqli-timing",
        ("query",),
        r"\b(?:sleep|benchmark|pg_sleep)\s*\(\s*\d|\bwaitfor\s+delay\b",
        "SQL injection (timing)",
    ),
    _rule(
        "xss-script",
        ("path", "query"),
        r"<\s*script\b|javascript\s*:|\bon(?:error|load|mouseover)\s*=|<\s*(?:iframe|svg)\b",
        "cross-site scripting",
    ),
    _rule(
        "rce-jndi",
        ("path", "query", "headers"),
        r"\$\{\s*(?:jndi|env|sys|lower|upper|::-)",
        "JNDI lookup (Log4Shell)",
    ),
    _rule(
        "rce-shellshock",
        ("headers", "query"),
        r"\(\s*\)\s*\{\s*:?\s*;?\s*\}\s*;",
        "Bash function definition (Shellshock)",
    ),
    _rule("php-code", ("path", "query"), r"<\?php|\bphp://(?:input|filter)", "PHP code injection"),
    _rule(
        "file-probe",
        ("path", "query"),
        r"/etc/(?:passwd|shadow)\b|/proc/self/|\bwin\.ini\b|\bboot\.ini\b",
        "system file probe",
    ),
    _rule(
        "secret-probe",
        ("path",),
        r"/\.(?:git|svn|hg|env|aws|ssh|htpasswd|htaccess)(?:/|$)|/wp-config\.php\b",
        "repository or secrets probe",
    ),
)


class RuleError(ValueError):
    """A rule file a person must fix; one line."""


def load_rules(path: str | Path) -> list[Rule]:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise RuleError(f"rule file not found: {path}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RuleError(f"rule file {path} is not valid TOML: {exc}") from exc
    items = raw.get("rules", [])
    if not isinstance(items, list):
        raise RuleError(f"{path}: rules must be an array of tables ([[rules]])")
    rules = []
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("pattern"), str):
            raise RuleError(f"{path}: rule {n} needs a pattern")
        rid = str(item.get("id", f"rule-{n}"))
        where = item.get("where", ["path", "query"])
        where = [where] if isinstance(where, str) else where
        for w in where:
            if w not in WHERES and not (isinstance(w, str) and w.startswith("header:")):
                raise RuleError(f"{path}: rule {rid}: where is path, query, headers or header:NAME")
        try:
            pattern = re.compile(item["pattern"], re.IGNORECASE)
        except re.error as exc:
            raise RuleError(f"{path}: rule {rid}: bad pattern: {exc}") from exc
        rules.append(
            Rule(rid, tuple(w.lower() for w in where), pattern, str(item.get("message", rid)))
        )
    return rules


def _forms(text: str) -> tuple[str, ...]:
    decoded = unquote_plus(text)
    return (text,) if decoded == text else (text, decoded)


class RuleSet:
    """The rules in force, and which hosts they apply to."""

    def __init__(
        self, rules: Iterable[Rule], *, enabled: bool = True, hosts: Mapping[str, object] = {}
    ) -> None:
        self.rules = tuple(rules)
        self.enabled = enabled
        self.hosts = {h.lower(): bool(v) for h, v in hosts.items()}
        self._screens = _screens(self.rules)

    @classmethod
    def from_config(cls, shipped: bool, rules_file: str, hosts: Mapping[str, object]) -> RuleSet:
        rules = list(DEFAULT_RULES) if shipped else []
        if rules_file:
            rules += load_rules(rules_file)
        # With the shipped set off, host switches can still turn file rules on.
        return cls(rules, enabled=shipped or bool(rules_file), hosts=hosts)

    def applies_to(self, host: str) -> bool:
        """Per-host switch: an exact host, then the nearest "*.domain", else the default."""
        host = host.lower().rsplit(":", 1)[0] if not host.startswith("[") else host.lower()
        if host in self.hosts:
            return self.hosts[host]
        labels = host.split(".")
        for i in range(1, len(labels)):
            wildcard = "*." + ".".join(labels[i:])
            if wildcard in self.hosts:
                return self.hosts[wildcard]
        return self.hosts.get("*", self.enabled)

    def check(self, host: str, path: str, query: str | None, headers: Headers) -> Rule | None:
        """The first rule the request matches, or None."""
        if not self.rules or not self.applies_to(host):
            return None
        paths = _forms(path)
        queries = _forms(query) if query else ()
        if self._screens is not None and not _screened(self._screens, paths, queries, headers):
            return None  # no rule's pattern is found anywhere it looks
        for rule in self.rules:
            for where in rule.where:
                if where == "path":
                    texts: Iterable[str] = paths
                elif where == "query":
                    texts = queries
                elif where == "headers":
                    texts = (v for k, v in headers.items() if k.lower() not in _UNCHECKED)
                else:
                    texts = headers.getall(where[7:], [])
                if any(rule.pattern.search(t) for t in texts):
                    return rule
        return None


#: Fields the header rules skip: the node's own routing and framing, already checked.
_UNCHECKED = frozenset({"host", "content-length", "transfer-encoding", "connection"})

#: Per place (path, query, headers): one alternation of every rule looking there.
Screens = dict[str, re.Pattern[str] | None]


def _screens(rules: Sequence[Rule]) -> Screens | None:
    """The rules' patterns joined per place, so that a request no rule matches (nearly
    all) costs one search per text rather than one per rule. A search of `A|B` finds
    a match exactly where A or B would, so the answer "none" is the same; which rule
    matched first is still asked rule by rule. None (no screen) when a rule cannot be
    joined: a named field (`header:NAME`), groups (a backreference would renumber) or
    flags of its own."""
    joined: dict[str, list[str]] = {where: [] for where in WHERES}
    for rule in rules:
        if rule.pattern.groups or rule.pattern.flags != _FLAGS:
            return None
        for where in rule.where:
            if where not in joined:
                return None
            joined[where].append(f"(?:{rule.pattern.pattern})")
    try:
        return {
            where: re.compile("|".join(parts), re.IGNORECASE) if parts else None
            for where, parts in joined.items()
        }
    except re.error:  # e.g. a global inline flag, legal only at a pattern's start
        return None


def _screened(
    screens: Screens, paths: Iterable[str], queries: Iterable[str], headers: Headers
) -> bool:
    """Whether any rule may match: a joined pattern is found in a text of its place."""
    path, query, fields = screens["path"], screens["query"], screens["headers"]
    if path is not None and any(path.search(t) for t in paths):
        return True
    if query is not None and any(query.search(t) for t in queries):
        return True
    return fields is not None and any(
        fields.search(v) for k, v in headers.items() if k.lower() not in _UNCHECKED
    )
