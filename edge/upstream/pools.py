"""Talking to what is behind a node: pools of upstream servers (shields or origins),
chosen by the request's host, with balancing, health checks, retries and failover.

This module owns the connections (one edge.upstream.h1client pool per member: keep-alive,
limits, timeouts, bodies passed through byte for byte, a connection reused only when it
is known clean), the active health probes, and the walk over a pool's members for one
request. Which member comes first is `edge.upstream.balance`'s
call; whether a response is stored is the pipeline's.

One request's walk: the route's pool ranks its usable members; a member that cannot be
reached is followed by the next (any method: nothing was sent); one that fails after
the request went out, or answers with a retryable status (5xx by default), is
followed by the next only for idempotent methods. A body that declares at most
`WHOLE_BODY` bytes is read whole before the response is handed on, so one that
breaks off is a failure of the walk (the next member is asked, or the caller answers
an error) rather than a head the client has already been sent and a body it never
gets; larger or unframed bodies are streamed. No member is asked twice, and a pool
is asked at most 1 + `retries` times. When the pool has nobody left, the route's
fallback pool (an edge's origin, behind its shields) is walked the same way, and the
response says so (`note`). With no usable member anywhere, every member is tried
anyway, as Envoy's panic mode does: a health view can be wrong, a refusal is certain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict
from yarl import URL

from edge.config import NodeConfig, PoolConfig, RouteConfig
from edge.rfc.keys import host_of
from edge.server.tls import client_context
from edge.upstream import h1client
from edge.upstream.balance import Balancer, Health, Member, Thresholds, observe_latency

log = logging.getLogger("edge.upstream.pools")


class UpstreamError(Exception):
    """The upstream could not give a response. `status` is what the client gets."""

    status = 502
    detail = "upstream-unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    detail = "upstream-timeout"


#: How many hosts' routes are remembered (Upstreams.route_for).
_ROUTES_REMEMBERED = 4096

#: Bodies that declare at most this many bytes (Content-Length) are read whole before
#: their head is handed on; larger ones, and those of unknown length, stream.
WHOLE_BODY = 64 << 10

#: The largest body piece handed on (`UpstreamResponse.chunks`). Above what one read
#: of the connection brings (uvloop reads up to 256 KiB), so a piece is never cut and
#: copied: each costs a write to the store and a wake of its readers, and a large object
#: is cheaper in as few of them as the socket allows.
PIECE_MAX = 1 << 20

#: Latency sample recorded for a member that failed (pushes EWMA away from it).
_FAILURE_PENALTY_MS = 5000.0


@dataclass
class UpstreamResponse:
    """A response whose head has arrived; the body is read with `chunks()`."""

    status: int
    headers: CIMultiDict[str]
    raw: h1client.Response
    request_time: float
    response_time: float
    member: str = ""  # the URL of the member that answered
    note: str = ""  # "origin-direct" when the route's fallback answered
    #: The whole body, when it was read before the head was handed on (WHOLE_BODY).
    body: bytes | None = None
    _done: Callable[[bool], None] | None = field(default=None, repr=False)

    async def chunks(self, size: int = PIECE_MAX) -> AsyncIterator[bytes]:
        """The body in pieces of at most `size` bytes, as they arrive."""
        if self.body is not None:
            body, self.body = self.body, b""
            for start in range(0, len(body), size):
                yield body[start : start + size]
            self._finish(True)
            return
        with self._broken():
            while piece := await self.raw.read():
                if len(piece) <= size:
                    yield piece
                    continue
                for start in range(0, len(piece), size):
                    yield piece[start : start + size]
        self._finish(True)

    async def into(self, fd: int | None, limit: int) -> int:
        """Up to `limit` bytes of the body written to the file `fd` (None: dropped),
        as they arrive: how many, 0 at the end. Where the connection allows, a large
        body's bytes go from the socket to the file in the kernel (h1client splices
        them), never through this process."""
        if self.body is not None:
            piece, self.body = self.body[:limit], self.body[limit:]
            if fd is not None:
                h1client.write_all(fd, piece)
            if not piece:
                self._finish(True)
            return len(piece)
        with self._broken():
            n = await self.raw.read_into(fd, limit)
        if n == 0:
            self._finish(True)
        return n

    @contextlib.contextmanager
    def _broken(self) -> Iterator[None]:
        """A body read that fails ends the response as failed, told as an upstream
        error (a timeout as UpstreamTimeout)."""
        try:
            yield
        except TimeoutError as exc:
            self._finish(False)
            raise UpstreamTimeout("upstream read timed out") from exc
        except h1client.ClientError as exc:
            self._finish(False)
            raise UpstreamError(f"upstream body broke: {exc}") from exc

    @property
    def trailers(self) -> CIMultiDict[str]:
        """The trailer section of a chunked body, once `chunks()` has ended (empty
        for any other framing)."""
        return self.raw.trailers

    def release(self) -> None:
        self.raw.release()
        self._finish(True)

    def close(self) -> None:
        self.raw.close()
        self._finish(True)

    def _finish(self, ok: bool) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(ok)


class Pool:
    """The members of one pool, their health, and the connections to them."""

    def __init__(
        self,
        cfg: PoolConfig,
        *,
        connect_timeout: float,
        read_timeout: float,
        on_change: Callable[[Pool, Member, str], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self._ssl = ssl_context
        self.members = [Member(m.url, m.weight) for m in cfg.members]
        self._bases = {m.url: URL(m.url) for m in cfg.members}
        self.balancer = Balancer(cfg.strategy)
        self.health = Health(
            Thresholds(
                rise=cfg.rise,
                fall=cfg.fall,
                failures=cfg.failures,
                cooldown=cfg.cooldown,
                active=bool(cfg.health_path),
            )
        )
        self._connect_timeout = cfg.connect_timeout or connect_timeout
        self._read_timeout = cfg.read_timeout or read_timeout
        self._on_change = on_change
        self._connections: dict[str, h1client.ConnectionPool] = {}
        self._checker: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    async def start(self) -> None:
        for member in self.members:
            base = self._bases[member.url]
            server = h1client.Server(base.scheme, base.host or "", base.port or 80)
            self._connections[member.url] = h1client.ConnectionPool(
                server,
                limit=self.cfg.max_connections,
                keepalive=self.cfg.keepalive_timeout,
                ssl_context=self._ssl,
            )
        if self.cfg.health_path:
            self._checker = asyncio.create_task(self._check_loop())

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        for connections in self._connections.values():
            await connections.close()

    def usable(self, now: float) -> list[Member]:
        return [m for m in self.members if self.health.usable(m, now)]

    def target(self, member: Member, path_qs: str) -> str:
        """The request target at a member: its base path, then the client's path and
        query exactly as sent (percent-encoding kept)."""
        return self._bases[member.url].raw_path.rstrip("/") + path_qs

    async def send(
        self,
        member: Member,
        method: str,
        path_qs: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | h1client.Deferred | None,
        *,
        read_timeout: float | None = None,
        interim: h1client.InterimSink | None = None,
    ) -> h1client.Response:
        connections = self._connections.get(member.url)
        assert connections is not None, "Pool.start() not called"
        if self.cfg.host_header:
            headers = [(k, v) for k, v in headers if k.lower() != "host"]
            headers.append(("Host", self.cfg.host_header))
        return await connections.request(
            method,
            self.target(member, path_qs),
            headers,
            body,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout if read_timeout is None else read_timeout,
            interim=interim,
        )

    # -- health --------------------------------------------------------------------

    def succeeded(self, member: Member) -> None:
        was_healthy = member.healthy
        self.health.on_success(member)
        if not was_healthy and member.healthy:
            self._changed(member, "reinstated")

    def failed(self, member: Member, reason: str) -> None:
        observe_latency(member, _FAILURE_PENALTY_MS)
        if self.health.on_failure(member, time.monotonic()):
            log.warning(
                "pool %s: %s ejected for %.0fs after %d failures (last: %s)",
                self.name,
                member.url,
                member.ejected_until - time.monotonic(),
                member.failures,
                reason,
            )
            self._changed(member, "ejected")

    def _changed(self, member: Member, what: str) -> None:
        if self._on_change is not None:
            self._on_change(self, member, what)

    async def _check_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(m) for m in self.members))
            await asyncio.sleep(self.cfg.health_interval)

    async def _probe(self, member: Member) -> None:
        """One active check: GET the health path; any 2xx/3xx within the timeout passes."""
        ok = False
        try:
            async with asyncio.timeout(self.cfg.health_timeout):
                resp = await self.send(
                    member,
                    "GET",
                    self.cfg.health_path,
                    [("User-Agent", "edge-health-check")],
                    None,
                    read_timeout=self.cfg.health_timeout,
                )
                try:
                    while await resp.read():
                        pass
                finally:
                    resp.release()
                ok = 200 <= resp.status < 400
        except (h1client.ClientError, OSError, TimeoutError):
            ok = False
        before = (member.up, member.healthy)
        self.health.on_probe(member, ok, time.monotonic())
        if before != (member.up, member.healthy):
            state = "up" if member.healthy else "down"
            log.warning("pool %s: %s is %s (health check)", self.name, member.url, state)
            self._changed(member, state)


def route_matches(pattern: str, host: str) -> bool:
    """Exact host, "*.example.org" for its subdomains, "*" for any."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


