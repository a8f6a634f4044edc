"""What one client is sent stays with that client, at one tier and through a shield
(edge -> shield -> origin), with real processes on loopback.

Shown here: a response that sets a cookie is not shared unless the node opts in
(`set_cookie`); a cookie an origin sets on a revalidation 304 never enters the stored
response unless the node follows RFC 9111 alone (`set_cookie = "rfc"`); Accept-Language
preferences in another order are another variant (Vary), while the same preferences
written differently still share one.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.integration.conftest import NodeFactory
from tests.support.guardkit import write_config
from tests.support.procs import Proc

SITE = "archive.example"


@dataclass
class Tiers:
    """Two doors into the CDN: at one tier the same edge twice; through a shield two
    edges in front of one shield, so the second door is cold and only the shield can
    answer from its store."""

    first: Proc
    second: Proc
    origin: Proc
    inner: tuple[Proc, ...] = ()  # the shield, to ask its store directly

    def count(self, path: str) -> int:
        with urllib.request.urlopen(f"{self.origin.url}/_count{path}", timeout=10) as resp:
            return int(json.load(resp)["count"])


TiersFactory = Callable[..., Tiers]


@pytest.fixture(params=["one-tier", "shield"])
def tiers(request: pytest.FixtureRequest, node: NodeFactory, upstream: Proc, tmp_path: Path):
    def make(**settings: object) -> Tiers:
        args: list[str] = []
        if settings:
            args = ["--config", str(write_config(tmp_path / "node.toml", **settings))]
        if request.param == "one-tier":
            edge = node("serve", "--upstream", upstream.url, *args, name="edge")
            return Tiers(edge, edge, upstream)
        shield = node("shield", "--origin", upstream.url, *args, name="shield")
        edges = [
            node("serve", "--shield", shield.url, "--origin", upstream.url, *args, name=name)
            for name in ("edge-a", "edge-b")
        ]
        return Tiers(edges[0], edges[1], upstream, (shield,))

    return make


async def get(
    session: aiohttp.ClientSession, proc: Proc, target: str, **headers: str
) -> tuple[int, aiohttp.typedefs.LooseHeaders, bytes]:
    fields = {"Host": SITE, **{k.replace("_", "-"): v for k, v in headers.items()}}
    async with session.get(proc.url + target, headers=fields) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


def cookies(headers: aiohttp.typedefs.LooseHeaders) -> list[str]:
    return headers.getall("Set-Cookie", [])  # type: ignore[union-attr]


def hit_anywhere(headers: aiohttp.typedefs.LooseHeaders) -> bool:
    """Whether any tier (RFC 9211 Cache-Status) answered from its store."""
    entries = headers.get("Cache-Status", "").split(",")  # type: ignore[union-attr]
    return any("hit" in [p.strip() for p in e.split(";")[1:]] for e in entries)


# -- Set-Cookie ---------------------------------------------------------------------------


async def test_a_cookie_setting_response_is_not_shared_by_default(tiers: TiersFactory) -> None:
    """Fresh for an hour by its own Cache-Control, but it sets Alice's cookie: Bob gets
    his own answer from the origin, never Alice's cookie (nginx, Varnish, Cloudflare)."""
    cdn = tiers()
    target = "/account?cc=max-age%3D3600&usercookie=full"
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await get(session, cdn.first, target, X_User="alice")
        assert status == 200 and cookies(headers) == ["user=alice"]
        status, headers, _ = await get(session, cdn.second, target, X_User="bob")
        assert status == 200
        assert cookies(headers) == ["user=bob"], headers
        assert not hit_anywhere(headers), headers.get("Cache-Status")
    assert cdn.count("/account") == 2


async def test_sharing_a_cookie_setting_response_is_an_opt_in(tiers: TiersFactory) -> None:
    """`set_cookie = "explicit"` keeps the former sharing for an origin that asks for
    it: explicit freshness shares the response, its cookie included."""
    cdn = tiers(set_cookie="explicit")
    target = "/shared?cc=max-age%3D3600&cookie=consent%3Dyes"
    async with aiohttp.ClientSession() as session:
        await get(session, cdn.first, target)
        status, headers, _ = await get(session, cdn.second, target)
        assert status == 200 and cookies(headers) == ["consent=yes"]
        assert hit_anywhere(headers), headers.get("Cache-Status")
    assert cdn.count("/shared") == 1


