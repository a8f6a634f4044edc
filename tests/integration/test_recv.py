"""The recv checks (edge.features.recv) hold alike on a hot hit, which the connection
answers from the hot tier (edge.pipeline.fastpath), and on a cold request, which the
pipeline takes: for each check, a request it refuses gets the same answer whether its
target and Host are those of a hot hit or of something never fetched.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge.features import recv
from tests.integration.conftest import NodeFactory
from tests.support.guardkit import exchange, status_of
from tests.support.procs import Proc

HOT = "/recv/hot?size=64"

#: What differs between two answers made alike: the date and the request id.
_VARYING = re.compile(rb"\r\nDate: [^\r]*|X-Request-Id: [0-9a-f]+|request id: [0-9a-f]+")


def request(target: str, *fields: str, host: str = "archive.test", method: str = "GET") -> bytes:
    extra = "".join(f"{f}\r\n" for f in fields)
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode(
        "utf-8", "surrogateescape"
    )


def answer(response: bytes) -> bytes:
    return _VARYING.sub(b"", response)


def fast_count(proc: Proc) -> int:
    time.sleep(0.05)  # access lines are written a loop turn later (edge.observe.accesslog)
    return proc.output().count("walk=fast")


@dataclass
class Case:
    """Requests one check refuses: `fields` added to a request for the hot target or a
    cold one (`target` replaces both when the target itself is what is refused), the
    node's settings, and the status."""

    status: int
    fields: tuple[str, ...] = ()
    host: str = "archive.test"
    method: str = "GET"
    target: str = ""
    settings: dict[str, object] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "framing": Case(431, ("Accept: " + "x" * 2500,), settings={"max_header_bytes": 2000}),
    "host": Case(400, ("Host: archive.test",)),
    "target": Case(400, target="/recv/../etc/hot?size=64"),
    "rate": Case(429, settings={"rate_limit": 0.01, "rate_burst": 4}),
    "method": Case(405, method="DELETE", settings={"allowed_methods": ["GET", "HEAD"]}),
    "rules": Case(403, ("User-Agent: ${jndi:ldap://x/a}",)),
    # A UTF-8 no-break space (which the Shellshock rule's \s matches) in a field.
    "rules, UTF-8 field": Case(403, ("User-Agent: ()\udcc2\udca0{ :; }; /bin/id",)),
    "loop": Case(508, ("CDN-Loop: recv",)),
    "route": Case(421, host="other.test"),
    # The rate class of archive.test counts "archive.test:" (one host, RFC 3986 6.2.3).
    "rate, Host spelled with an empty port": Case(
        429,
        host="archive.test:",
        settings={
            "rate_classes": [{"name": "archive", "host": "archive.test", "rate": 0.01, "burst": 4}]
        },
    ),
}


def test_every_check_has_a_case() -> None:
    assert {name.split(",")[0] for name in CASES} == {c.name for c in recv.CHECKS}


def start(node: NodeFactory, upstream: Proc, tmp_path: Path, settings: dict[str, object]) -> Proc:
    from tests.support.guardkit import toml_value

    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if k != "rate_classes"]
    lines += ["rate_tarpit = 0", 'admin_token = "t"', "trusted_proxies = []"]
    for cls in settings.get("rate_classes", []):  # type: ignore[attr-defined]
        lines.append("[[rate_classes]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in cls.items()]
    lines += [
        f'[pools.p]\nmembers = ["{upstream.url}"]',
        '[routes]\n"archive.test" = "p"',
    ]
    config = tmp_path / "recv.toml"
    config.write_text("\n".join(lines) + "\n")
    return node("serve", "--config", str(config), name="recv")


@pytest.mark.parametrize("name", list(CASES))
def test_a_refused_request_gets_one_answer_hot_or_cold(
    node: NodeFactory, upstream: Proc, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    proc = start(node, upstream, tmp_path, case.settings)
    port = proc.port
    # Made hot from its own address (a miss, a hit kept, then answered fast), for the
    # Host spelling the case sends.
    warm = "127.0.0.3"
    hot_host = case.host if case.host != "other.test" else "archive.test"
    for _ in range(3):
        assert status_of(exchange(port, request(HOT, host=hot_host), source=warm)[0]) == 200
    before = fast_count(proc)
    assert status_of(exchange(port, request(HOT, host=hot_host), source=warm)[0]) == 200
    assert fast_count(proc) == before + 1, "the target is not hot"

    def refused(target: str, source: str) -> tuple[list[int], bytes]:
        """Send until refused (the rate cases need their burst spent): the statuses
        seen and the refusal. "{n}" in `target`: a new one each time (never hot)."""
        seen: list[int] = []
        for n in range(6):
            sent = case.target or target.format(n=n)
            got = exchange(
                port,
                request(sent, *case.fields, host=case.host, method=case.method),
                source=source,
            )[0]
            seen.append(status_of(got))
            if seen[-1] != 200:
                return seen, answer(got)
        return seen, b""

    hot_seen, hot = refused(HOT, "127.0.0.2")
    cold_seen, cold = refused("/recv/cold-{n}?size=64", "127.0.0.4")
    assert hot_seen == cold_seen and hot_seen[-1] == case.status, (hot_seen, cold_seen)
    assert hot == cold
    assert b"detail=refused" in hot
