"""A cache node: the aiohttp server around the pipeline, with its store, upstream,
in-flight fills and metrics, and the node's own endpoints under /_edge/.

A node is an object with `start()` and `stop()`; nothing is global, so a test can run
two nodes in one process. This module owns lifetimes and routing, not caching rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import time

import aiohttp
from aiohttp import http_parser as _http_parser
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from edge.config import ConfigError, NodeConfig
from edge.derive import Deriver
from edge.fill import InFlight
from edge.forwarding import parse_networks
from edge.keys import cache_key
from edge.metrics import CONTENT_TYPE_LATEST, NodeMetrics
from edge.pipeline import Engine, Transaction
from edge.purge import Purge, PurgeError, Purger, Subscription
from edge.slices import Slicer
from edge.store import DiskStore
from edge.upstream import Member, Pool, Upstreams

log = logging.getLogger("edge.node")

ADMIN_PREFIX = "/_edge/"


def require_c_parser() -> None:
    """The pure-Python HTTP parser is more lenient than llhttp (aiohttp's C parser);
    a proxy must not accept what the origin would parse differently."""
    if _http_parser.HttpRequestParser.__module__ != "aiohttp._http_parser":
        raise ConfigError(
            "aiohttp's C HTTP parser is required (unset AIOHTTP_NO_EXTENSIONS, "
            "install a binary aiohttp wheel)"
        )


class _PlainErrorHandler(RequestHandler):
    """aiohttp's connection handler, with error responses that never echo request
    bytes: its parser errors quote the offending input back to the client."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        log.debug("refused a request from %s: %s %s", request.remote, status, message or exc)
        phrase = _phrase(status)
        resp = web.Response(status=status, text=f"{status} {phrase}\n")
        resp.force_close()
        return resp


class _EdgeServer(Server):
    def __call__(self) -> RequestHandler:
        return _PlainErrorHandler(self, loop=self._loop, **self._kwargs)


def _json(body: object, status: int) -> web.Response:
    return web.Response(
        text=json.dumps(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class EdgeNode:
    """One caching reverse proxy, edge or shield."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.started_at = time.time()
        self.runner: web.AppRunner | None = None
        self.engine: Engine | None = None
        self.port: int | None = None
        self.subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 << 20, handler_args={})
        app.router.add_get(ADMIN_PREFIX + "health", self._health)
        app.router.add_get(ADMIN_PREFIX + "metrics", self._metrics)
        app.router.add_post(ADMIN_PREFIX + "purge", self._purge_json)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._set_server)
        return app

    async def start(self) -> None:
        require_c_parser()
        store = DiskStore(self.config.cache_dir, self.config.cache_size)
        metrics = NodeMetrics(self.config.name, store.stats)
        upstream = Upstreams(self.config, on_change=self._member_changed)
        await upstream.start()
        inflight = InFlight()
        purger = Purger.open(store, self.config.cache_dir, oldest_fill=inflight.oldest)
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
            slicer=Slicer(store, inflight, upstream),
            deriver=Deriver(store, inflight),
            trusted=parse_networks(self.config.trusted_proxies),
            hidden=frozenset(hidden),
            purger=purger,
        )
        self._tasks.append(asyncio.create_task(purger.sweep_forever()))
        if self.config.coordinator:
            await self._subscribe(purger)
        for pool in upstream.pools.values():
            for member in pool.members:
                metrics.member_up.labels(self.config.name, pool.name, member.url).set(1)
        self.runner = web.AppRunner(
            self.build_app(),
            access_log=None,  # the pipeline logs one line per request itself
            auto_decompress=False,  # pass request bodies through untouched
            handle_signals=False,
        )
        await self.runner.setup()
        # One place where aiohttp's own error pages are replaced (see _PlainErrorHandler).
        assert self.runner.server is not None
        self.runner.server.__class__ = _EdgeServer
        host, port = self.config.host_port
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        sockets = self.runner.addresses
        self.port = sockets[0][1] if sockets else port

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
        if self.runner is not None:
            await self.runner.cleanup()
        if self.engine is not None:
            await self.engine.inflight.close()
            await self.engine.upstream.close()
            self.engine.store.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self.engine is not None
        if request.method == "PURGE":
            return await self._purge_url(request)
        txn = Transaction(self.engine, request)
        try:
            return await txn.run()
        except (ConnectionError, asyncio.CancelledError, aiohttp.ClientConnectionResetError):
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.raw_path)
            if txn.response is not None and txn.response.prepared:
                raise
            return web.Response(
                status=500,
                text="500 Internal Server Error\n",
                headers={"Cache-Status": f"{self.config.name}; detail=internal-error"},
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

    async def _set_server(self, request: web.Request, response: web.StreamResponse) -> None:
        # The origin's Server is hidden (hide_headers); this node names itself instead
        # of aiohttp's default, which would give away versions.
        if self.config.server_header and response.headers.get("Server") in (None, SERVER_SOFTWARE):
            response.headers["Server"] = self.config.server_header

    async def _health(self, request: web.Request) -> web.Response:
        assert self.engine is not None
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
        return web.Response(
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    # -- purging this node directly -------------------------------------------------

    def _authorised(self, request: web.Request) -> web.Response | None:
        """None if the request carries the admin token, else the refusal to send."""
        token = self.config.admin_token
        if not token:
            return _json(
                {"error": "purging this node directly is not enabled (no admin token)"}, 403
            )
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            resp = _json({"error": "missing or wrong token"}, 401)
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        return None

    async def _purge_url(self, request: web.Request) -> web.Response:
        """PURGE /path: this URL, on this node only (soft with `Edge-Soft-Purge: 1`)."""
        refused = self._authorised(request)
        if refused is not None:
            return refused
        assert self.engine is not None and self.engine.purger is not None
        url = cache_key(request.scheme, request.host, request.raw_path)
        soft = request.headers.get("Edge-Soft-Purge", "").strip() in ("1", "true")
        self.engine.purger.apply(Purge(urls=(url,), soft=soft))
        return _json({"status": "ok", "purged": url, "soft": soft}, 200)

    async def _purge_json(self, request: web.Request) -> web.Response:
        """POST /_edge/purge {urls, prefixes, tags, hosts, all, soft}: on this node only."""
        refused = self._authorised(request)
        if refused is not None:
            return refused
        assert self.engine is not None and self.engine.purger is not None
        try:
            purge = Purge.from_json(await request.json())
        except (ValueError, PurgeError) as exc:
            return _json(
                {"error": str(exc) if isinstance(exc, PurgeError) else "body is not JSON"}, 400
            )
        self.engine.purger.apply(purge)
        return _json({"status": "ok", "purge": purge.to_json()}, 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.engine is not None
        return web.Response(
            body=self.engine.metrics.render(),
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )


async def serve_forever(config: NodeConfig, ready: str = "") -> None:
    """Run a node until SIGINT/SIGTERM; print `ready` once listening."""
    node = EdgeNode(config)
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
