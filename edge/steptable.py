"""A machine's steps and the moves between them, as a table, and the one check every
driver makes before a step.

Each of edge's machines is driven this way: the client machine (edge.pipeline.steps),
the fetch machine (edge.fetch.machine) and the derive machine (edge.fetch.derive). A
step decides one thing and names the next; the driver asks `Table.move` first, and a
move the table does not list raises `IllegalMove`: a bug in the engine, never
something a peer can cause, so it is loud (as Varnish's WRONG() and h11's
LocalProtocolError are). Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)


class IllegalMove(RuntimeError):
    """A step asked for a move its machine's table does not allow."""


@dataclass(frozen=True)
class Table(Generic[S]):
    """Where each step of one machine may go; steps with nowhere to go end a walk."""

    machine: str  # for the message of a refused move: "client machine"
    moves: Mapping[S, tuple[S, ...]]
    first: S
    max_steps: int  # a walk longer than this is a loop the engine did not bound
    final: frozenset[S] = field(init=False)

    def __post_init__(self) -> None:
        final = frozenset(step for step, nexts in self.moves.items() if not nexts)
        object.__setattr__(self, "final", final)

    def move(self, walk: list[S], to: S) -> None:
        """Record the move from the walk's last step to `to`, refusing one not listed."""
        if not walk:
            if to is not self.first:
                raise IllegalMove(f"a walk starts at {self.first.value}, not {to.value}")
        elif to not in self.moves[walk[-1]]:
            raise IllegalMove(f"{walk[-1].value} -> {to.value} is not a move of the {self.machine}")
        if len(walk) >= self.max_steps:
            walked = ">".join(step.value for step in walk)
            raise IllegalMove(f"walk longer than {self.max_steps} steps: {walked}")
        walk.append(to)

    def render(self) -> str:
        """The table as text, one line per step (the README shows it; a test compares)."""
        width = max(len(step.value) for step in self.moves)
        lines = []
        for step, nexts in self.moves.items():
            targets = ", ".join(n.value for n in nexts) if nexts else "(end)"
            lines.append(f"{step.value:<{width}} -> {targets}")
        return "\n".join(lines)
