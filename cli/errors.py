"""One-line errors for people: print `edge: <reason>` to stderr and exit non-zero."""

from __future__ import annotations

import sys
from typing import NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"edge: {message}", file=sys.stderr)
    raise SystemExit(code)
