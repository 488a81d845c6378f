"""The command line a results file records: how to run the benchmark again."""

from __future__ import annotations

import shlex
import sys


def command_line(module: str, argv: list[str] | None = None) -> str:
    """`python -m <module>` with the arguments given (this process's own when `argv` is None),
    each quoted as a shell would need it."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join([f"python -m {module}", *(shlex.quote(a) for a in args)])
