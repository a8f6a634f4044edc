"""A whole CDN for a scenario: `edge up` on a copy of the default topology with free
ports, its table read back (who runs where), and stopped with the scenario.

Scenarios use the CDN as a black box: the topology file is read as text, the processes
are found through `edge up`'s table and their command lines.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from scenarios.harness import REPO_ROOT, Child, Processes, ScenarioError, edge_command, free_port

DEFAULT_TOPOLOGY = REPO_ROOT / "origin" / "topologies" / "default.toml"
READY = "Ctrl-C stops everything"
_ROW = re.compile(r"^\s+(\S+)\s+(\S+)\s+(\S+)\s+(?:udp\+tcp\s+)?(?:http://)?(\S+)\s+\S+$")


def with_free_ports(text: str) -> str:
    """The topology with every listen port replaced by a free one."""
    return re.sub(r'(listen = "[0-9.]+):\d+"', lambda m: f'{m.group(1)}:{free_port()}"', text)


@dataclass
class Node:
    name: str
    role: str
    region: str
    listen: str  # HOST:PORT

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def parse_table(text: str) -> dict[str, Node]:
    """`edge up`'s table: name, role, region, address (udp+tcp H:P or http://H:P), log."""
    nodes: dict[str, Node] = {}
    started = False
    for line in text.splitlines():
        if line.startswith("edge is up"):
            started = True
            continue
        if not started or not line.strip():
            if started and nodes:
                break
            continue
        m = _ROW.match(line)
        if m and m.group(1) != "name":
            nodes[m.group(1)] = Node(m.group(1), m.group(2), m.group(3), m.group(4))
    return nodes


@dataclass
class Cdn:
    child: Child
    workdir: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def dns(self) -> Node:
        return next(n for n in self.nodes.values() if n.role == "dns")

    def edges(self, region: str | None = None) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "edge" and region in (None, n.region)]

    def by_address(self, host: str) -> Node | None:
        return next((n for n in self.edges() if n.host == host), None)

    def processes(self) -> list[tuple[int, list[str]]]:
        """(pid, argv) of every process `edge up` runs, read from /proc."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
                status = (entry / "status").read_text()
            except OSError:
                continue
            ppid = next(
                (int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:")), 0
            )
            if ppid == self.child.proc.pid:
                found.append((int(entry.name), argv))
        return found

    def find(self, name: str) -> tuple[int, list[str], dict[str, str]]:
        """(pid, argv, environment) of the process named NAME: the node given `--name
        NAME`, or `origin` (the environment carries the tokens edge up gave it)."""
        for pid, argv in self.processes():
            named = "--name" in argv and argv[argv.index("--name") + 1] == name
            if named or (name == "origin" and "origin" in argv and "--root" in argv):
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                env = dict(i.decode().split("=", 1) for i in environ if b"=" in i)
                return pid, argv, env
        raise ScenarioError(f"no process named {name} under edge up")


def start_cdn(
    procs: Processes,
    workdir: Path,
    *,
    restart: bool = True,
    origin_rules: list[str] | None = None,
    timeout: float = 120,
) -> Cdn:
    """`edge up` with free ports (and the origin's extra Cache-Control rules); returns
    once its table is printed."""
    text = with_free_ports(DEFAULT_TOPOLOGY.read_text())
    if origin_rules:
        rules = ", ".join(json.dumps(r) for r in origin_rules)
        text = text.replace("[origin]\n", f"[origin]\nrules = [{rules}]\n", 1)
    topology = workdir / "topology.toml"
    topology.write_text(text)
    argv = edge_command("up", "--topology", str(topology), "--workdir", str(workdir / "cdn"))
    if not restart:
        argv.append("--no-restart")
    child = procs.start("edge-up", argv)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = child.log_path.read_text(errors="replace")
        if READY in text:
            return Cdn(child, workdir, parse_table(text))
        if not child.alive():
            raise child.died()
        time.sleep(0.2)
    raise ScenarioError(f"edge up was not ready within {timeout:.0f}s; see {child.log_path}")
