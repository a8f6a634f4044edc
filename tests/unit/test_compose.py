"""docker-compose.yml, origin/topologies/docker.toml and the Dockerfile run the default
topology as `edge up` does: both files are the generator's output (they cannot drift),
every topology process has its service on the right networks and addresses, every
service's command parses as an `edge` subcommand, and no token is written down. No
Docker engine is needed: the files are read, never run.

Here the parts that open no socket and start no process;
tests/integration/test_compose.py has the ones with real processes."""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
import shlex
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from cli.main import app
from edge.config import NodeConfig
from origin.deploy import compose
from origin.deploy.topology import (
    Edge,
    HealthSettings,
    Region,
    Topology,
    Zone,
    load_topology,
    parse_topology,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "origin" / "topologies" / "default.toml"
COMPOSE = REPO / "docker-compose.yml"
DOCKER_TOML = REPO / "origin" / "topologies" / "docker.toml"
DOCKERFILE = REPO / "Dockerfile"
TOKENS = {"EDGE_TOKEN": "compose-test-operator", "EDGE_NODE_TOKEN": "compose-test-node"}


def read_yaml(text: str) -> Any:
    """The YAML subset origin.deploy.compose writes, read back: block mappings with plain keys,
    block sequences (a mapping may start on the `- ` line), and JSON scalars and flow
    arrays after `key: ` or `- `. Anything else fails the test."""
    lines = [
        (len(line) - len(line.lstrip(" ")), line.strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- "):
            return sequence(i, indent)
        return mapping(i, indent, {})

    def entry(i: int, indent: int, body: str, into: dict[str, Any]) -> int:
        key, sep, rest = body.partition(":")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key), body
        if rest.strip():
            into[key] = json.loads(rest.strip())
            return i + 1
        assert i + 1 < len(lines) and lines[i + 1][0] > indent, f"empty value: {body}"
        into[key], i = block(i + 1, lines[i + 1][0])
        return i

    def mapping(i: int, indent: int, into: dict[str, Any]) -> tuple[dict[str, Any], int]:
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            i = entry(i, indent, lines[i][1], into)
        assert i == len(lines) or lines[i][0] < indent, f"bad indentation: {lines[i][1]}"
        return into, i

    def sequence(i: int, indent: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            body = lines[i][1][2:]
            if body[:1] in '"[{-0123456789' or body in ("true", "false"):
                out.append(json.loads(body))
                i += 1
            else:  # a mapping whose first key is on the dash line
                item: dict[str, Any] = {}
                i = entry(i, indent + 2, body, item)
                if i < len(lines) and lines[i][0] == indent + 2:
                    item, i = mapping(i, indent + 2, item)
                out.append(item)
        return out, i

    value, end = block(0, 0)
    assert end == len(lines), f"unread: {lines[end][1]}"
    return value


@pytest.fixture(scope="module")
def topo() -> Topology:
    return load_topology(DEFAULT)


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return read_yaml(COMPOSE.read_text())


@pytest.fixture(scope="module")
def docker_topo() -> Topology:
    return load_topology(DOCKER_TOML)


def argv_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    assert command[0] == "edge", command
    return command[1:]


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


# -- not drifting -------------------------------------------------------------------------


def test_check_names_what_differs_in_one_line(tmp_path: Path) -> None:
    compose_file, docker_file = tmp_path / "docker-compose.yml", tmp_path / "docker.toml"
    outputs = compose.render(DEFAULT, compose_file, docker_file)
    assert [d.split(" is ")[1] for d in compose.differences(outputs)] == ["missing", "missing"]
    for path, text in outputs.items():
        path.write_text(text)
    assert compose.differences(outputs) == []
    compose_file.write_text(outputs[compose_file].replace('"2G"', '"3G"'))
    (summary,) = compose.differences(outputs)
    assert re.fullmatch(r".*docker-compose\.yml differs in 2 lines from line \d+", summary)


def test_the_yaml_reads_back_as_the_model(topo: Topology, model: dict[str, Any]) -> None:
    assert model == compose.compose_model(topo)


def test_a_yaml_library_reads_it_the_same_way(topo: Topology) -> None:
    import yaml

    assert yaml.safe_load(COMPOSE.read_text()) == compose.compose_model(topo)


# -- services, networks, addresses ---------------------------------------------------------


def test_every_process_has_a_service(topo: Topology, model: dict[str, Any]) -> None:
    s = topo.services
    assert s.origin and s.coordinator and s.dns
    expected = {
        s.origin.name: "origin",
        **{sh.name: "shield" for sh in s.shields},
        s.coordinator.name: "coordinator",
        **{e.name: "serve" for e in topo.edges},
        s.dns.name: "dns",
    }
    assert {name: argv_of(svc)[0] for name, svc in model["services"].items()} == expected


def test_nodes_listen_where_others_reach_them(topo: Topology, model: dict[str, Any]) -> None:
    """A shield or an edge registers its listen address with the coordinator, so it
    listens on its own docker address (with 0.0.0.0 it registered 127.0.0.1, where no
    other container reaches it); the other services listen on every interface."""
    s = topo.services
    nodes = {sh.name for sh in s.shields} | {e.name for e in topo.edges}
    for name, svc in model["services"].items():
        (listen,) = option(argv_of(svc), "--listen")
        address = svc["networks"][compose.NETWORK]["ipv4_address"]
        if name in nodes:
            assert listen.rsplit(":", 1)[0] == address, name
        else:
            assert listen.startswith("0.0.0.0:"), name
    for edge in topo.edges:
        port = edge.listen.rsplit(":", 1)[1]
        argv = argv_of(model["services"][edge.name])
        assert option(argv, "--listen") == [f"{edge.docker_ipv4}:{port}"]


def test_one_network_holds_every_subnet_of_the_topology(
    topo: Topology, model: dict[str, Any]
) -> None:
    """Clients of every region reach every edge (GeoDNS may send them anywhere); docker
    drops traffic between two of its networks, so there is one."""
    assert list(model["networks"]) == [compose.NETWORK]
    (config,) = model["networks"][compose.NETWORK]["ipam"]["config"]
    network = ipaddress.ip_network(config["subnet"])
    assert topo.services.docker_core_subnet is not None
    subnets = [topo.services.docker_core_subnet, *(r.docker_subnet for r in topo.regions)]
    assert all(s is not None and s.subnet_of(network) for s in subnets)  # type: ignore[union-attr]
    assert not all(s.subnet_of(next(network.subnets())) for s in subnets)  # type: ignore[union-attr]
    for name, svc in model["services"].items():
        assert list(svc["networks"]) == [compose.NETWORK], name


def test_edges_sit_in_their_region_subnet_at_docker_ipv4(
    topo: Topology, model: dict[str, Any]
) -> None:
    for edge in topo.edges:
        region = topo.region(edge.region)
        assert region.docker_subnet is not None and edge.docker_ipv4 in region.docker_subnet
        networks = model["services"][edge.name]["networks"]
        assert networks == {compose.NETWORK: {"ipv4_address": str(edge.docker_ipv4)}}


def test_central_services_follow_the_address_rule(topo: Topology, model: dict[str, Any]) -> None:
    s = topo.services
    assert s.origin and s.coordinator and s.dns and s.docker_core_subnet
    base = int(s.docker_core_subnet.network_address)
    rule = {
        s.origin.name: 10,
        **{sh.name: 20 + i for i, sh in enumerate(s.shields)},
        s.coordinator.name: 30,
        s.dns.name: 53,
    }
    for name, number in rule.items():
        address = model["services"][name]["networks"][compose.NETWORK]["ipv4_address"]
        assert address == str(ipaddress.ip_address(base + number)), name
    addresses = [
        net["ipv4_address"]
        for svc in model["services"].values()
        for net in svc["networks"].values()
    ]
    assert len(addresses) == len(set(addresses))


def test_the_geodns_authority_tells_regions_by_source_address(
    topo: Topology, docker_topo: Topology
) -> None:
    """One authority address for every client; a client's region is its source subnet."""
    for region in docker_topo.regions:
        assert region.docker_subnet is not None
        client = region.docker_subnet.network_address + compose.CLIENT_HOST
        assert docker_topo.locate(client)[0].name == region.name
    assert docker_topo.services.dns is not None
    assert docker_topo.services.dns.listen.startswith("172.30.0.53:")


def test_commands_are_what_edge_up_passes(topo: Topology, model: dict[str, Any]) -> None:
    services = model["services"]
    origin = argv_of(services["origin"])
    assert option(origin, "--root") == ["/data/archive"]
    assert "--demo" in origin and "--small" in origin
    assert option(argv_of(services["coordinator"]), "--db") == ["/data/coordinator.db"]
    for shield in topo.services.shields:
        argv = argv_of(services[shield.name])
        assert option(argv, "--origin") == ["http://origin:8081"]
        assert option(argv, "--coordinator") == ["http://coordinator:7000"]
        assert option(argv, "--name") == [shield.name]
        assert option(argv, "--region") == ["core"]
        assert option(argv, "--cache-dir") == ["/cache"]
        # It believes X-Forwarded-For from its edges' addresses, and nobody else's.
        assert option(argv, "--trusted-proxy") == [str(e.docker_ipv4) for e in topo.edges]
    for edge in topo.edges:
        argv = argv_of(services[edge.name])
        assert option(argv, "--shield") == ["http://shield-1:8090"]
        assert option(argv, "--origin") == ["http://origin:8081"]
        assert option(argv, "--name") == [edge.name]
        assert option(argv, "--region") == [edge.region]
        assert option(argv, "--cache-size") == [edge.cache_size]
        assert option(argv, "--cache-dir") == ["/cache"]
        assert option(argv, "--coordinator") == ["http://coordinator:7000"]
        assert option(argv, "--trusted-proxy") == []  # clients are not proxies
    dns = argv_of(services["dns"])
    assert option(dns, "--topology") == [compose.IMAGE_TOPOLOGY]


def test_every_command_parses_as_an_edge_subcommand(model: dict[str, Any]) -> None:
    """Options are parsed and converted as `edge` would, without running anything: an
    unknown option or a value of the wrong type raises."""
    group = typer.main.get_command(app)
    commands = group.commands  # type: ignore[attr-defined]
    for name, service in model["services"].items():
        argv = argv_of(service)
        command = commands.get(argv[0])
        assert command is not None, f"{name}: no subcommand {argv[0]}"
        try:
            command.make_context(argv[0], list(argv[1:]))
        except Exception as exc:  # typer's usage errors (its own click, or click)
            pytest.fail(f"{name}: {exc}")


def test_cache_node_commands_make_a_valid_node_config(
    model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve and shield run up to the point of listening: their options become a
    validated NodeConfig (URLs, sizes, listen address)."""
    import cli.serve

    started: list[NodeConfig] = []
    monkeypatch.setattr(cli.serve, "start", started.append)
    runner = CliRunner()
    nodes = {n: s for n, s in model["services"].items() if argv_of(s)[0] in ("serve", "shield")}
    for name, service in nodes.items():
        result = runner.invoke(app, argv_of(service), env=TOKENS)
        assert result.exit_code == 0, f"{name}: {result.output}"
    assert [cfg.name for cfg in started] == list(nodes)
    for cfg in started:
        assert cfg.coordinator_token == TOKENS["EDGE_NODE_TOKEN"]
        assert str(cfg.cache_dir) == "/cache"


def test_healthchecks_are_python_one_liners(model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        check = service["healthcheck"]
        assert check["test"][:3] == ["CMD", "python", "-c"], name
        compile(check["test"][3], f"{name} healthcheck", "exec")
    paths = {"origin": "/", "coordinator": "/v1/health", "shield-1": "/_edge/health"}
    paths |= {name: "/_edge/health" for name, svc in model["services"].items() if "ports" in svc}
    del paths["dns"]
    for name, path in paths.items():
        service = model["services"][name]
        host, port = option(argv_of(service), "--listen")[0].rsplit(":", 1)
        where = "127.0.0.1" if host == "0.0.0.0" else host  # where the process listens
        url = re.search(r"urlopen\('([^']+)'", service["healthcheck"]["test"][3])
        assert url is not None and url.group(1) == f"http://{where}:{port}{path}", name
    assert "'SOA'" in model["services"]["dns"]["healthcheck"]["test"][3]


def test_start_order_is_by_health(topo: Topology, model: dict[str, Any]) -> None:
    services = model["services"]
    for service in services.values():
        for dep in service.get("depends_on", {}).values():
            assert dep == {"condition": "service_healthy"}
    after = {name: set(svc.get("depends_on", {})) for name, svc in services.items()}
    shields = {sh.name for sh in topo.services.shields}
    assert after["origin"] == set()
    assert after["coordinator"] == {"origin"}
    for shield in shields:
        assert after[shield] == {"origin", "coordinator"}
    for edge in topo.edges:
        assert after[edge.name] == {"origin", "coordinator", *shields}
    assert after["dns"] == {e.name for e in topo.edges}


def test_volumes_and_published_ports(topo: Topology, model: dict[str, Any]) -> None:
    services = model["services"]
    caches = [sh.name for sh in topo.services.shields] + [e.name for e in topo.edges]
    for name in caches:
        assert services[name]["volumes"] == [f"{name}-cache:/cache"]
    assert services["origin"]["volumes"] == ["origin-data:/data"]
    assert services["coordinator"]["volumes"] == ["coordinator-data:/data"]
    assert set(model["volumes"]) == {
        "origin-data",
        "coordinator-data",
        *(f"{n}-cache" for n in caches),
    }
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert set(published) == {"dns", *(e.name for e in topo.edges)}
    host_ports = []
    for name, ports in published.items():
        for port in ports:
            address = ipaddress.ip_address(port.split(":")[0])
            assert address.is_loopback, f"{name} published beyond this machine: {port}"
            host_ports.append(port.rsplit(":", 1)[0] + port.rpartition("/")[2])
    assert len(host_ports) == len(set(host_ports))
    assert all("expose" not in svc and "network_mode" not in svc for svc in services.values())


def test_every_edge_is_published_where_edge_up_runs_it(
    topo: Topology, model: dict[str, Any]
) -> None:
    """At its topology listen address, on one port for all: one URL (www.cdn.example:8080)
    whichever edge answers, so the shield keeps one copy and a purge of that URL
    removes it everywhere (with a port per edge, the shield kept a copy per edge)."""
    ports = set()
    for edge in topo.edges:
        host, port = edge.listen.rsplit(":", 1)
        assert model["services"][edge.name]["ports"] == [f"{host}:{port}:{port}"]
        ports.add(port)
    assert len(ports) == 1
    assert topo.services.dns is not None
    dns = topo.services.dns.listen
    dns_port = dns.rsplit(":", 1)[1]
    assert model["services"]["dns"]["ports"] == [
        f"{dns}:{dns_port}/udp",
        f"{dns}:{dns_port}/tcp",
    ]


def test_a_topology_published_beyond_loopback_is_refused() -> None:
    raw = tomllib.loads(DEFAULT.read_text())
    raw["edges"][0]["listen"] = "0.0.0.0:8080"
    with pytest.raises(compose.ComposeError, match="loopback"):
        compose.compose_model(parse_topology(raw))
    raw = tomllib.loads(DEFAULT.read_text())
    raw["edges"][1]["listen"] = raw["edges"][0]["listen"]
    with pytest.raises(compose.ComposeError, match="published at one address"):
        compose.compose_model(parse_topology(raw))


def test_no_token_is_written_down(model: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for match in re.finditer(r"\$", text):
        tail = text[match.start() :]
        assert re.match(r"\$\{(EDGE_TOKEN|EDGE_NODE_TOKEN):\?[^}$]*\}", tail), tail[:40]
    for name, service in model["services"].items():
        for key, value in service.get("environment", {}).items():
            if key in TOKENS:
                assert value == f"${{{key}:?set {key}}}", name
            else:
                assert "TOKEN" not in key and value.startswith("http://"), f"{name}: {key}"
    assert set(model["services"]["coordinator"]["environment"]) >= set(TOKENS)
    for name, service in model["services"].items():
        if argv_of(service)[0] in ("serve", "shield"):
            assert set(service["environment"]) == {"EDGE_NODE_TOKEN"}, name


# -- the docker topology ------------------------------------------------------------------


def test_the_docker_topology_places_edges_in_their_region_networks(
    docker_topo: Topology,
) -> None:
    for edge in docker_topo.edges:
        region = docker_topo.region(edge.region)
        assert edge.ipv4 == edge.docker_ipv4
        assert region.docker_subnet is not None and edge.ipv4 in region.docker_subnet
        assert any(edge.ipv4 in net for net in region.networks)
        assert edge.listen.startswith(f"{edge.ipv4}:")
        assert edge.health == f"http://{edge.listen}/_edge/health"
        # A client beside the edge is placed in the edge's region.
        client = region.docker_subnet.network_address + 200
        assert docker_topo.locate(client)[0] == region


def test_the_docker_topology_is_the_default_one_otherwise(
    topo: Topology, docker_topo: Topology
) -> None:
    """Everything but addresses is carried over: a field added to the topology that the
    generator does not write fails here."""
    assert {f.name for f in fields(Topology)} == {
        "zone",
        "regions",
        "edges",
        "locations",
        "health",
        "services",
        "geoip",
    }

    def same(a: Any, b: Any, cls: type, moved: set[str]) -> None:
        for f in fields(cls):
            if f.name not in moved:
                assert getattr(a, f.name) == getattr(b, f.name), f"{cls.__name__}.{f.name}"

    same(topo.zone, docker_topo.zone, Zone, {"glue"})
    same(topo.health, docker_topo.health, HealthSettings, {"coordinator"})
    assert len(topo.regions) == len(docker_topo.regions)
    for a, b in zip(topo.regions, docker_topo.regions, strict=True):
        same(a, b, Region, {"networks"})
    assert len(topo.edges) == len(docker_topo.edges)
    for a, b in zip(topo.edges, docker_topo.edges, strict=True):
        same(a, b, Edge, {"ipv4", "ipv6", "listen", "health"})
    assert topo.locations == docker_topo.locations
    # The database file is not in the image (tests/unit/test_plan.py UP_ONLY): all but it.
    assert topo.geoip.reload == docker_topo.geoip.reload and not docker_topo.geoip.database
    s, d = topo.services, docker_topo.services
    assert (s.cdn_name, s.docker_core_subnet) == (d.cdn_name, d.docker_core_subnet)
    for a, b in [
        (s.origin, d.origin),
        (s.coordinator, d.coordinator),
        (s.dns, d.dns),
        *zip(s.shields, d.shields, strict=True),
    ]:
        assert a is not None and b is not None
        assert (a.name, a.options) == (b.name, b.options)
        assert a.listen.rsplit(":", 1)[1] == b.listen.rsplit(":", 1)[1]
        assert d.docker_core_subnet is not None
        assert ipaddress.ip_address(b.listen.rsplit(":", 1)[0]) in d.docker_core_subnet


def test_the_glue_names_the_authoritys_docker_addresses(
    docker_topo: Topology, model: dict[str, Any]
) -> None:
    addresses = {net["ipv4_address"] for net in model["services"]["dns"]["networks"].values()}
    (glue,) = docker_topo.zone.glue.values()
    assert {str(a) for a in glue} == addresses


def test_the_generator_refuses_a_topology_it_cannot_place() -> None:
    raw = tomllib.loads(DEFAULT.read_text())
    raw["edges"][0]["docker_ipv4"] = "172.30.9.11"
    with pytest.raises(compose.ComposeError, match=r"outside 172\.30\.1\.0/24"):
        compose.compose_model(parse_topology(raw))
    raw = tomllib.loads(DEFAULT.read_text())
    raw["edges"][0]["docker_ipv4"] = "172.30.1.255"
    with pytest.raises(compose.ComposeError, match="not a host address"):
        compose.compose_model(parse_topology(raw))
    raw = tomllib.loads(DEFAULT.read_text())
    raw["regions"][2]["docker_subnet"] = "172.31.3.0/24"
    raw["edges"][3]["docker_ipv4"] = "172.31.3.11"
    with pytest.raises(compose.ComposeError, match="one /16"):
        compose.compose_model(parse_topology(raw))
    raw = tomllib.loads(DEFAULT.read_text())
    del raw["docker"]
    with pytest.raises(compose.ComposeError, match="core_subnet"):
        compose.compose_model(parse_topology(raw))
    raw = tomllib.loads(DEFAULT.read_text())
    del raw["regions"][1]["docker_subnet"]
    with pytest.raises(compose.ComposeError, match="region us needs docker_subnet"):
        compose.compose_model(parse_topology(raw))


# -- the image ----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def readme_install_command() -> str:
    """The pip part of the README's first shell command (`python -m pip install . && ...`)."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block is not None, "README.md has no sh block"
    first = block.group(1).strip().splitlines()[0]
    install = next(part.strip() for part in first.split("&&") if "pip install" in part)
    return install


def test_the_image_installs_the_project_as_the_readme_does() -> None:
    steps = dockerfile_instructions()
    # python:3.11-slim unless the build is given another BASE (CI's stand-in).
    assert steps[:2] == [("ARG", "BASE=python:3.11-slim"), ("FROM", "${BASE}")]
    install = shlex.split(readme_install_command())
    runs = [shlex.split(rest) for word, rest in steps if word == "RUN"]
    assert any(run[i : i + len(install)] == install for run in runs for i in range(len(run))), (
        f"no RUN does {install}"
    )
    assert ("COPY", ". .") in steps
    assert not any(word == "ENTRYPOINT" for word, _ in steps)


def test_the_image_runs_as_a_user_who_owns_the_volumes() -> None:
    steps = dockerfile_instructions()
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "useradd" in runs and "/data /cache" in runs and f"-o {users[-1]}" in runs


def test_the_image_carries_the_docker_topology_where_dns_reads_it() -> None:
    runs = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    assert f"origin/topologies/docker.toml {compose.IMAGE_TOPOLOGY}" in runs


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether docker's .dockerignore rules leave `path` out (the patterns used here:
    globs from the context root, `**/` for any depth; no `!` exceptions)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(p, pattern[3:]) for p in parts):
                return True
        elif any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            return True
    return False


def test_dockerignore_leaves_out_local_state_but_not_the_sources() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns)
    for path in [
        ".git",
        ".edge/cli.toml",
        ".env",
        ".venv",
        "venv",
        ".pytest_cache",
        ".ruff_cache",
        "edge/__pycache__/node.cpython-311.pyc",
        "edge_cdn.egg-info",
        "scenarios/out",
        "build",
    ]:
        assert ignored(path, patterns), path
    for path in [
        "pyproject.toml",
        "README.md",
        "edge/server/node.py",
        "origin/deploy/compose.py",
        "origin/topologies/docker.toml",
        "cli/main.py",
    ]:
        assert not ignored(path, patterns), path


def test_the_ci_compose_checks_use_names_the_generator_has() -> None:
    """.ci/compose_checks.py runs only where Docker does: what it takes from the
    generator and the plan must exist here, or the CI stage breaks at its first line."""
    import ast
    import importlib.util

    from origin.deploy import plan

    path = REPO / ".ci" / "compose_checks.py"
    tree = ast.parse(path.read_text())
    modules = {"compose": compose, "plan": plan}
    used = {
        (node.value.id, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in modules
    }
    assert used, "the checks name nothing of the generator"
    assert [f"{m}.{a}" for m, a in sorted(used) if not hasattr(modules[m], a)] == []
    spec = importlib.util.spec_from_file_location("compose_checks", path)
    assert spec is not None and spec.loader is not None
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)  # its constants are computed at import
    assert checks.CHECKS and all(callable(check) for _, check in checks.CHECKS)
