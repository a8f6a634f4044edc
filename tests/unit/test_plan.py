"""One plan (origin.deploy.plan) runs the CDN both ways: `edge up`'s children and compose's
services are the same processes with the same options, and every setting a topology
can have reaches both or, where it is about one way only, that one by design."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cli.up import Local
from cli.up import plan as up_plan
from origin.deploy import compose
from origin.deploy.plan import Process, plan
from origin.deploy.topology import SECTIONS, Topology, load_topology, parse_topology, to_toml

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "origin" / "topologies" / "default.toml"

# Options whose value is where something is, which the placement decides.
PLACED = {
    "--listen",
    "--origin",
    "--shield",
    "--coordinator",
    "--cache-dir",
    "--root",
    "--db",
    "--trusted-proxy",
    "--topology",
}

Raw = dict[str, Any]


def _set(section: str, key: str, value: Any, index: int = 0) -> Callable[[Raw], None]:
    def change(raw: Raw) -> None:
        table = raw.setdefault(section, [] if section in ("locations",) else {})
        (table[index] if isinstance(table, list) else table)[key] = value

    return change


def _location(raw: Raw) -> None:
    raw.setdefault("locations", []).append(
        {"network": "198.51.100.0/24", "lat": 40.7, "lon": -74.0}
    )


def _edge_without_listen(raw: Raw) -> None:
    # ipv4 is the edge's address when it has no listen of its own.
    edge = raw["edges"][0]
    del edge["listen"]
    edge["ipv4"] = "127.1.0.9"


def _move_edge(raw: Raw) -> None:
    # An edge moved to another region takes an address in that region's subnet.
    edge = raw["edges"][0]
    edge["region"] = "us"
    edge["docker_ipv4"] = "172.30.2.19"


def _ca(raw: Raw) -> None:
    from edge.server.tls import LocalCA

    raw.setdefault("health", {})["ca"] = str(LocalCA(Path(tempfile.mkdtemp())).cert_path)


def _rename_region(raw: Raw) -> None:
    # A region's edges name it: they are renamed with it.
    old = raw["regions"][-1]["name"]
    raw["regions"][-1]["name"] = "apac"
    for edge in raw["edges"]:
        if edge["region"] == old:
            edge["region"] = "apac"


MEMBERS = ["127.0.1.41:4222", "127.0.1.42:4222", "127.0.1.43:4222"]


def _purge_log_coordinators(raw: Raw) -> None:
    # More coordinators share a replicated log: none without its members.
    raw["purge_log"] = {"members": MEMBERS, "coordinators": ["127.0.1.31:7000"]}


# One change per setting of the topology: a setting added to origin.deploy.topology.SECTIONS
# without a line here fails test_every_setting_has_a_change.
CHANGES: dict[tuple[str, str], Callable[[Raw], None]] = {
    ("cdn", "name"): _set("cdn", "name", "archive-cdn"),
    ("origin", "listen"): _set("origin", "listen", "127.0.1.11:8082"),
    ("origin", "name"): _set("origin", "name", "books"),
    ("origin", "demo"): _set("origin", "demo", False),
    ("origin", "small"): _set("origin", "small", False),
    ("origin", "root"): _set("origin", "root", "scans"),
    ("origin", "latency"): _set("origin", "latency", 0.05),
    ("origin", "rules"): _set("origin", "rules", ["*.json=max-age=5"]),
    ("shields", "name"): _set("shields", "name", "shield-a"),
    ("shields", "listen"): _set("shields", "listen", "127.0.1.21:8091"),
    ("shields", "cache_size"): _set("shields", "cache_size", "5G"),
    ("shields", "workers"): _set("shields", "workers", 2),
    ("coordinator", "listen"): _set("coordinator", "listen", "127.0.1.31:7001"),
    ("coordinator", "name"): _set("coordinator", "name", "purges"),
    ("dns", "listen"): _set("dns", "listen", "127.0.1.54:5354"),
    ("dns", "name"): _set("dns", "name", "geodns"),
    ("docker", "core_subnet"): _set("docker", "core_subnet", "172.30.0.0/25"),
    ("zone", "name"): _set("zone", "name", "files.example."),
    ("zone", "ttl"): _set("zone", "ttl", 20),
    ("zone", "negative_ttl"): _set("zone", "negative_ttl", 40),
    ("zone", "ns"): _set("zone", "ns", ["ns2.cdn.example."]),
    ("zone", "glue"): _set("zone", "glue", {"ns1.cdn.example.": ["127.0.1.53", "::1"]}),
    ("zone", "names"): _set("zone", "names", ["@", "www"]),
    ("zone", "answer_count"): _set("zone", "answer_count", 3),
    ("zone", "mname"): _set("zone", "mname", "ns9.cdn.example."),
    ("zone", "rname"): _set("zone", "rname", "ops.cdn.example."),
    ("zone", "serial"): _set("zone", "serial", 7),
    ("health", "interval"): _set("health", "interval", 3.0),
    ("health", "timeout"): _set("health", "timeout", 2.0),
    ("health", "rise"): _set("health", "rise", 3),
    ("health", "fall"): _set("health", "fall", 2),
    ("health", "coordinator"): _set("health", "coordinator", "http://127.0.1.30:7000"),
    ("health", "token"): _set("health", "token", "probe-token"),
    ("health", "ca"): _ca,
    ("regions", "name"): _rename_region,
    ("regions", "lat"): _set("regions", "lat", 51.5),
    ("regions", "lon"): _set("regions", "lon", -0.1),
    ("regions", "networks"): _set("regions", "networks", ["127.1.0.0/16", "10.1.0.0/16"]),
    ("regions", "default"): _set("regions", "default", False),
    ("regions", "docker_subnet"): _set("regions", "docker_subnet", "172.30.1.0/25"),
    ("edges", "name"): _set("edges", "name", "edge-fra-1"),
    ("edges", "region"): _move_edge,
    ("edges", "ipv4"): _edge_without_listen,
    ("edges", "ipv6"): _set("edges", "ipv6", "::1"),
    ("edges", "weight"): _set("edges", "weight", 5),
    ("edges", "health"): _set("edges", "health", "http://127.1.0.1:8080/_edge/health?deep"),
    ("edges", "listen"): _set("edges", "listen", "127.1.0.1:8088"),
    ("edges", "cache_size"): _set("edges", "cache_size", "3G"),
    ("edges", "docker_ipv4"): _set("edges", "docker_ipv4", "172.30.1.13"),
    ("edges", "workers"): _set("edges", "workers", 4),
    ("locations", "network"): _location,
    ("locations", "lat"): _location,
    ("locations", "lon"): _location,
    ("regions", "countries"): _set("regions", "countries", ["DE", "FR"]),
    ("regions", "continents"): _set("regions", "continents", ["EU"]),
    ("geoip", "database"): _set("geoip", "database", "/var/lib/geoip/GeoLite2-City.mmdb"),
    ("geoip", "reload"): _set("geoip", "reload", 30.0),
    ("purge_log", "members"): _set("purge_log", "members", MEMBERS),
    ("purge_log", "coordinators"): _purge_log_coordinators,
}

# Settings that reach one way of running the CDN only, and why.
COMPOSE_ONLY = {
    ("docker", "core_subnet"),  # the containers' addresses
    ("regions", "docker_subnet"),
    ("edges", "docker_ipv4"),
}
# Settings compose refuses with one line, and why: the image has no nats-server, so the
# replicated purge log (its members and the coordinators sharing it) runs under `edge up`.
COMPOSE_REFUSES = {("purge_log", "members"), ("purge_log", "coordinators")}
UP_ONLY = {
    # The docker network is IPv4: no container has an IPv6 address to be answered with.
    ("edges", "ipv6"),
    # A CA file on this machine, for `edge up --tls`'s https probes; compose serves
    # plain HTTP and the file is not in the image.
    ("health", "ca"),
    # A database file on this machine, not in the image: the containers' authority
    # places clients by the topology's networks (README: GeoIP).
    ("geoip", "database"),
}


def _raw() -> Raw:
    return tomllib.loads(DEFAULT.read_text())


def _up(raw: Raw, tmp: Path) -> tuple[list[tuple[str, ...]], Topology]:
    """What `edge up`'s processes are given: their argv, and the topology the GeoDNS
    authority reads."""
    path = tmp / "topology.toml"
    path.write_text(to_toml(raw))
    children = up_plan(path, tmp / "work")
    dns = children[-1].argv
    topo = load_topology(Path(dns[dns.index("--topology") + 1]))
    return [tuple(c.argv) for c in children], _without_docker(topo)


def _without_docker(topo: Topology) -> Topology:
    """The topology less what only compose reads (nothing on this machine uses it)."""
    return dataclasses.replace(
        topo,
        regions=tuple(dataclasses.replace(r, docker_subnet=None) for r in topo.regions),
        edges=tuple(dataclasses.replace(e, docker_ipv4=None) for e in topo.edges),
        services=dataclasses.replace(topo.services, docker_core_subnet=None),
    )


def _compose(raw: Raw, tmp: Path) -> tuple[list[tuple[str, ...]], Topology, dict[str, Any]]:
    """What compose's services are given: their command, and the docker topology."""
    topo = parse_topology(copy.deepcopy(raw))
    model = compose.compose_model(topo)
    docker = tmp / "docker.toml"
    docker.write_text(compose.docker_topology(topo, "test"))
    commands = [tuple(s["command"][1:]) for s in model["services"].values()]
    return commands, load_topology(docker), model


