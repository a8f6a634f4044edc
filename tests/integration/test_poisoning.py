"""Cache poisoning and web cache deception at a real edge: fields outside the key
never reach the origin (unless configured as keyed, then they vary the key), the key
is normalised, a GET body cannot shape a cached response, and only the response's own
headers decide what is shared — a cookie-setting page is not, unless its origin said.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import aiohttp

from tests.integration.conftest import NodeFactory
from tests.support.guardkit import exchange, status_of, write_config
from tests.support.procs import Proc

POISON = {
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Scheme": "nothttps",
    "X-Forwarded-Server": "evil.example",
    "X-Forwarded-Port": "1337",
    "X-Forwarded-Prefix": "/evil",
    "X-Original-URL": "/admin",
    "X-Original-Host": "evil.example",
    "X-Rewrite-URL": "/admin",
    "X-Host": "evil.example",
    "X-HTTP-Method-Override": "DELETE",
    "X-HTTP-Method": "PUT",
    "X-Method-Override": "PATCH",
}


def start(node: NodeFactory, upstream: Proc, tmp_path: Path, name: str = "p", **settings) -> Proc:
    config = write_config(tmp_path / f"{name}.toml", **settings)
    return node("serve", "--upstream", upstream.url, "--config", str(config), name=name)


def origin_count(upstream: Proc, path: str) -> int:
    with urllib.request.urlopen(f"{upstream.url}/_count{path}") as resp:
        return json.loads(resp.read())["count"]


async def fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    async with session.get(url, headers=headers or {}) as resp:
        return resp.status, resp.headers.get("Cache-Status", ""), await resp.read()


async def test_unkeyed_fields_never_reach_the_origin(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    # Nobody is a trusted proxy by default; said here too, as the test client plays an
    # untrusted one.
    edge = start(node, upstream, tmp_path, trusted_proxies=[])
    async with aiohttp.ClientSession() as session:
        status, _, body = await fetch(session, f"{edge.url}/page?reqinfo=1", POISON)
        assert status == 200
        seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
        for name, value in POISON.items():
            assert seen.get(name.lower()) != value, name
        # X-Forwarded-Host is the edge's own: the Host the client asked for.
        assert seen["x-forwarded-host"] == f"127.0.0.1:{edge.url.rsplit(':', 1)[1]}"
        assert json.loads(body)["method"] == "GET"
        # The next client gets the same, clean, stored response.
        status, cache_status, again = await fetch(session, f"{edge.url}/page?reqinfo=1")
        assert "hit" in cache_status and again == body


async def test_keyed_fields_are_forwarded_and_vary_the_key(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path, keyed_headers=["X-Rewrite-URL"])
    url = f"{edge.url}/keyed?reqinfo=1"
    async with aiohttp.ClientSession() as session:
        _, first, a = await fetch(session, url, {"X-Rewrite-URL": "/a"})
        _, second, b = await fetch(session, url, {"X-Rewrite-URL": "/b"})
        _, third, a2 = await fetch(session, url, {"X-Rewrite-URL": "/a"})
        _, fourth, none = await fetch(session, url)
    assert "hit" not in first and "hit" not in second and "hit" in third and "hit" not in fourth
    assert a == a2 and a != b
    assert ["X-Rewrite-URL", "/a"] in json.loads(a)["headers"]
    assert all(k.lower() != "x-rewrite-url" for k, _ in json.loads(none)["headers"])
    assert origin_count(upstream, "/keyed") == 3


async def test_the_key_is_normalised(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    edge = start(node, upstream, tmp_path)
    port = int(edge.url.rsplit(":", 1)[1])

    def get(target: str, host: str) -> bytes:
        data = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        return exchange(port, data)[0]

    first = get("/norm?x=1", "archive.test")
    assert status_of(first) == 200 and b"hit" not in first.split(b"\r\n\r\n")[0]
    for target, host in [
        ("/norm?x=1", "ARCHIVE.Test"),  # host case
        ("/norm?x=1", "archive.test:80"),  # the scheme's default port
        ("/n%6Frm?x=%31", "archive.test"),  # escapes of unreserved characters
        ("http://archive.test/norm?x=1", "elsewhere.test"),  # absolute-form's authority
    ]:
        response = get(target, host)
        assert b"; hit" in response.split(b"\r\n\r\n")[0], (target, host, response[:300])
    assert origin_count(upstream, "/norm") == 1


async def test_query_handling_in_the_key(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    edge = start(node, upstream, tmp_path, key_query="sort", key_query_ignore=["utm_*", "fbclid"])
    async with aiohttp.ClientSession() as session:
        _, s1, body = await fetch(session, f"{edge.url}/q?reqinfo=1&b=2&a=1&utm_source=news")
        _, s2, _ = await fetch(session, f"{edge.url}/q?a=1&fbclid=x&reqinfo=1&b=2")
        _, s3, _ = await fetch(session, f"{edge.url}/q?a=1&b=3&reqinfo=1")
    assert "hit" not in s1 and "hit" in s2 and "hit" not in s3
    # The origin was asked for what the key names.
    assert json.loads(body)["target"] == "/q?a=1&b=2&reqinfo=1"
    assert origin_count(upstream, "/q") == 2


async def test_a_get_body_cannot_shape_a_cached_response(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    edge = start(node, upstream, tmp_path)
    port = int(edge.url.rsplit(":", 1)[1])
    response, closed = exchange(
        port,
        b"GET /fat?reqinfo=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nevil=true",
    )
    assert status_of(response) == 400 and closed
    assert origin_count(upstream, "/fat") == 0
    async with aiohttp.ClientSession() as session:
        _, cache_status, body = await fetch(session, f"{edge.url}/fat?reqinfo=1")
    assert "hit" not in cache_status and json.loads(body)["body_length"] == 0


async def test_cache_deception_paths_are_not_stored(
    node: NodeFactory, upstream: Proc, tmp_path: Path
) -> None:
    """Only the response's headers decide: a personal page under a static-looking path
    stays personal."""
    edge = start(node, upstream, tmp_path)
    cases = {
        # A dynamic page with a session cookie, no Cache-Control, old Last-Modified:
        # heuristically fresh, but it sets a cookie.
        "/account.php/style.css": "nocc=1&lm=old&cookie=session%3Dabc",
        # The origin says private; the extension says nothing.
        "/profile/avatar.png": "cc=private",
        "/download/file.zip": "cc=no-store",
        "/settings/x.js": "cc=no-cache%2C%20private",
    }
    async with aiohttp.ClientSession() as session:
        for path, query in cases.items():
            for _ in range(2):
                status, cache_status, _ = await fetch(session, f"{edge.url}{path}?{query}")
                assert status == 200 and "hit" not in cache_status, (path, cache_status)
            assert origin_count(upstream, path) == 2, path
        # Without the cookie, the same heuristic freshness is stored: the cookie was
        # the reason. And a page with no static-looking name is cached by its headers.
        for path, query in {"/plain.css": "nocc=1&lm=old", "/page": "cc=max-age%3D60"}.items():
            await fetch(session, f"{edge.url}{path}?{query}")
            _, cache_status, _ = await fetch(session, f"{edge.url}{path}?{query}")
            assert "hit" in cache_status, (path, cache_status)


async def test_set_cookie_policies(node: NodeFactory, upstream: Proc, tmp_path: Path) -> None:
    """explicit (default): explicit freshness or public shares it; public: only public,
    s-maxage or a targeted field; never: never shared."""
    queries = {
        "explicit": "cc=max-age%3D60&cookie=a%3Db",
        "public": "cc=public%2C%20max-age%3D60&cookie=a%3Db",
        "smaxage": "cc=s-maxage%3D60&cookie=a%3Db",
        "targeted": "cc=no-cache&cdncc=max-age%3D60&cookie=a%3Db",
        "heuristic": "nocc=1&lm=old&cookie=a%3Db",
    }
    expected = {
        "explicit": {"explicit", "public", "smaxage", "targeted"},
        "public": {"public", "smaxage", "targeted"},
        "never": set(),
        "rfc": {"explicit", "public", "smaxage", "targeted", "heuristic"},
    }
    async with aiohttp.ClientSession() as session:
        for mode, shared in expected.items():
            edge = start(node, upstream, tmp_path, name=f"c-{mode}", set_cookie=mode)
            stored = set()
            for case, query in queries.items():
                url = f"{edge.url}/cookie-{mode}-{case}?{query}"
                await fetch(session, url)
                _, cache_status, _ = await fetch(session, url)
                if "hit" in cache_status:
                    stored.add(case)
            assert stored == shared, (mode, stored)
