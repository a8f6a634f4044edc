"""Node options, declared once (edge.options, edge.config.NodeConfig): the command line
of `edge serve` / `edge shield`, a TOML file and the argv builder say the same thing.
Pure: commands are parsed by typer's own click command, nothing is started."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from cli.main import app
from edge.config import (
    OPTIONS,
    ConfigError,
    NodeConfig,
    cli_options,
    default_name,
    from_command_line,
    load_config,
    node_argv,
    to_argv,
)
from edge.options import ROLES, Kind, Option

TOKEN = "node-token"

# A good value of each command-line option, as a TOML file says it. The TLS pair is in
# every config (http_redirect and hsts need TLS; edge.server.tls loads the files at start-up,
# not here).
GOOD: dict[str, Any] = {
    "listen": "127.0.0.1:9911",
    "upstream": "http://u.example",
    "origins": ["http://o1.example", "http://o2.example:8081"],
    "shields": ["http://s1.example", "http://s2.example"],
    "balance": "ewma",
    "origin_direct": False,
    "trusted_proxies": ["10.0.0.0/8", "192.0.2.1"],
    "coordinator": "http://c.example:7000",
    "region": "eu",
    "tls_cert": ["a.pem"],
    "tls_key": ["a-key.pem"],
    "http_redirect": "127.0.0.1:9912",
    "hsts": 31536000,
    "http3": True,
    "http3_early_data": True,
    "alt_svc_max_age": 3600,
    "upstream_ca": "ca.pem",
    "cache_dir": "/var/cache/edge",
    "cache_size": "10G",
    "max_object_size": "64M",
    "slice_size": "8M",
    "slice_threshold": "32M",
    "name": "edge-eu-9",
    "workers": 3,
    "http2": True,
    "send_timeout": 12,
}
BASE: dict[str, Any] = {
    "origins": ["http://base.example"],
    "tls_cert": ["base.pem"],
    "tls_key": ["base-key.pem"],
    "http3": True,  # http3_early_data needs it
}

# A bad value of each command-line option, as text on the command line; the same text
# in a TOML file is refused with the same line.
BAD: dict[str, str] = {
    "listen": "nowhere",
    "upstream": "ftp://x",
    "origins": "nope",
    "shields": "nope",
    "balance": "fastest",
    "trusted_proxies": "nonsense",
    "coordinator": "http://c,ftp://c",
    "region": "two words",
    "http_redirect": "nowhere",
    "hsts": "soon",
    "alt_svc_max_age": "soon",
    "cache_size": "lots",
    "max_object_size": "lots",
    "slice_size": "1K",
    "slice_threshold": "lots",
    "name": "two words",
    "workers": "0",
    "cache_dir": "",
    "send_timeout": "soon",
}
NO_BAD_VALUE = {"origin_direct", "tls_cert", "tls_key", "upstream_ca", "http2"}

CASES = [(role, o) for role in ROLES for o in cli_options(role)]
# The HTTP/3 flags have no bad value either.
NO_BAD_VALUE |= {"http3", "http3_early_data"}


def ids(case: tuple[str, Option]) -> str:
    return f"{case[0]}-{case[1].name}"


@pytest.fixture(autouse=True)
def _tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_NODE_TOKEN", TOKEN)
    monkeypatch.delenv("EDGE_ADMIN_TOKEN", raising=False)


def words(option: Option, value: Any) -> list[str]:
    """The command-line words that set `option` to a TOML value."""
    if option.kind is Kind.FLAG:
        return [option.flag] if value != option.default else []
    if isinstance(value, list):
        return [w for item in value for w in (option.flag, str(item))]
    return [option.flag, str(value)]


def parse(argv: list[str]) -> dict[str, Any]:
    """argv as `edge serve|shield` parses it (typer's click command), up to the
    overrides run_node hands to load_config."""
    command = typer.main.get_command(app).commands[argv[0]]  # type: ignore[attr-defined]
    ctx = command.make_context(argv[0], list(argv[1:]))
    role = next(r for r, name in ROLES.items() if name == argv[0])
    return {**from_command_line(role, ctx.params), "role": role}


def from_cli(role: str, values: dict[str, Any]) -> NodeConfig:
    by_name = {o.name: o for o in cli_options(role)}
    argv = [ROLES[role]]
    for name, value in values.items():
        argv += words(by_name[name], value)
    return load_config(None, parse(argv))


def toml_text(values: dict[str, Any]) -> str:
    def literal(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return "[" + ", ".join(literal(v) for v in value) + "]"
        return str(value) if isinstance(value, int) else f'"{value}"'

    return "".join(f"{name} = {literal(value)}\n" for name, value in values.items())


def from_toml(tmp_path: Path, role: str, values: dict[str, Any]) -> NodeConfig:
    path = tmp_path / "node.toml"
    path.write_text(toml_text(values))
    return load_config(path, {"role": role})


def config_of(role: str, values: dict[str, Any]) -> dict[str, Any]:
    """A valid set of values: `values` over BASE (an upstream and TLS), without the
    shorthand upstream where the values name origins or shields."""
    merged = {**BASE, **values}
    if "upstream" in values or "shields" in values:
        merged.pop("origins")
    return merged


# -- one declaration --------------------------------------------------------------------


def test_every_option_is_a_field_with_a_help_and_a_default() -> None:
    names = {o.name for o in OPTIONS}
    assert len(names) == len(OPTIONS)
    for option in OPTIONS:
        assert option.help.endswith(".") and option.shown_default(), option.name
        assert getattr(NodeConfig(), option.name) == option.default
    # What is not an option is filled in by validation or says which subcommand ran.
    assert {"role", "pool_configs", "route_configs"}.isdisjoint(names)


def test_the_samples_cover_every_command_line_option() -> None:
    every = {o.name for role in ROLES for o in cli_options(role)}
    assert every == set(GOOD)
    assert every == set(BAD) | NO_BAD_VALUE


@pytest.mark.parametrize(("role", "option"), CASES, ids=[ids(c) for c in CASES])
def test_a_flag_and_its_toml_key_make_the_same_config(
    role: str, option: Option, tmp_path: Path
) -> None:
    values = config_of(role, {option.name: GOOD[option.name]})
    cli = from_cli(role, values)
    assert cli == from_toml(tmp_path, role, values)
    assert getattr(cli, option.name) != option.default


@pytest.mark.parametrize("role", list(ROLES))
def test_all_flags_at_once_make_the_toml_files_config(role: str, tmp_path: Path) -> None:
    values = {o.name: GOOD[o.name] for o in cli_options(role)}
    if role == "edge":
        del values["upstream"]  # origins, with shields in front
    assert from_cli(role, values) == from_toml(tmp_path, role, values)


def test_a_toml_key_may_spell_underscores_as_dashes(tmp_path: Path) -> None:
    values = {"cache_size": "2G", "max_object_size": "1M", "upstream": "http://o"}
    dashed = (tmp_path / "dashed.toml", {k.replace("_", "-"): v for k, v in values.items()})
    dashed[0].write_text(toml_text(dashed[1]))
    assert load_config(dashed[0], {}) == from_toml(tmp_path, "edge", values)


# -- precedence: command line, then file, then defaults; tokens from the environment ---


def test_the_command_line_wins_over_the_file_and_the_file_over_defaults(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.toml"
    path.write_text('upstream = "http://o"\ncache-size = "2G"\nregion = "eu"\n')
    cfg = load_config(path, parse(["serve", "--cache-size", "3G"]))
    assert (cfg.cache_size, cfg.region, cfg.slice_size) == (3 << 30, "eu", 4 << 20)


def test_tokens_come_from_the_file_else_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_ADMIN_TOKEN", "from-env")
    path = tmp_path / "node.toml"
    path.write_text('upstream = "http://o"\ncoordinator = "http://c"\n')
    cfg = load_config(path, {})
    assert (cfg.coordinator_token, cfg.admin_token) == (TOKEN, "from-env")
    path.write_text(path.read_text() + 'coordinator_token = "from-file"\n')
    assert load_config(path, {}).coordinator_token == "from-file"


def test_coordinator_takes_several_urls_sharing_one_log(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('upstream = "http://o"\ncoordinator = "http://c1:8400, http://c2:8400/,"\n')
    assert load_config(path, {}).coordinator == "http://c1:8400,http://c2:8400"
    cfg = load_config(path, parse(["serve", "--coordinator", "http://c3:8400"]))
    assert cfg.coordinator == "http://c3:8400"


# -- mistakes: one line, the same from the command line and the file -------------------


BAD_CASES = [(r, o) for r, o in CASES if o.name in BAD]


@pytest.mark.parametrize(("role", "option"), BAD_CASES, ids=[ids(c) for c in BAD_CASES])
def test_a_bad_value_is_the_same_one_line_error_from_either(
    role: str, option: Option, tmp_path: Path
) -> None:
    text = BAD[option.name]
    value: Any = [text] if option.kind is Kind.LIST else text
    values = config_of(role, {option.name: value})
    with pytest.raises(ConfigError) as from_file:
        from_toml(tmp_path, role, values)
    message = str(from_file.value)
    assert "\n" not in message
    argv = [ROLES[role], *(w for n, v in values.items() for w in words(_option(n), v))]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.stderr == f"edge: {message}\n"


def _option(name: str) -> Option:
    return next(o for o in OPTIONS if o.name == name)


# A value of the wrong type for each kind, as TOML writes it.
WRONG = {
    Kind.TEXT: "5",
    Kind.INT: '"many"',
    Kind.NUMBER: '"soon"',
    Kind.SIZE: "true",
    Kind.FLAG: '"no"',
    Kind.LIST: '"http://o"',
    Kind.PATH: "5",
    Kind.TABLE: "5",
    Kind.TABLES: "5",
}


@pytest.mark.parametrize("option", OPTIONS, ids=[o.name for o in OPTIONS])
def test_a_toml_value_of_the_wrong_type_is_a_one_line_error(option: Option, tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    base = "upstream" if option.name != "upstream" else "origins"
    good = '"http://o"' if base == "upstream" else '["http://o"]'
    path.write_text(f"{base} = {good}\n{option.name} = {WRONG[option.kind]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    message = str(err.value)
    assert "\n" not in message and option.name.replace("_", " ") in message.replace("_", " ")


@pytest.mark.parametrize("key", ["bogus", "role"])
def test_an_unknown_toml_key_is_a_one_line_error(key: str, tmp_path: Path) -> None:
    # `role` is not an option: the subcommand says it (a file saying shield to `edge
    # serve` was silently overruled).
    path = tmp_path / "node.toml"
    path.write_text(f'upstream = "http://o"\n{key} = "shield"\n')
    with pytest.raises(ConfigError, match=f"^unknown setting in {path}: {key}$"):
        load_config(path, {})


def test_an_edges_option_in_a_shields_file_is_refused_as_on_its_command_line(
    tmp_path: Path,
) -> None:
    # `edge shield` has no --no-origin-direct: a shield has no shields to skip.
    assert "origin_direct" not in {o.name for o in cli_options("shield")}
    path = tmp_path / "node.toml"
    path.write_text('upstream = "http://o"\norigin_direct = false\n')
    with pytest.raises(ConfigError, match=r"^origin_direct is not a setting of a shield$"):
        load_config(path, {"role": "shield"})
    assert load_config(path, {"role": "edge"}).origin_direct is False


# -- --help ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(ROLES))
def test_help_lists_every_option_with_its_default(role: str) -> None:
    result = CliRunner().invoke(app, [ROLES[role], "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    rows = {line.split()[1]: line for line in result.output.splitlines() if "│ --" in line}
    for option in cli_options(role):
        row = rows[option.flag]
        assert option.help in row and f"[default: ({option.shown_default()})]" in row
    flags = {o.flag for o in cli_options(role)} | {"--config", "--log-level", "--help"}
    assert set(rows) == flags


def test_shown_defaults_are_the_defaults() -> None:
    by_name = {o.name: o for o in OPTIONS}
    assert by_name["cache_size"].shown_default() == "1G"
    assert by_name["slice_size"].shown_default() == "4M"
    assert by_name["cache_dir"].shown_default() == "./cache"
    assert by_name["workers"].shown_default() == "1"
    assert by_name["balance"].shown_default() == "round-robin"


# -- the argv builder --------------------------------------------------------------------


@pytest.mark.parametrize("role", list(ROLES))
def test_to_argv_round_trips(role: str, tmp_path: Path) -> None:
    values = {o.name: GOOD[o.name] for o in cli_options(role)}
    values.pop("upstream")
    cfg = from_toml(tmp_path, role, values)
    argv = to_argv(cfg)
    assert argv[0] == ROLES[role]
    assert load_config(None, parse(argv)) == cfg
    plain = load_config(None, {"upstream": "http://o", "role": role})
    assert load_config(None, parse(to_argv(plain))) == plain


def test_to_argv_refuses_what_only_a_file_can_say(tmp_path: Path) -> None:
    cfg = from_toml(tmp_path, "edge", {"upstream": "http://o", "rate_limit": 5})
    with pytest.raises(ConfigError, match="rate_limit"):
        to_argv(cfg)


def test_node_argv_writes_each_option_by_its_flag() -> None:
    argv = node_argv(
        "shield",
        {"listen": "127.0.0.1:9000", "origins": ["http://o"], "cache_size": 2 << 30, "workers": 1},
    )
    assert argv == [
        "shield",
        "--listen",
        "127.0.0.1:9000",
        "--origin",
        "http://o",
        "--cache-size",
        "2G",
    ]
    with pytest.raises(ConfigError, match="shields"):
        node_argv("shield", {"shields": ["http://s"]})
    with pytest.raises(ConfigError, match="rate_limit"):
        node_argv("edge", {"rate_limit": 5})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"http3": True}, "http3 needs TLS (--tls-cert and --tls-key)"),
        (
            {"http3_early_data": True, "tls_cert": ["a.pem"], "tls_key": ["k.pem"]},
            "http3_early_data needs http3",
        ),
    ],
)
def test_http3_needs_tls_and_early_data_needs_http3(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"origins": ("http://o.example",), **values})
    assert str(caught.value) == message


def test_the_readmes_toml_keys_are_options() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    said = readme.split("A TOML file takes the same names (", 1)[1].split("tables below)")[0]
    keys = {k.replace("-", "_") for k in re.findall(r"`([a-z_-]+)`", said)}
    assert len(keys) > 20 and keys <= {o.name for o in OPTIONS}


def test_nodes_on_port_0_get_names_of_their_own() -> None:
    """Port 0 says nothing of which node this is: the process tells them apart (two such
    nodes under one name would be refused by the coordinator)."""
    first = default_name("edge", "127.0.0.1:0", pid=101)
    assert first != default_name("edge", "127.0.0.1:0", pid=102)
    assert first.endswith("-127.0.0.1-0-pid101")
    assert default_name("edge", ":0", pid=7).endswith("-0-pid7")
    # A fixed port is the node's identity across restarts: no process id in it.
    assert default_name("edge", "127.0.0.1:8080", pid=101) == default_name(
        "edge", "127.0.0.1:8080", pid=102
    )
