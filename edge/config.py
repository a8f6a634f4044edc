"""Configuration of a cache node: one dataclass, filled from a TOML file and/or the
command line. This module owns option parsing and validation (sizes like "10G",
listen addresses), and nothing else; bad values raise ConfigError with one line."""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.forwarding import DEFAULT_TRUSTED
from edge.policy import SET_COOKIE_DEFAULT, SET_COOKIE_MODES


class ConfigError(ValueError):
    """A configuration value a person must fix; its message is one line."""


#: The exit status of a node stopped by a configuration error (as cli.errors has it).
CONFIG_ERROR_STATUS = 2


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str | int) -> int:
    """'512M', '10G', '1.5g', '4096' -> bytes (binary units)."""
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"size must not be negative: {value}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"not a size: {value!r} (use e.g. 512M, 10G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(value: int) -> str:
    """Bytes -> the largest binary unit that divides them: 1073741824 -> '1G'."""
    for unit in ("t", "g", "m", "k"):
        if value and value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit.upper()}"
    return str(value)


#: The default largest object is this share of the cache: storing it evicts at most an
#: eighth of what is cached, and the cache holds at least eight such objects (with a
#: 1G cache, 128M; bigger objects are passed through unless max_object_size says more).
OBJECT_SHARE = 8


def default_name(role: str, listen: str) -> str:
    """ROLE-HOSTNAME-PORT, or ROLE-HOSTNAME-ADDRESS-PORT when the node listens on one
    address: nodes on one machine differ by role and listen address, so an edge in front
    of a shield there is not taken for a loop (RFC 8586), nor a coordinator's node for
    another."""
    host, port = parse_listen(listen, any_port=True)
    machine = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-.") or "localhost"
    if host in ("", "0.0.0.0", "::"):
        return f"{role}-{machine}-{port}"
    return f"{role}-{machine}-{host.replace(':', '_')}-{port}"


def parse_listen(value: str, *, any_port: bool = False) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' -> (host, port). With `any_port`, port 0
    (the system picks one) is allowed."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    low = 0 if any_port else 1
    if not sep or not port.isdigit() or not low <= int(port) < 65536:
        raise ConfigError(f"listen address must be HOST:PORT, got {value!r}")
    return (host or "0.0.0.0", int(port))