@pytest.mark.parametrize("mode", ["never", "explicit"])
async def test_a_cookie_on_a_304_never_enters_the_stored_response(
    tiers: TiersFactory, mode: str
) -> None:
    """Bob's request revalidates the stored response; the origin's 304 sets Bob's
    cookie. Neither Bob nor Carol, later, gets it: the 304 answers edge's own
    conditional request, made for whoever waited on it, and they are all answered
    with the refreshed stored response. Only set_cookie = "rfc" (RFC 9111 alone)
    takes the cookie into the stored response."""
    cdn = tiers(set_cookie=mode)
    target = "/page?cc=max-age%3D3600&etag=%22v1%22&usercookie=304"
    async with aiohttp.ClientSession() as session:
        status, headers, first = await get(session, cdn.first, target, X_User="alice")
        assert status == 200 and cookies(headers) == []
        status, headers, body = await get(
            session, cdn.first, target, X_User="bob", Cache_Control="no-cache"
        )
        assert status == 200 and body == first
        assert cookies(headers) == [], headers
        assert cdn.count("/page") == 2  # the revalidation reached the origin (its 304)
        status, headers, body = await get(session, cdn.second, target, X_User="carol")
        assert status == 200 and body == first
        assert cookies(headers) == [], headers
        assert hit_anywhere(headers), headers.get("Cache-Status")
    assert cdn.count("/page") == 2


# -- Vary ---------------------------------------------------------------------------------


async def test_accept_language_in_another_order_is_another_variant(tiers: TiersFactory) -> None:
    """`de, en` prefers German, `en, de` English: the origin chooses for each, and a
    reader asking `en, de` never gets the variant chosen for `de, en`. The same
    preferences in another case and spacing still share the variant."""
    cdn = tiers()
    target = "/book?vary=Accept-Language"
    async with aiohttp.ClientSession() as session:
        _, headers, _ = await get(session, cdn.first, target, Accept_Language="de, en")
        assert headers.get("X-Echo") == "de, en"
        _, headers, _ = await get(session, cdn.second, target, Accept_Language="en, de")
        assert headers.get("X-Echo") == "en, de", headers.get("Cache-Status")
        assert cdn.count("/book") == 2
        _, headers, _ = await get(session, cdn.second, target, Accept_Language="EN ,De")
        assert headers.get("X-Echo") == "en, de"
        assert hit_anywhere(headers), headers.get("Cache-Status")
        _, headers, _ = await get(session, cdn.second, target, Accept_Language="de,en")
        assert headers.get("X-Echo") == "de, en"
        assert hit_anywhere(headers), headers.get("Cache-Status")
    assert cdn.count("/book") == 2


async def test_a_field_a_304_names_private_never_enters_the_stored_response(
    tiers: TiersFactory,
) -> None:
    """RFC 9111 Section 5.2.2.7: a shared cache does not store the fields a qualified
    `private` names, in a 304 as in a full response. Even where the node takes a 304's
    cookie (set_cookie = "rfc"), `private="Set-Cookie"` keeps Bob's out."""
    cdn = tiers(set_cookie="rfc")
    cc = "max-age%3D3600%2C%20private%3D%22Set-Cookie%22"
    target = f"/private?cc={cc}&etag=%22v1%22&usercookie=304"
    async with aiohttp.ClientSession() as session:
        status, headers, _ = await get(session, cdn.first, target, X_User="alice")
        assert status == 200 and cookies(headers) == []
        await get(session, cdn.first, target, X_User="bob", Cache_Control="no-cache")
        assert cdn.count("/private") == 2
        # An edge in front of the shield strips what the shield's answer names private
        # when it stores it, so the shield's own store is asked too.
        for door in (cdn.second, *cdn.inner):
            status, headers, _ = await get(session, door, target, X_User="carol")
            assert status == 200 and cookies(headers) == [], headers
            assert hit_anywhere(headers), headers.get("Cache-Status")
    assert cdn.count("/private") == 2
