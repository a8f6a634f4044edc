"""The replicated log's registry writes (origin.coordinator.jetstream.JetStreamLog._put),
against an in-memory KV: a try cut off and made again writes the node as it is now."""

from __future__ import annotations

import asyncio
import json

import pytest

from origin.coordinator import jetstream
from origin.coordinator.jetstream import JetStreamLog
from origin.coordinator.log import NodeRecord


class StallingKV:
    """A KV whose first put never answers (its member died); later puts are kept."""

    def __init__(self) -> None:
        self.tries = 0
        self.kept: dict[str, dict[str, object]] = {}
        self.first_sent = asyncio.Event()

    async def put(self, key: str, value: bytes) -> int:
        self.tries += 1
        if self.tries == 1:
            self.first_sent.set()
            await asyncio.get_running_loop().create_future()  # no answer, ever
        self.kept[key] = json.loads(value)
        return self.tries


async def test_a_renewal_made_again_after_the_node_left_writes_that_it_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(jetstream, "REGISTRY_TRY", 0.01)
    log = JetStreamLog(["nats://127.0.0.1:4222"])
    kv = StallingKV()
    log._kv = kv  # type: ignore[assignment]
    node = NodeRecord("e1", "edge", holder="coordinator-b")
    renewal = asyncio.ensure_future(log.save_node(node))
    await kv.first_sent.wait()
    node.holder = ""  # the node leaves while the renewal's first try hangs
    await renewal
    assert kv.tries == 2
    assert kv.kept["e1"]["holder"] == ""
