"""Talking to the upstream (origin or shield): one aiohttp client session per node,
with bodies passed through byte for byte (no automatic decompression) and failures
mapped to the two errors a proxy reports: unreachable (502) and timeout (504).

This module owns the upstream connection pool and the translation of a request into
an upstream request; it takes no caching decisions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from yarl import URL


class UpstreamError(Exception):
    """The upstream could not give a response. `status` is what the client gets."""

    status = 502
    detail = "upstream-unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    detail = "upstream-timeout"


#: Headers aiohttp's client would otherwise invent; a proxy forwards only what the
#: client sent.
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass
class UpstreamResponse:
    """A response whose head has arrived; the body is read with `chunks()`."""

    status: int
    headers: aiohttp.typedefs.LooseHeaders
    raw: aiohttp.ClientResponse
    request_time: float
    response_time: float

    async def chunks(self, size: int = 1 << 16):  # type: ignore[no-untyped-def]
        try:
            async for chunk in self.raw.content.iter_chunked(size):
                yield chunk
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream read timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream body broke: {exc}") from exc

    def release(self) -> None:
        self.raw.release()

    def close(self) -> None:
        self.raw.close()


class Upstream:
    """A pool of keep-alive connections to one upstream base URL."""

    def __init__(
        self, base: str, *, connect_timeout: float, read_timeout: float, limit: int = 256
    ) -> None:
        self.base = URL(base)
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,  # forward and store exactly the bytes received
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, path_qs: str) -> URL:
        # encoded=True keeps the client's percent-encoding exactly as sent.
        return URL(str(self.base).rstrip("/") + path_qs, encoded=True)

    async def request(
        self,
        method: str,
        path_qs: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        assert self._session is not None, "Upstream.start() not called"
        # RFC 9110 Section 9.2.2: an idempotent request may be retried once when a
        # kept-alive connection turns out to be dead or garbled.
        attempts = 2 if method in _IDEMPOTENT else 1
        for attempt in range(attempts):
            request_time = time.time()
            try:
                raw = await self._session.request(
                    method,
                    self.url(path_qs),
                    headers=list(headers),
                    data=body if body else None,
                    allow_redirects=False,
                    compress=None,
                )
                break
            except TimeoutError as exc:
                raise UpstreamTimeout("upstream timed out") from exc
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamError(f"upstream unreachable: {exc}") from exc
            except (aiohttp.ClientError, OSError) as exc:
                if attempt + 1 < attempts:
                    continue
                raise UpstreamError(f"upstream failed: {exc}") from exc
        return UpstreamResponse(raw.status, raw.headers, raw, request_time, time.time())
