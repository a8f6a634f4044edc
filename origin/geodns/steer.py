"""HTTP steering: the first request for a CDN name is redirected to the nearest healthy
edge for the client's own address, for clients whose resolver hides them from the
GeoDNS authority (no ECS, a distant public resolver).

Owns: `steer` (pure: a request's Host, the address it arrived on and the client's
address -> a redirect, "here", or "not ours"), each edge's base URL, and the listener
that `edge dns --steer` runs beside the authority with the same Selector and health
view, so DNS and HTTP send a client to the same edges.

Rules:
  - only a CDN name of the zone (Host, port and trailing dot aside) is steered; any
    other Host is 421 Misdirected Request (RFC 9110 Section 15.5.20): an edge's own name
    or address is never redirected again, so a redirect cannot loop;
  - the edge is a weighted pick among the plan's healthy edges (the Selector's plan for
    the client's placement: its region or the next-nearest with a healthy edge);
  - a client that reached the listener on the address of one of those edges is already
    at its nearest edge: it is served (the request passed to that edge), not redirected;
  - GET and HEAD get 302 Found, other methods 307 (RFC 9110 Section 15.4.8: the method
    is kept); the redirect carries `Cache-Control: private` (RFC 9111 Section 5.2.2.7),
    since it is right for this client's address only.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import aiohttp
import dns.exception
import dns.name
from aiohttp import web

from origin.deploy.topology import Address, Edge
from origin.geodns.select import Plan, Selector, address_of

log = logging.getLogger("origin.geodns.steer")

#: Hop-by-hop fields (RFC 9110 Section 7.6.1) and framing, not passed through.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


class SteerListenError(OSError):
    """The steering listener's address cannot be bound (told apart from the DNS one)."""


@dataclass(frozen=True)
class Steering:
    """What to do with one request."""

    kind: Literal["redirect", "here", "not-ours"]
    edge: Edge | None = None
    location: str = ""  # the redirect's target (kind "redirect")
    plan: Plan | None = None


def base_url(edge: Edge, family: int) -> str:
    """Where an edge serves: the scheme of its health URL (https under `edge up
    --tls`), its `listen` HOST:PORT when it has one, else its address of the client's
    family (bracketed when IPv6, RFC 3986 Section 3.2.2)."""
    scheme = "https" if edge.health.startswith("https://") else "http"
    if edge.listen:
        return f"{scheme}://{edge.listen}"
    address = address_of(edge, family) or edge.ipv4 or edge.ipv6
    host = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    return f"{scheme}://{host}"


def host_name(host: str) -> dns.name.Name | None:
    """A Host field's name, without port or trailing dot; None for an IP literal or a
    field that is not a name."""
    if host.startswith("["):
        return None  # an IPv6 literal: never a CDN name
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    try:
        return dns.name.from_text(name.rstrip(".") + ".")
    except dns.exception.DNSException:
        return None


def steer(
    selector: Selector,
    healthy: Callable[[Edge], bool],
    host: str,
    local: Address | None,
    client: Address,
    target: str,
) -> Steering:
    """The answer to a request for `target` (path and query) with this Host, arriving on
    the listener's address `local` from `client`."""
    name = host_name(host)
    if name is None or name not in selector.t.zone.names:
        return Steering("not-ours")
    family = client.version
    if family == 6 and client.ipv4_mapped is not None:  # type: ignore[union-attr]
        family = 4
    plan = selector.plan(selector.place(client), family, healthy)
    if not plan.candidates:  # no edge has an address the client can reach
        plan = selector.plan(selector.place(client), 10 - family, healthy)
    for edge in plan.candidates:
        if local is not None and local in (edge.ipv4, edge.ipv6):
            return Steering("here", edge, plan=plan)
    (edge,) = selector.pick(plan.candidates, 1)
    return Steering("redirect", edge, base_url(edge, family) + target, plan)


# -- the listener ---------------------------------------------------------------------


SELECTOR = web.AppKey("selector", Selector)
HEALTHY = web.AppKey("healthy", Callable[[Edge], bool])  # type: ignore[arg-type]
SESSION = web.AppKey("session", aiohttp.ClientSession)


def _address(text: str | None) -> Address | None:
    try:
        return ipaddress.ip_address(text or "")
    except ValueError:
        return None


async def _handle(request: web.Request) -> web.StreamResponse:
    client = _address(request.remote)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    local = _address(sockname[0]) if sockname else None
    if client is None:
        return web.Response(status=400, text="no client address\n")
    selector, healthy = request.app[SELECTOR], request.app[HEALTHY]
    s = steer(selector, healthy, request.host, local, client, request.path_qs)
    if s.kind == "not-ours":
        return web.Response(status=421, text=f"{request.host} is not a name of this CDN\n")
    assert s.edge is not None and s.plan is not None
    log.debug(
        "%s %s from %s: %s %s (%s)",
        request.method,
        request.host,
        client,
        s.kind,
        s.edge.name,
        s.plan.why,
    )
    if s.kind == "here":
        return await _pass(request, s.edge, client.version)
    status = 302 if request.method in ("GET", "HEAD") else 307
    return web.Response(
        status=status,
        headers={"Location": s.location, "Cache-Control": "private"},
        text=f"{s.location}\n",
    )


async def _pass(request: web.Request, edge: Edge, family: int) -> web.StreamResponse:
    """The client is at its nearest edge: the request goes to that edge as it came."""
    url = base_url(edge, family) + request.path_qs
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    body = await request.read() if request.body_exists else None
    try:
        async with request.app[SESSION].request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(65536):
                await response.write(chunk)
            await response.write_eof()
            return response
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("steering: edge %s at %s unreachable: %s", edge.name, url, exc)
        return web.Response(status=502, text=f"edge {edge.name} is unreachable\n")


async def start_steering(
    selector: Selector,
    healthy: Callable[[Edge], bool],
    host: str,
    port: int,
) -> tuple[Callable[[], Awaitable[None]], int]:
    """Listen on host:port; returns the stop function and the bound port."""
    app = web.Application()
    app[SELECTOR], app[HEALTHY] = selector, healthy

    async def session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", _handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SteerListenError(exc.strerror or str(exc)) from exc
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner.cleanup, bound
