"""`edge purge` and `edge status`: an operator's client of the purge coordinator.

This module owns where the coordinator and its token come from (flags, then the
environment, then a TOML file), the purge request built from the command line, waiting
for the nodes' confirmations (long-polls on GET /v1/purge/{id}) and showing them (a table
redrawn in place on a terminal, one line per confirmation otherwise), and the node table
of `edge status`. Standard library HTTP only: it makes a handful of requests.
"""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional, TextIO
from urllib.parse import quote, urlsplit

import typer

from cli.errors import fail

DEFAULT_CONFIG = "~/.config/edge/cli.toml"
#: What `edge up` writes in its working folder: found first, so that `edge status` and
#: `edge purge` work against a CDN started from the same folder.
UP_CONFIG = ".edge/cli.toml"
CONFIG_KEYS = ("coordinator", "token")
#: The coordinator holds a long-poll at most this long.
MAX_WAIT = 30.0
#: What a known node that is not connected is shown as: it resumes from the last purge it
#: applied when it reconnects, and serves nothing from its cache until it has caught up.
NOT_CONNECTED = "not connected: applies on reconnect"

# typer reads these annotations at runtime: Optional[...] spelled out for it.
CoordinatorOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--coordinator",
        metavar="URL",
        help="Coordinator base URL; several, comma-separated, for coordinators sharing one "
        "log (each tried in turn while one is unreachable).",
        show_default="$EDGE_COORDINATOR, else the config file's",
    ),
]
TokenOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--token",
        help="Operator bearer token.",
        show_default="$EDGE_TOKEN, else the config file's",
    ),
]
ConfigOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--config",
        help="TOML file with `coordinator` and `token`.",
        show_default=f"{UP_CONFIG}, else {DEFAULT_CONFIG}, if present",
    ),
]
Repeated = Optional[list[str]]  # noqa: UP045


class CoordinatorError(Exception):
    """The coordinator could not be reached or refused a request; one line."""


class Unreachable(CoordinatorError):
    """No answer from that coordinator, or it is unavailable (502-504): another of a
    shared log may take the request."""


#: Answers that say "not here, not now" rather than "no": a coordinator whose log is
#: electing a leader answers 503, and the request is tried at the next one.
UNAVAILABLE = (502, 503, 504)


# ---------------------------------------------------------------- settings and HTTP


def resolve(coordinator: str | None, token: str | None, config: Path | None) -> Client:
    """The coordinator and token: flags, else EDGE_COORDINATOR / EDGE_TOKEN, else the
    config file. Anything missing or malformed is a usage error (exit 2)."""
    path = config
    if path is None:
        path = next(
            (p for p in (Path(UP_CONFIG), Path(DEFAULT_CONFIG).expanduser()) if p.is_file()),
            Path(DEFAULT_CONFIG).expanduser(),
        )
    values: dict[str, Any] = {}
    if config is not None or path.is_file():
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            fail(f"config file not found: {path}", 2)
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read config file {path}: {exc}", 2)
        except tomllib.TOMLDecodeError as exc:
            fail(f"config file {path} is not valid TOML: {exc}", 2)
        for key, value in values.items():
            if key not in CONFIG_KEYS:
                fail(f"unknown setting in {path}: {key} (known: {', '.join(CONFIG_KEYS)})", 2)
            if not isinstance(value, str):
                fail(f"{key} in {path} must be a string", 2)
    base = coordinator or os.environ.get("EDGE_COORDINATOR") or values.get("coordinator")
    secret = token or os.environ.get("EDGE_TOKEN") or values.get("token")
    where = f"{path}" if config is not None or path.is_file() else DEFAULT_CONFIG
    if not base:
        fail(
            f"no coordinator: give --coordinator URL, EDGE_COORDINATOR or coordinator in {where}", 2
        )
    if not secret:
        fail(f"no token: give --token, EDGE_TOKEN or token in {where}", 2)
    bases = [b.strip().rstrip("/") for b in base.split(",") if b.strip()]
    for one in bases or [base]:
        parts = urlsplit(one)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            fail(f"the coordinator must be an http(s) URL, got {one!r}", 2)
    return Client(bases, secret)