def test_every_setting_has_a_change() -> None:
    every = {(section, key) for section, keys in SECTIONS.items() for key in keys}
    assert every == set(CHANGES)


@pytest.mark.parametrize("setting", sorted(CHANGES), ids=lambda s: ".".join(s))
def test_every_setting_reaches_edge_up_and_compose_alike(
    setting: tuple[str, str], tmp_path: Path
) -> None:
    base = _raw()
    changed = copy.deepcopy(base)
    CHANGES[setting](changed)
    assert changed != base
    up_before, up_after = _up(base, tmp_path), _up(changed, tmp_path)
    if setting in COMPOSE_REFUSES:
        assert up_before != up_after
        with pytest.raises(compose.ComposeError, match=r"^\[purge_log\] runs under `edge up` only"):
            _compose(changed, tmp_path)
        return
    compose_before, compose_after = (
        _compose(base, tmp_path),
        _compose(changed, tmp_path),
    )
    reaches_up = up_before != up_after
    reaches_compose = compose_before != compose_after
    if setting in COMPOSE_ONLY:
        assert (reaches_up, reaches_compose) == (False, True)
    elif setting in UP_ONLY:
        assert (reaches_up, reaches_compose) == (True, False)
    else:
        assert (reaches_up, reaches_compose) == (True, True)
        # An option a process is given reaches it both ways (not only through the file
        # the GeoDNS authority reads).
        argv_up = up_before[0] != up_after[0]
        argv_compose = compose_before[0] != compose_after[0]
        if argv_up and not argv_compose:
            assert _placed_only(up_before[0], up_after[0]), setting


