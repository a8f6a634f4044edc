"""Configuration of a cache node: one dataclass, filled from a TOML file and/or the
command line. This module owns the node options (each declared once, as a NodeConfig
field made with edge.options.opt), their parsing and validation (sizes like "10G",
listen addresses), the TOML loader and the argv builder derived from them, and
nothing else; bad values raise ConfigError with one line."""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.options import (
    ROLES,
    Check,
    ConfigError,
    Kind,
    Option,
    format_size,
    kind_check,
    opt,
    options_of,
)
from edge.rfc.forwarding import DEFAULT_TRUSTED
from edge.rfc.policy import SET_COOKIE_DEFAULT, SET_COOKIE_MODES
from edge.upstream.balance import STRATEGIES

#: The exit status of a node stopped by a configuration error (as cli.errors has it).
CONFIG_ERROR_STATUS = 2


#: The default largest object is this share of the cache: storing it evicts at most an
#: eighth of what is cached, and the cache holds at least eight such objects (with a
#: 1G cache, 128M; bigger objects are passed through unless max_object_size says more).
OBJECT_SHARE = 8


def default_name(role: str, listen: str, pid: int | None = None) -> str:
    """ROLE-HOSTNAME-PORT, or ROLE-HOSTNAME-ADDRESS-PORT when the node listens on one
    address: nodes on one machine differ by role and listen address, so an edge in front
    of a shield there is not taken for a loop (RFC 8586), nor a coordinator's node for
    another. Port 0 (the system picks one) tells two nodes apart by nothing, so there the
    process id is added (`pid`: this process's by default; its workers are forked from it
    after the name is set, so they share it)."""
    host, port = parse_listen(listen, any_port=True)
    machine = re.sub(r"[^A-Za-z0-9.-]+", "-", socket.gethostname()).strip("-.") or "localhost"
    where = f"{port}" if port else f"0-pid{os.getpid() if pid is None else pid}"
    if host in ("", "0.0.0.0", "::"):
        return f"{role}-{machine}-{where}"
    return f"{role}-{machine}-{host.replace(':', '_')}-{where}"


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

#: The most worker processes a node runs (edge.multiproc.shared sizes its slots by it).
MAX_WORKERS = 64


def _workers(name: str, value: Any) -> int:
    """1..MAX_WORKERS, from TOML (an integer) or the command line (digits)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(f"{name} must be a whole number from 1 to {MAX_WORKERS}: {value!r}")
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
    from edge.upstream.balance import STRATEGIES

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


# -- the options' own checks: each takes the option's name and value, returns the value


def _whole(*, zero: bool = False) -> Check:
    return lambda name, value: _positive(name, value, integer=True, zero=zero)


def _number(*, zero: bool = False) -> Check:
    return lambda name, value: _positive(name, value, zero=zero)


def _matching(pattern: str, what: str, *, label: str = "", empty: bool = True) -> Check:
    """Text that matches `pattern` (or is empty, where `empty`)."""

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str) or not (
            (empty and not value) or re.fullmatch(pattern, value)
        ):
            raise ConfigError(f"{label or name} must be {what}: {value!r}")
        return value

    return check


def _address(*, any_port: bool) -> Check:
    """HOST:PORT, or empty where the option is optional (all but listen)."""

    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be HOST:PORT: {value!r}")
        if value or name == "listen":
            parse_listen(value, any_port=any_port)
        return value

    return check


def _url(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be an http(s) URL: {value!r}")
    return parse_upstream(value) if value else value


def _urls(name: str, value: Any) -> str:
    """One http(s) URL, or several separated by commas (coordinators sharing one log)."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be http(s) URLs separated by commas: {value!r}")
    if not value:
        return value
    return ",".join(_url(name, part.strip()) for part in value.split(",") if part.strip())


def _networks(name: str, value: Any) -> tuple[str, ...]:
    from edge.rfc.forwarding import parse_networks

    networks = kind_check(Kind.LIST)(name, value)
    try:
        parse_networks(networks)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    return networks


