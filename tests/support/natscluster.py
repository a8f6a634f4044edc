"""A real NATS JetStream cluster on loopback for the replicated purge log's tests: Debian's
`nats-server` (installed by .ci/run), each member with its own client, route and
monitoring ports and its own store directory, so a member can be killed and restarted on
the same ports with what it had stored."""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import Proc, free_port, start


def nats_server() -> str:
    found = shutil.which("nats-server") or shutil.which("/usr/sbin/nats-server")
    if found is None:
        raise RuntimeError("nats-server is not installed (.ci/run installs Debian's)")
    return found


@dataclass
class Member:
    name: str
    port: int  # clients
    route: int  # the cluster's routes
    monitor: int  # HTTP monitoring (/healthz), how start() knows it is up
    store: Path
    proc: Proc | None = None


@dataclass
class Cluster:
    """`size` members (1: a lone server, no routes)."""

    root: Path
    procs: list[Proc]
    size: int = 3
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        for n in range(self.size):
            name = f"n{n + 1}"
            store = self.root / name
            store.mkdir(parents=True, exist_ok=True)
            self.members.append(Member(name, free_port(), free_port(), free_port(), store))

    @property
    def url(self) -> str:
        """Every member, as `edge coordinator --backend` takes them."""
        return ",".join(f"nats://127.0.0.1:{m.port}" for m in self.members)

    def start(self) -> Cluster:
        for member in self.members:
            self.start_member(member)
        return self

    def start_member(self, member: Member) -> Proc:
        cmd = [
            nats_server(),
            "--addr",
            "127.0.0.1",
            "--port",
            str(member.port),
            "--http_port",
            str(member.monitor),
            "--server_name",
            member.name,
            "--jetstream",
            "--store_dir",
            str(member.store),
        ]
        if self.size > 1:
            routes = ",".join(f"nats://127.0.0.1:{m.route}" for m in self.members)
            cmd += [
                "--cluster_name",
                "edge-purges",
                "--cluster",
                f"nats://127.0.0.1:{member.route}",
                "--routes",
                routes,
            ]
        # The monitoring port answers as soon as the server listens (/varz: always 200).
        log = self.root / f"{member.name}.log"
        member.proc = start(cmd, member.monitor, log, health_path="/varz")
        self.procs.append(member.proc)
        return member.proc

    def freeze(self, member: Member) -> None:
        """Stop the member without closing anything: its peers and clients find out only
        by what it no longer answers (a hung host, not a crashed one)."""
        assert member.proc is not None
        member.proc.popen.send_signal(signal.SIGSTOP)

    def thaw(self, member: Member) -> None:
        assert member.proc is not None
        member.proc.popen.send_signal(signal.SIGCONT)

    def kill(self, member: Member) -> None:
        assert member.proc is not None
        member.proc.popen.kill()
        member.proc.popen.wait()
