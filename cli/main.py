"""The `edge` typer app: one console script, a subcommand per process or tool.

Each subcommand lives in its own module and is registered here; this file owns only
the wiring and the rule that a person sees one clear line, never a traceback, for
bad input (exit status 2 for usage errors, 1 for runtime failures).
"""

from __future__ import annotations

import typer

from cli import coordinator as coordinator_cmd
from cli import dns as dns_cmd
from cli import h3get as h3get_cmd
from cli import origin as origin_cmd
from cli import purge as purge_cmd
from cli import scenario as scenario_cmd
from cli import serve as serve_cmd
from cli import up as up_cmd

app = typer.Typer(
    name="edge",
    help="edge: a CDN for public-domain archives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve", help="Run an edge node: a caching reverse proxy.")(serve_cmd.serve)
app.command("shield", help="Run an origin shield: the cache tier in front of the origins.")(
    serve_cmd.shield
)
app.command("origin", help="Serve a directory as an origin (the demo archive).")(origin_cmd.origin)
app.command("up", help="Run the CDN on this machine (demo origin, shield, edge).")(up_cmd.up)
app.command("h3get", help="Fetch a URL over HTTP/3 and print it as curl -si does.")(h3get_cmd.h3get)
# `edge coordinator [OPTIONS]` runs it; `edge coordinator migrate` moves its log.
coordinator_app = typer.Typer(invoke_without_command=True, pretty_exceptions_enable=False)
coordinator_app.callback(help="Run the purge coordinator.")(coordinator_cmd.coordinator)
coordinator_app.command(
    "migrate", help="Move a purge log to a replicated one, keeping sequence numbers."
)(coordinator_cmd.migrate)
app.add_typer(coordinator_app, name="coordinator")
app.command("purge", help="Purge from every cache node; wait for each to confirm.")(purge_cmd.purge)
app.command("dns", help="Run the GeoDNS authority: each client to its nearest healthy edge.")(
    dns_cmd.dns_command
)
app.command(
    "scenario",
    help="Run a scenario from scenarios/ (--list lists them).",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(scenario_cmd.scenario)
app.command("status", help="Show the cache nodes: health, applied seq, lag.")(purge_cmd.status)
app.command("forget", help="Forget a retired node at the coordinator.")(purge_cmd.forget)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
