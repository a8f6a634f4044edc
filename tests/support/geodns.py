"""The GeoDNS tests' zone and topology pieces (three regions), `edge dns` started on them,
and `same_reply` (two DNS replies equal but for the order of records in RRsets)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from tests.support.procs import REPO, Proc, edge_cmd, free_port

ZONE = "cdn.example."

BASE = """
[zone]
name = "cdn.example."
ttl = 5
negative_ttl = 60
ns = ["ns1.cdn.example."]
glue = {{ "ns1.cdn.example." = ["127.0.0.53"] }}
names = ["@", "www", "files.static"]
answer_count = {answer_count}

[health]
interval = 0.5
timeout = 0.5
rise = 1
fall = 1

[[regions]]
name = "eu"
lat = 50.1
lon = 8.7
networks = ["127.1.0.0/16", "198.51.100.0/24"]
default = true

[[regions]]
name = "us"
lat = 40.7
lon = -74.0
networks = ["127.2.0.0/16", "203.0.113.0/24"]

[[regions]]
name = "ap"
lat = 35.7
lon = 139.7
networks = ["127.3.0.0/16"]

[[locations]]
network = "192.0.2.0/24"
lat = 37.5
lon = 127.0
"""


def edge_block(name: str, region: str, ipv4: str, ipv6: str = "", health: str = "") -> str:
    text = f'\n[[edges]]\nname = "{name}"\nregion = "{region}"\nipv4 = "{ipv4}"\n'
    if ipv6:
        text += f'ipv6 = "{ipv6}"\n'
    if health:
        text += f'health = "{health}"\n'
    return text


EDGES = (
    edge_block("edge-eu-1", "eu", "127.1.0.1", "fd00:1::1")
    + edge_block("edge-us-1", "us", "127.2.0.1")
    + edge_block("edge-ap-1", "ap", "127.3.0.1", "fd00:3::1")
)


def start_dns(procs: list[Proc], tmp_path: Path, topology: str, *extra: str) -> Proc:
    """`edge dns` at info level (debug would explain every answer) with `extra` options."""
    name = "slow" if "--no-fast-path" in extra else "fast"
    path = tmp_path / f"topology-{name}.toml"
    path.write_text(topology)
    port = free_port()
    log = tmp_path / f"dns-{name}.log"
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    cmd = edge_cmd("dns", "--listen", f"127.0.0.1:{port}", "--topology", str(path), *extra)
    popen = subprocess.Popen(
        [*cmd, "--log-level", "info"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
    )
    out.close()
    proc = Proc(popen, port, log)
    procs.append(proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=port, timeout=0.5)
            return proc
        except (dns.exception.Timeout, OSError):
            if popen.poll() is not None:
                raise RuntimeError(log.read_text()) from None
    raise RuntimeError(f"edge dns did not answer:\n{log.read_text()}")


def same_reply(fast: bytes | None, slow: bytes | None) -> bool:
    """Equal, or equal but for the order of records inside RRsets: the same length,
    header and question bytes, the same records in each section, the same OPT."""
    if fast == slow:
        return True
    if fast is None or slow is None or len(fast) != len(slow):
        return False
    a, b = dns.message.from_wire(fast), dns.message.from_wire(slow)
    qlen = len(a.question[0].name.to_wire()) + 4 if a.question else 0
    if fast[: 12 + qlen] != slow[: 12 + qlen] or a != b:
        return False
    return (a.edns, a.payload, [o.to_wire() for o in a.options]) == (
        b.edns,
        b.payload,
        [o.to_wire() for o in b.options],
    )
