"""A cache node: the aiohttp server around the pipeline, with its store, upstream,
in-flight fills and metrics, and the node's own endpoints under /_edge/.

A node is an object with `start()` and `stop()`; nothing is global, so a test can run
two nodes in one process. This module owns lifetimes and routing, not caching rules.
A node may also be one worker of several over one cache directory (edge.workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import http_parser as _http_parser
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_server import Server

from edge import fastpath, forwarding, guard, tls
from edge.accesslog import AccessLog, request_line
from edge.config import ConfigError, NodeConfig, parse_listen
from edge.coordination import Coordination, Solo
from edge.derive import Deriver
from edge.fill import InFlight
from edge.forwarding import parse_networks
from edge.metrics import CONTENT_TYPE_LATEST, NodeMetrics
from edge.pipeline import Engine, Transaction, guard_settings
from edge.purge import Purger, Subscription
from edge.purgemodel import PurgeError, parse_purge, parse_purge_body
from edge.slices import Slicer
from edge.store import DiskStore
from edge.tokens import CHALLENGE, check_bearer
from edge.upstream import Member, Pool, Upstreams
from edge.waf import RuleSet

log = logging.getLogger("edge.node")

#: A request line at the start of a connection's next bytes: method, target, version.
_REQUEST_LINE = re.compile(rb"([!-~]+) [!-~]+ HTTP/([0-9]\.[0-9])\r?\n")

ADMIN_PREFIX = "/_edge/"
ALLOWED_METHODS = web.AppKey("allowed_methods", str)


def require_c_parser() -> None:
    """The pure-Python HTTP parser is more lenient than llhttp (aiohttp's C parser);
    a proxy must not accept what the origin would parse differently."""
    if _http_parser.HttpRequestParser.__module__ != "aiohttp._http_parser":
        raise ConfigError(
            "aiohttp's C HTTP parser is required (unset AIOHTTP_NO_EXTENSIONS, "
            "install a binary aiohttp wheel)"
        )


@dataclass
class ConnectionGuard:
    """The guard's connection-level state, shared by a node's connections: open
    connections per client address, and what to count refusals in."""

    header_timeout: float
    max_per_client: int
    server_header: str
    max_header_bytes: int = 32 << 10
    engine: Engine | None = None  # for the hit fast path (edge.fastpath)
    # Trusted proxies (edges, at a shield) carry many clients: not limited per address.
    exempt: tuple[forwarding.Network, ...] = ()
    metrics: NodeMetrics | None = None
    node: str = ""
    open: Counter[str] = field(default_factory=Counter)

    _verdicts: dict[tuple[str, Any], bool] = field(default_factory=dict)
    # The exact bytes of whole requests the fast path answered, with what their parse
    # gave (edge.fastpath key, path, close?): identical bytes parse identically, and
    # a client sends the same request head again and again.
    parsed: dict[bytes, tuple[tuple[bytes, bytes, bytes], str, bool]] = field(default_factory=dict)

    def header_verdict(self, rules: RuleSet, host: str, raw: Any) -> bool:
        """Whether edge.waf's header rules refuse these fields; clients send the same
        fields request after request, so the verdict is remembered (bounded)."""
        key = (host, raw)
        verdict = self._verdicts.get(key)
        if verdict is None:
            fields = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)
            verdict = rules.check_fields(host, fields) is not None
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def refused(self, status: int) -> None:
        if self.metrics is not None:
            self.metrics.refused.labels(self.node, str(status)).inc()


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler with the guard's connection-level limits.

    - Error responses never echo request bytes: aiohttp's parser errors quote the
      offending input back to the client. An oversize request line gets 414, oversize
      or too many header fields 431 (RFC 6585 Section 5), anything else 400.
    - A request head must arrive whole within header_timeout of its first byte
      (slowloris): aiohttp has no such deadline. 408, then the connection is closed.
      A connection idle before its first head or between requests is closed after
      keepalive_timeout (aiohttp's timer, from the connection's start).
    - A request line's version is looked at before llhttp parses it: HTTP/1.x minors
      above 1 are read as HTTP/1.1, HTTP/2 and later get a 505 in HTTP/1.1.
    - At most max_connections_per_client open connections per client address; the
      next is closed at once, before a byte is read. Trusted proxies are exempt.
    """

    _guard: ConnectionGuard
    _client: str = ""
    _counted: bool = False
    _head_timer: asyncio.TimerHandle | None = None
    # True while llhttp holds no partial message: only then may a request's bytes
    # bypass it (ConnectionGuard.parsed).
    _at_boundary: bool = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._client = peer[0] if isinstance(peer, tuple) and peer else ""
        guard = self._guard
        if guard.max_per_client and not forwarding.is_trusted(self._client, guard.exempt):
            if guard.open[self._client] >= guard.max_per_client:
                # Before aiohttp sets anything up: a refused connection costs little.
                if guard.metrics is not None:
                    guard.metrics.connections_refused.labels(guard.node).inc()
                transport.abort()
                return
            guard.open[self._client] += 1
            self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        if self._counted:
            self._counted = False
            open_ = self._guard.open
            open_[self._client] -= 1
            if open_[self._client] <= 0:
                del open_[self._client]
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._mid_body():
            checked = self._request_line(data)
            if checked is None:
                return
            data = checked
        before = self._request_count
        if (
            self._guard.engine is not None
            and self._guard.engine.hot is not None
            and self._parser is not None
            and self._payload_parser is None
            and not self._upgraded
            and not self._messages
            and self._current_request is None
            and not self._force_close
            and not self._close
        ):
            if self._at_boundary:
                parsed = self._guard.parsed.get(data)
                if parsed is not None and self._serve_hot(*parsed, None):
                    self._request_count += 1
                    return
            self._parse_and_serve(data)
        else:
            self._at_boundary = False
            super().data_received(data)
        if self._request_count != before:
            self._cancel_head_timer()  # a whole head arrived
        elif (
            self._head_timer is None
            and self._current_request is None
            and not self._messages
            and self.transport is not None
        ):
            # The first bytes of a new head (between requests, a body's bytes
            # arrive while its request is current): its deadline starts now. It falls
            # in the last quarter of header_timeout, at random, so that a crowd of
            # slow heads sent together does not expire in one burst that stalls the
            # loop for everyone else.
            deadline = self._guard.header_timeout * random.uniform(0.75, 1.0)
            self._head_timer = self._loop.call_later(deadline, self._head_expired)
            # aiohttp's idle timer (keepalive_timeout, from the connection's start)
            # would cut a head under way short of header_timeout: this deadline is it.
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
                self._keepalive_handle = None

    def _mid_body(self) -> bool:
        """Whether these bytes may be a request's body still arriving (then they are
        not looked at as a request line)."""
        if self._current_request is not None and not self._current_request.content.is_eof():
            return True
        return any(not payload.is_eof() for _, payload in self._messages)

    def _request_line(self, data: bytes) -> bytes | None:
        """The version of a request line starting these bytes, before llhttp sees it.
        RFC 9110 Section 2.5: a 1.x minor above 1 is read as HTTP/1.1 (llhttp would
        refuse it). HTTP/2 and later (the h2 preface "PRI * HTTP/2.0", an "HTTP/2.0"
        request line) get a 505 in HTTP/1.1, then the connection closes: a reply in
        the request's own version would not be HTTP/1.1 at all. None: answered."""
        match = _REQUEST_LINE.match(data)
        if match is None:
            return data
        major, minor = match.group(2)[0], match.group(2)[2]
        if major == 0x31 and minor > 0x31:  # "1", a minor above "1"
            at = match.start(2) + 2
            return data[:at] + b"1" + data[at + 1 :]
        if major > 0x31:
            self._refuse_now(505, "only HTTP/1.0 and HTTP/1.1 are served here")
            return None
        return data

    def _refuse_now(self, status: int, reason: str) -> None:
        """Answer from the connection handler itself, in HTTP/1.1, and close."""
        assert self.transport is not None
        phrase = _phrase(status)
        body = f"{status} {phrase}: {reason}\n".encode()
        server = self._guard.server_header.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\nServer: %s\r\n\r\n%s"
            % (status, phrase.encode(), len(body), server, body)
        )
        self._guard.refused(status)
        self.force_close()

    def _parse_and_serve(self, data: bytes) -> None:
        """aiohttp's data_received for an idle connection, with one difference: a
        lone parsed request that the hot tier can answer is answered here, before
        aiohttp makes a request object or wakes a task for it (edge.fastpath)."""
        assert self._parser is not None
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            messages = [(_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)]
            upgraded, tail = False, b""
        self._at_boundary = False
        if (
            len(messages) == 1
            and not upgraded
            and isinstance(messages[0][0], RawRequestMessage)
            and messages[0][1] is EMPTY_PAYLOAD
            and len(data) <= self._guard.max_header_bytes
        ):
            message = messages[0][0]
            engine = self._guard.engine
            assert engine is not None
            key = fastpath.request_key(
                message.method, tuple(message.version), message.path, message.raw_headers
            )
            if key is not None and self._serve_hot(
                key, message.path, message.should_close, message.raw_headers
            ):
                self._request_count += 1
                self._parser.message_consumed()
                # The head ended where the data did: llhttp holds nothing, and these
                # bytes will parse the same next time.
                if data.find(b"\r\n\r\n") == len(data) - 4:
                    self._at_boundary = True
                    parsed = self._guard.parsed
                    if len(data) <= fastpath.MAX_REQUEST_BYTES:
                        if len(parsed) >= fastpath.MAX_ENTRIES:
                            parsed.clear()
                        parsed[data] = (key, message.path, message.should_close)
                return
        # As aiohttp does (web_protocol.RequestHandler.data_received).
        for message in messages:
            self._request_count += 1
            self._messages.append(message)
        waiter = self._waiter
        if messages and waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._buffer_paused and len(self._messages) >= self._max_msg_queue_size:
            self._pause_reading_for_buffer()
        self._upgraded = upgraded
        if upgraded and tail:
            self._message_tail = tail

    def _serve_hot(
        self,
        key: tuple[bytes, bytes, bytes],
        path: str,
        should_close: bool,
        raw_headers: Any,
    ) -> bool:
        """Answer from the hot tier if it holds this request's response and the
        guard's per-request checks pass; False sends it the general way.
        `raw_headers` is None when these bytes already passed the header rules."""
        engine = self._guard.engine
        assert engine is not None and engine.hot is not None
        if engine.purger is not None and not engine.purger.ready:
            return False
        now = time.time()
        found = engine.hot.answer(key, now, should_close)
        if found is None:
            return False
        hot, data = found
        host = key[1].decode("latin-1").lower()
        if engine.limiter and engine.limiter.take(self._client, host, hot.path, time.monotonic()):
            return False  # the general path takes the same decision and refuses it
        if (
            raw_headers is not None
            and engine.rules is not None
            and self._guard.header_verdict(engine.rules, host, raw_headers)
        ):
            return False
        assert self.transport is not None
        self.transport.write(data)
        engine.metrics.fast_hits += 1
        engine.metrics.fast_bytes += len(hot.body)
        if engine.access.enabled:
            engine.access.line(
                request_line(self._client, "GET", path, 200, "hit", len(hot.body), 0, None, "fast")
            )
        if should_close:
            self.force_close()
        else:
            # What aiohttp does after a response on a kept-alive connection.
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(
                    self._next_keepalive_close_time, self._process_keepalive
                )
        return True

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport is None or self._current_request is not None or self._messages:
            return
        self._refuse_now(408, "the request head was not sent in time")

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            status = 414 if exc.args[1] == self.max_line_size else 431
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
            status = 431
        log.debug("refused a request from %s: %s %s", request.remote, status, message or exc)
        if status < 500:
            self._guard.refused(status)
        phrase = _phrase(status)
        resp = web.Response(status=status, text=f"{status} {phrase}\n")
        if self._guard.server_header:
            resp.headers["Server"] = self._guard.server_header
        resp.force_close()
        return resp


