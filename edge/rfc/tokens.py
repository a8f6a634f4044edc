"""Bearer tokens: the one check of `Authorization: Bearer <token>` that every endpoint
asking for a token uses (a node's purge, health and metrics endpoints; the
coordinator's API and subscriptions). Pure.

RFC 6750 Section 2.1 names the scheme "Bearer"; RFC 9110 Section 11.1 makes an
auth-scheme case-insensitive, so `bearer` and `BEARER` are the same scheme. The token
itself is compared in constant time (hmac.compare_digest), so the time a refusal takes
says nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac

#: The challenge sent with a 401 (RFC 9110 Section 11.6.1, RFC 6750 Section 3).
CHALLENGE = 'Bearer realm="edge"'
MISSING = "authorization required: send Authorization: Bearer <token>"
WRONG = "invalid token"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an Authorization field value of the Bearer scheme (in any case),
    or None. RFC 9110 Section 11.4: credentials = auth-scheme 1*SP token68."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def check_bearer(authorization: str | None, expected: str) -> str | None:
    """None when `authorization` carries the `expected` token, else the reason to
    refuse (MISSING or WRONG). No token is ever accepted when none is configured."""
    given = bearer_token(authorization)
    if given is None:
        return MISSING
    if expected and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    ):
        return None
    return WRONG
