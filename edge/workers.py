"""A node of several worker processes: `edge serve --workers N` (and `edge shield`).

This module owns the supervisor and what a worker shares with the others besides the
store (edge.store), the fills (edge.fill) and the purges (edge.purge): its identity,
the node-wide metrics and the workers' part of /_edge/health.

The supervisor is the process that was started. Before any worker runs it prepares the
cache directory, once: `incoming/` emptied (no worker may delete another's bodies in
progress), the worker map created (edge.shared), the fill records and metrics
snapshots of an earlier run removed, a damaged purge state replaced by an empty cache.
It binds the listening address itself with SO_REUSEPORT and never listens on that
socket: the port is the node's (picked here when the configured one is 0) while
workers come and go, and every worker binds its own listening socket to it, so the
kernel spreads connections over them. It starts worker 0 (the lead: the only one
subscribed to the coordinator, and the purge sweeper) and waits until it listens, then
the others, prints the ready line once when all listen, starts a worker again when one
dies, and on SIGINT or SIGTERM stops them all and exits.

Workers are forked, from a supervisor that has never run an event loop, started a
thread or opened the store: each begins with the modules already imported (a worker
that died is back in milliseconds, where a spawned interpreter would import
everything again) and nothing of the parent's that a child could misuse. Each runs a
whole EdgeNode on an event loop of its own, and ends with the supervisor (the kernel
sends it SIGTERM if the supervisor dies).

The TLS listener is the public one; it, the --http-redirect listener and admin_listen
are bound with SO_REUSEPORT in every worker: whichever worker answers an admin request
answers for the whole node (metrics summed, purges shared), and there is no single
worker whose death takes the admin port away.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import json
import logging
import os
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import shared as shared_map
from edge.config import CONFIG_ERROR_STATUS, ConfigError, NodeConfig
from edge.fill import alive
from edge.purge import Refusal
from edge.shared import Shared

if TYPE_CHECKING:
    from edge.metrics import NodeMetrics
    from edge.purge import Purger

log = logging.getLogger("edge.workers")

#: Where each worker keeps its counters for the others (one file per process).
METRICS_DIR = "metrics"
#: How often a worker writes its counters unasked, and looks whether a scrape asked.
SNAPSHOT_INTERVAL = 1.0
SCRAPE_POLL = 0.02
#: How long a scrape waits for the other workers' fresh counters.
SCRAPE_WAIT = 0.5
#: A worker that dies sooner than this after starting is started again only after it.
RESTART_DELAY = 1.0
#: How long stopping waits for workers before SIGKILL.
STOP_GRACE = 10.0


@dataclass
class Worker:
    """This process's place in its node."""

    index: int
    count: int
    directory: Path
    shared: Shared
    _snapshots: Path = field(init=False)

    def __post_init__(self) -> None:
        self._snapshots = self.directory / METRICS_DIR

    @classmethod
    def open(cls, directory: Path, index: int) -> Worker:
        shared = Shared(directory, index)
        return cls(index, shared.count, Path(directory), shared)

    @property
    def lead(self) -> bool:
        """Worker 0 subscribes to the coordinator and sweeps purges."""
        return self.index == 0

    # -- metrics --------------------------------------------------------------------

    def write_snapshot(self, metrics: NodeMetrics) -> None:
        data = {"pid": os.getpid(), "at": time.time(), "samples": metrics.snapshot()}
        path = self._snapshots / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not write this worker's counters: %s", exc)

    async def publish_metrics(self, metrics: NodeMetrics) -> None:
        """Keep this worker's snapshot fresh: every SNAPSHOT_INTERVAL, and at once
        when another worker answers a scrape."""
        seen = self.shared.scrape_stamp()
        last = time.monotonic()
        while True:
            await asyncio.sleep(SCRAPE_POLL)
            stamp = self.shared.scrape_stamp()
            if stamp != seen or time.monotonic() - last >= SNAPSHOT_INTERVAL:
                seen, last = stamp, time.monotonic()
                self.write_snapshot(metrics)

    def _read_snapshots(self) -> dict[int, dict[str, Any]]:
        found = {}
        for path in self._snapshots.glob("*.json"):
            try:
                data = json.loads(path.read_text())
                found[int(data["pid"])] = data
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced, or not ours
        return found

    async def node_metrics(self, metrics: NodeMetrics) -> bytes:
        """The node's exposition: this worker's counters and every other worker's,
        those of workers that died included (their requests were served)."""
        asked = time.time()
        self.shared.request_scrape()
        me = os.getpid()
        live = {p for i, p in enumerate(self.shared.pids()) if i != self.index and alive(p)}
        deadline = time.monotonic() + SCRAPE_WAIT
        while True:
            snapshots = self._read_snapshots()
            fresh = all(p in snapshots and snapshots[p].get("at", 0) >= asked for p in live)
            if fresh or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.005)
        others = [data.get("samples", []) for pid, data in snapshots.items() if pid != me]
        return metrics.render(others)

    # -- purges -----------------------------------------------------------------------

    async def keep_ready(self, purger: Purger) -> None:
        """The lead says whether it has caught up with the coordinator; the others
        serve from the cache only while it has."""
        while True:
            if self.lead:
                self.shared.set_ready(purger.ready)
            else:
                purger.ready = self.shared.ready()
            await asyncio.sleep(SCRAPE_POLL)

    # -- health ---------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": os.getpid(),
            "lead": self.lead,
            "count": self.count,
            "all": [
                {"index": i, "pid": pid, "alive": alive(pid)}
                for i, pid in enumerate(self.shared.pids())
            ],
        }


