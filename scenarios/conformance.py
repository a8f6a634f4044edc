"""HTTP caching conformance: the http-cache-tests suite run against a proxy, scored.

Owns: installing the pinned suite (npm `http-cache-tests`) into the git-ignored `.cache/`,
running its origin server and its client against a proxy in front of that server (by
default `edge serve`; `--proxy nginx` runs Debian's nginx with proxy_cache as the
reference), scoring the results per test kind, comparing with the suite's published
results for other proxies, and the CI floor check.

Scoring follows the suite's own display (lib/display.mjs `determineTestResult`): a test
counts as passed when its result is `true` and every test it `depends_on` passed too.
Totals are over every test the suite defines, browser-only ones included, so the figures
are the ones the suite publishes (nginx: 94 of 168 required); the tests a proxy can run at
all are shown beside them.

    python -m scenarios.conformance                 # edge serve
    python -m scenarios.conformance --proxy nginx   # the reference
    python -m scenarios.conformance --id freshness-max-age   # one test, with its dump
    python -m scenarios.conformance --floor .ci/conformance-floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scenarios.harness import (
    OUT_DIR,
    REPO_ROOT,
    Child,
    Processes,
    ScenarioError,
    edge_argv,
    free_port,
    require_tool,
    run_main,
    stop_process,
    wait_http_ok,
    wait_tcp,
    write_nginx_config,
)

PACKAGE = "http-cache-tests"
VERSION = "0.4.5"
CACHE_ROOT = REPO_ROOT / ".cache" / "http-cache-tests"
KINDS = ("required", "optimal", "check")
PROXIES = ("edge", "nginx")
# Published results worth comparing a reverse proxy with (the suite also publishes browsers).
PEER_TYPES = ("rev-proxy", "cdn")

# Imports the suite's own modules, the same set cli.mjs runs (index plus surrogate-control),
# so the test list and kinds are never copied into this repository.
_DESCRIBE_JS = r"""
import { pathToFileURL } from 'url'
const dir = process.argv[1]
const load = async rel => (await import(pathToFileURL(dir + '/' + rel))).default
const suites = [...(await load('tests/index.mjs')), await load('tests/surrogate-control.mjs')]
const tests = []
for (const suite of suites) {
  for (const t of suite.tests) {
    tests.push({
      id: t.id,
      name: t.name,
      suite: suite.id,
      kind: t.kind || 'required',
      browser_only: t.browser_only === true,
      depends_on: t.depends_on || []
    })
  }
}
const published = await load('results/index.mjs')
console.log(JSON.stringify({ tests, published }))
"""


@dataclass(frozen=True)
class CacheTest:
    id: str
    name: str
    kind: str
    browser_only: bool = False
    depends_on: tuple[str, ...] = ()
    suite: str = ""


@dataclass(frozen=True)
class KindScore:
    passed: int
    total: int
    runnable: int


# ---------------------------------------------------------------------------------------
# Pure parts: scoring, floors, parsing, rendering (unit-tested without node or a proxy).


def passes(test_id: str, results: Mapping[str, Any], tests: Mapping[str, CacheTest]) -> bool:
    """Passed = result `true` and every dependency passed (the suite's display rule)."""
    seen: set[str] = set()

    def ok(tid: str) -> bool:
        if tid in seen:  # a dependency cycle would be a suite bug; do not recurse forever
            return False
        seen.add(tid)
        if results.get(tid) is not True:
            return False
        info = tests.get(tid)
        return info is None or all(ok(dep) for dep in info.depends_on)

    return ok(test_id)


def score(tests: Sequence[CacheTest], results: Mapping[str, Any]) -> dict[str, KindScore]:
    by_id = {t.id: t for t in tests}
    out: dict[str, KindScore] = {}
    for kind in KINDS:
        of_kind = [t for t in tests if t.kind == kind]
        out[kind] = KindScore(
            passed=sum(passes(t.id, results, by_id) for t in of_kind),
            total=len(of_kind),
            runnable=sum(not t.browser_only for t in of_kind),
        )
    return out


def failure_reason(
    test: CacheTest, results: Mapping[str, Any], tests: Mapping[str, CacheTest]
) -> str:
    result = results.get(test.id)
    if result is None:
        return "browser only" if test.browser_only else "not run"
    if result is True:
        failed = [d for d in test.depends_on if not passes(d, results, tests)]
        return f"depends on {', '.join(failed)}"
    if isinstance(result, list) and len(result) >= 2:
        return f"{result[0]}: {result[1]}"
    return str(result)


def failing(
    tests: Sequence[CacheTest],
    results: Mapping[str, Any],
    kinds: Iterable[str] = ("required", "optimal"),
    *,
    include_browser_only: bool = False,
) -> list[tuple[CacheTest, str]]:
    """Tests of `kinds` that did not pass, with why; browser-only ones left out by default."""
    by_id = {t.id: t for t in tests}
    wanted = set(kinds)
    return [
        (t, failure_reason(t, results, by_id))
        for t in tests
        if t.kind in wanted
        and (include_browser_only or not t.browser_only)
        and not passes(t.id, results, by_id)
    ]


def check_floor(scores: Mapping[str, KindScore], floor: Mapping[str, Any]) -> list[str]:
    """One message per kind whose passed count is below the floor."""
    problems = []
    for kind, minimum in floor.items():
        if kind not in scores:
            problems.append(f"floor names unknown kind {kind!r}")
            continue
        if not isinstance(minimum, int) or isinstance(minimum, bool):
            problems.append(f"floor for {kind} is not an integer: {minimum!r}")
            continue
        got = scores[kind].passed
        if got < minimum:
            problems.append(f"{kind}: {got} passed, below the floor of {minimum}")
    return problems


def parse_client_output(text: str) -> dict[str, Any]:
    """The client prints one JSON object (test id -> true | [kind, message])."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ScenarioError("the suite's client printed no JSON results")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"the suite's client printed malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError("the suite's client printed JSON that is not an object")
    return data


def tests_from_json(items: Iterable[Mapping[str, Any]]) -> list[CacheTest]:
    return [
        CacheTest(
            id=str(item["id"]),
            name=str(item.get("name", "")),
            kind=str(item.get("kind") or "required"),
            browser_only=bool(item.get("browser_only", False)),
            depends_on=tuple(item.get("depends_on") or ()),
            suite=str(item.get("suite", "")),
        )
        for item in items
    ]


def render_table(
    proxy: str,
    scores: Mapping[str, KindScore],
    peers: Mapping[str, Mapping[str, KindScore]],
) -> str:
    lines = [f"{'kind':<10} {proxy + ' passed':>14} {'total':>6}   runnable by a proxy"]
    for kind in KINDS:
        s = scores[kind]
        lines.append(
            f"{kind:<10} {s.passed:>14} {s.total:>6}   "
            f"{s.passed} of {s.runnable} runnable by a proxy"
        )
    if peers:
        lines.append("")
        lines.append("published results of other proxies, counted the same way:")
        label_width = max(len(name) for name in peers) + 2
        lines.append(" " * label_width + "".join(f"{k:>10}" for k in KINDS))
        for name, peer in peers.items():
            cells = "".join(f"{f'{peer[k].passed}/{peer[k].total}':>10}" for k in KINDS)
            lines.append(f"{name:<{label_width}}{cells}")
    return "\n".join(lines)


def render_failures(rows: Sequence[tuple[CacheTest, str]], width: int = 110) -> str:
    lines = []
    for test, reason in rows:
        text = f"  {test.kind:<8} {test.id}: {test.name}"
        lines.append(text if len(text) <= width else text[: width - 1] + "…")
        why = " ".join(reason.split())
        lines.append(f"           ↳ {why[: width - 14]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The suite on disk and in node.


def package_dir(cache_root: Path = CACHE_ROOT) -> Path:
    return cache_root / "node_modules" / PACKAGE


def _installed_version(pkg: Path) -> str | None:
    try:
        return str(json.loads((pkg / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_package(cache_root: Path = CACHE_ROOT, timeout: float = 300.0) -> Path:
    """Install http-cache-tests@VERSION with its dependencies under `cache_root`, once."""
    pkg = package_dir(cache_root)
    deps = cache_root / "node_modules"
    if _installed_version(pkg) == VERSION and all(
        (deps / dep / "package.json").is_file() for dep in ("node-fetch", "liquidjs")
    ):
        return pkg
    npm = require_tool("npm")
    require_tool("node")
    cache_root.mkdir(parents=True, exist_ok=True)
    print(f"installing {PACKAGE}@{VERSION} into {cache_root} ...", flush=True)
    argv = [
        npm,
        "install",
        "--prefix",
        str(cache_root),
        "--omit=dev",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        f"{PACKAGE}@{VERSION}",
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise ScenarioError(f"npm install {PACKAGE}@{VERSION} took over {timeout:g}s") from exc
    if done.returncode != 0 or _installed_version(pkg) != VERSION:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
        raise ScenarioError(f"npm install {PACKAGE}@{VERSION} failed:\n{tail}")
    return pkg


def describe_suite(pkg: Path) -> tuple[list[CacheTest], list[dict[str, Any]]]:
    """The suite's tests and the index of its published results, read by node."""
    node = require_tool("node")
    done = subprocess.run(
        [node, "--no-warnings", "--input-type=module", "-e", _DESCRIBE_JS, str(pkg)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise ScenarioError(f"cannot read the suite's test list: {done.stderr.strip()[-500:]}")
    data = json.loads(done.stdout)
    return tests_from_json(data["tests"]), list(data["published"])


def published_scores(
    pkg: Path, tests: Sequence[CacheTest], index: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, KindScore]]:
    out: dict[str, dict[str, KindScore]] = {}
    for entry in index:
        if entry.get("type") not in PEER_TYPES:
            continue
        path = pkg / "results" / str(entry["file"])
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        version = str(entry.get("version", "")).strip()
        label = f"{entry.get('name', path.stem)} {version}" if version else str(entry["name"])
        out[label] = score(tests, results)
    return out


def client_env(base: str, test_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env["npm_config_base"] = base
    # An empty id means every test; cli.mjs treats an unset one as a single unknown test.
    env["npm_config_id"] = test_id
    env["NO_UPDATE_NOTIFIER"] = "1"
    env["npm_config_update_notifier"] = "false"
    return env


def run_client(pkg: Path, base: str, test_id: str, timeout: float, *, capture: bool) -> str:
    npm = require_tool("npm")
    argv = [npm, "run", "--silent", "cli"]
    # Own process group so a timeout kills npm, its shell and node together.
    proc = subprocess.Popen(
        argv,
        cwd=pkg,
        env=client_env(base, test_id),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stop_process(proc)
        raise ScenarioError(f"the suite's client did not finish in {timeout:g}s") from exc
    except BaseException:
        stop_process(proc)
        raise
    if proc.returncode != 0:
        raise ScenarioError(
            f"the suite's client exited with {proc.returncode}: {(err or '').strip()[-500:]}"
        )
    return out or ""


# ---------------------------------------------------------------------------------------
# One run.


def start_stack(
    procs: Processes, pkg: Path, proxy: str, workdir: Path
) -> tuple[str, Child, list[str]]:
    """Suite server, then the proxy in front of it: (base URL, proxy process, its argv)."""
    node = require_tool("node")
    server_port = free_port()
    server_env = dict(os.environ)
    server_env.update(
        npm_config_port=str(server_port),
        npm_config_protocol="http",
        npm_config_pidfile=str(workdir / "server.pid"),
    )
    server = procs.start("suite-server", [node, "server/server.mjs"], cwd=pkg, env=server_env)
    wait_tcp(server, server_port)

    proxy_port = free_port()
    upstream = f"http://127.0.0.1:{server_port}"
    if proxy == "nginx":
        argv = write_nginx_config(
            workdir / "nginx", proxy_port, server_port, keepalive_upstream=False
        )
        child = procs.start("nginx", argv)
        wait_tcp(child, proxy_port)
    else:
        argv = edge_argv(proxy_port, upstream, workdir / "edge-cache", "conformance")
        # The default configuration: nothing is changed for the suite.
        child = procs.start("edge", argv, cwd=REPO_ROOT)
        wait_http_ok(child, f"http://127.0.0.1:{proxy_port}/_edge/health")
    return f"http://127.0.0.1:{proxy_port}", child, argv


def run(args: argparse.Namespace) -> int:
    pkg = ensure_package()
    tests, index = describe_suite(pkg)
    by_id = {t.id: t for t in tests}
    if args.id and args.id not in by_id:
        raise ScenarioError(f"no test with id {args.id!r} in {PACKAGE} {VERSION}")

    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="edge-conformance-") as tmp,
        Processes(Path(tmp)) as procs,
    ):
        workdir = Path(tmp)
        base, proxy_child, proxy_argv = start_stack(procs, pkg, args.proxy, workdir)
        print(f"{PACKAGE} {VERSION}: {args.proxy} at {base}", flush=True)
        if args.id:
            print(f"{by_id[args.id].kind}: {by_id[args.id].name}", flush=True)
            run_client(pkg, base, args.id, args.timeout, capture=False)
            return 0
        output = run_client(pkg, base, "", args.timeout, capture=True)
        proxy_survived = proxy_child.alive()
        procs.stop_all()
        # Keep the proxy's log beside the report: the first place to look at a failure.
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        log_copy = OUT_DIR / f"conformance-{args.proxy}.log"
        nginx_errors = workdir / "nginx" / "error.log"
        source = nginx_errors if args.proxy == "nginx" else proxy_child.log_path
        shutil.copyfile(source, log_copy)
    elapsed = time.monotonic() - started
    if not proxy_survived:
        print(f"WARNING: {args.proxy} exited during the run; see {log_copy}")

    results = parse_client_output(output)
    scores = score(tests, results)
    peers = published_scores(pkg, tests, index)
    fails = failing(tests, results)

    print()
    print(render_table(args.proxy, scores, peers))
    print()
    if fails:
        print(f"failing required and optimal tests ({len(fails)}; browser-only ones left out):")
        print(render_failures(fails))
    else:
        print("no failing required or optimal test that a proxy can run")
    print(f"\nsuite run took {elapsed:.1f}s")

    out_path = Path(args.out) if args.out else OUT_DIR / f"conformance-{args.proxy}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "suite": f"{PACKAGE}@{VERSION}",
        "proxy": args.proxy,
        "proxy_command": proxy_argv,
        "proxy_log": str(log_copy),
        "proxy_survived": proxy_survived,
        "duration_s": round(elapsed, 1),
        "score": {k: asdict(v) for k, v in scores.items()},
        # Plain `true` counts, ignoring depends_on: handy when chasing one dependency.
        "true_results": {
            k: sum(results.get(t.id) is True for t in tests if t.kind == k) for k in KINDS
        },
        "failing": [
            {"id": t.id, "kind": t.kind, "name": t.name, "reason": why} for t, why in fails
        ],
        "published": {name: {k: asdict(v) for k, v in s.items()} for name, s in peers.items()},
        "results": results,
    }
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    shown = out_path.relative_to(REPO_ROOT) if out_path.is_relative_to(REPO_ROOT) else out_path
    print(f"wrote {shown}")

    if args.floor:
        try:
            floor = json.loads(Path(args.floor).read_text())
        except (OSError, ValueError) as exc:
            raise ScenarioError(f"cannot read floor file {args.floor}: {exc}") from exc
        if not isinstance(floor, dict):
            raise ScenarioError(f"floor file {args.floor} is not a JSON object")
        problems = check_floor(scores, floor)
        if problems:
            for problem in problems:
                print(f"BELOW FLOOR ({args.floor}): {problem}")
            return 1
        print(f"floor {args.floor} met: " + ", ".join(f"{k} >= {v}" for k, v in floor.items()))
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.conformance",
        description=f"Run {PACKAGE} {VERSION} against a caching proxy and score it.",
    )
    parser.add_argument("--proxy", choices=PROXIES, default="edge", help="proxy under test")
    parser.add_argument("--id", default="", help="run one test and print its dump")
    parser.add_argument("--floor", help='JSON file {"required": N, "optimal": M}: exit 1 below')
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds the suite's client may take"
    )
    parser.add_argument("--out", help="report path (default scenarios/out/conformance-PROXY.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("conformance", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