class Upstreams:
    """Every pool of a node and the routes from request hosts to them."""

    def __init__(
        self,
        config: NodeConfig,
        on_change: Callable[[Pool, Member, str], None] | None = None,
    ) -> None:
        self.pools = {
            name: Pool(
                cfg,
                connect_timeout=config.upstream_connect_timeout,
                read_timeout=config.upstream_read_timeout,
                on_change=on_change,
                ssl_context=client_context(config.upstream_ca) if config.upstream_ca else None,
            )
            for name, cfg in config.pool_configs.items()
        }
        # Exact hosts first, then wildcards (the longest first), then "*".
        self.routes = sorted(
            config.route_configs,
            key=lambda r: ("*" in r.host, r.host == "*", -len(r.host)),
        )
        # Each host's route, as found: every miss asks, and a node serves few hosts.
        self._route_of: dict[str, RouteConfig | None] = {}

    async def start(self) -> None:
        for pool in self.pools.values():
            await pool.start()

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()

    def route_for(self, host: str) -> RouteConfig | None:
        try:
            return self._route_of[host]
        except KeyError:
            pass
        route = self._find_route(host)
        if len(self._route_of) >= _ROUTES_REMEMBERED:
            self._route_of.clear()  # the Host field is the client's: keep this bounded
        self._route_of[host] = route
        return route

    def _find_route(self, host: str) -> RouteConfig | None:
        host = host.lower()
        if host.startswith("["):
            host = host.split("]", 1)[0] + "]"
        elif ":" in host:
            host = host.rsplit(":", 1)[0]
        host = host.rstrip(".")
        return next((r for r in self.routes if route_matches(r.host, host)), None)

    def _plan(self, route: RouteConfig, key: str, client: str) -> list[tuple[Pool, Member, str]]:
        """The members to try, in order: the pool's usable ones, then the fallback's;
        with nobody usable at all, everybody (panic)."""
        now = time.monotonic()
        primary = self.pools[route.pool]
        fallback = self.pools.get(route.fallback) if route.fallback else None
        plan = [
            (primary, m, "")
            for m in primary.balancer.rank(primary.usable(now), key=key, client=client)
        ]
        if fallback is not None:
            plan += [
                (fallback, m, "origin-direct")
                for m in fallback.balancer.rank(fallback.usable(now), key=key, client=client)
            ]
        if plan:
            return plan
        plan = [
            (primary, m, "") for m in primary.balancer.rank(primary.members, key=key, client=client)
        ]
        if fallback is not None:
            plan += [
                (fallback, m, "origin-direct")
                for m in fallback.balancer.rank(fallback.members, key=key, client=client)
            ]
        return plan

    async def request(
        self,
        method: str,
        path_qs: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | h1client.Deferred | None = None,
        *,
        key: str,
        client: str = "",
        interim: h1client.InterimSink | None = None,
    ) -> UpstreamResponse:
        """Send the request to the route's pool (then its fallback) until a member
        answers; raise UpstreamError/UpstreamTimeout when none could. `interim` is
        told of each 1xx a member sends before its final answer (a member that
        then fails and is followed by the next may have sent some)."""
        route = self.route_for(host_of(key))
        if route is None:
            raise UpstreamError(f"no route for host {host_of(key)!r}")
        idempotent = method in h1client.IDEMPOTENT
        plan = self._plan(route, key, client)
        tries: dict[str, int] = {}
        last: UpstreamError | None = None
        for index, (pool, member, note) in enumerate(plan):
            if tries.get(pool.name, 0) > pool.cfg.retries:
                continue
            tries[pool.name] = tries.get(pool.name, 0) + 1
            more = any(tries.get(p.name, 0) <= p.cfg.retries for p, _, _ in plan[index + 1 :])
            pool.health.begin(member, time.monotonic())
            request_time = time.time()
            started = time.monotonic()
            try:
                raw = await pool.send(member, method, path_qs, headers, body, interim=interim)
            except h1client.NotSent as exc:
                pool.health.end(member)
                pool.failed(member, f"connect: {exc}")
                last = _error(exc, f"{member.url} unreachable")
                continue
            except (h1client.ClientError, OSError, TimeoutError) as exc:
                pool.health.end(member)
                pool.failed(member, f"request: {exc}")
                last = _error(exc, f"{member.url} failed")
                if idempotent:
                    continue
                raise last from exc
            except BaseException:
                # A Deferred body's reader refused it (edge.features.guard): the
                # caller answers; the member did nothing wrong.
                pool.health.end(member)
                raise
            observe_latency(member, (time.monotonic() - started) * 1000)
            if raw.status in pool.cfg.retry_statuses and idempotent and more:
                raw.release()
                pool.health.end(member)
                pool.failed(member, f"status {raw.status}")
                log.info(
                    "%s answered %d for %s: trying the next member", member.url, raw.status, path_qs
                )
                continue
            whole: bytes | None = None
            if _small(raw):
                try:
                    whole = await _read_whole(raw)
                except (h1client.ClientError, OSError, TimeoutError) as exc:
                    raw.close()
                    pool.health.end(member)
                    pool.failed(member, f"body: {exc}")
                    last = _error(exc, f"{member.url} broke off its answer")
                    if idempotent:
                        log.info("%s broke off %s: trying the next member", member.url, path_qs)
                        continue
                    raise last from exc
            return UpstreamResponse(
                raw.status,
                raw.headers,
                raw,
                request_time,
                time.time(),
                member=member.url,
                note=note,
                body=whole,
                _done=self._completion(pool, member, raw.status),
            )
        assert last is not None or not plan
        raise last or UpstreamError("no upstream member")

    @staticmethod
    def _completion(pool: Pool, member: Member, status: int) -> Callable[[bool], None]:
        """Called once the response is done with: the member's outcome counts then, so a
        body that breaks is a failure and least-connections sees the whole transfer."""

        def done(ok: bool) -> None:
            pool.health.end(member)
            if ok and status not in pool.cfg.retry_statuses:
                pool.succeeded(member)
            elif not ok:
                pool.failed(member, "body broke")
            else:
                pool.failed(member, f"status {status}")

        return done

    def report(self) -> dict[str, Any]:
        """Pools and members with their health, for /_edge/health."""
        now = time.monotonic()
        return {
            name: {
                "strategy": pool.cfg.strategy,
                "members": [
                    {
                        "url": m.url,
                        "weight": m.weight,
                        "healthy": m.healthy,
                        "usable": pool.health.usable(m, now),
                        "active": m.active,
                        "ewma_ms": None if m.ewma_ms is None else round(m.ewma_ms, 2),
                    }
                    for m in pool.members
                ],
            }
            for name, pool in self.pools.items()
        }


def _small(raw: h1client.Response) -> bool:
    """Whether the response's body is framed by a Content-Length of at most WHOLE_BODY
    (a HEAD's, 204's or 304's length announces a body that is not sent: h1client
    ends those at the head, and reading them whole costs nothing)."""
    length = raw.headers.get("Content-Length")
    return (
        length is not None
        and "Transfer-Encoding" not in raw.headers
        and length.isdigit()
        and int(length) <= WHOLE_BODY
    )


async def _read_whole(raw: h1client.Response) -> bytes:
    pieces = []
    while piece := await raw.read():
        pieces.append(piece)
    return b"".join(pieces)


def _error(exc: BaseException, text: str) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"{text}: timed out")
    return UpstreamError(f"{text}: {exc}")
