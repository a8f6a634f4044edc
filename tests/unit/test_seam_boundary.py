"""No module of edge/ outside the coordination seam asks whether it runs as a worker.

The seam (edge.multiproc.coordination) has two implementations, Solo and
edge.multiproc.workers.Workers (over edge.multiproc.shared); the node's entry points choose
one. Everywhere else the seam is a value that is always there, used through its interface.
Read from the source (ast):

- nothing outside the seam imports edge.multiproc.shared or edge.multiproc.workers, or
  names `Workers` or `Shared`; `Solo` is only constructed (the entry point's choice), never
  tested for;
- no value of the seam is optional: no `Coordination | None` (or Optional, or a None
  default) in a signature, an attribute or a variable;
- nothing is compared with None, or tested for truth, whose name says it is the seam
  or what the branches asked before (worker, workers, shared, cross, coordination),
  nor is the seam checked with isinstance/type/hasattr/getattr.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

EDGE = Path(__file__).resolve().parents[2] / "edge"
#: The seam's own modules: the interface and Solo, the workers' implementation and
#: the supervisor, the worker map.
SEAM = EDGE / "multiproc"
#: Names that stand for the seam, or for worker-ness in the branches it replaced.
SEAM_NAME = re.compile(r"(^|_)(worker|workers|shared|cross|coordination|coord|solo)s?$", re.I)
SEAM_CLASSES = {"Coordination", "Solo", "Workers", "Shared"}
PRIVATE_TO_SEAM = {"Workers", "Shared"}


def modules() -> list[Path]:
    return sorted(p for p in EDGE.rglob("*.py") if SEAM not in p.parents)


def _terminal(node: ast.AST) -> str | None:
    """The name an expression ends in: `x`, `self.x`, `a.b.x`, `f().x` -> "x"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _is_seam_value(node: ast.AST, *, truth: bool = False) -> bool:
    name = _terminal(node)
    if truth and isinstance(node, ast.Name) and node.id == "shared":
        return False  # also RFC 9111's word (a shared cache: edge.rfc.policy's bool)
    return name is not None and bool(SEAM_NAME.search(name))


