"""Cache-Control parsing: RFC 9111 Section 5.2 (directives), Section 1.2.2 (delta-seconds),
RFC 9110 Section 5.6.1 (lists), and the targeted fields of RFC 9213 / Surrogate-Control.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from edge.rfc.policy import (
    MAX_DELTA,
    CacheControl,
    is_sf_dictionary,
    parse_cache_control,
    parse_delta_seconds,
    parse_targeted,
    response_policy,
    split_list,
)

# ----------------------------------------------------------------- split_list (9110 5.6.1)


@pytest.mark.parametrize(
    ("lines", "members"),
    [
        (["a, b, c"], ["a", "b", "c"]),
        (["a,b", "c"], ["a", "b", "c"]),
        (["  a  ,\tb  "], ["a", "b"]),
        (['x="a, b", y'], ['x="a, b"', "y"]),
        (['x="a\\", b", y'], ['x="a\\", b"', "y"]),
        (["a,,b, ,"], ["a", "b"]),
        ([",", ""], []),
        ([], []),
        (['no-cache="Set-Cookie, X-A", private'], ['no-cache="Set-Cookie, X-A"', "private"]),
    ],
    ids=[
        "one-line",
        "two-lines",
        "whitespace",
        "quoted-comma",
        "escaped-quote-in-quoted-string",
        "empty-members-dropped",
        "only-empty",
        "no-lines",
        "qualified-no-cache",
    ],
)
def test_split_list(lines: list[str], members: list[str]) -> None:
    """RFC 9110 Section 5.6.1: commas in quoted strings do not split; empty members go."""
    assert split_list(lines) == members


# ------------------------------------------------------------ delta-seconds (9111 1.2.2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("60", 60),
        ("007", 7),
        ("2147483647", 2147483647),
        ("2147483648", MAX_DELTA),
        ("2147483649", MAX_DELTA),
        ("99999999999999999999999", MAX_DELTA),
        ("9" * 5000, MAX_DELTA),  # beyond Python's int() digit limit: still saturates
        ("0" * 5000 + "60", 60),
        ("-1", None),
        ("+1", None),
        ("1.5", None),
        ("1e3", None),
        ("", None),
        (None, None),
        (" 5", None),
        ("5s", None),
        ('"5"', None),
        ("\u0665", None),  # ARABIC-INDIC DIGIT FIVE: isdigit() but not DIGIT
        ("\u00b2", None),  # SUPERSCRIPT TWO
        ("\uff15", None),  # FULLWIDTH DIGIT FIVE
    ],
)
def test_parse_delta_seconds(value: str | None, expected: int | None) -> None:
    """RFC 9111 Section 1.2.2: 1*DIGIT (ASCII); values past 2^31 saturate to 2^31."""
    assert parse_delta_seconds(value) == expected


def test_max_delta_is_two_to_the_31() -> None:
    """RFC 9111 Section 1.2.2: the saturation value is 2147483648 (2^31)."""
    assert MAX_DELTA == 2**31


# ------------------------------------------------------------ Cache-Control (9111 5.2)


def test_directive_names_are_case_insensitive() -> None:
    """Section 5.2: directive names are compared case-insensitively (stored lower-cased)."""
    cc = parse_cache_control(["Max-Age=60, NO-STORE, Public"])
    assert cc.directives == {"max-age": "60", "no-store": None, "public": None}


def test_directives_across_field_lines_are_combined() -> None:
    """RFC 9110 Section 5.3: several field lines form one list."""
    cc = parse_cache_control(["max-age=60", "no-transform", "s-maxage=30, public"])
    assert cc.directives == {
        "max-age": "60",
        "no-transform": None,
        "s-maxage": "30",
        "public": None,
    }


def test_empty_and_absent_cache_control() -> None:
    """An absent or empty field has no directives."""
    assert parse_cache_control([]) == CacheControl()
    assert parse_cache_control(["", " , "]).directives == {}


def test_token_argument() -> None:
    """Section 5.2: cache-directive = token [ "=" ( token / quoted-string ) ]."""
    cc = parse_cache_control(["max-age=60"])
    assert cc.directives == {"max-age": "60"}
    assert cc.quoted == frozenset()
    assert cc.delta("max-age") == 60


def test_quoted_argument_is_unquoted_and_remembered() -> None:
    """Quoted-string arguments are unquoted (with backslash escapes removed)."""
    cc = parse_cache_control(['ext="a \\"b\\" c", private="Set-Cookie"'])
    assert cc.directives == {"ext": 'a "b" c', "private": "Set-Cookie"}
    assert cc.quoted == frozenset({"ext", "private"})


def test_quoted_delta_seconds_is_accepted() -> None:
    """Section 5.2: senders use the token form, but recipients ought to accept both, so
    `max-age="60"` is 60; single quotes are not quoting and stay invalid."""
    cc = parse_cache_control(['max-age="60"'])
    assert cc.directives == {"max-age": "60"}
    assert cc.delta("max-age") == 60
    assert cc.invalid_delta("max-age") is False
    single = parse_cache_control(["max-age='60'"])
    assert single.delta("max-age") is None
    assert single.invalid_delta("max-age") is True


def test_max_age_inside_a_quoted_string_is_not_a_directive() -> None:
    """Section 5.2: a comma inside a quoted string belongs to the argument."""
    cc = parse_cache_control(['extension="max-age=3600, public", max-age=1'])
    assert cc.directives == {"extension": "max-age=3600, public", "max-age": "1"}
    assert cc.delta("max-age") == 1
    assert "public" not in cc


def test_same_directive_twice_with_same_argument_is_no_conflict() -> None:
    """Section 4.2.1: only differing duplicates are a conflict."""
    cc = parse_cache_control(["max-age=60, max-age=60", "no-store", "no-store"])
    assert cc.directives == {"max-age": "60", "no-store": None}
    assert cc.conflicts == frozenset()
    assert cc.invalid_delta("max-age") is False


@pytest.mark.parametrize(
    "lines",
    [["max-age=60, max-age=120"], ["max-age=60", "max-age=120"], ["max-age=60, max-age"]],
    ids=["same-line", "two-lines", "with-and-without-argument"],
)
def test_conflicting_duplicates_keep_first_and_are_marked(lines: list[str]) -> None:
    """Section 4.2.1: the first occurrence is kept, and the conflict is recorded so the
    response can be treated as stale."""
    cc = parse_cache_control(lines)
    assert cc.directives["max-age"] == "60"
    assert cc.conflicts == frozenset({"max-age"})
    assert cc.delta("max-age") == 60
    assert cc.invalid_delta("max-age") is True


@pytest.mark.parametrize(
    ("member", "delta"),
    [
        ("max-age=007", 7),
        ("max-age=0", 0),
        ("max-age=2147483648", MAX_DELTA),
        ("max-age=4294967296", MAX_DELTA),
        ("max-age=-1", None),
        ("max-age=1.5", None),
        ("max-age=", None),
        ("max-age", None),
        ("max-age=\u0663", None),
        ("max-age='60'", None),
        ("max-age=60s", None),
    ],
)
def test_delta_argument_forms(member: str, delta: int | None) -> None:
    """Section 1.2.2 applied to a directive argument: leading zeros are fine, 2^31
    saturates, and a sign, fraction, empty, missing or non-ASCII argument is invalid."""
    cc = parse_cache_control([member])
    assert "max-age" in cc
    assert cc.delta("max-age") == delta
    assert cc.invalid_delta("max-age") is (delta is None)


def test_absent_directive_is_neither_valid_nor_invalid() -> None:
    """delta() and invalid_delta() only speak about directives that are present."""
    cc = parse_cache_control(["public"])
    assert cc.delta("max-age") is None
    assert cc.invalid_delta("max-age") is False
    assert "max-age" not in cc


def test_whitespace_around_equals_and_argument_is_tolerated() -> None:
    """Leniency: OWS around a member and around `=` does not change the directive."""
    cc = parse_cache_control(["  max-age = 60 ,  public  "])
    assert cc.directives == {"max-age": "60", "public": None}


@pytest.mark.parametrize("member", ["=60", "max age=1", "m\u00e4x-age=1", "(x)=1", "@"])
def test_members_without_a_token_name_are_ignored(member: str) -> None:
    """Section 5.2: a directive is identified by a token; anything else is dropped."""
    cc = parse_cache_control([f"{member}, no-store"])
    assert cc.directives == {"no-store": None}


def test_unknown_extensions_are_kept() -> None:
    """Section 5.2.3: extensions are parsed like any directive (and ignored by policy)."""
    cc = parse_cache_control(["community=UCI, foo"])
    assert cc.directives == {"community": "UCI", "foo": None}


@pytest.mark.parametrize(
    ("lines", "names"),
    [
        (['no-cache="Set-Cookie, X-Secret"'], ["set-cookie", "x-secret"]),
        (["no-cache=Set-Cookie"], ["set-cookie"]),
        (['no-cache=" Set-Cookie ,, X-A "'], ["set-cookie", "x-a"]),
        (['no-cache=""'], []),
        (["no-cache"], None),
        (["public"], None),
    ],
    ids=["quoted-list", "token", "whitespace-and-empties", "empty-quoted", "unqualified", "absent"],
)
def test_field_names_of_qualified_no_cache(lines: list[str], names: list[str] | None) -> None:
    """Sections 5.2.2.4 and 5.2.2.7: qualified forms list field names (lower-cased)."""
    assert parse_cache_control(lines).field_names("no-cache") == names


def test_field_names_of_qualified_private() -> None:
    """Section 5.2.2.7: `private="Set-Cookie, Authorization-Info"`."""
    cc = parse_cache_control(['private="Set-Cookie, Authorization-Info", max-age=60'])
    assert cc.field_names("private") == ["set-cookie", "authorization-info"]


# --------------------------------------------------- targeted fields (RFC 9213, Surrogate)


def test_targeted_absent_is_none() -> None:
    """RFC 9213 Section 2.1: an absent field leaves Cache-Control in charge."""
    assert parse_targeted([]) is None
    assert parse_targeted([], ["edge1"]) is None


@pytest.mark.parametrize("lines", [[""], [" , "], ["=5"]], ids=["empty", "commas", "no-token"])
def test_targeted_without_valid_directive_is_none(lines: list[str]) -> None:
    """RFC 9213 Section 2: an empty (or unusable) targeted field is ignored."""
    assert parse_targeted(lines) is None


def test_cdn_cache_control_directives() -> None:
    """RFC 9213 Section 3: CDN-Cache-Control carries ordinary cache directives."""
    cc = parse_targeted(["max-age=600, stale-while-revalidate=30", "must-revalidate"])
    assert cc is not None
    assert cc.directives == {
        "max-age": "600",
        "stale-while-revalidate": "30",
        "must-revalidate": None,
    }


def test_cdn_cache_control_parameters_are_ignored() -> None:
    """RFC 9213 Section 2: parameters received on directives are ignored."""
    cc = parse_targeted(["max-age=60;foo=bar, no-transform;x"])
    assert cc is not None
    assert cc.directives == {"max-age": "60", "no-transform": None}


def test_surrogate_control_directive_for_this_node_is_kept() -> None:
    """Edge Architecture 2.3: `directive;device` applies only to that device."""
    cc = parse_targeted(["max-age=60;edge1"], ["edge1"])
    assert cc is not None
    assert cc.directives == {"max-age": "60"}


def test_surrogate_control_target_match_is_case_insensitive() -> None:
    """Device tokens are matched without regard to case."""
    cc = parse_targeted(["no-store; EDGE1 "], ["Edge1"])
    assert cc is not None
    assert cc.directives == {"no-store": None}


def test_surrogate_control_directive_for_another_node_is_ignored() -> None:
    """A directive targeted at another device is dropped; untargeted ones remain."""
    cc = parse_targeted(["max-age=60, no-store;other"], ["edge1"])
    assert cc is not None
    assert cc.directives == {"max-age": "60"}


def test_surrogate_control_only_for_other_nodes_is_none() -> None:
    """If everything is targeted elsewhere, the field is as good as absent."""
    assert parse_targeted(["no-store;other, max-age=5;third"], ["edge1"]) is None
    assert parse_targeted(["no-store;other"], []) is None


def test_surrogate_control_untargeted_directives_apply_to_everyone() -> None:
    """Untargeted directives apply with or without a configured device token."""
    cc = parse_targeted(['max-age=30, content="ESI/1.0"'], [])
    assert cc is not None
    assert cc.directives == {"max-age": "30", "content": "ESI/1.0"}


# ------------------------------------------- RFC 9213 fields must be SF Dictionaries


@pytest.mark.parametrize(
    "lines",
    [
        ["max-age=60"],
        ["max-age=60, must-revalidate"],
        ["max-age=60", "no-store"],
        ['private="Set-Cookie", max-age=60'],
        ["max-age=60;foo=bar, no-transform;x"],
        ["stale-if-error=?1, x=1.5, y=:AAE=:, z=*tok"],
    ],
)
def test_sf_dictionary_valid(lines: list[str]) -> None:
    """RFC 8941 Section 3.2 / RFC 9213 Section 2: lower-case keys, item values, params."""
    assert is_sf_dictionary(lines) is True


@pytest.mark.parametrize(
    "lines",
    [[], [""], ["Max-Age=60"], ["max-age=60 s"], ["max-age='60'"], ["max age=1"], ["=5"]],
    ids=["absent", "empty", "upper-case-key", "junk", "single-quotes", "space-in-key", "no-key"],
)
def test_sf_dictionary_invalid(lines: list[str]) -> None:
    assert is_sf_dictionary(lines) is False


def test_invalid_cdn_cache_control_falls_back_to_cache_control() -> None:
    """RFC 9213 Section 2.1: a targeted field that fails to parse is ignored."""
    rp = response_policy(
        CIMultiDict([("Cache-Control", "max-age=5"), ("CDN-Cache-Control", "Max-Age=60")])
    )
    assert rp.targeted is None
    assert rp.effective.delta("max-age") == 5


def test_surrogate_control_is_not_held_to_sf_syntax() -> None:
    """Surrogate-Control predates Structured Fields: `;target` and upper case are fine."""
    rp = response_policy(
        CIMultiDict([("Surrogate-Control", "Max-Age=60;edge1")]), surrogate_targets=("edge1",)
    )
    assert rp.targeted is not None
    assert rp.targeted.delta("max-age") == 60


def test_cdn_cache_control_duplicate_key_last_wins() -> None:
    """RFC 8941 Section 4.2.2: "If dictionary already contains a key this_key ...,
    overwrite its value with value"."""
    cc = parse_targeted(["max-age=60, max-age=90"])
    assert cc is not None
    assert cc.delta("max-age") == 90
    assert cc.conflicts == frozenset()


