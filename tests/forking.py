"""Helpers for tests that fork: a child that deadlocks must die, never hang the run."""

from __future__ import annotations

import signal


def child_deadline(seconds: int = 20) -> None:
    """In a forked child: be killed by SIGALRM after ``seconds``.

    The default action, not pytest-timeout's Python-level handler, which a child stuck in C code
    (a lock inherited held across the fork) would never get to run.
    """
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(seconds)
