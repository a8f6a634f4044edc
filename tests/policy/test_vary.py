"""Vary: RFC 9111 Section 4.1 (secondary cache keys, normalisation of selecting
fields) and RFC 9110 Section 12.5.5 (the Vary field).
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.policy import normalise_selecting, vary_field_names, vary_key, vary_matches


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
        (["en-US, fr"], ["fr, en-US"]),
        (["EN-us"], ["en-US"]),
        (["en-US", "fr"], ["en-US, fr"]),
        (["en;q=1.0"], ["en"]),
        (["en;q=1"], ["en; q=1.0"]),
        (["fr;q=0.5, en"], ["en, fr;q=0.50"]),
        (["de;q=0.8, fr;q=0.8, en"], ["en,fr;q=0.8,de;q=0.8"]),
    ],
    ids=["order", "case", "lines", "q-default", "q-spaces", "q-format", "equal-q-order"],
)
def test_accept_language_equivalent_forms(a: list[str], b: list[str]) -> None:
    """Section 4.1: Accept-Language compared without regard to case or the order of
    tags of equal preference."""
    assert normalise_selecting("accept-language", a) == normalise_selecting("accept-language", b)


def test_accept_language_canonical_form() -> None:
    """Sorted by preference, then tag; q always written."""
    assert (
        normalise_selecting("accept-language", ["fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5"])
        == "fr-ch;q=1,fr;q=0.9,en;q=0.8,de;q=0.7,*;q=0.5"
    )


def test_accept_language_different_preferences_differ() -> None:
    assert normalise_selecting("accept-language", ["en, fr;q=0.5"]) != normalise_selecting(
        "accept-language", ["en;q=0.5, fr"]
    )


@pytest.mark.parametrize("weight", ["abc", "nan", "inf", "1e0", "-1", "1.5", "\uff11"])
def test_accept_language_invalid_q_is_kept_as_written(weight: str) -> None:
    """RFC 9110 Section 12.4.2: a weight that is not a qvalue is not a preference the
    cache understands: the member keeps its text, conflated with no valid one."""
    assert normalise_selecting("accept-language", [f"EN;q={weight}"]) == f"en;q={weight}"
    assert normalise_selecting("accept-language", [f"en;q={weight}"]) != "en;q=1"


def test_accept_language_nan_weights_do_not_depend_on_order() -> None:
    """float("nan") compares with nothing: sorting by it kept the input's order, so
    one set of preferences gave two keys."""
    a = normalise_selecting("accept-language", ["en;q=nan, fr;q=nan, de"])
    b = normalise_selecting("accept-language", ["de, fr;q=nan, en;q=nan"])
    assert a == b == "de;q=1,en;q=nan,fr;q=nan"


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
