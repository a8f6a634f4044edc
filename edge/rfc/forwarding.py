"""The fields a proxy adds to a request it forwards, and loop detection.

Pure: the pipeline hands in the client's fields and what it knows of the connection
(peer address, scheme, whether the peer is a trusted proxy); this module says which
forwarding fields go upstream and whether the request is looping through this CDN.

  X-Forwarded-For    the client's list kept (and our peer appended) only when the peer
                     is a trusted proxy; otherwise replaced, so a client cannot forge
                     the address an origin or a shield acts on
  X-Forwarded-Proto  the scheme the client used (kept from a trusted proxy)
  X-Forwarded-Host   the Host this node keys on, always, also behind a trusted proxy:
                     an origin that reflects it into a response would otherwise let
                     whoever sets it change what is stored for everyone under the key
  Forwarded          RFC 7239, the same facts in the standard form
  CDN-Loop           RFC 8586: this CDN's name, with the node as a parameter
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from edge.rfc.policy import Headers, split_list

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The client-supplied fields this module rewrites (dropped before forwarding).
FORWARDING_FIELDS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")

#: Trusted proxies unless configured: none. Whoever shares the machine (every 127.x
#: address, e.g. `edge up`'s simulated clients) could otherwise forge a client address;
#: a shield names its edges' addresses (`edge up` and compose do).
DEFAULT_TRUSTED: tuple[str, ...] = ()


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) -> networks; ValueError names a bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"not a network: {value!r}") from exc
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as written (a peer, a forwarded hop), or None. Remembered: a request
    asks about its peer several times, and a client's next request is from the same."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port, as some proxies write it
        text = text[1 : text.index("]")]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_trusted(peer: str | None, networks: Sequence[Network]) -> bool:
    """Is the connection's peer one of the configured trusted proxies?"""
    if not networks:
        return False
    addr = _address(peer or "")
    return addr is not None and any(addr in net for net in networks)


def client_address(peer: str | None, headers: Headers, networks: Sequence[Network]) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the last
    address in X-Forwarded-For that is not itself a trusted proxy (nginx's
    real_ip_recursive): addresses left of an untrusted hop may be forged."""
    peer = peer or ""
    if not is_trusted(peer, networks):
        return peer
    chain = [a.strip() for a in split_list(headers.getall("X-Forwarded-For", [])) if a.strip()]
    for hop in reversed(chain):
        if not is_trusted(hop, networks):
            return hop if _address(hop) is not None else peer
    return chain[0] if chain else peer


def _node(peer: str) -> str:
    """RFC 7239 Section 6: a node name; IPv6 in brackets, quoted; unknown as such."""
    addr = _address(peer)
    if addr is None:
        return "unknown"
    if addr.version == 6:
        return f'"[{addr}]"'
    return str(addr)


def _value(text: str) -> str:
    """RFC 7239 Section 4: a token, or a quoted-string when it is not one."""
    if text and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def forwarding_fields(
    headers: Headers, *, peer: str | None, scheme: str, host: str, trusted: bool
) -> list[tuple[str, str]]:
    """X-Forwarded-For/-Proto/-Host and Forwarded for the upstream request. The caller
    drops the client's own copies (FORWARDING_FIELDS) first."""
    peer = peer or ""
    out: list[tuple[str, str]] = []
    prior_xff = ", ".join(headers.getall("X-Forwarded-For", [])) if trusted else ""
    if peer:
        out.append(("X-Forwarded-For", f"{prior_xff}, {peer}" if prior_xff else peer))
    elif prior_xff:
        out.append(("X-Forwarded-For", prior_xff))
    proto = headers.get("X-Forwarded-Proto") if trusted else None
    out.append(("X-Forwarded-Proto", proto or scheme))
    if host:
        out.append(("X-Forwarded-Host", host))
    element = f"for={_node(peer)}"
    if host:
        element += f";host={_value(host)}"
    element += f";proto={scheme}"
    prior = ", ".join(headers.getall("Forwarded", [])) if trusted else ""
    out.append(("Forwarded", f"{prior}, {element}" if prior else element))
    return out


def cdn_loop_entry(cdn_name: str, node: str) -> str:
    """RFC 8586 Section 2: this CDN's identifier, with the node that forwarded."""
    return f"{cdn_name}; node={node}"


def is_loop(headers: Headers, *, cdn_name: str, node: str, allowance: int) -> bool:
    """RFC 8586: the request has already passed through this node, or through this CDN
    more often than its tiers allow (`allowance` earlier hops: 0 at an edge, which
    faces clients, 1 at a shield, behind one edge)."""
    seen = 0
    for info in split_list(headers.getall("CDN-Loop", [])):
        cdn_id, *params = (p.strip() for p in info.split(";"))
        if cdn_id.lower() == node.lower():
            return True
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "node" and value.strip().strip('"') == node:
                return True
        if cdn_id.lower() == cdn_name.lower():
            seen += 1
    return seen > allowance
