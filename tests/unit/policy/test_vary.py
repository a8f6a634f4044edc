"""Vary: RFC 9111 Section 4.1 (secondary cache keys, normalisation of selecting
fields) and RFC 9110 Section 12.5.5 (the Vary field).
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import normalise_selecting, vary_field_names, vary_key, vary_matches


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


# ------------------------------------------------------------------ vary_field_names


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        ([], []),
        (["Accept-Encoding"], ["accept-encoding"]),
        (["Accept-Encoding, Accept-Language"], ["accept-encoding", "accept-language"]),
        (["Accept-Encoding", "ACCEPT-LANGUAGE"], ["accept-encoding", "accept-language"]),
        (["*"], ["*"]),
        (["Accept, *"], ["accept", "*"]),
        (["  Accept ,, Origin  "], ["accept", "origin"]),
        ([""], []),
    ],
)
def test_vary_field_names(lines: list[str], names: list[str]) -> None:
    """RFC 9110 Section 12.5.5: a list of field names (case-insensitive) or `*`."""
    assert vary_field_names(headers(*(("Vary", line) for line in lines))) == names


# --------------------------------------------------------------- normalise_selecting


def test_absent_selecting_field_is_none() -> None:
    assert normalise_selecting("accept-encoding", []) is None


@pytest.mark.parametrize(
    ("values", "normalised"),
    [
        (["gzip, br"], "gzip,br"),
        (["gzip,br"], "gzip,br"),
        (["gzip", "br"], "gzip,br"),
        (["  gzip ,   br  "], "gzip,br"),
        (["gzip,, br,"], "gzip,br"),
        ([""], ""),
        (['a="x, y", b'], 'a="x, y",b'),
    ],
    ids=["spaces", "no-spaces", "two-lines", "extra-spaces", "empty-members", "empty", "quoted"],
)
def test_lines_are_combined_and_whitespace_removed(values: list[str], normalised: str) -> None:
    """Section 4.1: selecting fields may be normalised by combining field lines and
    removing whitespace around list separators."""
    assert normalise_selecting("accept-encoding", values) == normalised


def test_other_fields_keep_order_and_case() -> None:
    """Only whitespace and line structure are normalised for arbitrary fields."""
    assert normalise_selecting("accept-encoding", ["br, gzip"]) == "br,gzip"
    assert normalise_selecting("x-custom", ["Foo"]) != normalise_selecting("x-custom", ["foo"])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (["EN-us"], ["en-US"]),
        (["en-US", "fr"], ["en-US, fr"]),
        (["en;q=1.0"], ["en"]),
        (["en;q=1"], ["en; q=1.0"]),
        (["en;Q=0.5"], ["en;q=0.5"]),
        (["fr;q=0.5, en"], ["en, fr;q=0.50"]),
        (["de;q=0.8, fr;q=0.8, en"], ["en,de;q=0.8,fr;q=0.8"]),
        (["de, en;q=0"], ["en;q=0, DE"]),
    ],
    ids=[
        "case",
        "lines",
        "q-default",
        "q-spaces",
        "q-letter-case",
        "distinct-q-order",
        "distinct-q-order-ties-kept",
        "refused-range",
    ],
)
def test_accept_language_equivalent_forms(a: list[str], b: list[str]) -> None:
    """Section 4.1: Accept-Language compared without regard to case, spacing, field
    lines, how a weight is written, or the order of members whose weights differ
    (the weight ranks them, RFC 9110 Section 12.4.2)."""
    assert normalise_selecting("accept-language", a) == normalise_selecting("accept-language", b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (["de, en"], ["en, de"]),
        (["en-US, fr"], ["fr, en-US"]),
        (["de", "en"], ["en", "de"]),
        (["de;q=0.8, fr;q=0.8, en"], ["en, fr;q=0.8, de;q=0.8"]),
        (["*, en"], ["en, *"]),
        (["en, fr;q=0.5"], ["en;q=0.5, fr"]),
    ],
    ids=["order", "region-order", "line-order", "equal-q-order", "wildcard-order", "weights"],
)
def test_accept_language_different_preferences_differ(a: list[str], b: list[str]) -> None:
    """Section 4.1: `de, en` prefers German and `en, de` English (RFC 4647 Section 3.4
    takes ranges in the order given; RFC 9110 Section 12.4.2 leaves ties between equal
    weights to the server): members of equal weight keep their order, so these never
    share a variant."""
    assert normalise_selecting("accept-language", a) != normalise_selecting("accept-language", b)


def test_accept_language_canonical_form() -> None:
    """By descending weight, equal weights in the order given; q always written."""
    assert (
        normalise_selecting("accept-language", ["fr-CH, fr;q=0.9, *;q=0.5, en;q=0.8, de;q=0.8"])
        == "fr-ch;q=1,fr;q=0.9,en;q=0.8,de;q=0.8,*;q=0.5"
    )


@pytest.mark.parametrize("weight", ["abc", "nan", "inf", "1e0", "-1", "1.5", "\uff11"])
def test_accept_language_invalid_q_is_kept_as_written(weight: str) -> None:
    """RFC 9110 Section 12.4.2: a weight that is not a qvalue is not a preference the
    cache understands: the member keeps its text, conflated with no valid one."""
    assert normalise_selecting("accept-language", [f"EN;q={weight}"]) == f"en;q={weight}"
    assert normalise_selecting("accept-language", [f"en;q={weight}"]) != "en;q=1"


@pytest.mark.parametrize(
    "value",
    ["en;q=nan, fr;q=nan, de", "en;level=1, de", "de, en, de;q=0.5", "en_US, de", "\u212aa, de"],
    ids=["invalid-weights", "unknown-parameter", "range-twice", "not-a-range", "kelvin"],
)
def test_accept_language_edge_cannot_rank_keeps_its_order(value: str) -> None:
    """A value that is not a list of language ranges with valid weights keeps its
    members in the order written (only ASCII case is folded): how the origin ranks
    it is unknown, so no other order is taken for it. float("nan") once sorted these
    by a weight that compares with nothing."""
    members = [m.strip() for m in value.split(",")]
    normalised = normalise_selecting("accept-language", [value])
    assert normalised == ",".join(
        "".join(c.lower() if c.isascii() else c for c in m) for m in members
    )
    reordered = normalise_selecting("accept-language", [", ".join(reversed(members))])
    assert reordered != normalised
    if value.isascii():
        assert normalise_selecting("accept-language", [value.upper()]) == normalised


def test_accept_and_other_fields_keep_their_order() -> None:
    """RFC 9110 Section 12.5.1: between media ranges of equal weight the order can be
    the client's preference; only whitespace and field lines are normalised."""
    assert normalise_selecting("accept", ["text/html, application/json"]) != normalise_selecting(
        "accept", ["application/json, text/html"]
    )
    assert normalise_selecting("accept", ["text/html,  application/json"]) == normalise_selecting(
        "accept", ["text/html", "application/json"]
    )


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("\u212aey", ["*"]),  # KELVIN SIGN lower-cases to "k": not the field "key"
        ("Accept, a b", ["accept", "*"]),
        ("Accept\xa0", ["*"]),
        ("Accept, \t", ["accept"]),
    ],
)
def test_vary_members_that_are_not_field_names_never_match(value: str, names: list[str]) -> None:
    """RFC 9110 Section 12.5.5: Vary lists field names (tokens) or "*". A member that
    is none cannot be matched, so it is read as "*" (RFC 9111 Section 4.1)."""
    assert vary_field_names(headers(("Vary", value))) == names


