"""The client machine's table (edge.pipeline.steps): a walk that loops is stopped, and the
log shows a walk without its end. What every machine's table must hold (moves, first
step, reachability, methods, the README) is tests/unit/test_steptable.py's."""

from __future__ import annotations

import pytest

from edge.pipeline import steps
from edge.pipeline.steps import IllegalMove, Step, move


def test_a_walk_that_loops_is_stopped() -> None:
    walk = [Step.RECV, Step.HASH, Step.LOOKUP, Step.MISS, Step.FETCH]
    with pytest.raises(IllegalMove, match="longer than"):
        while True:
            move(walk, Step.FETCH)
    assert len(walk) == steps.MAX_STEPS


def test_the_log_shows_the_walk_without_its_end() -> None:
    walk = [Step.RECV, Step.HASH, Step.LOOKUP, Step.HIT, Step.DELIVER, Step.DONE]
    assert steps.render_walk(walk) == "recv>hash>lookup>hit>deliver"
    assert steps.render_walk([Step.RECV, Step.SYNTH]) == "recv>synth"
