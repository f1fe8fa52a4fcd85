"""Helpers for tests that fork: a child that deadlocks must die, never hang the run."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable


def fork_quietly() -> int:
    """os.fork() without Python 3.12's warning about forking a multi-threaded process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def in_child(body: Callable[[], bool], deadline_s: int = 20) -> int:
    """Fork; run ``body`` in the child and exit 0 if it returned True; return the child's exit code.

    The child exits 2 when ``body`` returned False, 1 when it raised, and dies at ``deadline_s``.
    """
    pid = fork_quietly()
    if pid == 0:
        code = 1
        try:
            child_deadline(deadline_s)
            code = 0 if body() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def child_deadline(seconds: int = 20) -> None:
    """In a forked child: be killed by SIGALRM after ``seconds``.

    The default action, not pytest-timeout's Python-level handler, which a child stuck in C code
    (a lock inherited held across the fork) would never get to run.
    """
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(seconds)