def parse_upstream(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream must be an http(s) URL, got {value!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigError(f"upstream has a bad port: {value!r}") from exc
    return value.strip().rstrip("/")


def _positive(name: str, value: Any, *, integer: bool = False, zero: bool = False) -> Any:
    kind = int if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or value < 0
        or (value == 0 and not zero)
    ):
        bound = ">= 0" if zero else "> 0"
        raise ConfigError(
            f"{name} must be a {'whole ' if integer else ''}number {bound}: {value!r}"
        )
    return value


#: Peers that may read /_edge/health in full and /_edge/metrics without a token.
DEFAULT_ADMIN_NETWORKS = ("127.0.0.1/32", "::1/128")

#: The most worker processes a node runs (edge.shared sizes its slots by it).
MAX_WORKERS = 64


def _workers(value: Any) -> int:
    """1..MAX_WORKERS, from TOML (an integer) or the command line (digits)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"workers must be a whole number from 1 to {MAX_WORKERS}: {value!r}")
    return value


@dataclass(frozen=True)
class MemberConfig:
    url: str
    weight: int = 1


@dataclass(frozen=True)
class PoolConfig:
    """One upstream pool: its members and how requests are spread and retried."""

    name: str
    members: tuple[MemberConfig, ...]
    strategy: str = "round-robin"
    # Active health checks: off unless a path is set.
    health_path: str = ""
    health_interval: float = 5.0
    health_timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    # Passive health: consecutive failures that eject a member, and for how long.
    failures: int = 3
    cooldown: float = 10.0
    # Keep-alive connections per member, and how long an idle one is kept: less than
    # a node's own 5 s keepalive_timeout, so that behind an edge a shield does not
    # close a connection just as the edge sends on it.
    max_connections: int = 256
    keepalive_timeout: float = 4.0
    # Seconds to connect, and between reads; 0: the node's upstream timeouts.
    connect_timeout: float = 0.0
    read_timeout: float = 0.0
    # Extra attempts on other members for a failed idempotent request.
    retries: int = 2
    retry_statuses: tuple[int, ...] = (500, 502, 503, 504)
    # The Host sent upstream; empty: the client's.
    host_header: str = ""


@dataclass(frozen=True)
class RouteConfig:
    """Requests for `host` ("*.example" for subdomains, "*" for any) go to `pool`;
    when none of its members can answer, to `fallback` (e.g. shields -> origin)."""

    host: str
    pool: str
    fallback: str = ""


_POOL_KEYS = {f.name for f in fields(PoolConfig)} - {"name"}


def pool_from_table(name: str, table: dict[str, Any]) -> PoolConfig:
    """A [pools.NAME] table -> PoolConfig. Members are URLs or {url, weight} tables."""
    from edge.balance import STRATEGIES

    unknown = set(k.replace("-", "_") for k in table) - _POOL_KEYS
    if unknown:
        raise ConfigError(f"unknown setting in pool {name}: {', '.join(sorted(unknown))}")
    values = {k.replace("-", "_"): v for k, v in table.items()}
    raw_members = values.pop("members", None)
    if not isinstance(raw_members, list) or not raw_members:
        raise ConfigError(f"pool {name} needs members = [URL, ...]")
    members = []
    for item in raw_members:
        if isinstance(item, str):
            members.append(MemberConfig(parse_upstream(item)))
        elif isinstance(item, dict) and isinstance(item.get("url"), str):
            weight = _positive(f"weight of {item['url']}", item.get("weight", 1), integer=True)
            members.append(MemberConfig(parse_upstream(item["url"]), weight))
        else:
            raise ConfigError(f"pool {name}: a member is a URL or {{url = ..., weight = N}}")
    if len({m.url for m in members}) != len(members):
        raise ConfigError(f"pool {name} names a member twice")
    if "retry_statuses" in values:
        values["retry_statuses"] = tuple(values["retry_statuses"])
    try:
        pool = PoolConfig(name=name, members=tuple(members), **values)
    except TypeError as exc:
        raise ConfigError(f"pool {name}: {exc}") from exc
    if pool.strategy not in STRATEGIES:
        raise ConfigError(
            f"pool {name}: unknown strategy {pool.strategy!r} (one of {', '.join(STRATEGIES)})"
        )
    if pool.health_path and not pool.health_path.startswith("/"):
        raise ConfigError(f"pool {name}: health_path must start with '/'")
    for key in ("health_interval", "health_timeout", "cooldown", "keepalive_timeout"):
        _positive(f"pool {name}: {key}", getattr(pool, key))
    for key in ("connect_timeout", "read_timeout"):
        _positive(f"pool {name}: {key}", getattr(pool, key), zero=True)
    for key in ("rise", "fall", "failures", "max_connections"):
        _positive(f"pool {name}: {key}", getattr(pool, key), integer=True)
    _positive(f"pool {name}: retries", pool.retries, integer=True, zero=True)
    return pool


def route_from_value(host: str, value: Any) -> RouteConfig:
    """A [routes] entry: HOST = "POOL" or HOST = {pool = "...", fallback = "..."}."""
    host = host.strip().lower()
    if isinstance(value, str):
        return RouteConfig(host, value)
    if isinstance(value, dict) and isinstance(value.get("pool"), str):
        extra = set(value) - {"pool", "fallback"}
        if extra:
            raise ConfigError(f"route {host}: unknown setting {sorted(extra)[0]}")
        return RouteConfig(host, value["pool"], str(value.get("fallback", "")))
    raise ConfigError(f'route {host} must be "POOL" or {{pool = "...", fallback = "..."}}')


@dataclass
class NodeConfig:
    """Everything a cache node needs; defaults are safe for a public edge."""

    listen: str = "127.0.0.1:8080"
    # What is behind the node. Simple form: origins (and, at an edge, shields, with
    # the origins as the fallback when no shield can answer). Full form: named pools
    # and host routes. `upstream` is the one-URL shorthand for an origin.
    upstream: str = ""
    origins: tuple[str, ...] = ()
    shields: tuple[str, ...] = ()
    balance: str = ""  # strategy of the origin pool (shields: consistent-hash)
    origin_direct: bool = True  # an edge may skip failed shields and ask the origin
    pools: dict[str, Any] = field(default_factory=dict)
    routes: dict[str, Any] = field(default_factory=dict)
    # Peers whose X-Forwarded-For / Forwarded are believed (edges, at a shield); none
    # unless named (edge.forwarding.DEFAULT_TRUSTED).
    trusted_proxies: tuple[str, ...] = DEFAULT_TRUSTED
    # RFC 8586: this CDN's name in CDN-Loop, and how many of its hops a request may
    # already carry (default: 0 at an edge, 1 at a shield).
    cdn_name: str = "edge"
    loop_allowance: int | None = None
    # Upstream fields clients do not see; and the node's own Server field.
    hide_headers: tuple[str, ...] = ("Server", "X-Powered-By")
    server_header: str = "edge"
    # Purges: the coordinator this node subscribes to (empty: none), its token (or
    # EDGE_NODE_TOKEN), the node's region, the address it is reached at (default: its
    # listen address), and how long start-up waits to catch up before serving.
    coordinator: str = ""
    coordinator_token: str = ""
    region: str = ""
    advertise: str = ""
    resume_timeout: float = 10.0
    # Token for PURGE requests and POST /_edge/purge on this node (or EDGE_ADMIN_TOKEN);
    # empty: purging this node directly is refused.
    admin_token: str = ""
    # -- the guard (edge.guard): limits on what a client controls -----------------
    # Request line and each header line (bytes), header count and all header bytes
    # (32K: nginx's large_client_header_buffers and Varnish's http_req_size; a head
    # larger than that is an attack or a cookie jar gone wrong, 431 either way).
    max_request_line: int = 8190
    max_header_size: int = 8190
    max_headers: int = 100
    max_header_bytes: int = 32 << 10
    max_body_size: int = 16 << 20
    # Seconds to send a request head once it has begun (slowloris); to send a body
    # (extended by a second per body_min_rate bytes, like Apache's mod_reqtimeout);
    # a connection idle before its first request or between requests is closed after
    # keepalive_timeout (5 s: Varnish's timeout_idle; an idle connection costs a
    # socket and memory, and a crowd of them is the cheapest attack there is).
    header_timeout: float = 10.0
    body_timeout: float = 20.0
    body_min_rate: int = 500
    keepalive_timeout: float = 5.0
    # Open connections one client address may hold (0: no limit; trusted proxies
    # are not limited).
    max_connections_per_client: int = 128
    # Token bucket per client address: requests/s and burst (0: off); classes give
    # a host and/or path pattern its own bucket ({name, host, path, rate, burst}).
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    rate_classes: tuple[dict[str, Any], ...] = ()
    # Seconds a request over its rate is held before its 429 (0: answered at once).
    rate_tarpit: float = 1.0
    # Methods a client may use (405 otherwise); "*" allows any method but CONNECT
    # and TRACE (an unknown one is forwarded and invalidates, RFC 9111 Section 4.4).
    allowed_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    # Request rules (edge.waf): the shipped set on/off, a TOML file of more rules,
    # and per-host switches {host = false}.
    waf: bool = True
    waf_rules: str = ""
    waf_hosts: dict[str, Any] = field(default_factory=dict)
    # The cache key's query: "keep" as sent, "sort" parameters, or "ignore" it; and
    # parameters left out of the key (a trailing * matches a prefix, e.g. "utm_*").
    key_query: str = "keep"
    key_query_ignore: tuple[str, ...] = ()
    # Request fields that could change a response but are not in the key: stripped
    # before forwarding unless listed in keyed_headers (then they vary the key).
    unkeyed_headers: tuple[str, ...] = (
        "X-Forwarded-Host",
        "X-Forwarded-Scheme",
        "X-Forwarded-Server",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Original-URL",
        "X-Original-Host",
        "X-Rewrite-URL",
        "X-Host",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    )
    keyed_headers: tuple[str, ...] = ()
    # Request fields with "_" in their names are not forwarded unless this is on
    # (nginx's underscores_in_headers): CGI-style origins read X_Original_URL as
    # X-Original-URL, past the unkeyed list above.
    underscores_in_headers: bool = False
    # Responses that set a cookie (edge.policy.is_storable): "never" shared (the
    # default), or shared on the origin's say-so: "public" (public, s-maxage or a
    # targeted field), "explicit" (also max-age or Expires) or "rfc" (as RFC 9111
    # alone allows, a cookie set on a 304 included).
    set_cookie: str = SET_COOKIE_DEFAULT
    # Admin endpoints (/_edge/...): a separate internal listener (empty: none), and
    # the networks from which health and metrics need no token: the machine's own
    # 127.0.0.1 and ::1 only, not all of 127.0.0.0/8, which may hold other tenants
    # (`edge up` puts its simulated clients on 127.R.255.x).
    admin_listen: str = ""
    admin_networks: tuple[str, ...] = DEFAULT_ADMIN_NETWORKS
    # -- TLS (edge.tls) -----------------------------------------------------------
    # Certificate chains and keys, paired in order; several are chosen by SNI.
    tls_cert: tuple[str, ...] = ()
    tls_key: tuple[str, ...] = ()
    # A plain-HTTP listener that redirects to https (empty: none); HSTS max-age
    # (0: no Strict-Transport-Security); CA bundle for https upstreams.
    http_redirect: str = ""
    hsts: int = 0
    upstream_ca: str = ""
    cache_dir: Path = Path("./cache")
    cache_size: int = 1 << 30
    # The largest object stored; 0: cache_size / OBJECT_SHARE (validate() fills it in).
    max_object_size: int = 0
    # Objects larger than slice_threshold are cached as slices of slice_size bytes.
    slice_size: int = 4 << 20
    slice_threshold: int = 16 << 20
    # Unique per node: Cache-Status, Via, CDN-Loop (loop detection) and the purge
    # coordinator know a node by it; "": default_name(role, listen), filled by validate().
    name: str = ""
    role: str = "edge"
    # RFC 9111 Section 4.2.2: fraction of (Date - Last-Modified), and its cap.
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    # Seconds a stale response may be served when the upstream fails and the
    # response said nothing (stale-if-error extends it; must-revalidate forbids it).
    stale_if_error_grace: float = 0.0
    # RFC 9111 Section 5.1 says a cache SHOULD ignore an invalid Age; edge treats the
    # response as stale unless this is turned off (see edge.policy.parse_age).
    invalid_age_is_stale: bool = True
    # RFC 9213 targeted fields honoured, in order of precedence.
    targeted_fields: tuple[str, ...] = ("CDN-Cache-Control", "Surrogate-Control")
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 30.0
    access_log: bool = True
    # Answer repeated plain hits of small objects from memory (edge.fastpath).
    fast_path: bool = True
    # Worker processes (edge.workers), each a whole node on one listening port
    # (SO_REUSEPORT) over one cache directory; 1: this process serves alone.
    workers: int = 1
    # Filled by validate(): the pools and routes in their checked form.
    pool_configs: dict[str, PoolConfig] = field(default_factory=dict, init=False, repr=False)
    route_configs: list[RouteConfig] = field(default_factory=list, init=False, repr=False)

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen, any_port=True)

    def validate(self) -> NodeConfig:
        parse_listen(self.listen, any_port=True)
        if self.role not in ("edge", "shield"):
            raise ConfigError(f"role must be edge or shield: {self.role!r}")
        self.pool_configs, self.route_configs = self._upstreams()
        from edge.forwarding import parse_networks

        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"trusted_proxies: {exc}") from exc
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.cdn_name):
            raise ConfigError(f"cdn_name must be a token: {self.cdn_name!r}")
        if self.loop_allowance is None:
            self.loop_allowance = 0 if self.role == "edge" else 1
        self.coordinator_token = self.coordinator_token or os.environ.get("EDGE_NODE_TOKEN", "")
        self.admin_token = self.admin_token or os.environ.get("EDGE_ADMIN_TOKEN", "")
        if self.coordinator:
            self.coordinator = parse_upstream(self.coordinator)
            if not self.coordinator_token:
                raise ConfigError(
                    "a coordinator needs a token (coordinator_token or EDGE_NODE_TOKEN)"
                )
        if self.region and not re.fullmatch(r"[A-Za-z0-9._-]+", self.region):
            raise ConfigError(f"region must be letters, digits, '.', '_' or '-': {self.region!r}")
        if not self.advertise:
            host, port = self.host_port
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            self.advertise = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.cache_size = parse_size(self.cache_size)
        self.max_object_size = parse_size(self.max_object_size)
        if not self.max_object_size:
            self.max_object_size = self.cache_size // OBJECT_SHARE
        elif self.max_object_size > self.cache_size:
            raise ConfigError(
                f"max_object_size ({format_size(self.max_object_size)}) is larger than "
                f"cache_size ({format_size(self.cache_size)}): storing one such object "
                "would evict everything else"
            )
        self.slice_size = parse_size(self.slice_size)
        self.slice_threshold = parse_size(self.slice_threshold)
        if self.slice_size < 64 << 10:
            raise ConfigError("slice size must be at least 64K")
        self.cache_dir = Path(self.cache_dir)
        if not self.name:
            self.name = default_name(self.role, self.listen)
        if not self.name or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ConfigError(f"node name must be letters, digits, '.', '_' or '-': {self.name!r}")
        if self.cache_size < 1 << 20:
            raise ConfigError("cache size must be at least 1M")
        self._validate_guard()
        self._validate_tls()
        self.workers = _workers(self.workers)
        return self

    def _validate_tls(self) -> None:
        """Shape only; edge.tls loads and checks the files when the node starts."""
        if len(self.tls_cert) != len(self.tls_key):
            raise ConfigError(
                f"--tls-cert and --tls-key come in pairs: {len(self.tls_cert)} certificate(s), "
                f"{len(self.tls_key)} key(s)"
            )
        if self.http_redirect:
            if not self.tls_cert:
                raise ConfigError("http_redirect needs TLS (--tls-cert and --tls-key)")
            parse_listen(self.http_redirect)
        _positive("hsts", self.hsts, integer=True, zero=True)
        if self.hsts and not self.tls_cert:
            raise ConfigError("hsts needs TLS (--tls-cert and --tls-key)")

    def _validate_guard(self) -> None:
        """The guard's settings (edge.guard, edge.waf): each mistake one line."""
        self.max_body_size = parse_size(self.max_body_size)
        self.max_header_bytes = parse_size(self.max_header_bytes)
        for key in ("max_request_line", "max_header_size", "max_headers"):
            _positive(key, getattr(self, key), integer=True)
        for key in ("header_timeout", "body_timeout", "keepalive_timeout"):
            _positive(key, getattr(self, key))
        for key in ("body_min_rate", "max_connections_per_client"):
            _positive(key, getattr(self, key), integer=True, zero=True)
        _positive("rate_limit", self.rate_limit, zero=True)
        _positive("rate_burst", self.rate_burst, zero=True)
        _positive("rate_tarpit", self.rate_tarpit, zero=True)
        if self.rate_limit and self.rate_burst and self.rate_burst < 1:
            raise ConfigError("rate_burst must be at least 1")
        from edge.guard import rate_classes

        try:
            rate_classes(self.rate_limit, self.rate_burst, self.rate_classes)
        except ValueError as exc:
            raise ConfigError(f"rate_classes: {exc}") from exc
        methods = tuple(m.strip().upper() for m in self.allowed_methods)
        if not methods or not all(re.fullmatch(r"[A-Z][A-Z-]*|\*", m) for m in methods):
            raise ConfigError(f"allowed_methods must be method names: {self.allowed_methods!r}")
        if "CONNECT" in methods or "TRACE" in methods:
            raise ConfigError("CONNECT and TRACE cannot be allowed at a cache node")
        self.allowed_methods = methods
        if self.key_query not in ("keep", "sort", "ignore"):
            raise ConfigError(f"key_query must be keep, sort or ignore: {self.key_query!r}")
        if self.set_cookie not in SET_COOKIE_MODES:
            raise ConfigError(
                f"set_cookie must be one of {', '.join(SET_COOKIE_MODES)}: {self.set_cookie!r}"
            )
        if not isinstance(self.waf_hosts, dict) or not all(
            isinstance(v, bool) for v in self.waf_hosts.values()
        ):
            raise ConfigError("waf_hosts must be a table of host = true/false")
        if self.waf_rules:
            from edge.waf import RuleError, load_rules

            try:
                load_rules(self.waf_rules)
            except RuleError as exc:
                raise ConfigError(str(exc)) from exc
        if self.admin_listen:
            parse_listen(self.admin_listen)
        from edge.forwarding import parse_networks

        try:
            parse_networks(self.admin_networks)
        except ValueError as exc:
            raise ConfigError(f"admin_networks: {exc}") from exc

    def _upstreams(self) -> tuple[dict[str, PoolConfig], list[RouteConfig]]:
        """The pools and host routes, from the full form or the simple one."""
        if self.pools:
            if self.shields or self.origins or self.upstream:
                raise ConfigError("use either [pools] or origins/shields/upstream, not both")
            pools = {}
            for name, table in self.pools.items():
                if not isinstance(table, dict):
                    raise ConfigError(f"[pools.{name}] must be a table")
                pools[name] = pool_from_table(name, table)
            if not self.routes:
                if len(pools) != 1:
                    raise ConfigError("several pools need [routes] (HOST = POOL)")
                routes = [RouteConfig("*", next(iter(pools)))]
            else:
                routes = [route_from_value(h, v) for h, v in self.routes.items()]
            for route in routes:
                for ref in (route.pool, route.fallback):
                    if ref and ref not in pools:
                        raise ConfigError(f"route {route.host} names an unknown pool {ref!r}")
            return pools, routes
        if self.routes:
            raise ConfigError("[routes] need [pools]")
        origins = [*((self.upstream,) if self.upstream else ()), *self.origins]
        if self.role == "shield" and self.shields:
            raise ConfigError("a shield's upstream is its origins, not other shields")
        if not origins and not self.shields:
            raise ConfigError("no upstream: name an origin (--origin URL) or shields")
        table: dict[str, Any] = {}
        if self.balance:
            table["strategy"] = self.balance
        pools: dict[str, PoolConfig] = {}
        if origins:
            pools["origin"] = pool_from_table("origin", {"members": origins, **table})
        if self.shields:
            pools["shields"] = pool_from_table(
                "shields",
                {
                    "members": list(self.shields),
                    # Each object at one shield; a shield is watched through its health
                    # endpoint, so a dead one leaves within seconds.
                    "strategy": "consistent-hash",
                    "health_path": "/_edge/health",
                    "health_interval": 1.0,
                    "health_timeout": 1.0,
                    "rise": 2,
                    "fall": 2,
                    "failures": 2,
                    "cooldown": 2.0,
                    # Shields answer 5xx only when the origin did: not theirs to retry.
                    "retry_statuses": [],
                },
            )
            fallback = "origin" if origins and self.origin_direct else ""
            return pools, [RouteConfig("*", "shields", fallback)]
        return pools, [RouteConfig("*", "origin")]

    @property
    def upstream_summary(self) -> str:
        """One line for logs: what the node forwards to."""
        parts = []
        for route in self.route_configs:
            pool = self.pool_configs[route.pool]
            text = f"{route.host} -> {' '.join(m.url for m in pool.members)}"
            if route.fallback:
                fallback = self.pool_configs[route.fallback]
                text += f" (else {' '.join(m.url for m in fallback.members)})"
            parts.append(text)
        return "; ".join(parts)


def load_config(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """Read a TOML file (keys as NodeConfig fields, '-' or '_'), then apply the
    command line's non-None overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        known = {f.name for f in fields(NodeConfig) if f.init}
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown setting in {path}: {key}")
            values[name] = tuple(value) if isinstance(value, list) else value
    for key in ("origins", "shields", "trusted_proxies", "hide_headers", "tls_cert", "tls_key"):
        if isinstance(overrides.get(key), list):
            overrides[key] = tuple(overrides[key]) or None
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return NodeConfig(**values).validate()
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
