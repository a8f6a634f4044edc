"""edge.rfc.tokens: the one bearer-token check of nodes and the coordinator (RFC 6750
Section 2.1; the auth-scheme in any case, RFC 9110 Section 11.1)."""

from __future__ import annotations

import pytest

from edge.rfc.tokens import MISSING, WRONG, bearer_token, check_bearer


@pytest.mark.parametrize(
    ("field", "verdict"),
    [
        ("Bearer s3cret", None),
        ("bearer s3cret", None),  # RFC 9110 Section 11.1: the scheme in any case
        ("BEARER s3cret", None),
        ("  Bearer   s3cret  ", None),
        ("Bearer wrong", WRONG),
        ("Bearer s3cret2", WRONG),
        ("Bearer s3cre", WRONG),
        ("Basic czNjcmV0", MISSING),
        ("Bearer", MISSING),
        ("Bearer ", MISSING),
        ("s3cret", MISSING),
        ("", MISSING),
        (None, MISSING),
        ("Bearer s\u00e9cret", WRONG),  # not ASCII: compared, never an exception
    ],
)
def test_the_bearer_check(field: str | None, verdict: str | None) -> None:
    assert check_bearer(field, "s3cret") == verdict


def test_no_token_is_accepted_when_none_is_configured() -> None:
    assert check_bearer("Bearer ", "") == MISSING
    assert check_bearer("Bearer x", "") == WRONG
    assert bearer_token("bEaReR abc") == "abc"
