"""Instruction counts under valgrind's callgrind, shared by the benchmark scripts.

Instructions are exact where wall clock on a shared machine is not: the same binary and inputs give
the same total (within the small jitter of hash randomisation).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path


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


def callgrind_by_thread(argv: list[str]) -> list[int]:
    """Run ``argv`` under callgrind; the instructions of each thread, in the order they started.

    The first is the main thread (the application's, in the shipping benchmark), then the threads
    it started (the shipper's worker).
    """
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder, "callgrind.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}", *argv],
            capture_output=True,
            check=True,
        )
        totals = []
        for part in sorted(Path(folder).glob("callgrind.out-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])):
            match = re.search(r"^summary: (\d+)$", part.read_text(), re.MULTILINE)
            if match is None:
                raise RuntimeError(f"no callgrind summary in {part.name} for {argv[1:3]}")
            totals.append(int(match.group(1)))
    if not totals:
        raise RuntimeError(f"callgrind wrote no output for {argv[1:3]}")
    return totals
