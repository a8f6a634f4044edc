"""Process plumbing shared by the scenarios.

Owns: free loopback ports, child processes that are always reaped (also on SIGINT/SIGTERM),
readiness polling, the command lines that start `edge serve`, `edge shield` and the nginx
`proxy_cache` reference, reading a node's Prometheus counters, and the one-line error a
person sees when a tool is missing.

Must not import `edge/` or `origin/`: scenarios treat the CDN as a black box and start it
through its console script, as an operator would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "scenarios" / "out"


def report_path(given: str | None, name: str) -> Path:
    """Where a scenario's JSON report goes: `--out`, else scenarios/out/NAME."""
    return Path(given) if given else OUT_DIR / name


def write_report(out: Path, report: Mapping[str, Any], detail: str = "") -> None:
    """Write a scenario's report as indented JSON and say where (and `detail`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}{detail}")


# The Debian package that brings each tool the scenarios run (as .ci/run installs them).
APT_PACKAGES = {
    "nginx": "nginx",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "curl": "curl",
    "aria2c": "aria2",
    "taskset": "util-linux",
    "dig": "bind9-dnsutils",
    "dnsperf": "dnsperf",
    "knotd": "knot",
    "node": "nodejs",
    "npm": "npm",
    "nats-server": "nats-server",
}


class ScenarioError(Exception):
    """A failure a person reads as one line (missing tool, process that would not start)."""


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM so that `finally` blocks reap the children."""


def free_port() -> int:
    """A TCP port that is free right now on every interface (the suite's server binds `::`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def find_tool(name: str) -> str | None:
    """Path of an executable; Debian puts nginx in /usr/sbin, which a non-root PATH lacks."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_tool(name: str) -> str:
    """The tool's path, or one line naming the apt package that brings it."""
    path = find_tool(name)
    if path is None:
        package = APT_PACKAGES.get(name, name)
        raise ScenarioError(f"{name} not found: install it with `apt-get install {package}`")
    return path


def pinned(argv: Sequence[str], core: int) -> list[str]:
    """Prefix `taskset -c CORE` when taskset exists and the machine has that core."""
    taskset = find_tool("taskset")
    if taskset is None or core >= (os.cpu_count() or 1):
        return list(argv)
    return [taskset, "-c", str(core), *argv]


def can_pin() -> bool:
    return find_tool("taskset") is not None and (os.cpu_count() or 1) >= 2


def edge_argv(
    listen_port: int,
    upstream: str,
    cache_dir: Path,
    name: str,
    cache_size: str | None = None,
) -> list[str]:
    """`edge serve` as the console script beside this interpreter, else `python -m cli.main`."""
    script = Path(sys.executable).parent / "edge"
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]
    argv = [
        *base,
        "serve",
        "--listen",
        f"127.0.0.1:{listen_port}",
        "--upstream",
        upstream,
        "--cache-dir",
        str(cache_dir),
        "--name",
        name,
    ]
    if cache_size is not None:
        argv += ["--cache-size", cache_size]
    return argv


def shield_argv(listen_port: int, origin: str, cache_dir: Path, name: str) -> list[str]:
    """`edge shield`: the tier between the edges and the origin. Its edges are on this
    machine: their connections come from 127.0.0.1, the one trusted proxy (as `edge up`
    has it), so their clients' addresses are kept and the edges are not capped."""
    return edge_command(
        "shield",
        "--listen",
        f"127.0.0.1:{listen_port}",
        "--origin",
        origin,
        "--cache-dir",
        str(cache_dir),
        "--name",
        name,
        "--trusted-proxy",
        "127.0.0.1",
    )


def shielded_edge_argv(
    listen_port: int, shields: Sequence[str], origin: str, cache_dir: Path, name: str
) -> list[str]:
    """`edge serve` in front of shields (one `--shield` each), the origin as their fallback."""
    argv = edge_command("serve", "--listen", f"127.0.0.1:{listen_port}")
    for shield in shields:
        argv += ["--shield", shield]
    return [*argv, "--origin", origin, "--cache-dir", str(cache_dir), "--name", name]


