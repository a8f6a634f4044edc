"""Node options, each declared once: a `NodeConfig` field made with `opt()` carries its
type (a kind), default, help, command-line flags, the roles it applies to and its check.

This module owns that declaration's shape and what is derived from it alone: reading a
value from command-line text or from TOML, checking its kind (a one-line ConfigError
naming the option), and the default as `--help` shows it. `edge.config` declares the
options and derives the TOML loader and the argv builder; `cli.serve` derives the
`edge serve` / `edge shield` parameters. Nothing else lists the options.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value a person must fix; its message is one line."""


class Kind(enum.Enum):
    """What an option's value is; it decides how command-line text and TOML values
    become that value, and what --help shows as its default."""

    TEXT = "text"
    INT = "int"
    NUMBER = "number"  # int or float
    SIZE = "size"  # bytes: an integer or "512M", "10G" (parse_size)
    FLAG = "flag"  # true/false; on the command line a flag that flips the default
    LIST = "list"  # strings; a repeatable flag on the command line
    PATH = "path"
    TABLE = "table"  # a TOML table; not on the command line
    TABLES = "tables"  # a list of TOML tables; not on the command line


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str | int) -> int:
    """'512M', '10G', '1.5g', '4096' -> bytes (binary units)."""
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"size must not be negative: {value}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"not a size: {value!r} (use e.g. 512M, 10G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(value: int) -> str:
    """Bytes -> the largest binary unit that divides them: 1073741824 -> '1G'."""
    for unit in ("t", "g", "m", "k"):
        if value and value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit.upper()}"
    return str(value)


#: Roles of a cache node (NodeConfig.role) and the subcommand that runs each.
ROLES = {"edge": "serve", "shield": "shield"}

#: Checks a value and returns it in its stored form; raises ConfigError (one line).
Check = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Option:
    """One node option. `name` is the NodeConfig field and the TOML key ('-' may stand
    for '_' there); `flags` are its command-line spellings (none: TOML only)."""

    name: str
    kind: Kind
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    roles: tuple[str, ...] = tuple(ROLES)
    shown: str = ""  # the default as --help says it, where the value alone would not
    env: str = ""  # read when neither the file nor the command line set the option
    check: Check | None = None

    @property
    def flag(self) -> str:
        """The spelling edge writes (the first)."""
        return self.flags[0]

    def shown_default(self) -> str:
        if self.shown:
            return self.shown
        value = self.default
        if self.kind is Kind.SIZE:
            return format_size(value)
        if self.kind is Kind.PATH:
            text = str(value)
            return text if Path(text).is_absolute() else f"./{text}"
        if self.kind is Kind.FLAG:
            return "on" if value else "off"
        if value in ("", (), None):
            return "none"
        return str(value)

    def from_text(self, text: Any) -> Any:
        """A command-line value (text, a list of texts, or a flag's presence) as the
        option's value. Text that does not parse is kept as it is, so that the option's
        check refuses it with the same line as the same value from a TOML file."""
        if self.kind is Kind.FLAG:
            return not self.default if text else None
        if self.kind is Kind.LIST:
            return tuple(text) or None
        if self.kind is Kind.INT and re.fullmatch(r"\s*[+-]?\d+\s*", text):
            return int(text)
        if self.kind is Kind.NUMBER:
            try:
                return float(text) if re.search(r"[.eE]", text) else int(text)
            except ValueError:
                return text
        return text

    def from_toml(self, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value

    def validate(self, value: Any) -> Any:
        """The value checked by the option's own check, or by its kind's."""
        return (self.check or kind_check(self.kind))(self.name, value)


def opt(
    default: Any = MISSING,
    help: str = "",
    *,
    kind: Kind,
    flags: tuple[str, ...] | str = (),
    roles: tuple[str, ...] = tuple(ROLES),
    shown: str = "",
    env: str = "",
    check: Check | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A NodeConfig field that is a node option (see Option)."""
    if not help:
        raise TypeError("every option has a help text")
    meta = {
        "option": {
            "kind": kind,
            "help": help,
            "flags": (flags,) if isinstance(flags, str) else flags,
            "roles": roles,
            "shown": shown,
            "env": env,
            "check": check,
        }
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def options_of(cls: type) -> tuple[Option, ...]:
    """The options of a dataclass whose option fields were made with opt()."""
    found = []
    for f in fields(cls):
        meta = f.metadata.get("option")
        if meta is not None:
            found.append(Option(name=f.name, default=_default(f), **meta))
    return tuple(found)


def _default(f: Field[Any]) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


# -- the kinds' own checks: the value has the kind's type ----------------------------


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string: {value!r}")
    return value


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number: {value!r}")
    return value


def _number(name: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number: {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false: {value!r}")
    return value


def _list(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings: {value!r}")
    return tuple(value)


def _path(name: str, value: Any) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"{name} must be a path: {value!r}")
    return Path(value)


def _size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{name} must be a size (e.g. 512M, 10G): {value!r}")
    return parse_size(value)


def _table(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table: {value!r}")
    return value


def _tables(name: str, value: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{name} must be a list of tables: {value!r}")
    return tuple(value)


def kind_check(kind: Kind) -> Check:
    """The check of a kind alone: the value has the kind's type."""
    return _KIND_CHECKS[kind]


_KIND_CHECKS: dict[Kind, Check] = {
    Kind.TEXT: _text,
    Kind.INT: _int,
    Kind.NUMBER: _number,
    Kind.SIZE: _size,
    Kind.FLAG: _flag,
    Kind.LIST: _list,
    Kind.PATH: _path,
    Kind.TABLE: _table,
    Kind.TABLES: _tables,
}
