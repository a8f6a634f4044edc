"""A hostile origin for edge tests, run as its own process: an HTTP/1.1 server on raw
sockets that breaks the protocol in the ways a broken or malicious origin does.

    python -m tests.support.hostile --port P --mode MODE

Every answer is JSON naming what it answers: the request's path, its Cookie and
Authorization, the connection it came on (`conn`) and that connection's request count.
GET /_log (on any mode) lists every request seen as [conn, method, path, expect,
conditional].

Modes:
  trailing      after each response, 50 ms later, a whole second response (for `/smuggled`)
                arrives on the same connection, unasked
  glued         that second response in the same write as the first
  head-body     HEAD is answered with its Content-Length and then the body anyway
  304-body      a conditional GET gets a 304 followed by a body-like whole response
  204-body      GET /empty gets a 204 followed by a whole response
  upgrade       GET /up gets `101 Switching Protocols` (nobody asked) and raw bytes
  http10        HTTP/1.0 responses with `Connection: keep-alive` and no length: the body
                runs to the close
  no-continue   never sends `100 Continue`: a request with `Expect: 100-continue` waits
                for its body, up to 30 s, before it is answered
  overrun       GET /over... gets more body than its Content-Length says, in the same
                write, and the connection kept; GET /short... gets less, then the close
  cut           GET /cut...?size=N gets a head with Content-Length N (no-store; with
                `keep=1` in the query, storable), half the body, then the close: a
                server that dies mid-answer
  interim       GET /hints... gets `103 Early Hints` (Link, X-My-Header, and a field its
                Connection names), 0.3 s later a storable 200; GET /processing... a `102`
                then the 200; POST /continue... a `100 Continue` before its body is read,
                then the 200; POST /refuse... a `413` at once, its body never read, and
                the close 0.5 s later; /trailers... a chunked 200 (storable with `keep=1`
                in the query) ending in a trailer section: X-Checksum, and fields no
                trailer may carry or the head's Connection names
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

_conn_ids = itertools.count(1)
#: What `overrun` sends beyond the declared length: never part of any answer.
OVERRUN = b"OVERRUN: bytes beyond the declared Content-Length"
_seen: list[list[object]] = []


def _response(
    status: str,
    body: bytes,
    *,
    extra: tuple[str, ...] = (),
    version: str = "HTTP/1.1",
    length: bool = True,
) -> bytes:
    lines = [f"{version} {status}", "Content-Type: application/json"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _smuggled() -> bytes:
    body = json.dumps({"path": "/smuggled", "cookie": "stolen", "authorization": ""}).encode()
    return _response(
        "200 OK", body, extra=("Cache-Control: public, max-age=600", 'ETag: "smuggled"')
    )


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip()
    return method, target, fields


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str) -> None:
    conn = next(_conn_ids)
    count = 0
    try:
        while True:
            request = await _read_head(reader)
            if request is None:
                return
            method, target, fields = request
            count += 1
            conditional = "if-none-match" in fields or "if-modified-since" in fields
            _seen.append([conn, method, target, fields.get("expect", ""), conditional])
            if target == "/_log":
                writer.write(_response("200 OK", json.dumps(_seen).encode()))
                await writer.drain()
                continue
            if mode == "interim" and await _interim(writer, method, target):
                return
            length = int(fields.get("content-length", "0") or 0)
            body_in = b""
            if length:
                try:
                    body_in = await asyncio.wait_for(reader.readexactly(length), 30)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return
            answer = {
                "path": target,
                "cookie": fields.get("cookie", ""),
                "authorization": fields.get("authorization", ""),
                "conn": conn,
                "count": count,
                "body": len(body_in),
            }
            body = json.dumps(answer).encode()
            cache = ("Cache-Control: public, max-age=600", f'ETag: "{target}"')
            if mode in ("trailing", "glued"):
                if mode == "glued":
                    writer.write(_response("200 OK", body, extra=cache) + _smuggled())
                else:
                    writer.write(_response("200 OK", body, extra=cache))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                    writer.write(_smuggled())
            elif mode == "head-body" and method == "HEAD":
                writer.write(_response("200 OK", body, extra=cache) + _smuggled())
            elif mode == "304-body" and "if-none-match" in fields:
                writer.write(_response("304 Not Modified", b"", extra=cache) + _smuggled())
            elif mode == "204-body" and target.startswith("/empty"):
                writer.write(_response("204 No Content", b"", length=False) + _smuggled())
            elif mode == "upgrade" and target.startswith("/up"):
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\n\r\n" + _smuggled()
                )
            elif mode == "overrun" and target.startswith("/over"):
                writer.write(_response("200 OK", body, extra=cache) + OVERRUN)
            elif mode == "overrun" and target.startswith("/short"):
                writer.write(_response("200 OK", body, extra=cache)[:-10])
                await writer.drain()
                return  # the close cuts the body short
            elif mode == "cut" and target.startswith("/cut"):
                size = int(target.rpartition("size=")[2] or 0)
                keep = "keep=1" in target
                cc = "Cache-Control: " + ("public, max-age=600" if keep else "no-store")
                head = _response("200 OK", b"", extra=(cc,))
                head = head.replace(b"Content-Length: 0", b"Content-Length: %d" % size)
                writer.write(head + b"c" * (size // 2))
                await writer.drain()
                return  # the close cuts the body short
            elif mode == "http10":
                writer.write(
                    _response(
                        "200 OK",
                        body,
                        version="HTTP/1.0",
                        length=False,
                        extra=("Connection: keep-alive", *cache),
                    )
                )
                await writer.drain()
                return  # the close ends the body
            elif mode == "interim" and target.startswith("/trailers"):
                cc = "public, max-age=600" if "keep=1" in target else "no-store"
                writer.write(
                    f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    f"Cache-Control: {cc}\r\nTrailer: X-Checksum\r\n"
                    "Connection: X-Hop-Trailer\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n6\r\n world\r\n0\r\n"
                    "X-Checksum: sha-11\r\nCache-Control: max-age=1\r\nX-Hop-Trailer: 1\r\n"
                    "Set-Cookie: sneaky=1\r\n\r\n".encode()
                )
            else:
                writer.write(_response("200 OK", body, extra=cache))
            await writer.drain()
    except ConnectionError:
        return
    finally:
        writer.close()


async def _interim(writer: asyncio.StreamWriter, method: str, target: str) -> bool:
    """`interim` mode's 1xx, sent before the request's body is read; True when the
    answer was final and the connection is done."""
    if target.startswith("/hints"):
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </styles.css>; rel=preload; as=style\r\n"
            b"X-My-Header: test\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.3)
    elif target.startswith("/processing"):
        writer.write(b"HTTP/1.1 102 Processing\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
    elif target.startswith("/continue") and method == "POST":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    elif target.startswith("/refuse") and method == "POST":
        # A final answer before the body, which is never read (RFC 9110 Section 15.5.14).
        writer.write(
            _response("413 Content Too Large", b'{"refused": true}', extra=("Connection: close",))
        )
        await writer.drain()
        await asyncio.sleep(0.5)
        return True
    return False


async def main(port: int, mode: str) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, mode), "127.0.0.1", port, limit=1 << 16
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", default="trailing")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.mode))