def _one_of(*choices: str, listed: bool = False) -> Check:
    """One of `choices`; the error lists them ("one of a, b, c" where `listed`)."""
    said = (
        f"one of {', '.join(choices)}" if listed else f"{', '.join(choices[:-1])} or {choices[-1]}"
    )

    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{name} must be {said}: {value!r}")
        return value

    return check


def _size_at_least(least: int, label: str) -> Check:
    def check(name: str, value: Any) -> int:
        size = kind_check(Kind.SIZE)(name, value)
        if size < least:
            raise ConfigError(f"{label} must be at least {format_size(least)}")
        return size

    return check


def _loop_allowance(name: str, value: Any) -> int | None:
    return None if value is None else _positive(name, value, integer=True, zero=True)


def _methods(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)) and all(isinstance(m, str) for m in value):
        methods = tuple(m.strip().upper() for m in value)
        if methods and all(re.fullmatch(r"[A-Z][A-Z-]*|\*", m) for m in methods):
            if "CONNECT" in methods or "TRACE" in methods:
                raise ConfigError("CONNECT and TRACE cannot be allowed at a cache node")
            return methods
    raise ConfigError(f"{name} must be method names: {value!r}")


def _waf_hosts(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
        raise ConfigError(f"{name} must be a table of host = true/false")
    return value


def _waf_rules(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a path: {value!r}")
    if value:
        from edge.features.waf import RuleError, load_rules

        try:
            load_rules(value)
        except RuleError as exc:
            raise ConfigError(str(exc)) from exc
    return value


_TOKEN = r"[A-Za-z0-9._-]+"
_LETTERS = "letters, digits, '.', '_' or '-'"
_NODE_NAME = _matching(_TOKEN, _LETTERS, label="node name")
_EDGE = ("edge",)


@dataclass
class NodeConfig:
    """Everything a cache node needs; defaults are safe for a public edge. Each option
    is declared here once (edge.options.opt): the command line (cli.serve), the TOML
    loader (load_config) and the argv builder (to_argv) are derived from these fields."""

    listen: str = opt(
        "127.0.0.1:8080",
        "HOST:PORT to listen on.",
        kind=Kind.TEXT,
        flags="--listen",
        check=_address(any_port=True),
    )
    # What is behind the node. Simple form: origins (and, at an edge, shields, with
    # the origins as the fallback when no shield can answer). Full form: named pools
    # and host routes.
    upstream: str = opt(
        "",
        "One upstream base URL (shorthand for a single --origin).",
        kind=Kind.TEXT,
        flags="--upstream",
    )
    origins: tuple[str, ...] = opt(
        (), "Origin base URL; repeat for a pool of origins.", kind=Kind.LIST, flags="--origin"
    )
    shields: tuple[str, ...] = opt(
        (),
        "Origin shield base URL; repeat for several (each object at one shield, by "
        "rendezvous hashing).",
        kind=Kind.LIST,
        flags="--shield",
        roles=_EDGE,
    )
    balance: str = opt(
        "",
        f"Origin pool strategy: {', '.join(STRATEGIES)}.",
        kind=Kind.TEXT,
        flags="--balance",
        shown=PoolConfig.strategy,
    )
    origin_direct: bool = opt(
        True,
        "Never go to the origins directly when no shield can answer.",
        kind=Kind.FLAG,
        flags="--no-origin-direct",
        roles=_EDGE,
        shown="off: the origins answer when no shield can",
    )
    pools: dict[str, Any] = opt(
        help="Named upstream pools: [pools.NAME] tables (members, strategy, health checks, "
        "timeouts, retries).",
        kind=Kind.TABLE,
        factory=dict,
    )
    routes: dict[str, Any] = opt(
        help='Host routes to pools: HOST = "POOL" or {pool, fallback}.',
        kind=Kind.TABLE,
        factory=dict,
    )
    trusted_proxies: tuple[str, ...] = opt(
        DEFAULT_TRUSTED,
        "Network (CIDR) whose X-Forwarded-For/Forwarded is believed, e.g. a "
        "shield's edges; repeatable.",
        kind=Kind.LIST,
        flags="--trusted-proxy",
        check=_networks,
    )
    cdn_name: str = opt(
        "edge",
        "This CDN's name in CDN-Loop (RFC 8586).",
        kind=Kind.TEXT,
        check=_matching(_TOKEN, "a token", empty=False),
    )
    loop_allowance: int | None = opt(
        None,
        "CDN-Loop hops of this CDN a request may already carry (RFC 8586).",
        kind=Kind.INT,
        shown="0 at an edge, 1 at a shield",
        check=_loop_allowance,
    )
    hide_headers: tuple[str, ...] = opt(
        ("Server", "X-Powered-By"),
        "Upstream response fields clients do not see.",
        kind=Kind.LIST,
    )
    server_header: str = opt("edge", "The node's own Server field.", kind=Kind.TEXT)
    # -- purges -------------------------------------------------------------------
    coordinator: str = opt(
        "",
        "Purge coordinator URL to subscribe to, or several separated by commas "
        "(coordinators sharing one log: the next is tried when one fails); token: "
        "coordinator_token in --config, or EDGE_NODE_TOKEN.",
        kind=Kind.TEXT,
        flags="--coordinator",
        check=_urls,
    )
    coordinator_token: str = opt(
        "", "Token for the coordinator.", kind=Kind.TEXT, env="EDGE_NODE_TOKEN"
    )
    region: str = opt(
        "",
        "This node's region, e.g. eu.",
        kind=Kind.TEXT,
        flags="--region",
        check=_matching(_TOKEN, _LETTERS),
    )
    advertise: str = opt(
        "",
        "URL the coordinator reaches this node at.",
        kind=Kind.TEXT,
        shown="http://HOST:PORT of --listen",
    )
    resume_timeout: float = opt(
        10.0,
        "Seconds start-up waits to catch up with the coordinator before serving.",
        kind=Kind.NUMBER,
        check=_number(zero=True),
    )
    admin_token: str = opt(
        "",
        "Token for PURGE requests and POST /_edge/purge on this node; none: purging "
        "this node directly is refused.",
        kind=Kind.TEXT,
        env="EDGE_ADMIN_TOKEN",
    )
    # -- the guard (edge.features.guard): limits on what a client controls -----------------
    # Request line and each header line (bytes), header count and all header bytes
    # (32K: nginx's large_client_header_buffers and Varnish's http_req_size; a head
    # larger than that is an attack or a cookie jar gone wrong, 431 either way).
    max_request_line: int = opt(
        8190, "Longest request line (bytes).", kind=Kind.INT, check=_whole()
    )
    max_header_size: int = opt(8190, "Longest header line (bytes).", kind=Kind.INT, check=_whole())
    max_headers: int = opt(100, "Most header fields.", kind=Kind.INT, check=_whole())
    max_header_bytes: int = opt(32 << 10, "Most bytes of all header fields.", kind=Kind.SIZE)
    max_body_size: int = opt(16 << 20, "Largest request body.", kind=Kind.SIZE)
    # Seconds to send a request head once it has begun (slowloris); to send a body
    # (extended by a second per body_min_rate bytes, like Apache's mod_reqtimeout);
    # a connection idle before its first request or between requests is closed after
    # keepalive_timeout (5 s: Varnish's timeout_idle; an idle connection costs a
    # socket and memory, and a crowd of them is the cheapest attack there is).
    header_timeout: float = opt(
        10.0, "Seconds to send a request head once begun.", kind=Kind.NUMBER, check=_number()
    )
    body_timeout: float = opt(
        20.0, "Seconds to send a request body.", kind=Kind.NUMBER, check=_number()
    )
    body_min_rate: int = opt(
        500, "Bytes per extra second of body_timeout.", kind=Kind.INT, check=_whole(zero=True)
    )
    keepalive_timeout: float = opt(
        5.0, "Seconds an idle connection is kept.", kind=Kind.NUMBER, check=_number()
    )
    max_connections_per_client: int = opt(
        128,
        "Open connections per client address (0: no limit; trusted proxies are not limited).",
        kind=Kind.INT,
        check=_whole(zero=True),
    )
    # A token bucket per client address; classes give a host and/or path pattern its
    # own bucket ({name, host, path, rate, burst}).
    rate_limit: float = opt(
        0.0,
        "Requests per second per client address (0: off).",
        kind=Kind.NUMBER,
        check=_number(zero=True),
    )
    rate_burst: float = opt(
        0.0, "Burst of the per-client rate.", kind=Kind.NUMBER, check=_number(zero=True)
    )
    rate_classes: tuple[dict[str, Any], ...] = opt(
        (), "Rate classes: [{name, host, path, rate, burst}].", kind=Kind.TABLES
    )
    rate_tarpit: float = opt(
        1.0,
        "Seconds a request over its rate is held before its 429 (0: at once).",
        kind=Kind.NUMBER,
        check=_number(zero=True),
    )
    # "*" (the default) allows any method but CONNECT and TRACE: an extension method is
    # the origin's to answer, forwarded as nginx and Varnish forward it (and, being
    # unsafe, it invalidates, RFC 9111 Section 4.4). A list narrows it.
    allowed_methods: tuple[str, ...] = opt(
        ("*",),
        "Methods a client may use (405 otherwise).",
        kind=Kind.LIST,
        check=_methods,
    )
    # Request rules (edge.features.waf).
    waf: bool = opt(True, "Apply the shipped request rules.", kind=Kind.FLAG)
    waf_rules: str = opt("", "TOML file of more request rules.", kind=Kind.TEXT, check=_waf_rules)
    waf_hosts: dict[str, Any] = opt(
        help="Request rules per host: {host = false}.",
        kind=Kind.TABLE,
        factory=dict,
        check=_waf_hosts,
    )
    # The cache key's query, and parameters left out of the key (a trailing * matches
    # a prefix, e.g. "utm_*").
    key_query: str = opt(
        "keep",
        "The cache key's query: keep as sent, sort parameters, or ignore it.",
        kind=Kind.TEXT,
        check=_one_of("keep", "sort", "ignore"),
    )
    key_query_ignore: tuple[str, ...] = opt(
        (), "Query parameters left out of the key.", kind=Kind.LIST
    )
    # Request fields that could change a response but are not in the key: stripped
    # before forwarding unless listed in keyed_headers (then they vary the key).
    unkeyed_headers: tuple[str, ...] = opt(
        (
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
        ),
        "Request fields stripped before forwarding (not in the key).",
        kind=Kind.LIST,
    )
    keyed_headers: tuple[str, ...] = opt(
        (), "Request fields forwarded and varying the key.", kind=Kind.LIST
    )
    # CGI-style origins read X_Original_URL as X-Original-URL, past the unkeyed list
    # above (nginx's underscores_in_headers).
    underscores_in_headers: bool = opt(
        False, "Forward request fields with '_' in their names.", kind=Kind.FLAG
    )
    # Responses that set a cookie (edge.rfc.policy.is_storable): "never" shared, or on the
    # origin's say-so: "public" (public, s-maxage or a targeted field), "explicit" (also
    # max-age or Expires) or "rfc" (as RFC 9111 alone allows, a cookie set on a 304 too).
    set_cookie: str = opt(
        SET_COOKIE_DEFAULT,
        "When a response that sets a cookie is shared.",
        kind=Kind.TEXT,
        check=_one_of(*SET_COOKIE_MODES, listed=True),
    )
    # Admin endpoints (/_edge/...). Health and metrics need no token from the machine's
    # own 127.0.0.1 and ::1 only, not all of 127.0.0.0/8, which may hold other tenants
    # (`edge up` puts its simulated clients on 127.R.255.x).
    admin_listen: str = opt(
        "",
        "HOST:PORT of a separate admin listener.",
        kind=Kind.TEXT,
        check=_address(any_port=False),
    )
    admin_networks: tuple[str, ...] = opt(
        DEFAULT_ADMIN_NETWORKS,
        "Networks whose health and metrics requests need no token.",
        kind=Kind.LIST,
        check=_networks,
    )
    # -- TLS (edge.server.tls): shape here; edge.server.tls loads the files at start ----
    tls_cert: tuple[str, ...] = opt(
        (),
        "PEM certificate chain to serve HTTPS with; repeat with --tls-key for several "
        "(chosen by SNI, the first is the default).",
        kind=Kind.LIST,
        flags="--tls-cert",
        shown="none: plain HTTP",
    )
    tls_key: tuple[str, ...] = opt(
        (),
        "PEM private key of the --tls-cert in the same position.",
        kind=Kind.LIST,
        flags="--tls-key",
    )
    http_redirect: str = opt(
        "",
        "HOST:PORT of a plain-HTTP listener that redirects (308) to https.",
        kind=Kind.TEXT,
        flags="--http-redirect",
        check=_address(any_port=False),
    )
    hsts: int = opt(
        0,
        "Send Strict-Transport-Security: max-age=N over TLS (0: off).",
        kind=Kind.INT,
        flags="--hsts",
        check=_whole(zero=True),
    )
    # HTTP/3 (edge.server.http3): QUIC on the TLS listener's port over UDP.
    http3: bool = opt(
        False,
        "Serve HTTP/3 (QUIC) on the TLS listener's port over UDP, with its certificates.",
        kind=Kind.FLAG,
        flags="--http3",
    )
    http3_early_data: bool = opt(
        False,
        "Accept HTTP/3 0-RTT early data: safe methods only, others get 425 Too Early.",
        kind=Kind.FLAG,
        flags="--http3-early-data",
    )
    alt_svc_max_age: int = opt(
        86400,
        "Advertise HTTP/3 in Alt-Svc for this many seconds (0: not advertised).",
        kind=Kind.INT,
        flags="--alt-svc-max-age",
        check=_whole(zero=True),
    )
    upstream_ca: str = opt(
        "",
        "CA bundle to verify https upstreams with.",
        kind=Kind.TEXT,
        flags="--upstream-ca",
        shown="the system's CAs",
    )
    # -- the store ----------------------------------------------------------------
    cache_dir: Path = opt(Path("./cache"), "Cache directory.", kind=Kind.PATH, flags="--cache-dir")
    cache_size: int = opt(
        1 << 30,
        "Cache size bound, e.g. 512M, 10G (LRU eviction).",
        kind=Kind.SIZE,
        flags="--cache-size",
        check=_size_at_least(1 << 20, "cache size"),
    )
    # 0: cache_size / OBJECT_SHARE (validate() fills it in).
    max_object_size: int = opt(
        0,
        "Largest object stored, e.g. 2G; larger ones are passed through. At most the cache size.",
        kind=Kind.SIZE,
        flags="--max-object-size",
        shown=f"cache size / {OBJECT_SHARE}",
    )
    slice_size: int = opt(
        4 << 20,
        "Slice size for big objects, e.g. 4M.",
        kind=Kind.SIZE,
        flags="--slice-size",
        check=_size_at_least(64 << 10, "slice size"),
    )
    slice_threshold: int = opt(
        16 << 20,
        "Objects larger than this are cached as slices, e.g. 16M.",
        kind=Kind.SIZE,
        flags="--slice-threshold",
    )
    # Unique per node: Cache-Status, Via, CDN-Loop (loop detection) and the purge
    # coordinator know a node by it; "": default_name(role, listen), filled by validate().
    name: str = opt(
        "",
        "Node name, shown in Cache-Status, Via and CDN-Loop; unique among the nodes of "
        "a coordinator.",
        kind=Kind.TEXT,
        flags="--name",
        shown="ROLE-HOSTNAME-ADDRESS-PORT of --listen; no ADDRESS on 0.0.0.0",
        check=_NODE_NAME,
    )
    # Not an option: the subcommand (serve or shield) says it.
    role: str = "edge"
    # -- freshness (edge.rfc.policy) --------------------------------------------------
    heuristic_fraction: float = opt(
        0.1,
        "Heuristic freshness: this fraction of (Date - Last-Modified) (RFC 9111 Section 4.2.2).",
        kind=Kind.NUMBER,
        check=_number(zero=True),
    )
    heuristic_max: float = opt(
        86400.0,
        "Heuristic freshness at most (seconds).",
        kind=Kind.NUMBER,
        check=_number(zero=True),
    )
    # RFC 9111 Section 4.2.4: a cache that cannot reach its upstream may serve stale.
    # A day by default: an archive's readers are better served by yesterday's copy
    # than by a 502 while the origin is down. stale-if-error extends it; must-revalidate,
    # proxy-revalidate, no-cache and s-maxage forbid it.
    stale_if_error_grace: float = opt(
        86400.0,
        "Seconds a stale response may be served when the upstream fails and the "
        "response said nothing.",
        kind=Kind.NUMBER,
        check=_number(zero=True),
    )
    # RFC 9111 Section 5.1: a cache SHOULD ignore an invalid Age, and does by default;
    # on, such a response is stale instead (an upstream whose Age cannot be read may be
    # a cache holding an old copy). See edge.rfc.policy.parse_age.
    invalid_age_is_stale: bool = opt(
        False, "Treat a response with an invalid Age as stale.", kind=Kind.FLAG
    )
    targeted_fields: tuple[str, ...] = opt(
        ("CDN-Cache-Control", "Surrogate-Control"),
        "Targeted cache-control fields honoured, in order of precedence (RFC 9213).",
        kind=Kind.LIST,
    )
    upstream_connect_timeout: float = opt(
        5.0, "Seconds to connect upstream.", kind=Kind.NUMBER, check=_number()
    )
    upstream_read_timeout: float = opt(
        30.0, "Seconds between upstream reads.", kind=Kind.NUMBER, check=_number()
    )
    access_log: bool = opt(True, "Log one line per request (edge.access).", kind=Kind.FLAG)
    fast_path: bool = opt(
        True, "Answer repeated plain hits of small objects from memory.", kind=Kind.FLAG
    )
    # HTTP/2 (edge.server.http2): a TLS listener always offers it by ALPN; a cleartext
    # one takes it with prior knowledge (h2c, RFC 9113 Section 3.3) only when this is on.
    http2: bool = opt(
        False,
        "Serve HTTP/2 with prior knowledge (h2c) on a cleartext listener (TLS always offers h2).",
        kind=Kind.FLAG,
        flags="--http2",
    )
    send_timeout: float = opt(
        30.0,
        "Seconds an HTTP/2 stream waits for its client to take more of the response "
        "(a closed flow-control window) before it is reset.",
        kind=Kind.NUMBER,
        flags="--send-timeout",
        check=_number(),
    )
    # Each worker is a whole node on one listening port (SO_REUSEPORT) over one cache
    # directory (edge.multiproc.workers).
    workers: int = opt(
        1,
        f"Worker processes (1-{MAX_WORKERS}), each serving the same port (SO_REUSEPORT) "
        "from the same cache directory; 1: one process.",
        kind=Kind.INT,
        flags="--workers",
        check=_workers,
    )
    # Filled by validate(): the pools and routes in their checked form.
    pool_configs: dict[str, PoolConfig] = field(default_factory=dict, init=False, repr=False)
    route_configs: list[RouteConfig] = field(default_factory=list, init=False, repr=False)

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen, any_port=True)

    def validate(self) -> NodeConfig:
        """Each option by its own check (the same for the command line and the file),
        then the rules between options."""
        if self.role not in ROLES:
            raise ConfigError(f"role must be edge or shield: {self.role!r}")
        for option in OPTIONS:
            value = getattr(self, option.name)
            if option.env and not value:
                value = os.environ.get(option.env, "")
            setattr(self, option.name, option.validate(value))
        self.pool_configs, self.route_configs = self._upstreams()
        for option in OPTIONS:
            if self.role not in option.roles and getattr(self, option.name) != option.default:
                raise ConfigError(f"{option.name} is not a setting of a {self.role}")
        if self.loop_allowance is None:
            self.loop_allowance = 0 if self.role == "edge" else 1
        if self.coordinator and not self.coordinator_token:
            raise ConfigError("a coordinator needs a token (coordinator_token or EDGE_NODE_TOKEN)")
        if not self.advertise:
            host, port = self.host_port
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            self.advertise = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if not self.max_object_size:
            self.max_object_size = self.cache_size // OBJECT_SHARE
        elif self.max_object_size > self.cache_size:
            raise ConfigError(
                f"max_object_size ({format_size(self.max_object_size)}) is larger than "
                f"cache_size ({format_size(self.cache_size)}): storing one such object "
                "would evict everything else"
            )
        if not self.name:
            self.name = _NODE_NAME("name", default_name(self.role, self.listen))
        self._validate_guard()
        self._validate_tls()
        return self

    def _validate_tls(self) -> None:
        """Shape only; edge.server.tls loads and checks the files when the node starts."""
        if len(self.tls_cert) != len(self.tls_key):
            raise ConfigError(
                f"--tls-cert and --tls-key come in pairs: {len(self.tls_cert)} certificate(s), "
                f"{len(self.tls_key)} key(s)"
            )
        if self.http_redirect and not self.tls_cert:
            raise ConfigError("http_redirect needs TLS (--tls-cert and --tls-key)")
        if self.hsts and not self.tls_cert:
            raise ConfigError("hsts needs TLS (--tls-cert and --tls-key)")
        if self.http3 and not self.tls_cert:
            raise ConfigError("http3 needs TLS (--tls-cert and --tls-key)")
        if self.http3_early_data and not self.http3:
            raise ConfigError("http3_early_data needs http3")

    def _validate_guard(self) -> None:
        """The guard's rules between options (edge.features.guard)."""
        if self.rate_limit and self.rate_burst and self.rate_burst < 1:
            raise ConfigError("rate_burst must be at least 1")
        from edge.features.guard import rate_classes

        try:
            rate_classes(self.rate_limit, self.rate_burst, self.rate_classes)
        except ValueError as exc:
            raise ConfigError(f"rate_classes: {exc}") from exc

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


#: The node options, in declaration order: what the command line, the TOML loader and
#: the argv builder are derived from.
OPTIONS = options_of(NodeConfig)
_BY_KEY = {option.name: option for option in OPTIONS}


def cli_options(role: str) -> tuple[Option, ...]:
    """The options `edge serve` (role edge) or `edge shield` take on the command line."""
    return tuple(o for o in OPTIONS if o.flags and role in o.roles)


def from_command_line(role: str, given: dict[str, Any]) -> dict[str, Any]:
    """Command-line values (as typer parsed them, None where not given) by option name,
    as load_config's overrides."""
    values = {}
    for option in cli_options(role):
        value = given.get(option.name)
        if value is not None:
            values[option.name] = option.from_text(value)
    return {k: v for k, v in values.items() if v is not None}


def load_config(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """Read a TOML file (keys as option names, '-' or '_'), then apply the command
    line's non-None overrides: the command line wins over the file, the file over the
    defaults; tokens not set either way come from the environment (Option.env)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        for key, value in raw.items():
            option = _BY_KEY.get(key.replace("-", "_"))
            if option is None:
                raise ConfigError(f"unknown setting in {path}: {key}")
            values[option.name] = option.from_toml(value)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return NodeConfig(**values).validate()


def node_argv(role: str, values: Mapping[str, Any]) -> list[str]:
    """`edge serve ...` / `edge shield ...` arguments setting these options (by option
    name; a value equal to the default is left out). An option the role's command line
    does not take is a ConfigError naming it."""
    flags = {o.name: o for o in cli_options(role)}
    argv = [ROLES[role]]
    for name, value in values.items():
        option = flags.get(name)
        if option is None:
            raise ConfigError(f"not an option of edge {ROLES[role]}'s command line: {name}")
        if value == option.default:
            continue
        if option.kind is Kind.FLAG:
            argv.append(option.flag)
        elif option.kind is Kind.LIST:
            argv += [a for item in value for a in (option.flag, str(item))]
        elif option.kind is Kind.SIZE and isinstance(value, int):
            argv += [option.flag, format_size(value)]
        else:
            argv += [option.flag, str(value)]
    return argv


def to_argv(cfg: NodeConfig) -> list[str]:
    """The arguments that make the validated `cfg` again: each command-line option that
    differs from its default (values validation filled in, such as the name, included).
    A config the command line cannot make (an option set in a TOML file, a token not
    from the environment) is a ConfigError naming what differs."""
    said = {o.name: getattr(cfg, o.name) for o in cli_options(cfg.role)}
    again = NodeConfig(**said, role=cfg.role).validate()
    differ = [o.name for o in OPTIONS if getattr(again, o.name) != getattr(cfg, o.name)]
    if differ:
        raise ConfigError(f"not said by the command line: {', '.join(differ)}")
    return node_argv(cfg.role, said)
