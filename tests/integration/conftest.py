"""Shared fixtures: real upstream and edge processes on free loopback ports, always
stopped at the end of the test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.coordinators import NODE_TOKEN, TOKEN
from tests.support.procs import Proc, edge_cmd, free_port, start


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def upstream(procs: list[Proc], tmp_path: Path) -> Proc:
    """The scriptable test upstream (tests/support/upstream.py)."""
    port = free_port()
    proc = start(
        [sys.executable, "-m", "tests.support.upstream", "--port", str(port)],
        port,
        tmp_path / "upstream.log",
        health_path="/_count/x",
    )
    procs.append(proc)
    return proc


EdgeFactory = Callable[..., Proc]


@pytest.fixture
def edge(procs: list[Proc], tmp_path: Path) -> EdgeFactory:
    """Start `edge serve` in front of an upstream URL; returns the process."""

    def factory(
        upstream_url: str, *extra: str, cache_dir: Path | None = None, name: str = "edge-test"
    ) -> Proc:
        port = free_port()
        cmd = edge_cmd(
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            upstream_url,
            "--cache-dir",
            str(cache_dir or tmp_path / "cache"),
            "--name",
            name,
            *extra,
        )
        proc = start(cmd, port, tmp_path / f"edge-{port}.log", health_path="/_edge/health")
        procs.append(proc)
        return proc

    return factory


UpstreamFactory = Callable[..., Proc]


@pytest.fixture
def make_upstream(procs: list[Proc], tmp_path: Path) -> UpstreamFactory:
    """Start another test upstream: `make_upstream(name="a", fail_every=2, port=P)`."""

    def factory(
        name: str = "",
        *,
        fail_every: int = 0,
        fail_mode: str = "status",
        delay: float = 0,
        port: int | None = None,
    ) -> Proc:
        port = port or free_port()
        cmd = [sys.executable, "-m", "tests.support.upstream", "--port", str(port)]
        if name:
            cmd += ["--name", name]
        if fail_every:
            cmd += ["--fail-every", str(fail_every), "--fail-mode", fail_mode]
        if delay:
            cmd += ["--delay", str(delay)]
        proc = start(cmd, port, tmp_path / f"upstream-{name or port}.log", health_path="/_total")
        procs.append(proc)
        return proc

    return factory


NodeFactory = Callable[..., Proc]


@pytest.fixture
def node(procs: list[Proc], tmp_path: Path) -> NodeFactory:
    """Start `edge serve` or `edge shield` with the given options (its own cache dir
    unless one is given): `node("shield", "--origin", url, name="shield-1")`."""

    def factory(
        kind: str, *args: str, name: str, port: int | None = None, env: dict[str, str] | None = None
    ) -> Proc:
        port = port or free_port()
        extra = [] if "--cache-dir" in args else ["--cache-dir", str(tmp_path / f"cache-{name}")]
        cmd = edge_cmd(kind, "--listen", f"127.0.0.1:{port}", "--name", name, *extra, *args)
        proc = start(cmd, port, tmp_path / f"{name}.log", health_path="/_edge/health", env=env)
        procs.append(proc)
        return proc

    return factory


@pytest.fixture
def coordinator_factory(procs: list[Proc], tmp_path: Path) -> Callable[..., Proc]:
    """Start `edge coordinator` with the tokens of tests.support.coordinators."""

    def factory(port: int | None = None, keep: int | None = None) -> Proc:
        port = port or free_port()
        cmd = edge_cmd(
            "coordinator",
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            str(tmp_path / "coordinator.db"),
            "--token",
            TOKEN,
            "--node-token",
            NODE_TOKEN,
            *(["--keep", str(keep)] if keep else []),
        )
        proc = start(cmd, port, tmp_path / "coordinator.log", health_path="/v1/health")
        procs.append(proc)
        return proc

    return factory
