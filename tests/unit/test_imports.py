"""edge uses only aiohttp's public API, and the request path none of it.

Read from the source (no import needed): every `import` and `from ... import` in
edge/, and every `aiohttp.<name>` attribute reached. A private aiohttp module or name
(one starting with "_", or the server and wire internals aiohttp does not document
as API) fails the test with the file and line; so does any aiohttp import at all in
the modules a request walks through, which must stay protocol-independent.
"""

from __future__ import annotations

import ast
from pathlib import Path

EDGE = Path(__file__).resolve().parents[2] / "edge"

#: aiohttp modules that are its internals, not its documented API.
PRIVATE_MODULES = (
    "web_protocol",
    "web_server",
    "http_parser",
    "http_exceptions",
    "http_writer",
    "streams",
    "http",
    "helpers",
    "base_protocol",
)
#: Modules that import nothing of aiohttp (nor of any server framework).
#: The request path: every folder but the node's wiring (server/node.py, whose admin
#: endpoints and coordinator subscription are aiohttp's public API) and purge/bans.py's
#: subscription client.
FRAMEWORK_FREE = tuple(
    str(p.relative_to(EDGE))
    for p in sorted(EDGE.rglob("*.py"))
    if p.relative_to(EDGE).as_posix() not in ("server/node.py", "purge/bans.py")
)


def _private(dotted: str) -> bool:
    """Whether an aiohttp module path or name (without "aiohttp.") is internal."""
    parts = dotted.split(".")
    return any(p.startswith("_") for p in parts) or parts[0] in PRIVATE_MODULES


def aiohttp_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each aiohttp module, name or attribute the source reaches."""
    tree = ast.parse(source)
    aliases: set[str] = set()
    uses: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "aiohttp" or alias.name.startswith("aiohttp."):
                    uses.append((node.lineno, alias.name))
                    aliases.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aiohttp":
            for alias in node.names:
                uses.append((node.lineno, f"{node.module}.{alias.name}"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            uses.append((node.lineno, f"aiohttp.{node.attr}"))
    return uses


def test_the_check_sees_private_names() -> None:
    """The rule itself, on examples of what edge/server/node.py used to import."""
    source = (
        "import aiohttp\n"
        "from aiohttp import web\n"
        "from aiohttp.web_protocol import RequestHandler, _ErrInfo\n"
        "from aiohttp import http_parser as _http_parser\n"
        "from aiohttp.http import RawRequestMessage\n"
        "x = aiohttp._private\n"
        "y = aiohttp.ClientSession\n"
    )
    found = [what for _, what in aiohttp_uses(source) if _private(what.removeprefix("aiohttp."))]
    assert found == [
        "aiohttp.web_protocol.RequestHandler",
        "aiohttp.web_protocol._ErrInfo",
        "aiohttp.http_parser",
        "aiohttp.http.RawRequestMessage",
        "aiohttp._private",
    ]


def test_edge_uses_no_private_aiohttp_module_or_name() -> None:
    offences = []
    for path in sorted(EDGE.rglob("*.py")):
        for line, what in aiohttp_uses(path.read_text()):
            if _private(what.removeprefix("aiohttp.")):
                offences.append(f"{path.relative_to(EDGE.parent)}:{line}: {what}")
    assert offences == []


def test_the_request_path_imports_nothing_of_aiohttp() -> None:
    offences = []
    for name in FRAMEWORK_FREE:
        path = EDGE / name
        for line, what in aiohttp_uses(path.read_text()):
            offences.append(f"edge/{name}:{line}: {what}")
    assert offences == []


#: Private names of a library edge reaches knowingly, each where it is and why: the
#: store reads and writes diskcache's own table (LRU access times and new keys' rows,
#: each in one batched statement, where diskcache's public get and set make a
#: transaction per call), pinned `diskcache<6` in pyproject.toml for it. `os._exit`
#: is documented API.
KNOWN_PRIVATE = {
    ("store/disk.py", "_con"),
    ("store/disk.py", "_sql"),
    ("store/disk.py", "_disk"),
    ("store/disk.py", "_directory"),
    ("multiproc/workers.py", "_exit"),
}


def protected_reaches(sources: dict[str, str]) -> set[tuple[str, str]]:
    """(file, name) for each `x._name` whose name nothing in `sources` defines: a
    protected attribute of some library's object (QuicConnectionProtocol._quic, ...)."""
    defined: set[str] = set()
    reached: set[tuple[str, str]] = set()
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                reached.add((name, node.attr))
    return {(name, attr) for name, attr in reached if attr not in defined}


def test_the_protected_check_sees_a_librarys_attribute() -> None:
    source = (
        "class P(Base):\n"
        "    def f(self):\n"
        "        self._mine = 1\n"
        "        return self._quic, self._mine\n"
    )
    assert protected_reaches({"p.py": source}) == {("p.py", "_quic")}


def test_edge_reaches_no_protected_name_of_a_library() -> None:
    sources = {p.relative_to(EDGE).as_posix(): p.read_text() for p in EDGE.rglob("*.py")}
    assert protected_reaches(sources) <= KNOWN_PRIVATE