def _placed_only(before: list[tuple[str, ...]], after: list[tuple[str, ...]]) -> bool:
    """Whether two argv lists differ only in values the placement decides."""
    return [_options(a) for a in before] == [_options(a) for a in after]


def _options(argv: tuple[str, ...]) -> list[str]:
    """argv with the values of placed options blanked, a repeated placed option once
    (a shield trusts one loopback source here, each edge's address in containers)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in PLACED and i + 1 < len(argv):
            if out[-2:] != [argv[i], "<placed>"]:
                out += [argv[i], "<placed>"]
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def test_edge_up_and_compose_run_the_same_processes(tmp_path: Path) -> None:
    raw = _raw()
    for key, value in (("rules", ["*.json=max-age=5"]), ("latency", 0.01)):
        raw["origin"][key] = value
    raw["shields"][0]["workers"] = 2
    raw["edges"][1]["workers"] = 3
    path = tmp_path / "t.toml"
    path.write_text(to_toml(raw))
    topo = load_topology(path)
    local: list[Process] = plan(topo, Local(tmp_path / "w", path))
    docker: list[Process] = plan(topo, compose.Docker(compose.Layout.of(topo)))
    assert [(p.name, p.role, p.region) for p in local] == [
        (p.name, p.role, p.region) for p in docker
    ]
    for a, b in zip(local, docker, strict=True):
        assert (a.after, a.secrets, a.state, set(a.env)) == (
            b.after,
            b.secrets,
            b.state,
            set(b.env),
        )
        assert _options(a.argv) == _options(b.argv), a.name
        assert a.check.kind == b.check.kind
    # The origin's rules and latency are passed both ways (compose once dropped them).
    origin_argv = docker[0].argv
    assert origin_argv[origin_argv.index("--rule") + 1] == "*.json=max-age=5"
    assert "--latency" in origin_argv
    # Compose renders the plan: each service's command is its process's argv.
    model = compose.compose_model(topo)
    assert [tuple(s["command"]) for s in model["services"].values()] == [
        ("edge", *p.argv) for p in docker
    ]
    # edge up runs the plan: each child is its process.
    assert [c.process for c in up_plan(path, tmp_path / "w")] == local


def test_a_child_gets_only_the_tokens_it_needs(tmp_path: Path) -> None:
    from cli.up import child_env

    children = up_plan(DEFAULT, tmp_path)
    env = {"PATH": "/bin", "EDGE_TOKEN": "op", "EDGE_NODE_TOKEN": "node"}
    by_role = {c.role: child_env(c, env) for c in children}
    assert "EDGE_TOKEN" not in by_role["origin"] and "EDGE_NODE_TOKEN" not in by_role["origin"]
    assert by_role["edge"]["EDGE_NODE_TOKEN"] == "node" and "EDGE_TOKEN" not in by_role["edge"]
    assert by_role["coordinator"]["EDGE_TOKEN"] == "op"
    assert by_role["coordinator"]["EDGE_COORDINATOR"].startswith("http://127.0.1.30:")
    assert all(e["PATH"] == "/bin" for e in by_role.values())


def test_a_replicated_purge_log_runs_its_members_and_every_coordinator(tmp_path: Path) -> None:
    raw = _raw()
    _purge_log_coordinators(raw)
    path = tmp_path / "t.toml"
    path.write_text(to_toml(raw))
    children = up_plan(path, tmp_path / "w")
    by_name = {c.name: c.process for c in children}
    members = [by_name[f"nats-{n}"] for n in (1, 2, 3)]
    routes = "nats://127.0.1.41:6222,nats://127.0.1.42:6222,nats://127.0.1.43:6222"
    for n, member in enumerate(members, 1):
        argv = member.argv
        assert member.program == "nats-server" and member.role == "nats"
        assert argv[argv.index("--routes") + 1] == routes
        assert argv[argv.index("--cluster") + 1] == f"nats://127.0.1.4{n}:6222"
        assert argv[argv.index("--store_dir") + 1] == str(tmp_path / "w" / f"nats-{n}")
        assert member.check.target == f"http://127.0.1.4{n}:8222/varz"
    backend = "nats://127.0.1.41:4222,nats://127.0.1.42:4222,nats://127.0.1.43:4222"
    for name in ("coordinator", "coordinator-2"):
        coordinator = by_name[name]
        assert coordinator.argv[3:] == ("--backend", backend, "--replicas", "3")
        assert "--db" not in coordinator.argv
        assert set(coordinator.after) >= {"nats-1", "nats-2", "nats-3"}
    both = "http://127.0.1.30:7000,http://127.0.1.31:7000"
    for c in children:
        if c.role in ("shield", "edge"):
            assert c.argv[c.argv.index("--coordinator") + 1] == both, c.name
            assert {"coordinator", "coordinator-2"} <= set(c.process.after)
    # Members start first: a coordinator waits for them, nodes for every coordinator.
    roles = [c.role for c in children]
    assert roles.index("coordinator") > max(i for i, r in enumerate(roles) if r == "nats")


def test_a_purge_log_needs_a_quorum_of_members(tmp_path: Path) -> None:
    from origin.deploy.topology import TopologyError

    raw = _raw()
    raw["purge_log"] = {"members": MEMBERS[:2]}
    with pytest.raises(TopologyError, match=r"members must list 1, 3 or 5 HOST:PORT"):
        parse_topology(raw)
    raw["purge_log"] = {"coordinators": ["127.0.1.31:7000"]}
    with pytest.raises(TopologyError, match=r"members must list 1, 3 or 5"):
        parse_topology(raw)
    raw["purge_log"] = {"members": ["127.0.1.41:65000"]}
    with pytest.raises(TopologyError, match=r"its port \+ 4000"):
        parse_topology(raw)
