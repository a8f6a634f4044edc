"""`edge up`: run a whole CDN on this machine, as child processes, from a topology file.

By default the topology shipped in origin/topologies/default.toml: regions eu, us and ap
with their edges on their own loopback networks (127.R.0.x), one shield, the demo
archive origin, the purge coordinator and the GeoDNS authority. The processes are
origin.deploy.plan's (the plan docker-compose.yml renders too); this module places them on
this machine's loopback (`Local`) and runs them. Every child is the same `edge` entry
point, given only the tokens it needs; each is started in the plan's order, waited on
until it is healthy, restarted if it dies, and stopped (with everything else) on Ctrl-C
or SIGTERM. Logs go to WORKDIR/logs, a file per process; tokens and a config for
`edge purge` / `edge status` go to WORKDIR/cli.toml.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

import origin.deploy.plan
from cli.errors import fail

if TYPE_CHECKING:
    from edge.server.tls import LocalCA
    from origin.deploy.plan import Process
    from origin.deploy.topology import Edge, Topology

#: The source address of connections between processes on loopback.
EDGE_SOURCE = "127.0.0.1"
RESTART_LIMIT = 5  # restarts of one process within RESTART_WINDOW before giving up on it
RESTART_WINDOW = 60.0


@dataclass
class Child:
    """A process of the plan, as this machine runs it."""

    process: Process
    log: Path
    ca: str = ""  # CA to verify an https health URL with (edge up --tls)
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] | None = None
    reported: bool = False  # with --no-restart: its exit was reported

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def role(self) -> str:
        return self.process.role

    @property
    def region(self) -> str:
        return self.process.region

    @property
    def listen(self) -> str:
        return self.process.listen

    @property
    def argv(self) -> list[str]:
        return list(self.process.argv)


@dataclass
class Local:
    """The placement of `edge up`: every process on this machine's loopback, at the
    topology's addresses, with its state under WORKDIR."""

    workdir: Path
    topology: Path
    ca: LocalCA | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None

    def listen(self, role: str, name: str, listen: str, edge: Edge | None = None) -> str:
        return listen

    def url(self, name: str, listen: str) -> str:
        return listen

    def directory(self, name: str, kind: str) -> str:
        return str(self.workdir / "cache" / name) if kind == "cache" else str(self.workdir)

    def edge_sources(self, topo: Topology) -> list[str]:
        # On loopback every connection an edge opens comes from 127.0.0.1 (the kernel's
        # source for 127/8), not from the edge's 127.R.0.x: that one address is trusted.
        return [EDGE_SOURCE]

    def certificate(self, name: str, listen: str, names: list[str]) -> dict[str, Any]:
        if self.ca is None:
            return {}
        host = listen.rsplit(":", 1)[0].strip("[]")
        cert, key = self.ca.issue(name, [*names, "localhost"], [host, "127.0.0.1"])
        return {"tls_cert": [str(cert)], "tls_key": [str(key)]}

    def upstream_ca(self) -> dict[str, Any]:
        return {"upstream_ca": str(self.ca.cert_path)} if self.ca is not None else {}

    def dns_topology(self) -> str:
        if self.ca is None:
            return str(self.topology)
        # The GeoDNS authority probes the edges over https, trusting the local CA.
        return str(_tls_topology(self.topology, self.workdir, str(self.ca.cert_path)))

    def published(self, role: str, listen: str) -> str:
        return listen


def _edge_command() -> list[str]:
    return [sys.executable, "-m", "cli.main"]


def _url(listen: str, tls: bool = False) -> str:
    return f"{'https' if tls else 'http'}://{listen}"


def _healthy(child: Child) -> bool:
    check = child.process.check
    if check.kind == "dns":
        import dns.message
        import dns.query

        host, port = check.target.rsplit(":", 1)
        try:
            dns.query.udp(
                dns.message.make_query(check.name, "SOA"), host, port=int(port), timeout=0.5
            )
            return True
        except Exception:  # any failure means not ready yet
            return False
    context = ssl.create_default_context(cafile=child.ca) if child.ca else None
    try:
        with urllib.request.urlopen(check.target, timeout=1, context=context) as resp:
            return resp.status < 500
    except OSError:
        return False


