"""Cache keys: the effective request URI a response is stored under (RFC 9111
Section 2), and the parts of one that routing and purging look at. Pure."""

from __future__ import annotations


def cache_key(scheme: str, host: str, path_qs: str) -> str:
    """The primary cache key: the effective request URI, scheme and host lower-cased
    and the scheme's default port dropped."""
    scheme, host = scheme.lower(), host.lower()
    default = ":443" if scheme == "https" else ":80"
    if host.endswith(default):
        host = host[: -len(default)]
    return f"{scheme}://{host}{path_qs}"


def key_from_uri(uri: str) -> str:
    """The key of an absolute URI as a purge or a Location field names it."""
    scheme, _, rest = uri.partition("://")
    host, slash, path = rest.partition("/")
    return cache_key(scheme, host, slash + path if slash else "/")


def authority_of(key: str) -> str:
    """host[:port] of a key (the port only when it is not the scheme's default)."""
    return key.partition("://")[2].split("/", 1)[0]


def host_of(key: str) -> str:
    """The host of a key, lower-cased, without its port."""
    authority = authority_of(key)
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if ":" in authority else authority
