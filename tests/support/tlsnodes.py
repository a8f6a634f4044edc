"""An edge serving HTTPS with a certificate made for the test, for the TLS tests."""

from __future__ import annotations

from pathlib import Path

from tests.support.procs import Proc, edge_cmd, free_port, start


def tls_edge(
    procs: list[Proc],
    tmp_path: Path,
    upstream_url: str,
    certs: list[tuple[Path, Path]],
    ca_file: Path,
    *extra: str,
    name: str = "tls-edge",
    kind: str = "serve",
) -> Proc:
    port = free_port()
    pairs = [a for cert, key in certs for a in ("--tls-cert", str(cert), "--tls-key", str(key))]
    cmd = edge_cmd(
        kind,
        "--listen",
        f"127.0.0.1:{port}",
        "--origin",
        upstream_url,
        "--cache-dir",
        str(tmp_path / f"cache-{name}"),
        "--name",
        name,
        *pairs,
        *extra,
    )
    proc = start(cmd, port, tmp_path / f"{name}.log", "/_edge/health", ca=str(ca_file))
    procs.append(proc)
    return proc
