"""`edge up`: the whole CDN from a topology (origin, coordinator, shield, edges in three
regions on their own loopback networks, GeoDNS) starts, serves through both tiers,
steers clients by region, purges everywhere, restarts a process that dies, and stops
with no process left behind."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import dns.message
import dns.query
import pytest

from origin.deploy.topology import load_topology
from tests.support import cdnchecks
from tests.support.procs import REPO, edge_cmd, free_port
from tests.support.proctable import children_of

DEFAULT = REPO / "origin" / "topologies" / "default.toml"


def with_free_ports(text: str) -> str:
    """The default topology with every port replaced by a free one (tests may run
    beside a real `edge up`)."""
    return re.sub(r'(listen = "[0-9.]+):\d+"', lambda m: f'{m.group(1)}:{free_port()}"', text)


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            break
    return "".join(lines)


def status_from(url: str, source: str) -> int:
    """The status of a GET sent from a chosen loopback address."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=10, source_address=(source, 0)
    )
    try:
        conn.request("GET", parts.path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_edge_up_runs_the_whole_cdn_and_stops_cleanly(tmp_path: Path) -> None:
    topology = tmp_path / "topology.toml"
    topology.write_text(with_free_ports(DEFAULT.read_text()))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "up",
            "--topology",
            str(topology),
            "--workdir",
            str(tmp_path / "w"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kids: list[int] = []
    try:
        text = read_until(proc, "Ctrl-C stops everything", 120)
        rows = dict(re.findall(r"^\s+(\S+)\s+\S+\s+\S+\s+(?:udp\+tcp )?(\S+)\s", text, re.M))
        assert {
            "origin",
            "coordinator",
            "shield-1",
            "edge-eu-1",
            "edge-us-1",
            "edge-ap-1",
            "dns",
        } <= set(rows), text
        kids = children_of(proc.pid)
        assert len(kids) == 8  # origin, coordinator, shield, 4 edges, dns
        topo = load_topology(topology)
        edges = {e.name: rows[e.name] for e in topo.edges}
        host = "www.cdn.example"  # every edge has its own port here: Host names none
        cdnchecks.check_miss_then_hit(edges, "/catalogue.json", host, "shield-1")
        # A simulated client (127.R.255.x) is no admin of the nodes; the machine is.
        for node in (edges["edge-eu-1"], rows["shield-1"]):
            assert status_from(node + "/_edge/metrics", "127.1.255.1") == 401
            assert status_from(node + "/_edge/metrics", "127.0.0.1") == 200
        # GeoDNS: a client in each region's loopback network gets its region's edges.
        dns_host, dns_port = rows["dns"].rsplit(":", 1)
        answers = {}
        for region, client in (("eu", "127.1.255.1"), ("us", "127.2.255.1"), ("ap", "127.3.255.1")):
            answer = dns.query.udp(
                dns.message.make_query("www.cdn.example", "A"),
                dns_host,
                port=int(dns_port),
                source=client,
                timeout=3,
            )
            answers[region] = {rr.to_text() for rrset in answer.answer for rr in rrset}
        own = {
            r.name: [str(e.ipv4) for e in topo.edges if e.region == r.name] for r in topo.regions
        }
        cdnchecks.check_steering(answers, own)
        # A purge through the coordinator with the tokens edge up wrote.
        config = tmp_path / "w" / "cli.toml"
        purge = subprocess.run(
            edge_cmd("purge", "--config", str(config), f"http://{host}/catalogue.json"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert purge.returncode == 0, purge.stderr
        cdnchecks.check_purge_confirmed(purge.stdout, 5)
        # Honoured: the shield and every edge fetch it anew.
        cdnchecks.check_miss_then_hit(edges, "/catalogue.json", host, "shield-1")
        # A process that dies is reported and restarted.
        us_pid = next(p for p in kids if "edge-us-1" in _cmdline(p))
        os.kill(us_pid, signal.SIGKILL)
        more = read_until(proc, "edge-us-1 is back", 60)
        assert "edge-us-1 exited" in more and "edge-us-1 is back" in more
        kids = children_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.stdout is not None and "stopped" in proc.stdout.read()
    for pid in kids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"child {pid} still running")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_topology_without_the_central_services_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "t.toml"
    bad.write_text(
        '[zone]\nname = "cdn.example."\n[[regions]]\nname = "eu"\nlat = 1\nlon = 1\n'
        '[[edges]]\nname = "e"\nregion = "eu"\nipv4 = "127.1.0.1"\n'
    )
    out = subprocess.run(
        edge_cmd("up", "--topology", str(bad), "--workdir", str(tmp_path / "w")),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "edge up needs [origin]" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_node_of_the_topology_may_run_several_workers(tmp_path: Path) -> None:
    from cli.up import plan
    from origin.deploy.topology import TopologyError, load_topology

    text = DEFAULT.read_text()
    text = text.replace("[[shields]]\n", "[[shields]]\nworkers = 2\n", 1)
    text = text.replace("[[edges]]\n", "[[edges]]\nworkers = 3\n", 1)
    topology = tmp_path / "t.toml"
    topology.write_text(text)
    children = plan(topology, tmp_path / "w")
    shield = next(c for c in children if c.role == "shield")
    edges = [c for c in children if c.role == "edge"]
    assert shield.argv[shield.argv.index("--workers") + 1] == "2"
    assert edges[0].argv[edges[0].argv.index("--workers") + 1] == "3"
    assert all("--workers" not in e.argv for e in edges[1:])  # 1: one process, as before
    topology.write_text(text.replace("workers = 3", "workers = 0"))
    try:
        load_topology(topology)
    except TopologyError as exc:
        assert "workers must be a whole number from 1 to 64" in str(exc)
    else:
        raise AssertionError("workers = 0 was accepted")


def free_trio(host: str) -> int:
    """A client port on `host` whose route (+2000) and monitoring (+4000) ports are free
    too (a purge log member's three)."""
    import socket

    for _ in range(200):
        port = free_port()
        if port + 4000 > 65535:
            continue
        try:
            for offset in (0, 2000, 4000):
                with socket.socket() as s:
                    s.bind((host, port + offset))
        except OSError:
            continue
        return port
    raise AssertionError("no free trio of ports")


@pytest.mark.system  # nats-server, Debian's
def test_edge_up_runs_a_replicated_purge_log_with_two_coordinators(tmp_path: Path) -> None:
    """[purge_log]: three JetStream members and a second coordinator. A purge through
    either coordinator reaches every node; with the first killed, nodes move to the
    second and purges go on; edge up brings the first back."""
    members = [f"127.0.1.4{n}" for n in (1, 2, 3)]
    second = f"127.0.1.31:{free_port()}"
    text = with_free_ports(DEFAULT.read_text())
    listed = ", ".join(f'"{m}:{free_trio(m)}"' for m in members)
    text += f'\n[purge_log]\nmembers = [{listed}]\ncoordinators = ["{second}"]\n'
    topology = tmp_path / "topology.toml"
    topology.write_text(text)
    proc = subprocess.Popen(
        [*edge_cmd("up", "--topology", str(topology), "--workdir", str(tmp_path / "w"))],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        text = read_until(proc, "Ctrl-C stops everything", 180)
        rows = dict(re.findall(r"^\s+(\S+)\s+\S+\s+\S+\s+(?:udp\+tcp )?(\S+)\s", text, re.M))
        assert {"nats-1", "nats-2", "nats-3", "coordinator", "coordinator-2"} <= set(rows), text
        kids = children_of(proc.pid)
        assert len(kids) == 12  # origin, 3 members, 2 coordinators, shield, 4 edges, dns
        config = tmp_path / "w" / "cli.toml"

        def purge(*via: str) -> str:
            out = subprocess.run(
                edge_cmd("purge", "--config", str(config), *via, "http://www.cdn.example/x"),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=90,
            )
            assert out.returncode == 0, out.stderr + out.stdout
            return out.stdout

        cdnchecks.check_purge_confirmed(purge(), 5)
        cdnchecks.check_purge_confirmed(purge("--coordinator", f"http://{second}"), 5)
        first = next(p for p in kids if f"--listen {rows['coordinator'][7:]}" in _cmdline(p))
        os.kill(first, signal.SIGKILL)
        # The nodes of the first move to the second, and every one confirms there; the
        # cli.toml edge up wrote lists both, so `edge purge` finds the second by itself.
        cdnchecks.check_purge_confirmed(purge(), 5)
        more = read_until(proc, "coordinator is back", 60)
        assert "coordinator exited" in more and "coordinator is back" in more
        cdnchecks.check_purge_confirmed(purge(), 5)
        kids = children_of(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    for pid in kids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"child {pid} still running")
