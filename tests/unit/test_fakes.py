"""The in-memory store of tests/support/fakes.py keeps the contract of the disk store
(edge.store.disk.DiskStore) on the points the client machine relies on, so unit tests
on it say something about the node: each check runs on both.

And the scripted upstream answers as edge.upstream.pools.Upstreams does: a head,
a body read in pieces, failures as UpstreamError."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

import pytest

from edge.multiproc.coordination import Solo
from edge.store.disk import DiskStore, Entry, Store
from edge.upstream.pools import UpstreamError, UpstreamTimeout
from tests.support.fakes import (
    ManualClock,
    MemoryStore,
    Reply,
    ScriptedUpstream,
    broken_body,
    down,
    stored_entry,
    timeout,
)


@pytest.fixture(params=["memory", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = (
        MemoryStore() if request.param == "memory" else DiskStore(tmp_path, 1 << 30, Solo())
    )
    yield made
    made.close()


def commit(store: Store, entry: Entry, body: bytes) -> Entry:
    writer = store.begin()
    writer.write(body)
    return store.commit(entry, writer)


def read(handle: IO[bytes] | None) -> bytes | None:
    if handle is None:
        return None
    with handle:
        # As delivery reads it: by descriptor, at an offset.
        return os.pread(handle.fileno(), 1 << 20, 0)


KEY = "http://site.test/a"


def test_a_committed_body_reads_back_by_descriptor(store: Store) -> None:
    stored = commit(store, stored_entry(KEY, (), at=1.0), b"body")
    assert store.variants(KEY) == [stored]
    assert read(store.open_body(stored)) == b"body"


def test_variants_keep_their_identity_until_the_key_changes(store: Store) -> None:
    first = store.variants(KEY)
    assert store.variants(KEY) is first  # the pipeline compares by identity (st_fetch)
    commit(store, stored_entry(KEY, (), at=1.0), b"x")
    changed = store.variants(KEY)
    assert changed is not first
    assert store.variants(KEY) is changed


def test_a_commit_replaces_the_variant_with_the_same_secondary_key(store: Store) -> None:
    en = (("accept-language", "en"),)
    commit(store, stored_entry(KEY, (), at=1.0, vary=en), b"old en")
    fr = commit(store, stored_entry(KEY, (), at=2.0, vary=(("accept-language", "fr"),)), b"fr")
    new_en = commit(store, stored_entry(KEY, (), at=3.0, vary=en), b"new en")
    assert store.variants(KEY) == [new_en, fr]  # newest first
    assert read(store.open_body(new_en)) == b"new en"


def test_an_update_and_a_removal_are_seen(store: Store) -> None:
    stored = commit(store, stored_entry(KEY, (("ETag", '"1"'),), at=1.0), b"x")
    refreshed = stored.with_headers((("ETag", '"1"'), ("Age", "0")), 5.0, 6.0)
    store.update(refreshed)
    assert store.variants(KEY) == [refreshed]
    assert store.remove(KEY) == 1
    assert store.variants(KEY) == []
    assert store.open_body(stored) is None


def test_a_manifest_and_its_slices(store: Store) -> None:
    manifest = store.commit_manifest(
        replace(stored_entry(KEY, (), at=1.0), size=8, slice_size=4)  # two slices
    )
    writer = store.begin()
    writer.write(b"abcd")
    store.commit_slice(manifest, 1, writer)
    assert read(store.open_slice(manifest, 1)) == b"abcd"
    assert store.open_slice(manifest, 0) is None
    assert store.variants(KEY) == [manifest]


async def test_the_scripted_upstream_answers_records_and_fails_on_cue() -> None:
    clock = ManualClock()
    upstream = ScriptedUpstream(clock)
    upstream.script(
        "/a",
        Reply(200, (("ETag", '"1"'),), pieces=[b"ab", b"cd"], took=2.0),
        down(),
        timeout(),
        Reply(200, pieces=[b"ab"], broken=broken_body()),
    )
    response = await upstream.request("GET", "/a", [("Host", "site.test")], key=KEY)
    assert response.status == 200 and response.headers["ETag"] == '"1"'
    assert response.response_time - response.request_time == 2.0
    assert [piece async for piece in response.chunks()] == [b"ab", b"cd"]
    with pytest.raises(UpstreamError, match="unreachable") as refused:
        await upstream.request("GET", "/a", [], key=KEY)
    assert refused.value.status == 502
    with pytest.raises(UpstreamTimeout):
        await upstream.request("GET", "/a", [], key=KEY)
    broken = await upstream.request("GET", "/a", [], key=KEY)
    with pytest.raises(UpstreamError, match="body broke"):
        _ = [piece async for piece in broken.chunks()]
    with pytest.raises(UpstreamError, match="no reply scripted"):
        await upstream.request("GET", "/b", [], key="http://site.test/b")
    assert [s.path for s in upstream.sent] == ["/a"] * 4 + ["/b"]
    assert [s.path for s in upstream.unscripted] == ["/b"]
    assert upstream.sent[0].headers["Host"] == "site.test"
