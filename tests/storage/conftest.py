"""Storage fixtures: a real ``redis-server`` on a free loopback port for the whole test session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

_READY = b"Ready to accept connections"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_redis(exe: str) -> tuple[subprocess.Popen[bytes], int, threading.Thread]:
    """Start redis-server on a free port; return it once it says it accepts connections."""
    for _ in range(5):  # the port we picked may be taken before redis binds it: pick again
        port = _free_port()
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:  # blocks until redis logs a line; pytest-timeout bounds it
            output.append(line)
            if _READY in line:
                # Keep draining so a chatty server never blocks on a full pipe.
                drain = threading.Thread(target=proc.stdout.read, name="redis-server-log", daemon=True)
                drain.start()
                return proc, port, drain
        proc.wait()
        proc.stdout.close()
    pytest.fail("redis-server did not start: " + b"".join(output).decode(errors="replace")[-2000:])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """Run ``redis-server`` for the session; yield its ``redis://127.0.0.1:PORT`` base URL.

    Without redis-server the Redis tests skip locally but fail when ``CI`` is set: CI must run them.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so the Redis tests must run")
        pytest.skip(message)
    proc, port, drain = _start_redis(exe)
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        drain.join(timeout=10)  # the pipe hit EOF when redis exited; close it only after the reader
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """Yield the URL of an emptied database 0 on the session's Redis server."""
    import redis

    url = f"{redis_server}/0"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        yield url
    finally:
        client.close()
