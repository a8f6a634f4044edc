"""A cache node: edge's own listeners (HTTP/1.1, edge.server.http1; HTTP/2 on the public
one, edge.server.http2) around the pipeline, with its store, upstream, in-flight fills
and metrics, and the node's own endpoints under /_edge/ (health, metrics, purge), served
through the same exchange (edge.pipeline.exchange).

A node is an object with `start()` and `stop()`; nothing is global, so a test can run
two nodes in one process. This module owns lifetimes and routing, not caching rules
nor HTTP (edge.server.http1, edge.server.http2). A node may also be one worker of
several over one cache directory (edge.multiproc.workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit

from multidict import CIMultiDict

from edge.config import NodeConfig, parse_listen
from edge.features import guard
from edge.fetch.derive import Deriver
from edge.fetch.fill import InFlight
from edge.fetch.slices import Slicer
from edge.multiproc.coordination import Coordination, Solo
from edge.observe.accesslog import AccessLog
from edge.observe.metrics import CONTENT_TYPE_LATEST, NodeMetrics
from edge.pipeline.exchange import Channel, Request, Response
from edge.pipeline.transaction import Engine, Transaction, fastpath, guard_settings
from edge.purge.bans import Purger, Subscription
from edge.purge.model import PurgeError, parse_purge, parse_purge_body
from edge.rfc.forwarding import is_trusted, parse_networks
from edge.rfc.tokens import CHALLENGE, check_bearer
from edge.server import http3, tls
from edge.server.http1 import ConnectionGuard, Limits, Listener, phrase
from edge.server.http2 import Http2Connection, Http2Limits
from edge.store.disk import DiskStore
from edge.upstream.pools import Member, Pool, Upstreams

log = logging.getLogger("edge.server.node")

ADMIN_PREFIX = "/_edge/"

#: An endpoint of the node's own: a request in, a response description out.
Endpoint = Callable[[Request], Awaitable[Response]]

#: The registered spelling (RFC 9110, RFC 9111, RFC 8586, RFC 9213) of fields whose
#: names are not plain Title-Case. Names are case-insensitive (RFC 9110 Section 5.1),
#: but an answer should not spell one "Etag" as an origin sent it (aiohttp's
#: FileResponse does) and "ETag" where edge made it (a compressed variant, a 304):
#: every answer edge writes uses these.
_CANONICAL = {
    name.lower(): name
    for name in (
        "ETag",
        "WWW-Authenticate",
        "Content-MD5",
        "Content-ID",
        "CDN-Cache-Control",
        "CDN-Loop",
        "TE",
        "X-XSS-Protection",
    )
}


def _canonical_names(fields: CIMultiDict[str]) -> None:
    """Respell the response's fields as _CANONICAL has them, in place and in order
    (the hot tier keeps what was written, so its answers are the same)."""
    if all(_CANONICAL.get(name.lower(), name) == name for name in fields):
        return
    items = [(_CANONICAL.get(name.lower(), name), value) for name, value in fields.items()]
    fields.clear()
    fields.extend(items)


def _text(status: int, text: str, **fields: str) -> Response:
    headers = CIMultiDict(fields)
    headers["Content-Type"] = "text/plain; charset=utf-8"
    return Response(status, headers, text.encode())


def _json(body: object, status: int) -> Response:
    headers = CIMultiDict({"Cache-Control": "no-store"})
    headers["Content-Type"] = "application/json; charset=utf-8"
    return Response(status, headers, json.dumps(body).encode())


def _unauthorised(reason: str) -> Response:
    """401 with the Bearer challenge (RFC 9110 Section 15.5.2)."""
    resp = _json({"error": reason}, 401)
    resp.headers["WWW-Authenticate"] = CHALLENGE
    return resp


def _path(target: str) -> str:
    """The decoded path of a request-target (origin- or absolute-form), which is what
    the node's own endpoints are found by."""
    if not target.startswith("/"):
        target = urlsplit(target).path or "/"
    return unquote(target.partition("?")[0])


def _host_refusal(request: Request) -> Response | None:
    """RFC 9112 Section 3.2 on every listener: a Host that is not one authority
    (edge.features.guard.check_host) gets a 400. The pipeline's recv state runs the same check
    for what it serves, and logs the refusal."""
    host = guard.check_host(request.headers.getall("Host", []), request.version)
    if isinstance(host, guard.Refusal):
        return _text(host.status, f"{host.status} {phrase(host.status)}: {host.reason}\n")
    return None


class EdgeNode:
    """One caching reverse proxy, edge or shield."""

    def __init__(self, config: NodeConfig, coordination: Coordination) -> None:
        self.config = config
        # What this process shares with the node's others (edge.multiproc.coordination): Solo
        # when it is the node, edge.multiproc.workers.Workers when it is one of its workers.
        self.coordination = coordination
        self.started_at = time.time()
        self.public: Listener | None = None
        self.admin: Listener | None = None
        self.redirect: Listener | None = None
        self.tls_listener: tls.TLSListener | None = None
        self.h3_listener: http3.Http3Listener | None = None
        #: The Alt-Svc field of answers over TLS while HTTP/3 is served ("": none).
        self.alt_svc = ""
        self.engine: Engine | None = None
        self.port: int | None = None
        self.subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._admin_networks = parse_networks(config.admin_networks)

    # -- routing ----------------------------------------------------------------------

    def _endpoint(self, method: str, path: str, *, admin: bool) -> Endpoint | None:
        """The node's own endpoint for a request, None for the pipeline's. With an
        admin listener (`admin` False here) only a bare health answer stays public and
        the rest of /_edge/ is not found."""
        if not path.startswith(ADMIN_PREFIX):
            return None
        name = path[len(ADMIN_PREFIX) :]
        reading = method in ("GET", "HEAD")
        if name == "health" and reading:
            return self._health if admin else self._health_bare
        if not admin:
            return self._not_here
        if name == "metrics" and reading:
            return self._metrics
        if name == "purge" and method == "POST":
            return self._purge_json
        return None

    async def _serve_public(self, request: Request, channel: Channel) -> None:
        """The public listener: the node's endpoints, else the pipeline."""
        if request.method == "CONNECT":
            await channel.respond(self._refuse_connect())
            return
        endpoint = self._endpoint(request.method, _path(request.target), admin=not self.admin)
        if endpoint is None:
            await self._handle(request, channel)
        else:
            await channel.respond(await self._call(endpoint, request))

    async def _serve_admin(self, request: Request, channel: Channel) -> None:
        """The admin listener: the node's endpoints alone."""
        if request.method == "CONNECT":
            await channel.respond(self._refuse_connect())
            return
        path = _path(request.target)
        endpoint = self._endpoint(request.method, path, admin=True)
        if endpoint is None:
            known = path in (ADMIN_PREFIX + name for name in ("health", "metrics", "purge"))
            response = (
                _text(405, "405: Method Not Allowed") if known else _text(404, "404: Not Found")
            )
            await channel.respond(_host_refusal(request) or response)
            return
        await channel.respond(await self._call(endpoint, request))

    async def _serve_redirect(self, request: Request, channel: Channel) -> None:
        await channel.respond(await self._call(self._to_https, request))

    async def _call(self, endpoint: Endpoint, request: Request) -> Response:
        refused = _host_refusal(request)
        if refused is not None:
            refused.close = True
            return refused
        try:
            return await endpoint(request)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.target)
            return _text(500, "500 Internal Server Error\n")

    def _refuse_connect(self) -> Response:
        """CONNECT: a cache node tunnels nothing (RFC 9110 Section 9.3.6)."""
        resp = _text(
            405,
            "405 Method Not Allowed: CONNECT is not supported\n",
            Allow=guard.allow_field(self.config.allowed_methods),
        )
        resp.close = True
        return resp

    def _finish(self, fields: CIMultiDict[str], request: Request) -> None:
        """Every answer of every listener, as it is written."""
        _canonical_names(fields)
        # The origin's Server is hidden (hide_headers); this node names itself.
        if self.config.server_header and "Server" not in fields:
            fields["Server"] = self.config.server_header
        if self.config.hsts and request.secure:
            # RFC 6797 Section 7.2: only over a secure transport.
            fields["Strict-Transport-Security"] = f"max-age={self.config.hsts}"
        if self.alt_svc and request.secure:
            # RFC 7838: this node's HTTP/3 endpoint, not one an origin named for itself.
            fields["Alt-Svc"] = self.alt_svc

    def _listener(
        self, handler: Callable[[Request, Channel], Awaitable[None]], *, hot: bool
    ) -> Listener:
        """A listener with the guard's connection-level limits. Only the public one
        answers hot hits (edge.pipeline.fastpath): the admin and redirect listeners serve their
        own endpoints and nothing from the cache."""
        cfg = self.config
        guard_ = ConnectionGuard(
            header_timeout=cfg.header_timeout,
            max_per_client=cfg.max_connections_per_client,
            server_header=cfg.server_header or "edge",
            metrics=self.engine.metrics if self.engine else None,
            node=cfg.name,
            exempt=parse_networks(cfg.trusted_proxies),
            engine=self.engine if hot else None,
        )
        limits = Limits(
            max_request_line=cfg.max_request_line,
            max_header_size=cfg.max_header_size,
            max_headers=cfg.max_headers,
            keepalive_timeout=cfg.keepalive_timeout,
        )
        return Listener(handler, guard_, limits, self._finish, hot=hot)

    async def start(self) -> None:
        # Certificates first: a bad file is a one-line error before anything opens.
        cfg = self.config
        ssl_context = tls.check(cfg)
        coordination = self.coordination
        store = DiskStore(self.config.cache_dir, self.config.cache_size, coordination)
        metrics = NodeMetrics(self.config.name, store.stats)
        upstream = Upstreams(self.config, on_change=self._member_changed)
        await upstream.start()
        inflight = InFlight(coordination)
        purger = Purger.open(store, self.config.cache_dir, self.config, coordination)
        # Tags are for purging inside the CDN: a shield passes them on to its edges,
        # an edge keeps them from clients.
        hidden = {h.lower() for h in self.config.hide_headers}
        if self.config.role == "edge":
            hidden |= {"surrogate-key", "cache-tag"}
        self.engine = Engine(
            config=self.config,
            store=store,
            upstream=upstream,
            inflight=inflight,
            metrics=metrics,
            slicer=Slicer(
                store,
                inflight,
                upstream,
                claim_timeout=cfg.upstream_connect_timeout + cfg.upstream_read_timeout,
                config=cfg,
                metrics=metrics,
            ),
            deriver=Deriver(store, inflight),
            trusted=parse_networks(self.config.trusted_proxies),
            hidden=frozenset(hidden),
            purger=purger,
            access=AccessLog(self.config.access_log),
            **guard_settings(self.config),
        )
        if self.config.fast_path:
            self.engine.hot = fastpath.HotTier(self._still_current, store.version)
            purger.on_change.append(self.engine.hot.clear)
        # Of a node's workers only the lead sweeps and hears the coordinator; the
        # others take up the purge state it writes (edge.purge.bans).
        if coordination.leads:
            self._tasks.append(asyncio.create_task(purger.sweep_forever()))
            if self.config.coordinator:
                await self._subscribe(purger)
        coordination.share_ready(purger)
        for duty in coordination.duties(purger, metrics):
            self._tasks.append(asyncio.create_task(duty))
        for pool in upstream.pools.values():
            for member in pool.members:
                metrics.member_up.labels(self.config.name, pool.name, member.url).set(1)
        # Workers share each listening address; the kernel spreads connections.
        reuse_port = coordination.reuse_port or None
        if self.config.admin_listen:
            self.admin = self._listener(self._serve_admin, hot=False)
            admin_host, admin_port = parse_listen(self.config.admin_listen)
            await self.admin.listen(admin_host, admin_port, reuse_port=reuse_port)
        self.public = self._listener(self._serve_public, hot=True)
        cfg = self.config
        # HTTP/2 on the public listener: by ALPN over TLS, by prior knowledge when on.
        public = self.public
        h2_limits = Http2Limits(send_timeout=cfg.send_timeout, max_header_list=cfg.max_header_bytes)
        public.http2 = lambda: Http2Connection(public, h2_limits)
        public.h2c = cfg.http2 and ssl_context is None
        host, port = cfg.host_port
        if ssl_context is not None:
            # A TLS port that answers plain HTTP with a readable 400 (edge.server.tls).
            self.tls_listener = tls.TLSListener(
                self.public,
                ssl_context,
                idle_timeout=cfg.keepalive_timeout,
                handshake_timeout=cfg.header_timeout,
                server_header=cfg.server_header or "edge",
                refused=self.public.guard.refused,
            )
            self.port = await self.tls_listener.start(host, port, reuse_port=bool(reuse_port))
            if cfg.http3:
                await self._start_http3(host, self.port)
        else:
            _, self.port = await self.public.listen(host, port, reuse_port=reuse_port)
        if cfg.http_redirect:
            self.redirect = self._listener(self._serve_redirect, hot=False)
            r_host, r_port = parse_listen(cfg.http_redirect)
            await self.redirect.listen(r_host, r_port, reuse_port=reuse_port)
        # What the node made to start (modules, config, tables) lives as long as it:
        # out of the cycle collector's sight, whose full passes would otherwise walk
        # all of it again and again while requests are served.
        gc.freeze()

    async def _start_http3(self, host: str, port: int) -> None:
        """HTTP/3 on the TLS port's number over UDP (edge.server.http3), with the first
        certificate, served by the public listener's handler and guard; advertised
        in Alt-Svc (RFC 7838) once it listens."""
        cfg = self.config
        assert self.public is not None
        quic = http3.configuration(
            cfg.tls_cert[0],
            cfg.tls_key[0],
            idle_timeout=max(
                cfg.keepalive_timeout, cfg.upstream_connect_timeout + cfg.upstream_read_timeout
            ),
            max_body=cfg.max_body_size,
        )
        if self.coordination.leads:
            # One UDP socket per port: aioquic's server takes no SO_REUSEPORT, and the
            # kernel would spread a migrating connection's datagrams over workers. The
            # lead worker serves HTTP/3 for the node; every worker advertises it.
            self.h3_listener = http3.Http3Listener(
                self.public,
                quic,
                early_data=cfg.http3_early_data,
                max_body=cfg.max_body_size,
                max_header_bytes=cfg.max_header_bytes,
            )
            try:
                await self.h3_listener.start(host, port)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"{reason} (UDP, for HTTP/3)") from exc
        if cfg.alt_svc_max_age:
            self.alt_svc = f'h3=":{port}"; ma={cfg.alt_svc_max_age}'

    def _still_current(self, key: str, variant: str) -> bool:
        """Whether a hot entry still stands (edge.pipeline.fastpath asks once the store's
        version moved): its variant still stored, and no purge another process
        applied since selects it."""
        engine = self.engine
        assert engine is not None and engine.purger is not None
        purger = engine.purger
        if purger.sync(notify=False):
            # Emptying the hot tier now would pull the entry from under its caller.
            asyncio.get_running_loop().call_soon(self._purges_changed)
        for entry in engine.store.variants(key):
            if entry.variant == variant:
                stale_at = entry.extra.get("stale_at", 0)
                return purger.bans.verdict(entry) is None and stale_at <= entry.request_time
        return False

    def _purges_changed(self) -> None:
        assert self.engine is not None and self.engine.purger is not None
        for listener in self.engine.purger.on_change:
            listener()

    async def _subscribe(self, purger: Purger) -> None:
        """Catch up with the coordinator before serving anything cached: wait up to
        resume_timeout, then serve (as misses) until caught up."""
        cfg = self.config
        purger.ready = False
        self.subscription = Subscription(
            purger,
            cfg.coordinator,
            cfg.coordinator_token,
            name=cfg.name,
            role=cfg.role,
            region=cfg.region,
            address=cfg.advertise,
        )
        self._tasks.append(asyncio.create_task(self.subscription.run()))
        try:
            await asyncio.wait_for(self.subscription.caught_up.wait(), cfg.resume_timeout)
        except TimeoutError:
            log.warning(
                "not caught up with coordinator %s after %.0fs: serving without the cache "
                "until it is",
                cfg.coordinator,
                cfg.resume_timeout,
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.h3_listener is not None:
            self.alt_svc = ""
            await self.h3_listener.close()
        if self.tls_listener is not None:
            await self.tls_listener.close()
        # In-flight requests finish; idle connections close now.
        for listener in (self.public, self.admin, self.redirect):
            if listener is not None:
                await listener.close()
        if self.engine is not None:
            await self.engine.inflight.close()
            await self.engine.upstream.close()
            self.coordination.close(self.engine.metrics)
            self.engine.store.close()
            self.engine.access.flush()

    async def _handle(self, request: Request, channel: Channel) -> None:
        assert self.engine is not None
        if request.method == "PURGE":
            await channel.respond(await self._purge_url(request))
            return
        txn = Transaction(self.engine, request, channel)
        try:
            await txn.run()
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.target)
            if channel.started:
                raise
            await channel.respond(
                _text(
                    500,
                    "500 Internal Server Error\n",
                    **{"Cache-Status": f"{self.config.name}; detail=internal-error"},
                )
            )

    def _member_changed(self, pool: Pool, member: Member, what: str) -> None:
        if self.engine is None:
            return
        m = self.engine.metrics
        m.member_up.labels(self.config.name, pool.name, member.url).set(int(member.healthy))
        if what == "ejected":
            m.member_ejections.labels(self.config.name, pool.name, member.url).inc()

    def _purge_report(self) -> dict[str, object]:
        assert self.engine is not None and self.engine.purger is not None
        purger = self.engine.purger
        return {
            "applied": purger.bans.applied,
            "bans": len(purger.bans.bans),
            "ready": purger.ready,
            "coordinator": self.config.coordinator or None,
            "connected": self.subscription.connected if self.subscription else None,
        }

    async def _to_https(self, request: Request) -> Response:
        """The plain-HTTP listener: 308 to the same URL over https (method and body
        kept, RFC 9110 Section 15.4.9), on the TLS port when it is not 443."""
        target = request.target
        if not target.startswith("/"):  # absolute-form
            parts = urlsplit(target)
            if not parts.scheme or not parts.netloc:
                return _text(400, "400 Bad Request\n")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        assert self.port is not None
        location = tls.https_location(request.authority, target, self.port)
        if location is None:
            return _text(400, "400 Bad Request\n")
        return _text(
            308,
            "308 Permanent Redirect\n",
            Location=location,
            **{"Cache-Control": "no-store"},
        )

    def _admin_access(self, request: Request) -> bool:
        """Internal callers: a peer in admin_networks, or the admin token."""
        if is_trusted(request.peer, self._admin_networks):
            return True
        return check_bearer(request.headers.get("Authorization"), self.config.admin_token) is None

    async def _not_here(self, request: Request) -> Response:
        return _json({"error": "not found"}, 404)

    async def _health_bare(self, request: Request) -> Response:
        """Enough for a load balancer; the node's internals are for operators."""
        return _json({"status": "ok"}, 200)

    async def _health(self, request: Request) -> Response:
        assert self.engine is not None
        if not self._admin_access(request):
            return await self._health_bare(request)
        size, count = self.engine.store.stats()
        body = {
            "status": "ok",
            "name": self.config.name,
            "role": self.config.role,
            "upstream": self.config.upstream_summary,
            "pools": self.engine.upstream.report(),
            "purges": self._purge_report(),
            "uptime": round(time.time() - self.started_at, 3),
            "store": {"bytes": size, "objects": count},
        }
        body.update(self.coordination.describe())
        return _json(body, 200)

    # -- purging this node directly -------------------------------------------------

    def _authorised(self, request: Request) -> Response | None:
        """None if the request carries the admin token, else the refusal to send."""
        token = self.config.admin_token
        if not token:
            return _json(
                {"error": "purging this node directly is not enabled (no admin token)"}, 403
            )
        refused = check_bearer(request.headers.get("Authorization"), token)
        if refused is not None:
            return _unauthorised(refused)
        return None

    async def _purge_url(self, request: Request) -> Response:
        """PURGE /path: this URL, on this node only (soft with `Edge-Soft-Purge: 1`).
        The URL is the request's own (absolute-form's, or scheme, Host and path), so
        the ban keys it as the pipeline keys a GET of it (edge.rfc.keys)."""
        refused = self._authorised(request)
        if refused is not None:
            return refused
        assert self.engine is not None and self.engine.purger is not None
        host = guard.check_host(request.headers.getall("Host", []), request.version)
        if isinstance(host, guard.Refusal):
            return _json({"error": host.reason}, host.status)
        raw = request.target
        authority = host or request.authority
        url = raw if not raw.startswith("/") else f"{request.scheme}://{authority}{raw}"
        soft = request.headers.get("Edge-Soft-Purge", "").strip() in ("1", "true")
        try:
            purge = parse_purge({"urls": [url], "soft": soft})
        except PurgeError as exc:
            return _json({"error": str(exc)}, 400)
        ban = self.engine.purger.apply(purge)
        (key,) = ban.keys
        return _json({"status": "ok", "purged": key, "soft": soft}, 200)

    async def _purge_json(self, request: Request) -> Response:
        """POST /_edge/purge {urls, prefixes, tags, hosts, all, soft}: on this node only,
        refused exactly as the coordinator refuses a purge (edge.purge.model)."""
        refused = self._authorised(request)
        if refused is not None:
            return refused
        assert self.engine is not None and self.engine.purger is not None
        cfg = self.config
        try:
            body = await guard.read_body(
                request.body,
                max_size=cfg.max_body_size,
                timeout=cfg.body_timeout,
                min_rate=cfg.body_min_rate,
            )
        except guard.Refused as exc:
            refusal = exc.refusal
            return _json({"error": refusal.reason}, refusal.status)
        try:
            purge = parse_purge_body(body)
        except PurgeError as exc:
            return _json({"error": str(exc)}, 400)
        self.engine.purger.apply(purge)
        return _json({"status": "ok", "purge": purge.to_json()}, 200)

    async def _metrics(self, request: Request) -> Response:
        assert self.engine is not None
        if not self._admin_access(request):
            return _unauthorised("metrics need the admin token")
        metrics = self.engine.metrics
        body = await self.coordination.exposition(metrics)  # every process's
        return Response(
            200,
            CIMultiDict({"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}),
            body if isinstance(body, bytes) else body.encode(),
        )


async def serve_forever(config: NodeConfig, ready: str = "") -> None:
    """Run a node until SIGINT/SIGTERM; print `ready` once listening."""
    node = EdgeNode(config, Solo())
    await node.start()
    if ready:
        print(ready.format(port=node.port), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await node.stop()