def test_cdn_cache_control_with_a_string_delta_is_ignored_whole() -> None:
    """RFC 9213 Section 2.1: `max-age="60"` is a String where an Integer belongs, so the
    field is ignored and Cache-Control governs (unlike Cache-Control itself, which
    accepts the quoted form)."""
    from edge.rfc.policy import response_policy

    headers = CIMultiDict([("CDN-Cache-Control", 'max-age="10000"'), ("Cache-Control", "no-store")])
    rp = response_policy(headers)
    assert rp.targeted is None
    assert "no-store" in rp.effective


@pytest.mark.parametrize("name", ["\u212aeep", "no-\u017ftore", "max-age\xa0"])
def test_directive_names_are_tokens_before_lower_casing(name: str) -> None:
    """RFC 9111 Section 5.2: a directive name is a token. str.lower() maps KELVIN SIGN to
    "k", and str.strip() takes NBSP: neither may turn a non-token into a directive."""
    cc = parse_cache_control([f"{name}=5, public"])
    assert list(cc.directives) == ["public"]


@pytest.mark.parametrize("arg", ["60\xa0", "60\x0b", "\x1c60", "60\u3000"])
def test_delta_with_non_ows_around_it_is_invalid(arg: str) -> None:
    """RFC 9110 Section 5.6.3: OWS is SP and HTAB only; other characters around
    delta-seconds make it invalid (RFC 9111 Section 1.2.2)."""
    cc = parse_cache_control([f"max-age={arg}"])
    assert cc.delta("max-age") is None and cc.invalid_delta("max-age")
    assert parse_cache_control(["max-age= \t60\t "]).delta("max-age") == 60


