"""`edge scenario`: the list, an unknown name, a run with its own options, and the
scenario's exit status passed through."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

from scenarios.catalog import SCENARIOS
from tests.support.procs import REPO, edge_cmd


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        edge_cmd("scenario", *args), cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_every_listed_scenario_is_a_module() -> None:
    for name in SCENARIOS:
        assert importlib.util.find_spec(f"scenarios.{name}") is not None, name


def test_list_names_each_scenario() -> None:
    out = run("--list")
    assert out.returncode == 0
    assert [line.split()[0] for line in out.stdout.splitlines()] == list(SCENARIOS)


def test_unknown_scenario_is_a_one_line_error() -> None:
    out = run("nope")
    assert out.returncode == 2 and "unknown scenario 'nope'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_outside_the_repository_it_says_so(tmp_path: Path) -> None:
    out = run("--list", cwd=tmp_path)
    assert out.returncode == 2 and "repository's root" in out.stderr


def test_a_scenario_runs_with_its_options_and_its_status_comes_back(tmp_path: Path) -> None:
    # A scenario that needs nothing but edge itself (dns_throughput would need dnsperf).
    out = tmp_path / "p.json"
    args = ["--purges", "3", "--warmup", "0", "--edges", "1", "--objects", "1", "--cli", "1"]
    ok = run("purge_propagation", *args, "--out", str(out))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 purges, 1 shield + 1 edges" in ok.stdout and out.is_file()
    bad = run("purge_propagation", "--purges", "0")
    assert bad.returncode == 2 and "--purges" in bad.stderr