def _mentions_seam_class(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:  # a quoted annotation
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return False
    return node is not None and any(
        (isinstance(n, ast.Name) and n.id in SEAM_CLASSES)
        or (isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in SEAM_CLASSES)
        for n in ast.walk(node)
    )


def _optional(annotation: ast.AST | None) -> bool:
    """An annotation that lets a seam value be None."""
    if annotation is None or not _mentions_seam_class(annotation):
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    for n in ast.walk(annotation):
        if isinstance(n, ast.Constant) and (
            n.value is None or (isinstance(n.value, str) and "None" in n.value)
        ):
            return True
        if isinstance(n, ast.Name) and n.id in ("Optional", "None"):
            return True
    return False


def _truth_tests(tree: ast.AST) -> Iterator[ast.AST]:
    """Every expression whose truth a branch decides on."""
    for n in ast.walk(tree):
        if isinstance(n, ast.If | ast.While | ast.IfExp | ast.Assert):
            yield n.test
        elif isinstance(n, ast.BoolOp):
            yield from n.values
        elif isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
            yield n.operand
        elif isinstance(n, ast.comprehension):
            yield from n.ifs


def findings(source: str) -> list[str]:
    """What a module says about worker-ness, one line per finding (empty: nothing)."""
    tree = ast.parse(source)
    found: list[str] = []

    def say(node: ast.AST, what: str) -> None:
        found.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for alias in n.names:
                if alias.name in ("edge.multiproc.shared", "edge.multiproc.workers"):
                    say(n, f"imports {alias.name}")
        elif isinstance(n, ast.ImportFrom):
            if n.module in ("edge.multiproc.shared", "edge.multiproc.workers") or (
                n.module == "edge.multiproc"
                and any(a.name in ("shared", "workers") for a in n.names)
            ):
                say(n, f"imports from {n.module}")
        elif isinstance(n, ast.Name) and n.id in PRIVATE_TO_SEAM:
            say(n, f"names {n.id}")
        elif isinstance(n, ast.Compare):
            sides = [n.left, *n.comparators]
            if any(isinstance(s, ast.Constant) and s.value is None for s in sides) and any(
                _is_seam_value(s) for s in sides
            ):
                say(n, f"compares {ast.unparse(n)!r} with None")
            if any(isinstance(s, ast.Name) and s.id in SEAM_CLASSES for s in sides):
                say(n, f"checks the seam's kind: {ast.unparse(n)!r}")
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
            if n.func.id in ("isinstance", "issubclass", "type") and any(
                _mentions_seam_class(a) or _is_seam_value(a) for a in n.args
            ):
                say(n, f"checks the seam's kind: {ast.unparse(n)!r}")
            if n.func.id in ("hasattr", "getattr") and (
                any(_is_seam_value(a) for a in n.args[:1])
                or any(
                    isinstance(a, ast.Constant)
                    and isinstance(a.value, str)
                    and SEAM_NAME.search(a.value)
                    for a in n.args[1:2]
                )
            ):
                say(n, f"probes for the seam: {ast.unparse(n)!r}")
        elif isinstance(n, ast.arg | ast.AnnAssign) and _optional(n.annotation):
            say(n, f"lets the seam be None: {ast.unparse(n)!r}")
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
            args = n.args
            positional = [*args.posonlyargs, *args.args]
            tail = positional[len(positional) - len(args.defaults) :]
            pairs = list(zip(tail, args.defaults, strict=True))
            pairs += [
                (a, d)
                for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                if d is not None
            ]
            for arg, default in pairs:
                if (
                    isinstance(default, ast.Constant)
                    and default.value is None
                    and (_is_seam_value(ast.Name(arg.arg)) or _mentions_seam_class(arg.annotation))
                ):
                    say(arg, f"defaults the seam to None: {arg.arg}")
    for test in _truth_tests(tree):
        if _is_seam_value(test, truth=True):
            say(test, f"tests the truth of {ast.unparse(test)!r}")
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(EDGE)))
def test_no_module_outside_the_seam_asks_whether_it_runs_as_a_worker(path: Path) -> None:
    assert findings(path.read_text()) == [], path.name


def test_the_seam_is_used_where_the_branches_were() -> None:
    """The check reads the modules that took the seam's place (a rename would leave it
    reading nothing)."""
    names = {str(p.relative_to(EDGE)) for p in modules()}
    users = ["fetch/fill.py", "fetch/slices.py", "store/disk.py", "purge/bans.py", "server/node.py"]
    assert {*users, "pipeline/transaction.py"} <= names
    for name in users:
        assert "coordination" in (EDGE / name).read_text(), name


@pytest.mark.parametrize(
    "source",
    [
        "x = 1 if worker is None else 2",
        "if self.worker is not None:\n    pass",
        "if shared is None:\n    pass",
        "ok = self.inflight.cross is not None",
        "if self.coordination:\n    pass",
        "ready = not self.worker",
        "go = self.worker and self.worker.lead",
        "if isinstance(self.coordination, Solo):\n    pass",
        "if type(c) is Solo:\n    pass",
        "if hasattr(self.engine, 'worker'):\n    pass",
        "from edge.multiproc.workers import Workers",
        "from edge.multiproc import shared",
        "import edge.multiproc.shared",
        "def f(coordination: Coordination | None = None) -> None: ...",
        "def f(c: 'Optional[Coordination]') -> None: ...",
        "def f(*, worker=None) -> None: ...",
        "seam: Coordination | None = None",
        "if None is not self._shared:\n    pass",
        "items = [k for k in keys if self.worker]",
    ],
)
def test_the_check_finds_each_way_of_asking(source: str) -> None:
    assert findings(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "node = EdgeNode(config, Solo())",
        "if coordination.leads:\n    pass",
        "claim = await inflight.join_or_start(key, 5.0)",
        "def f(coordination: Coordination) -> None: ...",
        "if self.body is None:\n    pass",
        "if fill is not None and fill.locked:\n    pass",
    ],
)
def test_the_check_leaves_the_interface_in_use_alone(source: str) -> None:
    assert findings(source) == []