# ---------------------------------------------------------------------------------------
# The supervisor.


def prepare(cfg: NodeConfig) -> None:
    """The cache directory as a node of workers starts it: by the supervisor, once."""
    from edge.purge import Bans
    from edge.store import DiskStore

    directory = Path(cfg.cache_dir)
    DiskStore.prepare(directory)
    for name in ("fills", METRICS_DIR):
        shutil.rmtree(directory / name, ignore_errors=True)
        (directory / name).mkdir()
    shared_map.create(directory, cfg.workers)
    shared_map.set_ready(directory, not cfg.coordinator)  # the lead says when it is
    if Bans.load(directory, cfg).applied < 0:  # damaged: logged; drop what it cannot vouch for
        store = DiskStore(directory, cfg.cache_size)
        try:
            store.clear()
        finally:
            store.close()
        Bans().save(directory)


def _reserve(cfg: NodeConfig) -> tuple[socket.socket, int]:
    """Bind the node's address with SO_REUSEPORT, without listening: the kernel
    hands connections only to listening sockets, so this one holds the port (and picks
    it when the configured one is 0) while workers share it."""
    host, port = cfg.host_port
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock, int(sock.getsockname()[1])


@dataclass
class _Child:
    index: int
    pid: int
    ready_fd: int
    started: float
    ready: bool = False