def _start(child: Child, env: dict[str, str]) -> None:
    out = open(child.log, "ab")  # noqa: SIM115 - owned by the child
    program = child.process.program
    # Debian's nats-server is in /usr/sbin, which may not be on PATH.
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/local/sbin")
    command = _edge_command() if program == "edge" else [found or program]
    child.proc = subprocess.Popen(
        [*command, *child.argv],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=child_env(child, env),
    )
    out.close()


def _wait(child: Child, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    assert child.proc is not None
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"exited with status {child.proc.returncode}")
        if _healthy(child):
            return
        time.sleep(0.1)
    raise RuntimeError(f"not healthy within {timeout:.0f}s")


def plan(topology_path: Path, workdir: Path, tls: bool = False) -> list[Child]:
    """The children of the topology, in start order (origin.deploy.plan). With `tls`, edges
    and shields serve HTTPS with certificates from a local CA in WORKDIR/tls."""
    from origin.deploy.topology import TopologyError, load_topology

    try:
        topo = load_topology(topology_path)
    except TopologyError as exc:
        fail(str(exc), 2)
    ca = None
    if tls:
        from edge.server.tls import LocalCA

        ca = LocalCA(workdir / "tls")
    try:
        processes = origin.deploy.plan.plan(topo, Local(workdir, topology_path, ca))
    except origin.deploy.plan.PlanError as exc:
        fail(f"edge up {exc} in {topology_path}", 2)
    ca_file = str(ca.cert_path) if ca else ""
    return [
        Child(
            p,
            workdir / "logs" / f"{p.name}.log",
            ca_file if p.check.target.startswith("https:") else "",
        )
        for p in processes
    ]


def child_env(child: Child, env: dict[str, str]) -> dict[str, str]:
    """The environment of a child: this one's, without the tokens it does not need."""
    secrets = {origin.deploy.plan.OPERATOR_TOKEN, origin.deploy.plan.NODE_TOKEN}
    own = {k: v for k, v in env.items() if k not in secrets or k in child.process.secrets}
    return {**own, **child.process.env}


def _tls_topology(path: Path, workdir: Path, ca_file: str) -> Path:
    """A copy of the topology whose edges' health URLs are https, checked with the CA."""
    import tomllib

    from origin.deploy.topology import to_toml

    raw = tomllib.loads(path.read_text())
    for edge in raw.get("edges", []):
        health = edge.get("health") or (
            f"http://{edge['listen']}/_edge/health" if "listen" in edge else ""
        )
        if health.startswith("http://"):
            edge["health"] = "https://" + health.removeprefix("http://")
    raw.setdefault("health", {})["ca"] = ca_file
    geoip = raw.get("geoip", {})
    if isinstance(geoip.get("database"), str):
        # Relative to the topology file, which the copy is not beside.
        geoip["database"] = str(path.resolve().parent / geoip["database"])
    derived = workdir / "topology-tls.toml"
    derived.write_text(to_toml(raw))
    return derived