def nginx_main(run_dir: Path, *, workers: int = 1, connections: int = 1024) -> str:
    """The part every reference nginx shares before its `http` block: in the foreground,
    its pid and error log inside `run_dir`."""
    return f"""worker_processes {workers};
daemon off;
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
events {{
    worker_connections {connections};
}}
"""


def nginx_temp_paths(run_dir: Path) -> str:
    """Every temp path nginx would otherwise put under its compiled-in prefix (not writable
    by a test), inside `run_dir`: lines for an `http` block."""
    d = run_dir
    return f"""    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;"""


def nginx_config(
    run_dir: Path,
    listen_port: int,
    upstream_port: int,
    *,
    keepalive_upstream: bool,
    access_log: bool = False,
    workers: int = 1,
    max_size: str = "1000m",
    upstream_keepalive: int = 16,
) -> str:
    """A foreground nginx with proxy_cache (one worker, or `workers` each with its own
    listening socket, as `edge serve --workers` has), every path inside `run_dir`.

    The cache settings follow the http-cache-tests project's own nginx setup
    (`proxy_cache_revalidate on`), so the conformance score is comparable with its
    published nginx result.
    """
    d = run_dir
    upstream_extra = ""
    location_extra = ""
    if keepalive_upstream:
        # Without these nginx opens a new upstream connection per miss; the benchmark's
        # edge keeps upstream connections alive, so the reference must too.
        upstream_extra = f"        keepalive {upstream_keepalive};\n"
        location_extra = (
            '            proxy_http_version 1.1;\n            proxy_set_header Connection "";\n'
        )
    log = f"access_log {d}/access.log;" if access_log else "access_log off;"
    reuseport = " reuseport" if workers > 1 else ""
    return f"""{nginx_main(d, workers=workers)}http {{
    {log}
{nginx_temp_paths(d)}
    proxy_cache_path {d}/cache levels=1:2 keys_zone=edge_ref:8m max_size={max_size} inactive=600m;
    upstream origin {{
        server 127.0.0.1:{upstream_port};
{upstream_extra}    }}
    server {{
        listen 127.0.0.1:{listen_port}{reuseport};
        location / {{
            proxy_pass http://origin;
            proxy_cache edge_ref;
            proxy_cache_revalidate on;
{location_extra}        }}
    }}
}}
"""


def write_nginx_config(
    run_dir: Path,
    listen_port: int,
    upstream_port: int,
    *,
    keepalive_upstream: bool,
    workers: int = 1,
    max_size: str = "1000m",
    upstream_keepalive: int = 16,
) -> list[str]:
    """Write nginx.conf into `run_dir` and return the argv that runs it in the foreground."""
    return write_nginx_config_text(
        run_dir,
        nginx_config(
            run_dir,
            listen_port,
            upstream_port,
            keepalive_upstream=keepalive_upstream,
            workers=workers,
            max_size=max_size,
            upstream_keepalive=upstream_keepalive,
        ),
    )


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def died(self) -> ScenarioError:
        code = self.proc.poll()
        tail = self.tail()
        detail = f"\n--- last lines of {self.log_path} ---\n{tail}" if tail else ""
        return ScenarioError(f"{self.name} exited with status {code} before it was ready{detail}")


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the child's process group (npm, sh and node under it), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.wait(timeout=grace)


