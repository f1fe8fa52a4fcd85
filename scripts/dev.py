#!/usr/bin/env python3
"""Set up the project on a fresh machine and run the demo or the whole test suite.

    python3 scripts/dev.py demo    # venv + package, then the agent demo on the embedded SQLite store
    python3 scripts/dev.py test    # venv + dev extras (+ redis-server), then ruff, mypy and pytest

Needs only python3. As root on Debian it installs what is missing (python3-venv, redis-server) with
apt-get; otherwise it says what to install. The virtual environment lives in .venv/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
PY = BIN / "python"


def run(*cmd: str | Path, **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


_apt_updated = False


def apt_install(*packages: str) -> None:
    global _apt_updated
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            f"missing system packages: {' '.join(packages)} (install them, or run this as root on Debian)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        run("apt-get", "update", "-q", env=env)
        _apt_updated = True
    run("apt-get", "install", "-y", "-q", "--no-install-recommends", *packages, env=env)


def ensure_venv(extras: str) -> None:
    if not PY.exists():
        probe = subprocess.run(
            [sys.executable, "-c", "import ensurepip, venv"], capture_output=True, check=False
        )
        if probe.returncode != 0:
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            apt_install("python3-venv", f"python{version}-venv")
        run(sys.executable, "-m", "venv", VENV)
        run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "-q", "-e", f".[{extras}]")


def demo() -> None:
    ensure_venv("all")
    store = ROOT / "demo-output" / "logs.sqlite3"
    store.parent.mkdir(exist_ok=True)
    env = {**os.environ, "AGENTUITY_LOG_STORE": str(store), "AGENTUITY_LOG_FORMAT": "json"}
    run(PY, "examples/demo.py", env=env)
    cli = BIN / "agentuity-logging"
    print("\n# The same sessions, read back from the embedded store:", flush=True)
    run(cli, "session", "list", "--store", store, env=env)
    last = subprocess.run(
        [str(cli), "session", "list", "--count", "1", "--json", "--store", str(store)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    import json

    sessions = json.loads(last.stdout)
    if sessions:
        run(cli, "session", "get", sessions[0]["id"], "--store", store, env=env)
        run(cli, "session", "logs", sessions[0]["id"], "--store", store, env=env)


def test() -> None:
    ensure_venv("dev")
    if shutil.which("redis-server") is None:
        apt_install("redis-server")
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    run(BIN / "mypy")
    # pytest exits 5 when it collected no test: that fails this command, as it should. Tests that
    # fork run in a second pass without coverage: coverage's data lock, held by another thread at
    # fork time, deadlocks the parent (seen in CI), which says nothing about our code.
    args = ["-q", "-p", "no:cacheprovider", *sys.argv[2:]]
    run(PY, "-m", "pytest", "-m", "not forks", "--cov", "--cov-report=term", *args)
    run(PY, "-m", "pytest", "-m", "forks", *args)


if __name__ == "__main__":
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python3 {sys.argv[0]} {{demo,test}} [pytest args...]")
    try:
        commands[sys.argv[1]]()
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
