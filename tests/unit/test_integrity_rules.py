"""The pure rules behind cache integrity, on their own: entity tags of derived
encodings (RFC 9110 Section 8.8.3), If-Range on them (Section 13.1.5), and which
slices of an object may be combined (RFC 9111 Section 3.4)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.features.compress import LEVELS, variant_etag
from edge.fetch import derive
from edge.fetch.slices import SlicedSource, Slicer
from edge.rfc.ranges import combinable, if_range_allows
from edge.store.disk import Entry

LM = "Wed, 01 Jan 2020 00:00:00 GMT"
LATER = "Thu, 02 Jan 2020 00:00:00 GMT"


@pytest.mark.parametrize(
    ("etag", "coding", "level", "expected"),
    [
        ('"abc"', "br", 4, '"abc-br.4"'),
        ('"abc"', "br", 9, '"abc-br.9"'),
        ('W/"abc"', "gzip", 9, 'W/"abc-gzip.9"'),
        ('"abc"', "zstd", None, '"abc-zstd"'),
        ('"abc"', "identity", 9, '"abc"'),
        ("abc", "br", 4, None),
        (None, "br", 4, None),
    ],
)
def test_an_encodings_tag_names_its_coding_and_level(
    etag: str | None, coding: str, level: int | None, expected: str | None
) -> None:
    assert variant_etag(etag, coding, level) == expected


def test_one_source_at_two_levels_has_two_tags() -> None:
    tags = {variant_etag('"abc"', "br", LEVELS[path]["br"]) for path in LEVELS}
    assert len(tags) == len(LEVELS)


def test_an_encoding_is_as_strong_as_its_source_and_a_decoding_is_weak() -> None:
    encode = derive.Choice("br", "encode", True)
    strong = dict(derive.client_headers([("ETag", '"abc"')], encode, 9))
    assert strong["ETag"] == '"abc-br.9"' and strong["Content-Encoding"] == "br"
    weak = dict(derive.client_headers([("ETag", 'W/"abc"')], encode, 9))
    assert weak["ETag"] == 'W/"abc-br.9"'
    decode = derive.Choice("identity", "decode", True)
    assert dict(derive.client_headers([("ETag", '"abc"')], decode))["ETag"] == 'W/"abc"'


def test_if_range_by_date_never_matches_an_encoding_edge_made() -> None:
    stored = CIMultiDict({"ETag": '"abc-br.9"', "Last-Modified": LM, "Date": LATER})
    by_date = CIMultiDict({"Range": "bytes=10-", "If-Range": LM})
    assert if_range_allows(by_date, stored)  # the source's own bytes: a strong date
    assert not if_range_allows(by_date, stored, dates=False)
    by_tag = CIMultiDict({"Range": "bytes=10-", "If-Range": '"abc-br.9"'})
    assert if_range_allows(by_tag, stored, dates=False)
    other_level = CIMultiDict({"Range": "bytes=10-", "If-Range": '"abc-br.4"'})
    assert not if_range_allows(other_level, stored, dates=False)


def part(span: str, **fields: str) -> CIMultiDict[str]:
    return CIMultiDict(
        {"Content-Range": span, **{k.replace("_", "-"): v for k, v in fields.items()}}
    )


@pytest.mark.parametrize(
    ("stored", "received", "ok"),
    [
        ({"ETag": '"v1"'}, part("bytes 0-9/100", ETag='"v1"'), True),
        ({"ETag": '"v1"'}, part("bytes 0-9/100", ETag='"v2"'), False),  # changed
        ({"ETag": '"v1"'}, part("bytes 0-9/100", ETag='W/"v1"'), False),  # weak
        ({"ETag": '"v1"'}, part("bytes 0-9/100"), False),  # no validator
        ({"ETag": '"v1"'}, part("bytes 0-9/101", ETag='"v1"'), False),  # other length
        ({"ETag": '"v1"'}, part("bytes */100", ETag='"v1"'), False),  # not a part
        ({"Last-Modified": LM}, part("bytes 0-9/100", Last_Modified=LM), True),
        ({"Last-Modified": LM}, part("bytes 0-9/100", Last_Modified=LATER), False),
        ({"Last-Modified": LM}, part("bytes 0-9/100"), False),
        ({}, part("bytes 0-9/100"), False),
    ],
)
def test_parts_combine_only_under_one_strong_validator_and_length(
    stored: dict[str, str], received: CIMultiDict[str], ok: bool
) -> None:
    assert combinable(CIMultiDict(stored), 100, received) is ok


class FakeSlicer:
    """Which slices are stored (None), coming from a fetch under way (True), or need
    a fetch of their own (False)."""

    def __init__(self, states: dict[int, bool | None]) -> None:
        self.states = states

    def coming(self, entry: Entry, index: int) -> bool | None:
        return self.states.get(index)


def sliced(states: dict[int, bool | None]) -> SlicedSource:
    entry = Entry("http://h/o", "v", 200, (), (), 0.0, 0.0, size=1000, slice_size=100)
    slicer: Slicer = FakeSlicer(states)  # type: ignore[assignment]
    return SlicedSource(slicer, entry, [])


def test_a_delivery_plan_counts_the_slices_it_needs_from_upstream() -> None:
    """RFC 9211 Section 2.2: what decides between hit and fwd=partial, before the head."""
    stored = {i: None for i in range(10)}
    assert sliced(stored).plan([(0, 1000)]) == (0, 0)
    some = {**stored, 3: False, 4: True, 9: False}
    assert sliced(some).plan([(0, 1000)]) == (3, 1)
    assert sliced(some).plan([(0, 300)]) == (0, 0)  # slices 0-2 only
    assert sliced(some).plan([(299, 301)]) == (1, 0)  # the last byte of 2, first of 3
    assert sliced(some).plan([(400, 450), (420, 480)]) == (1, 1)  # one slice, once
    assert sliced(some).plan([(950, 5000)]) == (1, 0)  # clamped to the object
    assert sliced(some).plan([(500, 500)]) == (0, 0)  # empty


@pytest.mark.parametrize(
    ("length", "complete", "path"),
    [
        (10 << 20, True, "store"),
        (None, True, "store"),
        (derive.STRONG_WHILE_ARRIVING, False, "store"),
        (derive.STRONG_WHILE_ARRIVING + 1, False, "stream"),
        (None, False, "stream"),
    ],
)
def test_an_encoding_made_once_is_made_strong_when_it_can_keep_up(
    length: int | None, complete: bool, path: str
) -> None:
    """An encoding is never remade, so it is made at the strong level whenever that
    keeps up: from a stored source, or from a short one still arriving."""
    choice = derive.Choice("br", "encode", True)
    job = derive.Job("k", "v", (), choice, length, "identity", complete=complete)
    assert job.path == path
    assert derive.encoding_level(choice, job.path) == LEVELS[path]["br"]
