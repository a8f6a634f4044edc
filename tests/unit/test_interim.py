"""Interim responses and trailers on their way through a node, on fakes: the rules
(edge.rfc.policy.forwards_interim, forwardable_trailers, RFC 9110 Sections 15.2 and
6.5), the relay that keeps 1xx ahead of the final head (edge.pipeline.exchange), and
the client machine forwarding an upstream's 102/103 and trailers to the client that
asked, storing neither (edge.pipeline.transaction). No socket, no process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from edge.pipeline.exchange import InterimRelay, Response
from edge.pipeline.steps import Step
from edge.rfc import policy
from tests.support.fakes import MemoryBody, MemoryChannel, Reply, Rig, rigged

pytestmark = pytest.mark.timeout(10)

STORABLE = (("Cache-Control", "max-age=60"), ("Content-Type", "text/plain"))
HINTS = (("Link", "</styles.css>; rel=preload; as=style"), ("X-My-Header", "test"))


@pytest.fixture
async def r() -> AsyncIterator[Rig]:
    async with rigged() as made:
        yield made


# -- the rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "forwarded"),
    [(100, False), (101, False), (102, True), (103, True), (104, True), (199, True), (200, False)],
)
def test_a_proxy_forwards_the_1xx_it_did_not_ask_for(status: int, forwarded: bool) -> None:
    assert policy.forwards_interim(status) is forwarded


def test_trailers_lose_hop_by_hop_and_forbidden_fields() -> None:
    head = CIMultiDict([("Connection", "X-Hop-Trailer"), ("Trailer", "X-Checksum")])
    trailers = CIMultiDict(
        [
            ("X-Checksum", "sha-11"),
            ("Content-Length", "999"),  # framing: never from a trailer
            ("X-Hop-Trailer", "1"),  # named by the head's Connection
            ("Set-Cookie", "sneaky=1"),
            ("Keep-Alive", "timeout=5"),
            ("Server-Timing", "db;dur=53"),
        ]
    )
    assert policy.forwardable_trailers(trailers, head) == [
        ("X-Checksum", "sha-11"),
        ("Server-Timing", "db;dur=53"),
    ]


# -- the relay -------------------------------------------------------------------------


async def test_the_relay_keeps_the_order_and_stops_before_the_final_head() -> None:
    channel = MemoryChannel()
    relay = InterimRelay(channel)
    relay(102, [])
    relay(103, [("Link", "</a.css>; rel=preload")])
    await relay.close()
    relay(103, [("Link", "</late.css>; rel=preload")])  # after close: dropped
    await channel.respond(Response(200))
    await asyncio.sleep(0)
    assert channel.interims == [(102, []), (103, [("Link", "</a.css>; rel=preload")])]
    assert relay.sent == [102, 103] and channel.late_interims == 0


async def test_the_relay_survives_a_client_that_went_away() -> None:
    class Gone(MemoryChannel):
        async def send_interim(self, status: int, fields: object) -> None:
            raise ConnectionResetError("client went away")

    relay = InterimRelay(Gone())
    relay(103, [])
    relay(103, [])
    await relay.close()
    assert relay.sent == []


# -- the client machine ----------------------------------------------------------------


async def test_a_miss_forwards_103_to_its_client_and_stores_only_the_final_answer(
    r: Rig,
) -> None:
    hints = (*HINTS, ("Connection", "X-Hop"), ("X-Hop", "1"))
    r.upstream.script("/a", Reply(200, STORABLE, b"body", interim=[(103, hints)]))
    _, channel = await r.run()
    assert channel.interims == [(103, list(HINTS))]  # less what its Connection names
    assert channel.status == 200 and channel.body == b"body"
    (entry,) = r.stored()
    assert "Link" not in CIMultiDict(entry.headers)
    # A hit answers from the store: no interim response is ever replayed.
    _, again = await r.run()
    assert again.status == 200 and again.interims == [] and len(r.upstream.sent) == 1


async def test_an_upstream_100_is_not_forwarded_102_is(r: Rig) -> None:
    r.upstream.script("/a", Reply(200, STORABLE, b"body", interim=[(100, ()), (102, ())]))
    _, channel = await r.run()
    assert channel.interims == [(102, [])]


async def test_a_joined_client_gets_no_interim_response(r: Rig) -> None:
    hold = asyncio.Event()
    r.upstream.script("/a", Reply(200, STORABLE, b"once", hold=hold, interim=[(103, HINTS)]))
    first, second = r.transaction(), r.transaction()
    runs = asyncio.gather(first.run(), second.run())
    for _ in range(5):
        await asyncio.sleep(0)
    hold.set()
    await runs
    await r.settle()
    one, two = (t.channel for t in (first, second))
    assert isinstance(one, MemoryChannel) and isinstance(two, MemoryChannel)
    assert one.interims == [(103, list(HINTS))] and two.interims == []
    assert one.body == two.body == b"once" and len(r.upstream.sent) == 1


async def test_a_pass_forwards_interim_responses_and_trailers(r: Rig) -> None:
    r.upstream.script(
        "/form",
        Reply(
            201,
            (("Content-Type", "text/plain"), ("Trailer", "X-Checksum")),
            pieces=[b"ma", b"de"],
            interim=[(102, ()), (103, HINTS)],
            trailers=(("X-Checksum", "sha-1"), ("Content-Length", "9")),
        ),
    )
    request = r.request("/form", "POST", (("Content-Length", "1"),), body=MemoryBody([b"x"]))
    t, channel = await r.run(request)
    assert t.walk[-2:] == [Step.DELIVER, Step.DONE]
    assert [status for status, _ in channel.interims] == [102, 103]
    assert channel.status == 201 and channel.body == b"made"
    assert channel.trailers == [("X-Checksum", "sha-1")]
    assert "X-Checksum" not in channel.headers  # never merged into the head


async def test_trailers_of_a_body_edge_reencodes_are_dropped(r: Rig) -> None:
    # A response nobody may store goes to the client that asked it, compressed on the
    # way: a digest in its trailers would describe bytes the client never gets.
    r.upstream.script(
        "/a",
        Reply(
            200,
            (("Content-Type", "text/plain"), ("Cache-Control", "no-store")),
            pieces=[b"text " * 400],
            trailers=(("X-Checksum", "sha-1"),),
        ),
    )
    _, channel = await r.run(r.request(headers=(("Accept-Encoding", "gzip"),)))
    assert channel.headers.get("Content-Encoding") == "gzip"
    assert channel.trailers == []


async def test_a_fill_never_keeps_trailers(r: Rig) -> None:
    r.upstream.script(
        "/a",
        Reply(200, STORABLE, pieces=[b"hello"], trailers=(("X-Checksum", "sha-1"),)),
    )
    _, channel = await r.run()
    assert channel.body == b"hello" and channel.trailers == []
    # The same trailers on an answer nobody stores reach the client that asked.
    r.upstream.script(
        "/b",
        Reply(
            200,
            (("Cache-Control", "no-store"),),
            pieces=[b"hello"],
            trailers=(("X-Checksum", "sha-1"),),
        ),
    )
    _, private = await r.run(r.request("/b"))
    assert private.body == b"hello" and private.trailers == [("X-Checksum", "sha-1")]
    (entry,) = r.stored()
    assert "X-Checksum" not in CIMultiDict(entry.headers)


# -- Expect: 100-continue on a pass ------------------------------------------------------

UPLOAD = (("Content-Length", "3"), ("Expect", "100-continue"))


async def test_an_upload_is_asked_for_once_the_upstream_asks_for_it(r: Rig) -> None:
    r.upstream.script("/up", Reply(201, (("Content-Type", "text/plain"),), b"made"))
    body = MemoryBody([b"k=v"])
    _, channel = await r.run(r.request("/up", "POST", UPLOAD, body=body))
    (asked,) = r.upstream.sent
    assert asked.body == b"k=v" and channel.continues == 1
    assert channel.status == 201 and channel.head is not None and not channel.head.close


async def test_an_upload_the_upstream_answers_first_is_never_asked_for(r: Rig) -> None:
    r.upstream.script(
        "/up", Reply(401, (("WWW-Authenticate", "Bearer"),), b"who?", answers_first=True)
    )
    body = MemoryBody([b"k=v"])
    _, channel = await r.run(r.request("/up", "POST", UPLOAD, body=body))
    (asked,) = r.upstream.sent
    assert asked.body is None and channel.continues == 0
    assert channel.status == 401 and channel.body == b"who?"
    # The client may still send the body it held back: nothing more on that connection.
    assert channel.head is not None and channel.head.close
    assert await body.readany() == b"k=v"  # never read


async def test_an_upload_too_large_by_its_length_is_refused_before_anyone_is_asked() -> None:
    async with rigged(max_body_size=2) as r:
        _, channel = await r.run(r.request("/up", "POST", UPLOAD, body=MemoryBody([b"k=v"])))
        assert channel.status == 413 and channel.continues == 0 and r.upstream.sent == []


async def test_an_http10_expectation_is_ignored(r: Rig) -> None:
    r.upstream.script("/up", Reply(200, (), b"ok"))
    request = r.request("/up", "POST", UPLOAD, version=(1, 0), body=MemoryBody([b"k=v"]))
    _, channel = await r.run(request)
    (asked,) = r.upstream.sent
    assert asked.body == b"k=v" and channel.continues == 0 and channel.status == 200