class Supervisor:
    """Starts, watches and stops the workers of one node."""

    def __init__(self, cfg: NodeConfig, run: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.cfg = cfg
        self.run = run
        self.children: dict[int, _Child] = {}  # by pid
        self.restart_at: dict[int, float] = {}  # index -> when to start it again
        self.stopping = False
        self.reserved: socket.socket | None = None

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def serve(self, ready: str) -> None:
        cfg = self.cfg
        prepare(cfg)
        self.reserved, port = _reserve(cfg)
        host = cfg.host_port[0]
        cfg = self.cfg = copy.copy(cfg)
        cfg.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if cfg.advertise.endswith(":0"):  # derived from a port the system had to pick
            cfg.advertise = cfg.advertise[:-1] + str(port)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            # The lead first: it catches up with the coordinator before it listens.
            self._start_and_wait([0])
            if not self.stopping:
                self._start_and_wait(list(range(1, cfg.workers)))
            if self.stopping:
                return
            if ready:
                print(ready.format(port=port), flush=True)
            self._watch()
        finally:
            self._stop_all()
            self.reserved.close()

    def _fork(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(read_fd)
                code = self._worker(index, write_fd, parent)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        shared_map.set_worker(Path(self.cfg.cache_dir), index, pid)
        self.children[pid] = _Child(index, pid, read_fd, time.monotonic())

    def _start_and_wait(self, indexes: list[int]) -> None:
        """Start these workers and wait until each listens; one that exits first
        ends the node with its status (it said why)."""
        for index in indexes:
            self._fork(index)
        waiting = [c for c in self.children.values() if c.index in indexes]
        while waiting and not self.stopping:
            readable, _, _ = select.select([c.ready_fd for c in waiting], [], [], 0.1)
            for child in [c for c in waiting if c.ready_fd in readable]:
                if _ready(child):
                    waiting.remove(child)
                    continue
                # Closed without a word: it exited before it listened.
                _, status = os.waitpid(child.pid, 0)
                del self.children[child.pid]
                code = os.waitstatus_to_exitcode(status)
                raise SystemExit(code if code > 0 else 1)

    def _watch(self) -> None:
        while not self.stopping:
            self._reap()
            now = time.monotonic()
            for index, when in list(self.restart_at.items()):
                if now >= when and not self.stopping:
                    del self.restart_at[index]
                    self._fork(index)
            for child in self.children.values():
                if child.ready_fd >= 0 and select.select([child.ready_fd], [], [], 0)[0]:
                    _ready(child)
            time.sleep(0.1)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            _close_pipe(child)
            _remove_bodies(Path(self.cfg.cache_dir), pid)
            lived = time.monotonic() - child.started
            code = os.waitstatus_to_exitcode(status)
            if code == CONFIG_ERROR_STATUS:
                # It said why (e.g. the coordinator refused the node's name); started
                # again it would fail the same way: the node stops with its status.
                log.error("worker %d (pid %d) stopped on a configuration error", child.index, pid)
                raise SystemExit(code)
            log.warning(
                "worker %d (pid %d) exited with status %d; starting it again",
                child.index,
                pid,
                code,
            )
            if child.index == 0 and self.cfg.coordinator:
                # Purges may come while no worker hears the coordinator: nothing cached
                # is served until the lead is back and has caught up.
                shared_map.set_ready(Path(self.cfg.cache_dir), False)
            delay = RESTART_DELAY if lived < RESTART_DELAY else 0.0
            self.restart_at[child.index] = time.monotonic() + delay

    def _stop_all(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            self._collect()
            time.sleep(0.02)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            self._collect(block=True)

    def _collect(self, block: bool = False) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                _close_pipe(self.children.pop(pid))
                _remove_bodies(Path(self.cfg.cache_dir), pid)

    # -- in the worker -----------------------------------------------------------------

    def _worker(self, index: int, ready_fd: int, parent: int) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        _die_with(parent)
        if self.reserved is not None:
            self.reserved.close()  # this process's copy; the supervisor keeps the port
        for child in self.children.values():  # other workers' pipes
            _close_pipe(child)
        _tag_logs(index)
        worker = Worker.open(Path(self.cfg.cache_dir), index)
        try:
            self.run(_serve(self.cfg, worker, ready_fd))
            refused = Refusal.exit_status()
            if refused is not None:
                return refused  # it said why; the supervisor stops the node
        except ConfigError as exc:
            print(f"edge: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(
                f"edge: cannot listen on {self.cfg.listen}: {exc.strerror or exc}", file=sys.stderr
            )
            return 1
        except KeyboardInterrupt:
            pass
        return 0


async def _serve(cfg: NodeConfig, worker: Worker, ready_fd: int) -> None:
    from edge.node import EdgeNode

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = EdgeNode(cfg, worker=worker)
    try:
        await node.start()
        os.write(ready_fd, b"1")
        os.close(ready_fd)
        await stop.wait()
    finally:
        await node.stop()


def _ready(child: _Child) -> bool:
    """Read a worker's word that it listens (its pipe is readable): True, or False
    when the pipe closed without it (the worker exited first)."""
    child.ready = bool(os.read(child.ready_fd, 1))
    _close_pipe(child)
    return child.ready


def _close_pipe(child: _Child) -> None:
    if child.ready_fd >= 0:
        os.close(child.ready_fd)
        child.ready_fd = -1


def _remove_bodies(directory: Path, pid: int) -> None:
    """A dead worker's bodies in progress are incomplete, and nobody else's."""
    for path in (directory / "incoming").glob(f"{pid}-*"):
        with contextlib.suppress(OSError):
            path.unlink()


def _die_with(parent: int) -> None:
    """SIGTERM this worker when the supervisor dies (Linux), so none is left behind."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before that took effect
        os._exit(0)


def _tag_logs(index: int) -> None:
    """Each worker's log lines say which worker wrote them."""
    for handler in logging.getLogger().handlers:
        fmt = getattr(handler.formatter, "_fmt", None)
        if fmt and "%(name)s" in fmt:
            handler.setFormatter(logging.Formatter(fmt.replace("%(name)s", f"%(name)s[w{index}]")))


def supervise(
    cfg: NodeConfig, ready: str, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    """Run the node as cfg.workers processes until SIGINT or SIGTERM; each worker's
    loop is `run` (as the node's alone would be)."""
    Supervisor(cfg, run).serve(ready)
