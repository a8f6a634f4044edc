"""The Cache-Status response field (RFC 9211): one entry per cache that handled the
response, this node's appended last. Pure formatting; the pipeline decides the values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: RFC 8941 Section 3.3.4: sf-token; anything else is sent as an sf-string.
_SF_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")


def _item(value: str) -> str:
    """RFC 9211 Section 2: the cache name and detail are a Token or a String."""
    if _SF_TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class CacheStatus:
    """RFC 9211 Section 2 parameters for this node's entry."""

    node: str
    hit: bool = False
    fwd: str | None = None  # uri-miss | vary-miss | stale | request | bypass | miss
    fwd_status: int | None = None
    stored: bool = False
    collapsed: bool = False
    ttl: int | None = None
    detail: str | None = None

    def render(self) -> str:
        parts = [_item(self.node)]
        if self.hit:
            parts.append("hit")
        if self.fwd:
            parts.append(f"fwd={self.fwd}")
        if self.fwd_status is not None:
            parts.append(f"fwd-status={self.fwd_status}")
        if self.stored:
            parts.append("stored")
        if self.collapsed:
            parts.append("collapsed")
        if self.ttl is not None:
            parts.append(f"ttl={self.ttl}")
        if self.detail:
            parts.append(f"detail={_item(self.detail)}")
        return "; ".join(parts)

    @property
    def label(self) -> str:
        """A short name for logs and metrics: hit, stale, miss, pass, error..."""
        if self.hit:
            return "hit"
        if self.detail and self.detail.startswith("upstream"):
            return "error"
        return self.fwd or "synth"
