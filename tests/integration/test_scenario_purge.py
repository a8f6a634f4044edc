"""scenarios/purge_propagation: its percentile helper, and a short real run (coordinator,
shield, three edges) whose report shows every node confirming every purge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scenarios import purge_propagation


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert purge_propagation.percentile(values, 50) == 50
    assert purge_propagation.percentile(values, 99) == 99
    assert purge_propagation.percentile(values, 100) == 100
    assert purge_propagation.percentile([7.0], 99) == 7.0
    assert purge_propagation.percentile([], 50) is None


# JetStream's run needs Debian's nats-server: a system test, run by .ci/run's system stage.
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("jetstream", marks=pytest.mark.system)])
def test_a_short_run_confirms_every_purge_at_every_node(tmp_path: Path, backend: str) -> None:
    out = tmp_path / "purge.json"
    code = purge_propagation.main(
        ["--purges", "30", "--warmup", "2", "--cli", "1", "--backends", backend, "--out", str(out)]
    )
    report = json.loads(out.read_text())
    assert code == 0, report["problems"]
    assert report["incomplete"] == [] and report["leaks"] == []
    assert set(report["node_confirm_ms"]) == {"shield-1", "edge-0", "edge-1", "edge-2"}
    assert len(report["samples_ms"]) == 30
    assert report["cached_before_real_purge"] == dict.fromkeys(report["node_confirm_ms"], "hit")
