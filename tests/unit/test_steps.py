"""The client machine's table (edge.pipeline.steps): the driver's check refuses every move the
table does not list, the table has no dead ends or unreachable steps, every step has
its method in the pipeline, and the README shows the table as the code has it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edge.pipeline import steps
from edge.pipeline.steps import FINAL, FIRST, MOVES, IllegalMove, Step, move

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(("here", "to"), list(itertools.product(Step, Step)), ids=lambda s: s.value)
def test_a_move_is_allowed_exactly_when_the_table_lists_it(here: Step, to: Step) -> None:
    walk = [here]
    if to in MOVES[here]:
        move(walk, to)
        assert walk == [here, to]
    else:
        with pytest.raises(IllegalMove, match=f"{here.value} -> {to.value}"):
            move(walk, to)
        assert walk == [here]  # a refused move is not recorded


def test_a_walk_starts_at_recv() -> None:
    for step in Step:
        walk: list[Step] = []
        if step is FIRST:
            move(walk, step)
            assert walk == [FIRST]
        else:
            with pytest.raises(IllegalMove, match="starts at recv"):
                move(walk, step)


def test_every_step_is_reachable_and_every_walk_can_end() -> None:
    reached, frontier = {FIRST}, [FIRST]
    while frontier:
        for nxt in MOVES[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(Step)
    ends = set(FINAL)
    changed = True
    while changed:
        before = len(ends)
        ends |= {s for s, nexts in MOVES.items() if set(nexts) & ends}
        changed = len(ends) != before
    assert ends == set(Step)
    assert {Step.SYNTH, Step.DONE} == FINAL


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


def test_every_step_has_its_method_in_the_pipeline() -> None:
    from edge.pipeline import transaction as pipeline

    assert set(pipeline._STEPS) == set(Step) - FINAL
    for step, method in pipeline._STEPS.items():
        assert method.__name__ == f"st_{step.value}"


def test_the_readme_shows_the_table_as_the_code_has_it() -> None:
    assert f"```\n{steps.render_table()}\n```" in README.read_text()
