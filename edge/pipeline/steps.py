"""The client machine's steps and the moves between them, as a table.

A request walks these steps (edge.pipeline.transaction drives them, one method per step), as a
request walks Varnish's cache_req_fsm.c. Each step decides one thing and names the next;
the driver asks `move` before every step and a move the table does not list raises
`IllegalMove` (edge.steptable: the check the fetch machine's driver makes too). Pure: no I/O.
"""

from __future__ import annotations

import enum

from edge.steptable import IllegalMove, Table

__all__ = [
    "FINAL",
    "FIRST",
    "MAX_STEPS",
    "MOVES",
    "TABLE",
    "IllegalMove",
    "Step",
    "move",
    "render_table",
    "render_walk",
]


class Step(enum.Enum):
    RECV = "recv"  # the guard, loops, hosts; route by method
    HASH = "hash"  # the cache key
    LOOKUP = "lookup"  # RFC 9111 Section 4: a stored response, and how it may be used
    HIT = "hit"  # fresh (or stale allowed): deliver it
    STALE = "stale"  # RFC 5861 Section 3: deliver stale, refresh in the background
    MISS = "miss"  # not usable: fetch it
    FETCH = "fetch"  # join or start a fill; read-while-writer
    PASS = "pass"  # forward, never store
    DELIVER = "deliver"  # the response to the client
    SYNTH = "synth"  # a response made here: an error or a refusal (ends the walk)
    DONE = "done"  # the response is made

    # Hashed by identity (members are singletons and compare by identity), in C:
    # Enum hashes by name in Python, and every move of a walk looks its step up.
    __hash__ = object.__hash__


#: Where each step may go. SYNTH and DONE end the walk.
MOVES: dict[Step, tuple[Step, ...]] = {
    Step.RECV: (Step.HASH, Step.PASS, Step.SYNTH),
    Step.HASH: (Step.LOOKUP,),
    Step.LOOKUP: (Step.HIT, Step.STALE, Step.MISS, Step.PASS, Step.SYNTH),
    Step.HIT: (Step.DELIVER,),
    Step.STALE: (Step.DELIVER,),
    Step.MISS: (Step.FETCH,),
    # FETCH -> LOOKUP: another process's fill ended; look again (a bounded number of
    # times). FETCH -> FETCH: after those rounds, fetch on our own.
    Step.FETCH: (Step.DELIVER, Step.PASS, Step.LOOKUP, Step.FETCH, Step.SYNTH),
    Step.PASS: (Step.DELIVER, Step.SYNTH),
    # 304, 412 and 416 are answers of delivery (RFC 9110 Section 13), not synth.
    Step.DELIVER: (Step.DONE,),
    Step.SYNTH: (),
    Step.DONE: (),
}

FIRST = Step.RECV
#: Most steps a walk can take: FETCH -> LOOKUP rounds are bounded by the pipeline.
MAX_STEPS = 24
TABLE = Table("client machine", MOVES, FIRST, MAX_STEPS)
FINAL = TABLE.final
move = TABLE.move
render_table = TABLE.render


def render_walk(walk: list[Step]) -> str:
    """The walk as the access log shows it: recv>hash>lookup>hit>deliver (the end of
    a walk that delivered goes without saying)."""
    return ">".join(step.value for step in walk if step is not Step.DONE)
