"""Purge set-up shared by the integration tests: a real `edge coordinator`, its tokens,
FakeNode (a cache node played by a WebSocket client that records what the coordinator
sends and acks it), and `fetch` (hit, miss or stale at a node)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.procs import Proc, edge_cmd, free_port, start

TOKEN = "operator-secret"
NODE_TOKEN = "node-secret"
ENV = {"EDGE_NODE_TOKEN": NODE_TOKEN}  # a node's environment
OP = {"Authorization": f"Bearer {TOKEN}"}  # an operator's request fields
SITE = "archive.example"
Http = aiohttp.ClientSession  # the tests' HTTP and WebSocket client


def start_coordinator(
    procs: list[Proc], db: Path, *extra: str, port: int | None = None, node_token: str = ""
) -> Proc:
    """`edge coordinator` on a free loopback port (or `port`, to restart on the same one)."""
    port = port or free_port()
    cmd = edge_cmd("coordinator", "--listen", f"127.0.0.1:{port}", "--db", str(db), *extra)
    env = {"EDGE_TOKEN": TOKEN, "EDGE_NODE_TOKEN": node_token}
    proc = start(cmd, port, db.with_suffix(f".{port}.log"), health_path="/v1/health", env=env)
    procs.append(proc)
    return proc


class FakeNode:
    """A cache node as the coordinator sees it: subscribes, records each message with the
    time it arrived, "applies" it and acks (after `ack_delay` seconds; never if not `ack`)."""

    def __init__(
        self,
        http: Http,
        base: str,
        name: str,
        role: str = "edge",
        *,
        region: str = "",
        address: str = "",
        after: int = 0,
        ack: bool = True,
        ack_delay: float = 0.0,
        token: str = TOKEN,
        autoping: bool = True,
        instance: str = "",
    ) -> None:
        self.http, self.base, self.name, self.role = http, base, name, role
        self.region, self.address, self.after = region, address, after
        self.ack, self.ack_delay, self.token, self.autoping = ack, ack_delay, token, autoping
        self.instance = instance  # the node process's id: a reconnect of the same one
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.acked: dict[int, float] = {}  # seq -> when its ack was sent
        self.applied = after
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._acks: set[asyncio.Task[None]] = set()

    async def connect(self) -> FakeNode:
        params = {"name": self.name, "role": self.role, "after": str(self.after)}
        if self.region:
            params["region"] = self.region
        if self.address:
            params["address"] = self.address
        if self.instance:
            params["instance"] = self.instance
        self.ws = await self.http.ws_connect(
            f"{self.base}/v1/subscribe",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            heartbeat=None,
            autoping=self.autoping,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.PING:
                continue  # not answered: a node that hangs
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            self.received.append((time.monotonic(), data))
            if data["type"] in ("purge", "reset"):
                self.applied = data["seq"]
                if self.ack and self.ack_delay:
                    task = asyncio.create_task(self._ack_later(data["seq"]))
                    self._acks.add(task)
                    task.add_done_callback(self._acks.discard)
                elif self.ack:
                    await self.send_ack(data["seq"])
            self._wake()

    async def _ack_later(self, seq: int) -> None:
        await asyncio.sleep(self.ack_delay)
        await self.send_ack(seq)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def send_ack(self, seq: int) -> None:
        assert self.ws is not None
        self.acked[seq] = time.monotonic()
        await self.ws.send_json({"type": "ack", "seq": seq})
        self._wake()

    async def heartbeat(self) -> None:
        assert self.ws is not None
        await self.ws.send_json({"type": "heartbeat"})

    async def wait_until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await self._changed.wait()

    async def wait_seq(self, seq: int, timeout: float = 5.0) -> float:
        """When the message carrying `seq` arrived."""
        await self.wait_until(lambda: self.applied >= seq, timeout)
        return next(at for at, m in self.received if m["seq"] == seq)

    async def wait_acked(self, seq: int, timeout: float = 5.0) -> None:
        await self.wait_until(lambda: seq in self.acked, timeout)

    def seqs(self, kind: str = "purge") -> list[int]:
        return [m["seq"] for _, m in self.received if m["type"] == kind]

    @property
    def closed(self) -> bool:
        return self.ws is None or self.ws.closed

    async def close(self) -> None:
        for task in self._acks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader


async def fetch(s: aiohttp.ClientSession, proc: Proc, path: str) -> str:
    """hit, miss or stale, by the node's own Cache-Status entry."""
    async with s.get(proc.url + path, headers={"Host": SITE}) as resp:
        await resp.read()
        assert resp.status == 200
        mine = resp.headers["Cache-Status"].split(",")[-1]
    return "hit" if "; hit" in mine else ("stale" if "fwd=stale" in mine else "miss")