@dataclass
class Client:
    """The coordinators of one log (one, or several sharing it): requests go to the
    one that last answered, and move on to the next while one is unreachable. A purge
    is numbered by the shared log, so any of them answers for it."""

    bases: list[str]
    token: str
    at: int = 0

    @property
    def base(self) -> str:
        return self.bases[self.at]

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """One JSON request; the decoded answer, or CoordinatorError with the reason
        (the last coordinator's, when none answered)."""
        error: CoordinatorError | None = None
        for _ in self.bases:
            try:
                return self._call(method, path, body, timeout)
            except Unreachable as exc:
                # A purge that timed out at one coordinator may have been taken there:
                # taking it again elsewhere is harmless (purging twice drops nothing more).
                error = exc
                self.at = (self.at + 1) % len(self.bases)
        assert error is not None
        raise error

    def _call(self, method: str, path: str, body: Any, timeout: float) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            kind = Unreachable if exc.code in UNAVAILABLE else CoordinatorError
            raise kind(
                f"the coordinator refused {method} {path} ({exc.code}): {_reason(exc)}"
            ) from None
        except TimeoutError:
            raise Unreachable(
                f"the coordinator at {self.base} did not answer within {timeout:g}s"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
            raise Unreachable(f"cannot reach the coordinator at {self.base}: {text}") from None
        except (OSError, ValueError) as exc:
            raise CoordinatorError(
                f"bad answer from the coordinator at {self.base}: {exc}"
            ) from None


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (OSError, ValueError):
        return str(exc.reason)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return str(exc.reason)


def _absolute(value: str, option: str) -> str:
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return value
    if value.startswith("/"):
        fail(
            f"{value!r} is a path, not a URL: {option} takes absolute URLs "
            f"such as http://HOST{value}",
            2,
        )
    fail(f"{option} takes absolute http(s) URLs, got {value!r}", 2)


# ---------------------------------------------------------------- tables


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


@dataclass
class Expected:
    name: str
    role: str = ""
    region: str = ""
    ms: float | None = None
    connected: bool = True


class Board:
    """Every node expected to confirm a purge, and how it is shown as confirmations come
    in: redrawn in place on a terminal, one line per confirmation otherwise."""

    def __init__(self, purge_id: int, out: TextIO, tty: bool) -> None:
        self.purge_id = purge_id
        self.out = out
        self.tty = tty
        self.nodes: dict[str, Expected] = {}
        self._drawn = 0
        self._last: list[str] = []

    def expect(self, name: str, info: dict[str, Any] | None = None) -> None:
        node = self.nodes.setdefault(name, Expected(name))
        if info:
            node.role = info.get("role", node.role)
            node.region = info.get("region", node.region)

    def update(self, view: dict[str, Any]) -> None:
        new = []
        for row in view["confirmations"]:
            node = self.nodes.get(row["node"])
            if node is None:
                continue  # it confirmed, but this command never waited for it
            node.role, node.region = row["role"], row["region"]
            if node.ms is None:
                node.ms = float(row["ms"])
                new.append(node)
        pending = set(view["pending"])
        for name in pending:
            self.expect(name)
        absent = set(view.get("not_connected", ()))
        for name in absent:
            self.expect(name)
        for node in self.nodes.values():
            node.connected = node.ms is not None or node.name not in absent
        if self.tty:
            self.draw()
        else:
            for node in new:
                where = ", ".join(p for p in (node.role, node.region) if p)
                print(f"confirmed {node.name} ({where}) after {node.ms:.1f} ms", file=self.out)
            self.out.flush()

    def missing(self) -> list[Expected]:
        return [n for n in self.nodes.values() if n.ms is None]

    def absent(self) -> list[Expected]:
        """Known nodes that are not connected and owe a confirmation: they apply the
        purge when they reconnect, and nothing here can wait for that."""
        return [n for n in self.missing() if not n.connected]

    def lines(self) -> list[str]:
        done = len(self.nodes) - len(self.missing())
        rows = [
            [
                n.name,
                n.role,
                n.region,
                (
                    f"confirmed after {n.ms:.1f} ms"
                    if n.ms is not None
                    else ("waiting" if n.connected else NOT_CONNECTED)
                ),
            ]
            for n in sorted(self.nodes.values(), key=lambda n: (n.role != "shield", n.name))
        ]
        head = f"purge {self.purge_id}: {done}/{len(self.nodes)} nodes confirmed"
        return [head, *table(["NODE", "ROLE", "REGION", "STATUS"], rows)]

    def draw(self) -> None:
        lines = self.lines()
        if lines == self._last:
            return
        self._last = lines
        # Back to the first line of the previous drawing, and clear to the end.
        prefix = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.out.write(prefix + "\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    def finish(self) -> None:
        if self.tty:
            self.draw()
        else:
            print("\n".join(self.lines()), file=self.out, flush=True)


# ---------------------------------------------------------------- edge purge


def purge(
    urls: Annotated[
        Repeated,
        typer.Argument(metavar="[URL]...", help="Absolute URLs to purge.", show_default=False),
    ] = None,
    prefix: Annotated[
        Repeated,
        typer.Option(
            "--prefix", metavar="URL", help="Purge every URL under it.", show_default="none"
        ),
    ] = None,
    tag: Annotated[
        Repeated,
        typer.Option(
            "--tag", help="Purge what the origin tagged (Surrogate-Key).", show_default="none"
        ),
    ] = None,
    host: Annotated[
        Repeated, typer.Option("--host", help="Purge everything of a host.", show_default="none")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Purge every cached object.", show_default="off")
    ] = False,
    soft: Annotated[
        bool,
        typer.Option(
            "--soft", help="Mark stale (revalidate) instead of removing.", show_default="off"
        ),
    ] = False,
    coordinator: CoordinatorOpt = None,
    token: TokenOpt = None,
    timeout: Annotated[
        str,
        typer.Option(metavar="SECONDS", help="How long to wait for every node to confirm."),
    ] = "10",
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Print the purge id and exit without waiting.",
            show_default="off: wait",
        ),
    ] = False,
    connected_only: Annotated[
        bool,
        typer.Option(
            "--connected-only",
            help="Exit 0 once every connected node confirmed, even if a node the "
            "coordinator knows is not connected (it applies the purge on reconnect).",
            show_default="off",
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Purge URLs, prefixes, tags or hosts from every cache node, and wait until each
    node confirms. Exits 0 when every node the coordinator knows confirmed, 1 otherwise
    (a node did not confirm in time, or is not connected; --connected-only accepts the
    confirmation of the connected nodes)."""
    try:
        seconds = float(timeout)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 86400:  # NaN too
        fail(f"--timeout must be a number of seconds > 0, got {timeout!r}", 2)
    body: dict[str, Any] = {
        "urls": [_absolute(u, "purge") for u in urls or []],
        "prefixes": [_absolute(p, "--prefix") for p in prefix or []],
        "tags": list(tag or []),
        "hosts": list(host or []),
        "all": everything,
        "soft": soft,
    }
    if not everything and not any(body[k] for k in ("urls", "prefixes", "tags", "hosts")):
        fail("nothing to purge: give URLs, --prefix, --tag, --host or --all", 2)
    client = resolve(coordinator, token, config)
    deadline = time.monotonic() + seconds
    try:
        accepted = client.call("POST", "/v1/purge", body)
        purge_id = int(accepted["id"])
        if no_wait:
            print(purge_id)
            return
        known = {n["name"]: n for n in client.call("GET", "/v1/nodes")["nodes"]}
        absent = accepted.get("not_connected", [])
        wait_for(
            client, purge_id, accepted["nodes"], absent, known, deadline, seconds, connected_only
        )
    except CoordinatorError as exc:
        fail(str(exc))
    except (KeyError, TypeError, ValueError):
        fail(f"unexpected answer from the coordinator at {client.base} (is it one?)")


def wait_for(
    client: Client,
    purge_id: int,
    names: list[str],
    absent: list[str],
    known: dict[str, dict[str, Any]],
    deadline: float,
    seconds: float,
    connected_only: bool = False,
) -> None:
    """Long-poll the purge until every connected node confirmed or the deadline passed.
    Exit 0 when every known node confirmed (with `connected_only`, every connected one),
    else 1, naming the nodes that did not and why."""
    board = Board(purge_id, sys.stdout, sys.stdout.isatty())
    for name in names:
        board.expect(name, known.get(name))
    for name in absent:
        board.expect(name, known.get(name))
        board.nodes[name].connected = False
    if not board.nodes:
        print(f"purge {purge_id} stored; the coordinator knows no node to confirm it")
        return
    if board.tty:
        board.draw()
    seen = 0
    done = not names  # with nothing connected, there is nothing to wait for
    while not done:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        wait = min(remaining, MAX_WAIT)
        view = client.call(
            "GET", f"/v1/purge/{purge_id}?wait={wait:.3f}&seen={seen}", timeout=wait + 5
        )
        board.update(view)
        newcomers = [name for name in board.nodes if name not in known]
        if newcomers:  # connected since, and sent the purge: learn their role and region
            known.update({n["name"]: n for n in client.call("GET", "/v1/nodes")["nodes"]})
            for name in newcomers:
                board.expect(name, known.get(name, {"role": "?"}))
            if board.tty:
                board.draw()
        seen = len(view["confirmations"])
        # Every connected node confirmed; a node not connected confirms only once it is
        # back, which may be in seconds or never: say so rather than wait for it.
        done = view["complete"] and len(board.missing()) == len(board.absent())
    board.finish()
    confirmed = [n for n in board.nodes.values() if n.ms is not None]
    slowest = max((n.ms or 0.0 for n in confirmed), default=0.0)
    absent_names = ", ".join(n.name for n in board.absent())
    if not board.missing():
        count = len(board.nodes)
        print(f"purge {purge_id}: confirmed by all {count} nodes in {slowest:.1f} ms")
        return
    if not done:
        late = ", ".join(
            n.name if n.connected else f"{n.name} ({NOT_CONNECTED})" for n in board.missing()
        )
        fail(f"purge {purge_id} not confirmed within {seconds:g}s by: {late}")
    if connected_only:
        by = (
            f"confirmed by all {len(confirmed)} connected nodes in {slowest:.1f} ms"
            if confirmed
            else "stored; no node is connected to confirm it"
        )
        print(f"purge {purge_id}: {by}; {NOT_CONNECTED}: {absent_names}")
        return
    fail(
        f"purge {purge_id} not confirmed by every known node: {absent_names} "
        f"({NOT_CONNECTED}; --connected-only accepts the connected nodes)"
    )


# ---------------------------------------------------------------- edge status


def status(
    coordinator: CoordinatorOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="The coordinator's JSON as is.", show_default="off: a table"),
    ] = False,
) -> None:
    """Show the cache nodes the coordinator knows: health, applied seq and lag."""
    client = resolve(coordinator, token, config)
    try:
        answer = client.call("GET", "/v1/nodes")
    except CoordinatorError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    try:
        show_nodes(client.base, answer)
    except (KeyError, TypeError, ValueError):
        fail(f"unexpected answer from the coordinator at {client.base} (is it one?)")


def forget(
    name: Annotated[
        str, typer.Argument(help="The retired node's name, as `edge status` shows it.")
    ],
    coordinator: CoordinatorOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Forget a retired node: purges stop waiting for it and `edge status` stops listing it.
    A node still connected is refused; one that comes back later registers again."""
    client = resolve(coordinator, token, config)
    try:
        client.call("DELETE", f"/v1/nodes/{quote(name, safe='')}")
    except CoordinatorError as exc:
        fail(str(exc))
    print(f"forgot {name}")


def show_nodes(base: str, answer: dict[str, Any]) -> None:
    nodes = answer["nodes"]
    healthy = sum(1 for n in nodes if n["healthy"])
    print(f"coordinator {base}: seq {answer['seq']}, {healthy}/{len(nodes)} nodes healthy")
    if not nodes:
        return
    rows = [
        [
            n["name"],
            n["role"],
            n["region"] or "-",
            n["address"] or "-",
            _health(n),
            str(n["applied"]),
            str(n["lag"]),
        ]
        for n in nodes
    ]
    print("\n".join(table(["NAME", "ROLE", "REGION", "ADDRESS", "HEALTH", "APPLIED", "LAG"], rows)))


def _health(node: dict[str, Any]) -> str:
    if not node["connected"]:
        return "disconnected"
    return "healthy" if node["healthy"] else "stale"
