"""Every machine driven by edge.steptable.Table, checked the same way: the client machine
(edge.pipeline.steps), the fetch machine (edge.fetch.machine) and the derive machine
(edge.fetch.derive). The driver refuses every move its table does not list; a walk
starts at the first step only; every step is reachable and every walk can end; every
step that runs has its `st_` method; the README shows each table as the code has it."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.fetch import derive, machine
from edge.pipeline import steps
from edge.steptable import IllegalMove, Table

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True)
class Machine:
    name: str
    table: Table[Any]
    steps: type[enum.Enum]
    methods: Callable[[], Mapping[Any, Callable[..., Any]]]  # step -> its method
    runs: Callable[[Table[Any]], set[Any]]  # the steps that have a method

    def __str__(self) -> str:
        return self.name


def _client_methods() -> Mapping[Any, Callable[..., Any]]:
    from edge.pipeline import transaction

    return transaction._STEPS


MACHINES = [
    # The client machine's final steps are the driver's own (it answers, or ends).
    Machine("client", steps.TABLE, steps.Step, _client_methods, lambda t: set(t.moves) - t.final),
    Machine(
        "fetch", machine.TABLE, machine.FetchStep, lambda: machine._STEPS, lambda t: set(t.moves)
    ),
    Machine(
        "derive", derive.TABLE, derive.DeriveStep, lambda: derive._STEPS, lambda t: set(t.moves)
    ),
]

MOVES = [
    (m, here, to) for m in MACHINES for here, to in itertools.product(list(m.steps), list(m.steps))
]


@pytest.mark.parametrize(
    ("m", "here", "to"), MOVES, ids=[f"{m}-{h.value}-{t.value}" for m, h, t in MOVES]
)
def test_a_move_is_allowed_exactly_when_the_table_lists_it(
    m: Machine, here: enum.Enum, to: enum.Enum
) -> None:
    walk = [here]
    if to in m.table.moves[here]:
        m.table.move(walk, to)
        assert walk == [here, to]
    else:
        with pytest.raises(IllegalMove, match=f"{here.value} -> {to.value} .* {m.table.machine}"):
            m.table.move(walk, to)
        assert walk == [here]  # a refused move is not recorded


@pytest.mark.parametrize("m", MACHINES, ids=str)
def test_a_walk_starts_at_the_first_step_only(m: Machine) -> None:
    for step in m.steps:
        walk: list[Any] = []
        if step is m.table.first:
            m.table.move(walk, step)
            assert walk == [step]
        else:
            with pytest.raises(IllegalMove, match=f"starts at {m.table.first.value}"):
                m.table.move(walk, step)


@pytest.mark.parametrize("m", MACHINES, ids=str)
def test_every_step_is_reachable_and_every_walk_can_end(m: Machine) -> None:
    moves = m.table.moves
    assert set(moves) == set(m.steps)
    reached, frontier = {m.table.first}, [m.table.first]
    while frontier:
        for nxt in moves[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(m.steps)
    ends = set(m.table.final)
    while True:
        more = {s for s, nexts in moves.items() if set(nexts) & ends} - ends
        if not more:
            break
        ends |= more
    assert ends == set(m.steps)


@pytest.mark.parametrize("m", MACHINES, ids=str)
def test_a_walk_that_loops_is_stopped(m: Machine) -> None:
    walk = [m.table.first] * m.table.max_steps
    with pytest.raises(IllegalMove, match="longer than"):
        m.table.move(walk, next(iter(m.table.moves[m.table.first])))


@pytest.mark.parametrize("m", MACHINES, ids=str)
def test_every_step_that_runs_has_its_method(m: Machine) -> None:
    methods = m.methods()
    assert set(methods) == m.runs(m.table)
    for step, method in methods.items():
        assert method.__name__ == f"st_{step.value}"


@pytest.mark.parametrize("m", MACHINES, ids=str)
def test_the_readme_shows_the_table_as_the_code_has_it(m: Machine) -> None:
    assert f"```\n{m.table.render()}\n```" in README.read_text()
