"""`edge scenario NAME [ARGS...]` runs one of the scenarios in scenarios/ (they start
their own processes and print a report); `edge scenario --list` lists them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.errors import fail


def scenario(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Argument(help="The scenario to run.")] = None,  # noqa: UP045
    list_: Annotated[
        bool, typer.Option("--list", help="List the scenarios.", show_default="off")
    ] = False,
) -> None:
    """Run a scenario (its own options follow its name; NAME --help shows them)."""
    # The scenarios live in the repository, not in the installed package: use the ones
    # in the current folder (the repository's root).
    root = Path.cwd()
    if not (root / "scenarios" / "catalog.py").is_file():
        fail("no scenarios/ here: run edge scenario from the edge repository's root", 2)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from scenarios.catalog import SCENARIOS

    if list_ or name is None:
        width = max(len(n) for n in SCENARIOS) + 2
        for key, text in SCENARIOS.items():
            typer.echo(f"{key:<{width}}{text}")
        return
    if name not in SCENARIOS:
        fail(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})", 2)
    code = subprocess.call([sys.executable, "-m", f"scenarios.{name}", *ctx.args], cwd=root)
    raise typer.Exit(code)