def test_split_list_strips_only_ows() -> None:
    """RFC 9110 Section 5.6.1 and 5.6.3: only SP and HTAB surround list members."""
    assert split_list([" a ,\tb\t, \xa0, c\x85"]) == ["a", "b", "\xa0", "c\x85"]


def test_targeted_semicolon_inside_a_quoted_argument_is_not_a_parameter() -> None:
    """RFC 8941 Section 3.1.2 / RFC 9110 Section 5.6.4: parameters start at a `;`
    outside quoted strings."""
    cc = parse_targeted(['no-cache="a;b", max-age=5'])
    assert cc is not None and cc.directives["no-cache"] == "a;b" and cc.delta("max-age") == 5
    surrogate = parse_targeted(['no-cache="a;b";edge, max-age=5;other'], ["edge"])
    assert surrogate is not None and surrogate.directives == {"no-cache": "a;b"}


def test_targeted_unbalanced_quote_does_not_swallow_the_next_line() -> None:
    """Each field line is its own list (RFC 9110 Section 5.3): an unbalanced quote in
    one line must not take the directives of the next, as it does not in
    parse_cache_control."""
    lines = ['max-age="5', "public"]
    cc = parse_targeted(lines)
    assert cc is not None and "public" in cc
    assert cc.directives == parse_cache_control(lines).directives


@pytest.mark.parametrize(
    "line",
    ["a, b ,,c", " no-cache , max-age=5,\t", ",", "x=1,y=2, z", "a,\xa0,b", "", "k=v;p"],
)
def test_split_list_without_quotes_is_the_quoted_walk(line: str) -> None:
    """Lines without a quoted string take a plain split: the same members as the walk
    that quoted strings take (a quoted member appended after a comma is split off
    whole, so the rest is split by the walk)."""
    assert [*split_list([line]), '"q"'] == split_list([line + ',"q"'])


def test_parsed_cache_control_is_remembered_and_bounded() -> None:
    """A field value parsed again is the same (immutable) result; any iterable of lines
    is accepted; the memory of values is bounded."""
    from edge.rfc import policy

    first = parse_cache_control(["public, max-age=60"])
    assert parse_cache_control(iter(["public, max-age=60"])) is first
    assert first.delta("max-age") == 60 and "public" in first
    assert parse_cache_control(["max-age=60", "public"]) is not first  # lines differ
    for n in range(policy._CC_MEMO_MAX + 50):
        assert parse_cache_control([f"max-age={n}"]).delta("max-age") == n
    assert len(policy._CC_MEMO) <= policy._CC_MEMO_MAX