def up(
    topology: Annotated[
        Optional[Path],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Option(
            help="Topology TOML.", show_default="the shipped eu/us/ap topology, default.toml"
        ),
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="Folder for the demo archive, caches, logs and tokens.")
    ] = Path(".edge"),
    restart: Annotated[
        bool, typer.Option(help="Restart a process that dies (--no-restart: report it only).")
    ] = True,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Serve HTTPS at the edges and shields, with certificates from a local CA "
            "created in WORKDIR/tls.",
            show_default="off: plain HTTP",
        ),
    ] = False,
) -> None:
    """Start every process of the topology; print what runs where and what to try."""
    if topology is None:
        topology = Path(str(resources.files("origin") / "topologies" / "default.toml"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    children = plan(topology, workdir, tls)
    token = os.environ.get("EDGE_TOKEN") or secrets.token_urlsafe(24)
    node_token = os.environ.get("EDGE_NODE_TOKEN") or secrets.token_urlsafe(24)
    env = {**os.environ, "EDGE_TOKEN": token, "EDGE_NODE_TOKEN": node_token}
    # Every coordinator of the topology (several share a replicated log): `edge purge`
    # moves to the next while one is down.
    coordinators = ",".join(_url(c.listen) for c in children if c.role == "coordinator")
    cli_config = workdir / "cli.toml"
    cli_config.write_text(f'coordinator = "{coordinators}"\ntoken = "{token}"\n')
    cli_config.chmod(0o600)

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def stop_all() -> None:
        for child in reversed(children):
            if child.proc is not None and child.proc.poll() is None:
                child.proc.terminate()
        for child in children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()

    try:
        for child in children:
            if stopping:
                return
            _start(child, env)
            try:
                _wait(child, 120)
            except RuntimeError as exc:
                fail(f"{child.name} failed to start ({exc}); see {child.log}")
        print(_table(children, workdir, cli_config, tls), flush=True)
        while not stopping:
            for child in children:
                assert child.proc is not None
                if child.proc.poll() is None or stopping or child.reported:
                    continue
                if not restart:
                    print(
                        f"edge up: {child.name} exited with status {child.proc.returncode}",
                        flush=True,
                    )
                    child.reported = True
                    continue
                _restart(child, env)
            time.sleep(0.2)
    finally:
        stop_all()
        print("edge up: stopped", flush=True)


def _restart(child: Child, env: dict[str, str]) -> None:
    assert child.proc is not None
    now = time.monotonic()
    child.restarts = [t for t in (child.restarts or []) if now - t < RESTART_WINDOW]
    if len(child.restarts) >= RESTART_LIMIT:
        return  # reported already; it keeps failing
    child.restarts.append(now)
    print(
        f"edge up: {child.name} exited with status {child.proc.returncode}; restarting", flush=True
    )
    _start(child, env)
    try:
        _wait(child, 60)
        print(f"edge up: {child.name} is back", flush=True)
    except RuntimeError as exc:
        print(f"edge up: {child.name} did not come back ({exc}); see {child.log}", flush=True)
        if len(child.restarts) >= RESTART_LIMIT:
            print(f"edge up: giving up on {child.name} after {RESTART_LIMIT} restarts", flush=True)


def _table(children: list[Child], workdir: Path, cli_config: Path, tls: bool = False) -> str:
    def address(c: Child) -> str:
        if c.role == "dns":
            return f"udp+tcp {c.listen}"
        return _url(c.listen, tls and c.role in ("edge", "shield"))

    addresses = [address(c) for c in children]
    width = max(len(a) for a in addresses) + 2
    rows = [f"  {'name':<14}{'role':<13}{'region':<8}{'address':<{width}}log"]
    for c, address in zip(children, addresses, strict=True):
        rows.append(f"  {c.name:<14}{c.role:<13}{c.region:<8}{address:<{width}}{c.log}")
    edge = next(c for c in children if c.role == "edge")
    us_edge = next((c for c in children if c.role == "edge" and c.region == "us"), edge)
    dns_child = next(c for c in children if c.role == "dns")
    dns_host, dns_port = dns_child.listen.rsplit(":", 1)
    host, port = edge.listen.rsplit(":", 1)
    # A client address in the us region's loopback network (127.R.255.x).
    us_client = ".".join(us_edge.listen.rsplit(":", 1)[0].split(".")[:2]) + ".255.1"
    site = f"www.cdn.example:{port}"
    scheme = "https" if tls else "http"
    ca_file = workdir / "tls" / "ca.pem"
    trust = f"--cacert {ca_file} " if tls else ""
    tls_lines = (
        [
            f"HTTPS with a local CA: trust {ca_file} (curl --cacert {ca_file}, or add it to",
            "your system's or browser's trust store).",
            "",
        ]
        if tls
        else []
    )
    return "\n".join(
        [
            "edge is up:",
            *rows,
            "",
            *tls_lines,
            "Try:",
            f"  curl -si {trust}--resolve {site}:{host} {scheme}://{site}/catalogue.json"
            " | head -20",
            "      (twice: a hit; Cache-Status shows the shield's entry, then the edge's)",
            *(
                [
                    f"  edge h3get --cacert {ca_file} --resolve {site}:{host} "
                    f"https://{site}/catalogue.json | head -20",
                    "      (the same over HTTP/3: QUIC on the edge's port, over UDP)",
                ]
                if tls
                else []
            ),
            f"  dig @{dns_host} -p {dns_port} www.cdn.example +short -b {us_client}",
            "      (from a us address: the us edge; try -b 127.1.255.1 and 127.3.255.1)",
            f"  edge purge --config {cli_config} {scheme}://{site}/catalogue.json",
            f"  edge status --config {cli_config}",
            "",
            f"Logs in {workdir / 'logs'}. Ctrl-C stops everything.",
        ]
    )
