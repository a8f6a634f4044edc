"""The process table as tests need it, read from /proc (Linux), so that no test needs
procps (`ps`, `pgrep`), which a machine with only Python, pip and curl may lack."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """The fields after `comm` in /proc/PID/stat (state, ppid, pgrp, ...), or None if the
    process is gone. `comm` may hold spaces and parentheses: it ends at the last ')'."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (as `ps -o pid= --ppid PID`)."""
    found = []
    for p in pids():
        fields = _stat(p)
        if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
            found.append(p)
    return found


def in_group(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (as `pgrep -g PGID`)."""
    found = []
    for p in pids():
        fields = _stat(p)
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(p)
    return found


def matching(text: str) -> list[int]:
    """Processes whose command line contains `text` (as `pgrep -f TEXT`), but this one."""
    found = []
    for p in pids():
        if p == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if text.encode() in cmdline:
            found.append(p)
    return found
