"""A node of several worker processes: `edge serve --workers N` (and `edge shield`).

This module owns the supervisor and `Workers`, the workers' implementation of the
coordination seam (edge.multiproc.coordination): what a worker shares with the others, through
the worker map (edge.multiproc.shared) and the cache directory: the store's version, the fill
locks and records, the purge state's lock and stamp, the node-wide metrics, its part
of /_edge/health. No other module knows whether it runs in a worker.

The supervisor is the process that was started. Before any worker runs it prepares the
cache directory, once: `incoming/` emptied (no worker may delete another's bodies in
progress), the worker map created (edge.multiproc.shared), the fill records and metrics
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
import fcntl
import hashlib
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
from collections.abc import Callable, Coroutine, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.config import CONFIG_ERROR_STATUS, ConfigError, NodeConfig
from edge.multiproc import shared as shared_map
from edge.multiproc.coordination import RECORD_LINGER, Coordination, Record, Solo, alive
from edge.multiproc.shared import Shared
from edge.purge.bans import LOCK_FILE as PURGE_LOCK_FILE
from edge.purge.bans import Refusal

if TYPE_CHECKING:
    from edge.observe.metrics import NodeMetrics
    from edge.purge.bans import Purger

log = logging.getLogger("edge.multiproc.workers")

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


class _LockFile:
    """`fills.lock` as this process holds it: one descriptor for the process's life
    (closing any descriptor of the file would drop every record lock the process
    holds on it, POSIX), and which of this process's views holds each byte (record
    locks are per process: the kernel would grant a byte again to its holder)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.held: dict[int, Workers] = {}
        self.users = 0


_LOCK_FILES: dict[Path, _LockFile] = {}