class _EdgeServer(Server):
    guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        handler = _GuardedHandler(self, loop=self._loop, **self._kwargs)
        handler._guard = self.guard
        return handler


@web.middleware
async def _refuse_connect(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """CONNECT's authority-form target matches no route (aiohttp would say 404): a
    cache node tunnels nothing (RFC 9110 Section 9.3.6)."""
    if request.method == "CONNECT":
        resp = web.Response(status=405, text="405 Method Not Allowed: CONNECT is not supported\n")
        resp.headers["Allow"] = request.app[ALLOWED_METHODS]
        resp.force_close()
        return resp
    return await handler(request)


def _host_check(
    proxied: Callable[[web.Request], Awaitable[web.StreamResponse]] | None,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """RFC 9112 Section 3.2 on every listener: a Host that is not one authority
    (edge.guard.check_host) gets a 400. Requests routed to `proxied` (the pipeline)
    are left to its recv state, which runs the same check and logs the refusal."""

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if proxied is None or request.match_info.route.handler != proxied:
            host = guard.check_host(request.headers.getall("Host", []), request.version)
            if isinstance(host, guard.Refusal):
                text = f"{host.status} {_phrase(host.status)}: {host.reason}\n"
                resp = web.Response(status=host.status, text=text)
                resp.force_close()
                return resp
        return await handler(request)

    return check


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


def _canonical_names(response: web.StreamResponse) -> None:
    """Respell the response's fields as _CANONICAL has them, in place and in order
    (the hot tier keeps what was written, so its answers are the same)."""
    fields = response.headers
    if all(_CANONICAL.get(name.lower(), name) == name for name in fields):
        return
    items = [(_CANONICAL.get(name.lower(), name), value) for name, value in fields.items()]
    fields.clear()
    fields.extend(items)


def _json(body: object, status: int) -> web.Response:
    return web.Response(
        text=json.dumps(body),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _unauthorised(reason: str) -> web.Response:
    """401 with the Bearer challenge (RFC 9110 Section 15.5.2)."""
    resp = _json({"error": reason}, 401)
    resp.headers["WWW-Authenticate"] = CHALLENGE
    return resp


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class EdgeNode:
    """One caching reverse proxy, edge or shield."""

    def __init__(self, config: NodeConfig, coordination: Coordination) -> None:
        self.config = config
        # What this process shares with the node's others (edge.coordination): Solo
        # when it is the node, edge.workers.Workers when it is one of its workers.
        self.coordination = coordination
        self.started_at = time.time()
        self.runner: web.AppRunner | None = None
        self.admin_runner: web.AppRunner | None = None
        self.redirect_runner: web.AppRunner | None = None
        self.tls_listener: tls.TLSListener | None = None
        self.engine: Engine | None = None
        self.port: int | None = None
        self.subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._admin_networks = parse_networks(config.admin_networks)

    def build_app(self, *, public: bool = True, admin: bool = True) -> web.Application:
        """The public app proxies; the admin endpoints are served with it unless an
        admin listener has them (then only a bare health answer stays public)."""
        app = web.Application(
            client_max_size=self.config.max_body_size,
            middlewares=[_refuse_connect, _host_check(self._handle if public else None)],
        )
        app[ALLOWED_METHODS] = guard.allow_field(self.config.allowed_methods)
        app.router.add_get(ADMIN_PREFIX + "health", self._health if admin else self._health_bare)
        if admin:
            app.router.add_get(ADMIN_PREFIX + "metrics", self._metrics)
            app.router.add_post(ADMIN_PREFIX + "purge", self._purge_json)
        else:
            app.router.add_route("*", ADMIN_PREFIX + "{tail:.*}", self._not_here)
        if public:
            app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_response_prepare.append(self._set_server)
        return app

    async def start(self) -> None:
        require_c_parser()
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
        # others take up the purge state it writes (edge.purge).
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
        self.runner = await self._runner(
            self.build_app(admin=not self.config.admin_listen), public=True
        )
        if self.config.admin_listen:
            self.admin_runner = await self._runner(self.build_app(public=False))
            admin_host, admin_port = parse_listen(self.config.admin_listen)
            await web.TCPSite(
                self.admin_runner, admin_host, admin_port, reuse_port=reuse_port
            ).start()
        cfg = self.config
        host, port = cfg.host_port
        if ssl_context is not None:
            # A TLS port that answers plain HTTP with a readable 400 (edge.tls).
            server = self.runner.server
            assert isinstance(server, _EdgeServer)
            self.tls_listener = tls.TLSListener(
                server,
                ssl_context,
                idle_timeout=cfg.keepalive_timeout,
                handshake_timeout=cfg.header_timeout,
                server_header=cfg.server_header or "edge",
                refused=server.guard.refused,
            )
            self.port = await self.tls_listener.start(host, port, reuse_port=bool(reuse_port))
        else:
            site = web.TCPSite(self.runner, host, port, reuse_address=True, reuse_port=reuse_port)
            await site.start()
            sockets = self.runner.addresses
            self.port = sockets[0][1] if sockets else port
        if cfg.http_redirect:
            redirect = web.Application(middlewares=[_host_check(None)])
            redirect.router.add_route("*", "/{tail:.*}", self._to_https)
            redirect.on_response_prepare.append(self._set_server)
            self.redirect_runner = await self._runner(redirect)
            r_host, r_port = parse_listen(cfg.http_redirect)
            await web.TCPSite(
                self.redirect_runner, r_host, r_port, reuse_address=True, reuse_port=reuse_port
            ).start()

    def _still_current(self, key: str, variant: str) -> bool:
        """Whether a hot entry still stands (edge.fastpath asks once the store's
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

    async def _runner(self, app: web.Application, *, public: bool = False) -> web.AppRunner:
        """A runner with the guarded connection handler. Only the public listener
        answers hot hits (edge.fastpath) before its app: the admin and redirect
        listeners serve their own routes and nothing from the cache."""
        cfg = self.config
        # aiohttp's parser limits; the two line limits differ by one internally so
        # that a LineTooLong tells a long request line (414) from a long field (431).
        line = cfg.max_request_line
        field_size = cfg.max_header_size + (1 if cfg.max_header_size == line else 0)
        runner = web.AppRunner(
            app,
            access_log=None,  # the pipeline logs one line per request itself
            auto_decompress=False,  # pass request bodies through untouched
            handle_signals=False,
            keepalive_timeout=cfg.keepalive_timeout,
            max_line_size=line,
            max_field_size=field_size,
            max_headers=cfg.max_headers,
            # After refusing an unread body, aiohttp reads on so the client sees the
            # answer rather than a reset; 10 s of that would let a slow body hold on.
            lingering_time=2.0,
        )
        await runner.setup()
        # The one place where aiohttp's connection handler is replaced (_GuardedHandler).
        assert runner.server is not None
        runner.server.__class__ = _EdgeServer
        assert isinstance(runner.server, _EdgeServer)
        runner.server.guard = ConnectionGuard(
            header_timeout=cfg.header_timeout,
            max_per_client=cfg.max_connections_per_client,
            server_header=cfg.server_header or "edge",
            metrics=self.engine.metrics if self.engine else None,
            node=cfg.name,
            exempt=parse_networks(cfg.trusted_proxies),
            max_header_bytes=cfg.max_header_bytes,
            engine=self.engine if public else None,
        )
        return runner

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
        if self.tls_listener is not None:
            await self.tls_listener.close()
        for extra in (self.admin_runner, self.redirect_runner):
            if extra is not None:
                await extra.cleanup()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.engine is not None:
            await self.engine.inflight.close()
            await self.engine.upstream.close()
            self.coordination.close(self.engine.metrics)
            self.engine.store.close()
            self.engine.access.flush()

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
        _canonical_names(response)
        # The origin's Server is hidden (hide_headers); this node names itself instead
        # of aiohttp's default, which would give away versions.
        if self.config.server_header and response.headers.get("Server") in (None, SERVER_SOFTWARE):
            response.headers["Server"] = self.config.server_header
        if self.config.hsts and request.secure:
            # RFC 6797 Section 7.2: only over a secure transport.
            response.headers["Strict-Transport-Security"] = f"max-age={self.config.hsts}"

    async def _to_https(self, request: web.Request) -> web.Response:
        """The plain-HTTP listener: 308 to the same URL over https (method and body
        kept, RFC 9110 Section 15.4.9), on the TLS port when it is not 443."""
        target = request.raw_path
        if not target.startswith("/") and request.url.absolute:  # absolute-form
            target = request.rel_url.raw_path_qs
        assert self.port is not None
        location = tls.https_location(request.host, target, self.port)
        if location is None:
            return web.Response(status=400, text="400 Bad Request\n")
        return web.Response(
            status=308,
            text="308 Permanent Redirect\n",
            headers={"Location": location, "Cache-Control": "no-store"},
        )

    def _admin_access(self, request: web.Request) -> bool:
        """Internal callers: a peer in admin_networks, or the admin token."""
        if forwarding.is_trusted(request.remote, self._admin_networks):
            return True
        return check_bearer(request.headers.get("Authorization"), self.config.admin_token) is None

    async def _not_here(self, request: web.Request) -> web.Response:
        return _json({"error": "not found"}, 404)

    async def _health_bare(self, request: web.Request) -> web.Response:
        """Enough for a load balancer; the node's internals are for operators."""
        return _json({"status": "ok"}, 200)

    async def _health(self, request: web.Request) -> web.Response:
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
        refused = check_bearer(request.headers.get("Authorization"), token)
        if refused is not None:
            return _unauthorised(refused)
        return None

    async def _purge_url(self, request: web.Request) -> web.Response:
        """PURGE /path: this URL, on this node only (soft with `Edge-Soft-Purge: 1`).
        The URL is the request's own (absolute-form's, or scheme, Host and path), so
        the ban keys it as the pipeline keys a GET of it (edge.keys)."""
        refused = self._authorised(request)
        if refused is not None:
            return refused
        assert self.engine is not None and self.engine.purger is not None
        host = guard.check_host(request.headers.getall("Host", []), request.version)
        if isinstance(host, guard.Refusal):
            return _json({"error": host.reason}, host.status)
        raw = request.raw_path
        url = raw if not raw.startswith("/") else f"{request.scheme}://{host or request.host}{raw}"
        soft = request.headers.get("Edge-Soft-Purge", "").strip() in ("1", "true")
        try:
            purge = parse_purge({"urls": [url], "soft": soft})
        except PurgeError as exc:
            return _json({"error": str(exc)}, 400)
        ban = self.engine.purger.apply(purge)
        (key,) = ban.keys
        return _json({"status": "ok", "purged": key, "soft": soft}, 200)

    async def _purge_json(self, request: web.Request) -> web.Response:
        """POST /_edge/purge {urls, prefixes, tags, hosts, all, soft}: on this node only,
        refused exactly as the coordinator refuses a purge (edge.purgemodel)."""
        refused = self._authorised(request)
        if refused is not None:
            return refused
        assert self.engine is not None and self.engine.purger is not None
        try:
            purge = parse_purge_body(await request.read())
        except PurgeError as exc:
            return _json({"error": str(exc)}, 400)
        self.engine.purger.apply(purge)
        return _json({"status": "ok", "purge": purge.to_json()}, 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.engine is not None
        if not self._admin_access(request):
            return _unauthorised("metrics need the admin token")
        metrics = self.engine.metrics
        body = await self.coordination.exposition(metrics)  # every process's
        return web.Response(
            body=body,
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
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
