"""Instruction counts under valgrind's callgrind, shared by the benchmark scripts.

Instructions are exact where wall clock on a shared machine is not: the same binary and inputs give
the same total (within the small jitter of hash randomisation).
"""

from __future__ import annotations

import re
import subprocess


def callgrind_total(argv: list[str]) -> int:
    """Run ``argv`` under callgrind and return the instructions it executed."""
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total for {argv[1:3]}: {out.stderr[-500:]}")
    return int(match.group(1))
