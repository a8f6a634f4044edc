"""The request field sections of HTTP/2 (RFC 9113 Sections 8.2 and 8.3) as
edge.rfc.pseudo reads them, one case per rule, and the ordinary blocks browsers and
curl send (the HTTP/3 cases are tests/unit/test_pseudo.py)."""

from __future__ import annotations

import pytest

from edge.rfc.pseudo import Head, Malformed, read_request, trailers_malformed


def read(fields: list[tuple[bytes, bytes]]) -> Head | Malformed:
    """As edge.server.http2 reads a block, on a listener of the block's own scheme."""
    scheme = dict(fields).get(b":scheme", b"https").decode()
    return read_request(fields, scheme=scheme, max_fields=100)


BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")]


def block(
    *fields: tuple[bytes, bytes], pseudo: list[tuple[bytes, bytes]] | None = None
) -> list[tuple[bytes, bytes]]:
    return [*(BASE if pseudo is None else pseudo), *fields]


@pytest.mark.parametrize(
    "fields",
    [
        block(),
        block((b"user-agent", b"curl/7.88.1"), (b"accept", b"*/*")),
        block((b"te", b"trailers"), (b"cookie", b"a=1; b=2")),
        block((b"host", b"A.test")),  # the same authority, in another case
        block(pseudo=[(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*"),
                      (b":authority", b"a")]),
        block(pseudo=[(b":method", b"CONNECT"), (b":authority", b"a.test:443")]),
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"a.test")],
        block((b"x-empty", b"")),
    ],
)  # fmt: skip
def test_ordinary_blocks_are_well_formed(fields: list[tuple[bytes, bytes]]) -> None:
    assert isinstance(read(fields), Head)


MALFORMED = {
    # Section 8.2.1
    "uppercase name": block((b"X-Upper", b"1")),
    "not a token": block((b"x y", b"1")),
    "empty name": block((b"", b"1")),
    "CR LF in a value": block((b"x-a", b"1\r\nx-b: 2")),
    "NUL in a value": block((b"x-a", b"1\x00")),
    "LF in a pseudo value": block(pseudo=[(b":method", b"GET"), (b":scheme", b"https"),
                                          (b":authority", b"a"), (b":path", b"/\nx")]),
    "leading space": block((b"x-a", b" 1")),
    "trailing tab": block((b"x-a", b"1\t")),
    # Section 8.2.2
    "connection": block((b"connection", b"keep-alive")),
    "keep-alive": block((b"keep-alive", b"timeout=5")),
    "proxy-connection": block((b"proxy-connection", b"x")),
    "transfer-encoding": block((b"transfer-encoding", b"chunked")),
    "upgrade": block((b"upgrade", b"h2c")),
    "te gzip": block((b"te", b"gzip")),
    # Section 8.3
    "unknown pseudo": [*BASE, (b":foo", b"1")],
    "response pseudo": [(b":status", b"200"), *BASE],
    "pseudo after a field": [*BASE[:3], (b"x-a", b"1"), BASE[3]],
    "repeated pseudo": [*BASE, (b":path", b"/other")],
    "no method": BASE[1:],
    "no scheme": [BASE[0], *BASE[2:]],
    "no path": BASE[:3],
    "empty path": [*BASE[:3], (b":path", b"")],
    "absolute path": [*BASE[:3], (b":path", b"http://a/")],
    "star not OPTIONS": [*BASE[:3], (b":path", b"*")],
    "CONNECT with path": [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")],
    "CONNECT without authority": [(b":method", b"CONNECT")],
    # Section 8.3.1
    "no authority nor host": [BASE[0], BASE[1], BASE[3]],
    "host not authority": block((b"host", b"other.test")),
    "two hosts": block((b"host", b"a.test"), (b"host", b"a.test")),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_blocks_say_why(name: str) -> None:
    refused = read(MALFORMED[name])
    assert isinstance(refused, Malformed) and refused.status == 400, name
    assert "\n" not in refused.reason and "\r" not in refused.reason


def test_trailers_carry_no_pseudo_fields_but_may_carry_fields() -> None:
    assert trailers_malformed([(b"x-checksum", b"abc")]) is None
    assert trailers_malformed([(b":path", b"/")]) is not None
    assert trailers_malformed([(b"x-a", b"1\r\n")]) is not None
    assert trailers_malformed([(b"X-Upper", b"1")]) is not None
