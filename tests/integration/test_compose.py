"""docker-compose.yml, origin/topologies/docker.toml and the Dockerfile run the default
topology as `edge up` does: both files are the generator's output (they cannot drift),
every topology process has its service on the right networks and addresses, every
service's command parses as an `edge` subcommand, and no token is written down. No
Docker engine is needed: the files are read, never run.

Here the parts with real processes or sockets; tests/unit/test_compose.py has
the pure ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from origin.deploy import compose

REPO = Path(__file__).resolve().parents[2]


# -- not drifting -------------------------------------------------------------------------


def test_the_committed_files_are_the_generators_output() -> None:
    assert compose.differences(compose.render()) == []
    done = subprocess.run(
        [sys.executable, "-m", "origin.deploy.compose", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr


# -- services, networks, addresses ---------------------------------------------------------


# -- the docker topology ------------------------------------------------------------------


# -- the image ----------------------------------------------------------------------------