# ----------------------------------------------------------------- vary_key / matches


def test_vary_key_is_sorted_and_deduplicated() -> None:
    """The secondary key does not depend on the order of Vary's members."""
    req = headers(("Accept-Encoding", "gzip"), ("Origin", "https://a.example"))
    key = vary_key(["origin", "accept-encoding", "origin"], req)
    assert key == (("accept-encoding", "gzip"), ("origin", "https://a.example"))
    assert key == vary_key(["accept-encoding", "origin"], req)


def test_vary_key_absent_field_is_none() -> None:
    assert vary_key(["accept-encoding"], headers()) == (("accept-encoding", None),)


def test_vary_key_without_vary_is_empty() -> None:
    assert vary_key([], headers(("Accept", "x"))) == ()


def test_vary_matches_same_value() -> None:
    """Section 4.1: the selecting fields of the new request match the stored ones."""
    stored = vary_key(["accept-encoding"], headers(("Accept-Encoding", "gzip, br")))
    assert vary_matches(stored, headers(("accept-encoding", "gzip,br"))) is True
    assert vary_matches(stored, headers(("Accept-Encoding", "gzip"), ("Accept-Encoding", "br")))


def test_vary_matches_different_value() -> None:
    stored = vary_key(["accept-encoding"], headers(("Accept-Encoding", "gzip")))
    assert vary_matches(stored, headers(("Accept-Encoding", "br"))) is False


def test_vary_absent_in_both_matches() -> None:
    """Section 4.1: a field absent from both requests matches."""
    stored = vary_key(["accept-encoding"], headers())
    assert vary_matches(stored, headers(("Accept", "text/html"))) is True


def test_vary_absent_in_one_does_not_match() -> None:
    stored = vary_key(["accept-encoding"], headers())
    assert vary_matches(stored, headers(("Accept-Encoding", "gzip"))) is False
    stored = vary_key(["accept-encoding"], headers(("Accept-Encoding", "gzip")))
    assert vary_matches(stored, headers()) is False


def test_vary_empty_value_is_not_absent() -> None:
    """A present but empty field is a value (""), not an absence."""
    stored = vary_key(["accept-encoding"], headers(("Accept-Encoding", "")))
    assert vary_matches(stored, headers()) is False
    assert vary_matches(stored, headers(("Accept-Encoding", ""))) is True


def test_vary_order_of_fields_does_not_matter() -> None:
    req = headers(("Accept", "a"), ("Accept-Language", "en"))
    stored = vary_key(["accept-language", "accept"], req)
    assert vary_matches(stored, headers(("Accept-Language", "EN"), ("Accept", "a"))) is True


def test_vary_all_fields_must_match() -> None:
    stored = vary_key(["accept", "origin"], headers(("Accept", "a"), ("Origin", "o")))
    assert vary_matches(stored, headers(("Accept", "a"), ("Origin", "other"))) is False


def test_vary_unrelated_fields_are_ignored() -> None:
    stored = vary_key(["accept"], headers(("Accept", "a"), ("Cookie", "x=1")))
    assert vary_matches(stored, headers(("Accept", "a"), ("Cookie", "x=2"))) is True


def test_vary_star_never_matches() -> None:
    """Section 4.1: a Vary of `*` always fails to match."""
    stored = vary_key(["*"], headers())
    assert stored == (("*", None),)
    assert vary_matches(stored, headers()) is False
    assert vary_matches((("accept", "a"), ("*", None)), headers(("Accept", "a"))) is False


def test_no_vary_matches_anything() -> None:
    assert vary_matches((), headers(("Accept", "anything"))) is True
