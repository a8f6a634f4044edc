"""A scriptable upstream for edge tests, run as its own process.

It plays the origins an edge meets: it counts requests per path (GET /_count/PATH,
POST /_reset), keeps the Range field of each (GET /_ranges/PATH: a JSON list, null
for none) and counts the body bytes it handed to its connections (GET /_sent/PATH);
it answers with headers the test asks for through the query string, can delay the
response head, and can send a body slowly so a test can kill it mid-body.

    python -m tests.support.upstream --port P [--name N] [--fail-every K --fail-mode M]

--delay S delays every response head by S seconds (a slow member);
--name N stamps `X-Upstream: N` on every response (which member answered);
--fail-every K makes every K-th request fail: with `--fail-mode status` a 503, with
`reset` a connection dropped before any response.

Query parameters on any other path:
  cc=VALUE         Cache-Control of the response (default: public, max-age=3600)
  cdncc=VALUE      CDN-Cache-Control of the response (RFC 9213)
  size=N           body length in bytes (default 1024), bytes derived from the path
  delay=S          seconds to wait before the response head
  trickle=S        seconds to spread the body over (in 64 KiB steps)
  etag=VALUE       ETag (quoted by the caller); 304 when If-None-Match matches
  vary=NAME        Vary field
  status=N         status code
  ctype=VALUE      Content-Type (default application/octet-stream)
  text=1           a body of readable words instead of bytes from the path
  gzip=1           the body gzip-encoded, with Content-Encoding: gzip
  zeros=N          with gzip=1: the encoded body is N bytes of zeros (a bomb)
  sparse=N         a body of N bytes that is mostly zeros (`sparse_for`: ~50:1 in every coding)
  encode=CODING    the body encoded in CODING (gzip, br or zstd), with Content-Encoding;
                   with zeros=N, the encoded body is N bytes of zeros (made once per N)
  echo=1           the body is the request's header fields as JSON ([[name, value]...])
  leak=1           Server, X-Powered-By and a hop-by-hop field named by Connection
  tags=A B         Surrogate-Key: A B (purge tags, space-separated)
  ctags=A,B        Cache-Tag: A,B (purge tags, comma-separated)
  nocc=1           no Cache-Control at all
  cookie=VALUE     Set-Cookie: VALUE
  usercookie=WHEN  Set-Cookie: user=<the request's X-User field> on full answers ("full"),
                   on 304s only ("304") or on both ("all"): a cookie for one client
  lm=DATE          Last-Modified: DATE (an HTTP-date; "old" for one in 2020)
  reqinfo=1        the body is JSON: method, raw target, headers, body length and body
  ranges=1         Accept-Ranges: bytes, and one `bytes=first-[last]` or `bytes=-suffix`
                   range answered 206
                   (416 past the end); If-Match and If-Range are ignored, as a careless
                   origin does
  changes=N        from the path's (N+1)-th request on, the object is another version:
                   other bytes, and the ETag etag2=VALUE (the same ETag when not given)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gzip
import hashlib
import json
import random
from collections import Counter

import brotli
import zstandard
from aiohttp import web

WORDS = b"the archive keeps books scans audio and bundles for readers everywhere ".split()


def text_for(path: str, size: int) -> bytes:
    seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "big")
    out = bytearray()
    while len(out) < size:
        out += WORDS[seed % len(WORDS)] + b" "
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
    return bytes(out[:size])


def body_for(path: str, size: int) -> bytes:
    seed = hashlib.sha256(path.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


#: sparse=N: one byte drawn from the path in every SPARSE_STEP, zeros between.
SPARSE_STEP = 64


def sparse_for(path: str, size: int) -> bytes:
    """N bytes that compress well but never past 1:SPARSE_STEP in any coding (the
    drawn bytes are incompressible and never repeat), so a decoder with a ratio cap
    above that passes them whole."""
    seed = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    out = bytearray(size)
    out[::SPARSE_STEP] = random.Random(seed).randbytes(len(range(0, size, SPARSE_STEP)))
    return bytes(out)


def encode_body(coding: str, body: bytes) -> bytes:
    """`body` in `coding` at the levels an ordinary origin uses."""
    if coding == "gzip":
        return gzip.compress(body, 6)
    if coding == "br":
        return brotli.compress(body, quality=5)
    if coding == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(body)
    raise ValueError(f"unknown coding {coding!r}")


@functools.lru_cache(maxsize=8)
def encoded_zeros(coding: str, size: int) -> bytes:
    """A decompression bomb in `coding`: `size` bytes of zeros, encoded once."""
    return encode_body(coding, bytes(size))


def _single_range(value: str | None, size: int) -> tuple[int, int] | str | None:
    """One `bytes=first-[last]` or `bytes=-suffix` range of `size` bytes: (first, last),
    "unsatisfiable", or None (absent, or not this simple form: the whole body)."""
    if not value or not value.startswith("bytes="):
        return None
    first, dash, last = value[6:].partition("-")
    if dash and not first and last.isdigit():
        if int(last) == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - int(last)), size - 1
    if not dash or not first.isdigit() or (last and not last.isdigit()):
        return None
    if int(first) >= size:
        return "unsatisfiable"
    return int(first), min(int(last), size - 1) if last else size - 1


def make_app(
    name: str = "", fail_every: int = 0, fail_mode: str = "status", delay: float = 0.0
) -> web.Application:
    counts: Counter[str] = Counter()
    total = Counter[str]()
    ranges: dict[str, list[str | None]] = {}
    sent: Counter[str] = Counter()

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"count": counts["/" + request.match_info["path"]]})

    async def sent_bytes(request: web.Request) -> web.Response:
        return web.json_response({"bytes": sent["/" + request.match_info["path"]]})

    async def ranges_seen(request: web.Request) -> web.Response:
        return web.json_response(ranges.get("/" + request.match_info["path"], []))

    async def reset(request: web.Request) -> web.Response:
        counts.clear()
        ranges.clear()
        sent.clear()
        return web.Response(text="ok")

    async def serve(request: web.Request) -> web.StreamResponse:
        counts[request.path] += 1
        total["all"] += 1
        ranges.setdefault(request.path, []).append(request.headers.get("Range"))
        q = request.query
        if fail_every and total["all"] % fail_every == 0:
            if fail_mode == "reset":
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("failing on purpose")
            return web.Response(status=503, text="failing on purpose", headers={"X-Upstream": name})
        if "delay" in q or delay:
            await asyncio.sleep(float(q.get("delay", delay)))
        size = int(q.get("size", "1024"))
        headers = {} if "nocc" in q else {"Cache-Control": q.get("cc", "public, max-age=3600")}
        if "cookie" in q:
            headers["Set-Cookie"] = q["cookie"]
        if "lm" in q:
            headers["Last-Modified"] = (
                "Wed, 01 Jan 2020 00:00:00 GMT" if q["lm"] == "old" else q["lm"]
            )
        if "cdncc" in q:
            headers["CDN-Cache-Control"] = q["cdncc"]
        user_cookie = f"user={request.headers.get('X-User', '')}"
        changed = "changes" in q and counts[request.path] > int(q["changes"])
        if "etag" in q:
            headers["ETag"] = q.get("etag2", q["etag"]) if changed else q["etag"]
            if request.headers.get("If-None-Match") == q["etag"]:
                if q.get("usercookie") in ("304", "all"):
                    headers["Set-Cookie"] = user_cookie
                return web.Response(status=304, headers=headers)
        if q.get("usercookie") in ("full", "all"):
            headers["Set-Cookie"] = user_cookie
        if "vary" in q:
            headers["Vary"] = q["vary"]
            headers["X-Echo"] = request.headers.get(q["vary"], "")
        headers["X-Request-Count"] = str(counts[request.path])
        if name:
            headers["X-Upstream"] = name
        if "tags" in q:
            headers["Surrogate-Key"] = q["tags"]
        if "ctags" in q:
            headers["Cache-Tag"] = q["ctags"]
        if "leak" in q:
            headers.update(
                {
                    "Server": "origin-httpd/2.4",
                    "X-Powered-By": "PHP/8.3",
                    "Connection": "X-Hop",
                    "X-Hop": "hop-by-hop",
                }
            )
        status = int(q.get("status", "200"))
        version = request.path + "#2" if changed else request.path
        body = text_for(version, size) if "text" in q else body_for(version, size)
        if "echo" in q:
            body = json.dumps([[k, v] for k, v in request.headers.items()]).encode()
            size = len(body)
            headers["Content-Type"] = "application/json"
        if "reqinfo" in q:
            received = await request.read()
            info = {
                "method": request.method,
                "target": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_length": len(received),
                "body": received.decode("latin-1"),
            }
            body = json.dumps(info).encode()
            size = len(body)
            headers["Content-Type"] = "application/json"
        if "sparse" in q:
            body = sparse_for(request.path, int(q["sparse"]))
            size = len(body)
        if "ctype" in q:
            headers["Content-Type"] = q["ctype"]
        if "encode" in q and "zeros" in q:
            body = await asyncio.to_thread(encoded_zeros, q["encode"], int(q["zeros"]))
            size = len(body)
            headers["Content-Encoding"] = q["encode"]
        elif "encode" in q:
            body = await asyncio.to_thread(encode_body, q["encode"], body)
            size = len(body)
            headers["Content-Encoding"] = q["encode"]
        if "gzip" in q:
            raw = bytes(int(q["zeros"])) if "zeros" in q else body
            body = gzip.compress(raw, 6)
            size = len(body)
            headers["Content-Encoding"] = "gzip"
        if "ranges" in q:
            headers["Accept-Ranges"] = "bytes"
            span = _single_range(request.headers.get("Range"), size)
            if span == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{size}"
                return web.Response(status=416, headers=headers)
            if span is not None:
                first, last = span
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
                status, body, size = 206, body[first : last + 1], last - first + 1
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = size
        await resp.prepare(request)
        if request.method == "HEAD":
            pass
        elif "trickle" in q:
            step = 1 << 16
            pause = float(q["trickle"]) / max(1, size // step)
            for i in range(0, size, step):
                await resp.write(body[i : i + step])
                sent[request.path] += len(body[i : i + step])
                await asyncio.sleep(pause)
        else:
            await resp.write(body)
            sent[request.path] += len(body)
        await resp.write_eof()
        return resp

    app = web.Application()

    async def count_all(request: web.Request) -> web.Response:
        return web.json_response({"count": total["all"]})

    app.router.add_get("/_total", count_all)
    app.router.add_get("/_count/{path:.*}", count)
    app.router.add_get("/_ranges/{path:.*}", ranges_seen)
    app.router.add_get("/_sent/{path:.*}", sent_bytes)
    app.router.add_post("/_reset", reset)
    app.router.add_route("*", "/{tail:.*}", serve)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="")
    parser.add_argument("--fail-every", type=int, default=0)
    parser.add_argument("--fail-mode", choices=("status", "reset"), default="status")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every head")
    args = parser.parse_args()
    web.run_app(
        make_app(args.name, args.fail_every, args.fail_mode, args.delay),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