class Workers(Coordination):
    """This process as one worker of a node: its index in the worker map
    (edge.multiproc.shared), the fill locks and records in the cache directory, the purge
    state's lock, the metrics snapshots. Several may be open in one process (the
    contract tests' stand-ins for workers): they exclude each other as processes do."""

    def __init__(self, directory: Path, shared: Shared) -> None:
        self.directory = Path(directory)
        self.shared = shared
        self.index = shared.index
        self.count = shared.count
        self._snapshots = self.directory / METRICS_DIR
        self.records = self.directory / "fills"
        self.records.mkdir(exist_ok=True)
        path = (self.directory / "fills.lock").resolve()
        if path not in _LOCK_FILES:
            _LOCK_FILES[path] = _LockFile(path)
        self._lock_file = _LOCK_FILES[path]
        self._lock_file.users += 1
        self._lock_path = path

    @classmethod
    def open(cls, directory: Path, index: int) -> Workers:
        return cls(directory, Shared(directory, index))

    # -- this process's duties ------------------------------------------------------

    @property
    def leads(self) -> bool:
        """Worker 0 subscribes to the coordinator and sweeps purges."""
        return self.index == 0

    @property
    def reuse_port(self) -> bool:
        return True

    def prepare_directory(self, prepare: Callable[[], None]) -> None:
        return None  # the supervisor did, before any worker started (prepare())

    @property
    def defers_commits(self) -> bool:
        return False  # the others look for a fill's entry as soon as its lock goes

    @property
    def body_prefix(self) -> str:
        return f"{os.getpid()}-"

    # -- the store's version ----------------------------------------------------------

    def changed(self, *keys: str) -> None:
        self.shared.changed(*keys)

    def changed_all(self) -> None:
        self.shared.changed_all()

    def generation(self, key: str) -> int:
        return self.shared.generation(key)

    def version(self) -> Hashable:
        return self.shared.version()

    # -- the purge state ----------------------------------------------------------------

    @contextlib.contextmanager
    def purge_lock(self) -> Iterator[None]:
        """An exclusive lock between the workers (released by the kernel if the holder
        dies). Held for one read and write of the state: milliseconds."""
        fd = os.open(self.directory / PURGE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def purge_stamp(self) -> int:
        return self.shared.purge_stamp()

    def purge_changed(self) -> int:
        return self.shared.purge_changed()

    def share_ready(self, purger: Purger) -> None:
        """The lead says whether it has caught up with the coordinator; the others
        serve from the cache only while it has."""
        if self.leads:
            self.shared.set_ready(purger.ready)
        else:
            purger.ready = self.shared.ready()

    def set_oldest(self, started: float | None) -> None:
        self.shared.set_oldest(started)

    def oldest(self) -> float | None:
        return self.shared.oldest()

    # -- fills across workers ----------------------------------------------------------

    @staticmethod
    def _name(key: str) -> str:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    def _offset(self, key: str) -> int:
        return int(self._name(key)[:12], 16)  # 48 bits: keys do not share a byte

    def try_lock(self, key: str) -> bool:
        """A byte of `fills.lock` per key, an fcntl record lock, which the kernel drops
        if the worker dies."""
        offset, lock = self._offset(key), self._lock_file
        if offset in lock.held:
            return False
        try:
            fcntl.lockf(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except OSError:
            return False
        lock.held[offset] = self
        return True

    def unlock(self, key: str) -> None:
        offset, lock = self._offset(key), self._lock_file
        if lock.held.get(offset) is self:
            del lock.held[offset]
            fcntl.lockf(lock.fd, fcntl.LOCK_UN, 1, offset)

    def publish(self, key: str, record: Record) -> None:
        path = self.records / self._name(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{self.index}.tmp")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not publish the fill of %s to other workers: %s", key, exc)

    def read(self, key: str) -> Record | None:
        try:
            data = json.loads((self.records / self._name(key)).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def forget(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.records / self._name(key)).unlink()

    def forget_later(self, key: str, ident: str) -> None:
        with contextlib.suppress(RuntimeError):  # no loop: the next start empties fills/
            asyncio.get_running_loop().call_later(RECORD_LINGER, self._forget_if, key, ident)

    def _forget_if(self, key: str, ident: str) -> None:
        record = self.read(key)
        if record is None or record.get("id") != ident:
            return  # a later fill's
        if self.try_lock(key):  # no fill of the key running anywhere: nobody writes it
            try:
                self.forget(key)
            finally:
                self.unlock(key)

    def want(self, key: str, *, start: bool = False, stop: bool = False) -> None:
        path = self.records / f"{self._name(key)}.wanted"
        with contextlib.suppress(OSError):
            if stop:
                path.unlink()
            elif start:
                path.touch()
                os.utime(path, (0, 0))  # wanted by nobody yet
            else:
                os.utime(path)

    def wanted_since(self, key: str, since: float) -> bool:
        try:
            return (self.records / f"{self._name(key)}.wanted").stat().st_mtime >= since
        except OSError:
            return False

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

    async def exposition(self, metrics: NodeMetrics) -> bytes:
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

    # -- lifetime -------------------------------------------------------------------------

    async def keep_ready(self, purger: Purger) -> None:
        while True:
            self.share_ready(purger)
            await asyncio.sleep(SCRAPE_POLL)

    def duties(self, purger: Purger, metrics: NodeMetrics) -> list[Coroutine[Any, Any, None]]:
        return [self.keep_ready(purger), self.publish_metrics(metrics)]

    def describe(self) -> dict[str, Any]:
        return {
            "worker": {
                "index": self.index,
                "pid": os.getpid(),
                "lead": self.leads,
                "count": self.count,
                "all": [
                    {"index": i, "pid": pid, "alive": alive(pid)}
                    for i, pid in enumerate(self.shared.pids())
                ],
            }
        }

    def close(self, metrics: NodeMetrics) -> None:
        self.write_snapshot(metrics)  # its last counts
        lock = self._lock_file
        for offset in [o for o, holder in lock.held.items() if holder is self]:
            del lock.held[offset]
            fcntl.lockf(lock.fd, fcntl.LOCK_UN, 1, offset)
        lock.users -= 1
        if lock.users == 0 and _LOCK_FILES.pop(self._lock_path, None) is lock:
            os.close(lock.fd)


# ---------------------------------------------------------------------------------------
# The supervisor.


def prepare(cfg: NodeConfig) -> None:
    """The cache directory as a node of workers starts it: by the supervisor, once."""
    from edge.purge.bans import Bans
    from edge.store.disk import DiskStore

    directory = Path(cfg.cache_dir)
    DiskStore.prepare(directory)
    for name in ("fills", METRICS_DIR):
        shutil.rmtree(directory / name, ignore_errors=True)
        (directory / name).mkdir()
    shared_map.create(directory, cfg.workers)
    shared_map.set_ready(directory, not cfg.coordinator)  # the lead says when it is
    if Bans.load(directory, cfg).applied < 0:  # damaged: logged; drop what it cannot vouch for
        store = DiskStore(directory, cfg.cache_size, Solo())  # no worker runs yet
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
        workers = Workers.open(Path(self.cfg.cache_dir), index)
        try:
            self.run(_serve(self.cfg, workers, ready_fd))
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


async def _serve(cfg: NodeConfig, workers: Workers, ready_fd: int) -> None:
    from edge.server.node import EdgeNode

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    node = EdgeNode(cfg, workers)
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