@dataclass
class Processes:
    """Starts children in their own process groups and reaps them all on exit.

    Use as a context manager; while it is open SIGTERM raises `Terminated` in the main
    thread, so an interrupted run still stops every child (SIGINT already raises
    KeyboardInterrupt).
    """

    workdir: Path
    children: list[Child] = field(default_factory=list)
    _old_term: Callable[[int, FrameType | None], Any] | int | None = None

    def __enter__(self) -> Processes:
        self._old_term = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short; it is bounded by the
        # per-process grace period.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, old_int)
            # None means a handler not set from Python; the default is the safe guess.
            old = signal.SIG_DFL if self._old_term is None else self._old_term
            signal.signal(signal.SIGTERM, old)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=child_env(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        # Reverse order: the proxy goes before the upstream it talks to.
        for child in reversed(self.children):
            stop_process(child.proc)
        self.children.clear()


def child_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """A child's environment: `env` (else this process's) with this checkout first on
    PYTHONPATH. The `edge` console script imports whichever checkout was installed last;
    a scenario must measure the code beside it (and so must the children `edge up`
    starts, which inherit this)."""
    out = dict(os.environ if env is None else env)
    paths = [str(REPO_ROOT), *filter(None, out.get("PYTHONPATH", "").split(os.pathsep))]
    out["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return out


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


def wait_tcp(child: Child, port: int, timeout: float = 20.0) -> None:
    """Until something accepts on 127.0.0.1:port; fails early if the child died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.died()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise ScenarioError(f"{child.name} did not accept connections on port {port} in {timeout:g}s")


def wait_http_ok(child: Child, url: str, timeout: float = 60.0) -> None:
    """Until GET url answers 200; fails early if the child died."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not child.alive():
            raise child.died()
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"status {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ScenarioError(f"{child.name} was not ready at {url} in {timeout:g}s ({last})")


def write_nginx_config_text(run_dir: Path, text: str) -> list[str]:
    """Write a scenario's own nginx.conf (all its paths inside `run_dir`) and return the argv
    that runs it in the foreground; for configs `nginx_config` does not cover."""
    nginx = require_tool("nginx")
    run_dir.mkdir(parents=True, exist_ok=True)
    # As root, nginx workers run as `nobody`; they must be able to reach the cache and temp
    # dirs (nginx creates those and hands them over), but mkdtemp makes folders 0700.
    tmp_root = Path(tempfile.gettempdir()).resolve()
    for folder in [run_dir.resolve(), *run_dir.resolve().parents]:
        if folder == tmp_root or not folder.is_relative_to(tmp_root):
            break
        folder.chmod(0o755)
    conf = run_dir / "nginx.conf"
    conf.write_text(text)
    return [nginx, "-p", str(run_dir), "-c", str(conf), "-e", str(run_dir / "error.log")]


def http_get_text(url: str, timeout: float = 10.0) -> str:
    """The body of GET url (a 2xx) as text; anything else is a ScenarioError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        raise ScenarioError(f"GET {url} answered {exc.code}") from None
    except (OSError, urllib.error.URLError) as exc:
        raise ScenarioError(f"GET {url} failed: {exc}") from None


_SAMPLE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$"
)
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
_ESCAPE = re.compile(r"\\(.)")  # label values escape \\, \" and newline (\n)


def prometheus_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric `name` in Prometheus text exposition format, as (labels,
    value); comments, other metrics and lines that do not parse are skipped."""
    samples = []
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if not m or m.group("name") != name:
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        labels = {
            key: _ESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), raw)
            for key, raw in _LABEL.findall(m.group("labels") or "")
        }
        samples.append((labels, value))
    return samples


def edge_command(*args: str) -> list[str]:
    """`edge ARGS...` as edge_argv launches it: the console script beside this interpreter,
    else `python -m cli.main` (for subcommands other than serve, e.g. `origin`)."""
    script = Path(sys.executable).parent / "edge"
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]
    return [*base, *args]


def run_main(name: str, run: Callable[[Any], int], args: Any) -> int:
    """A scenario's exit status from `run(args)`: one line on stderr, never a traceback,
    for a scenario error (1), Ctrl-C (130) or SIGTERM (143)."""
    try:
        return run(args)
    except ScenarioError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"\n{name}: terminated", file=sys.stderr)
        return int(exc.code or 143)


_SIZE = re.compile(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'1G' -> 1073741824, '64M', '64MiB', '512k', '4096' (binary units)."""
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"bad size {text!r} (use e.g. 512k, 64M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def size_label(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def fmt_seconds(value: float | None) -> str:
    """Seconds for a report table: three decimals, '-' when not measured."""
    return "-" if value is None else f"{value:.3f}"


def memory_folder(fallback: Path, prefix: str) -> Path:
    """A new folder on tmpfs (/dev/shm) where there is one, else under `fallback`: for
    bytes a scenario serves or downloads that should cost no disk. Readable by nginx's
    unprivileged workers; the caller removes it."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else fallback
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    folder.chmod(0o755)
    return folder


def client_loop_factory() -> Any:
    """uvloop for a scenario's client process (a project dependency): cheaper per
    request and byte, leaving more of the machine to the servers under test; plain
    asyncio where it is missing."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
