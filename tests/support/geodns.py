"""The GeoDNS tests' zone and topology pieces (edge dns on a topology of three regions)."""

from __future__ import annotations

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
