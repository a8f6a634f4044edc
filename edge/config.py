"""Configuration of a cache node: one dataclass, filled from a TOML file and/or the
command line. This module owns option parsing and validation (sizes like "10G",
listen addresses), and nothing else; bad values raise ConfigError with one line."""

from __future__ import annotations

import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A configuration value a person must fix; its message is one line."""


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


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' -> (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen address must be HOST:PORT, got {value!r}")
    return (host or "0.0.0.0", int(port))


def parse_upstream(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"upstream must be an http(s) URL, got {value!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigError(f"upstream has a bad port: {value!r}") from exc
    return value.strip().rstrip("/")


@dataclass
class NodeConfig:
    """Everything a cache node needs; defaults are safe for a public edge."""

    listen: str = "127.0.0.1:8080"
    upstream: str = "http://127.0.0.1:8081"
    cache_dir: Path = Path("./cache")
    cache_size: int = 1 << 30
    max_object_size: int = 8 << 30
    # Objects larger than slice_threshold are cached as slices of slice_size bytes.
    slice_size: int = 4 << 20
    slice_threshold: int = 16 << 20
    name: str = field(default_factory=lambda: f"edge-{socket.gethostname()}")
    role: str = "edge"
    # RFC 9111 Section 4.2.2: fraction of (Date - Last-Modified), and its cap.
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    # Seconds a stale response may be served when the upstream fails and the
    # response said nothing (stale-if-error extends it; must-revalidate forbids it).
    stale_if_error_grace: float = 0.0
    # RFC 9111 Section 5.1 says a cache SHOULD ignore an invalid Age; edge treats the
    # response as stale unless this is turned off (see edge.policy.parse_age).
    invalid_age_is_stale: bool = True
    # RFC 9213 targeted fields honoured, in order of precedence.
    targeted_fields: tuple[str, ...] = ("CDN-Cache-Control", "Surrogate-Control")
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 30.0
    access_log: bool = True

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    def validate(self) -> NodeConfig:
        parse_listen(self.listen)
        self.upstream = parse_upstream(self.upstream)
        self.cache_size = parse_size(self.cache_size)
        self.max_object_size = parse_size(self.max_object_size)
        self.slice_size = parse_size(self.slice_size)
        self.slice_threshold = parse_size(self.slice_threshold)
        if self.slice_size < 64 << 10:
            raise ConfigError("slice size must be at least 64K")
        self.cache_dir = Path(self.cache_dir)
        if not self.name or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise ConfigError(f"node name must be letters, digits, '.', '_' or '-': {self.name!r}")
        if self.cache_size < 1 << 20:
            raise ConfigError("cache size must be at least 1M")
        return self


def load_config(path: Path | None, overrides: dict[str, Any]) -> NodeConfig:
    """Read a TOML file (keys as NodeConfig fields, '-' or '_'), then apply the
    command line's non-None overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        known = {f.name for f in fields(NodeConfig)}
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown setting in {path}: {key}")
            values[name] = tuple(value) if isinstance(value, list) else value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return NodeConfig(**values).validate()
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc
