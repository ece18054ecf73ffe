"""Real services for the tests: a redis-server on a free loopback port, started and stopped here.

Use :func:`start_redis` / :meth:`RedisServer.stop` (or the :func:`running_redis`
context manager) anywhere, or the module-scoped ``redis_server`` fixture from
a test module::

    from tests import services

    redis_server = services.redis_server  # makes the fixture visible in this module

The server keeps nothing on disk (``--save '' --appendonly no``), runs in a
temporary directory, and allows ``DEBUG`` from loopback (tests pause it). When
``redis-server`` is not installed, the fixture skips the test and says so;
:func:`start_redis` raises :class:`FileNotFoundError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_DEADLINE = 10.0
"""Seconds a redis-server has to answer PING."""

STOP_DEADLINE = 5.0
"""Seconds a redis-server has to exit after SIGTERM before it is killed."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class RedisServer:
    """A running redis-server."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """SIGTERM, wait up to :data:`STOP_DEADLINE` seconds, then SIGKILL; remove the directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_DEADLINE)
        shutil.rmtree(self.directory, ignore_errors=True)


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(executable: str = "redis-server", attempts: int = 3) -> RedisServer:
    """Start a redis-server on a free loopback port; return once it answers PING.

    Raises:
        FileNotFoundError: ``executable`` is not installed.
        RuntimeError: it did not answer within :data:`START_DEADLINE` seconds,
            ``attempts`` times (another process may take the port in between).
    """
    path = shutil.which(executable)
    if path is None:
        raise FileNotFoundError(f"{executable} is not installed")
    for _ in range(attempts):
        directory = Path(tempfile.mkdtemp(prefix="asyncapy-redis-"))
        port = free_port()
        args = [
            path,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        args += [
            "--dir",
            str(directory),
            "--enable-debug-command",
            "local",
            "--loglevel",
            "warning",
        ]
        log = (directory / "redis.log").open("wb")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
        log.close()
        server = RedisServer(process, port, directory)
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and process.poll() is None:
            if _pong(port):
                return server
            time.sleep(0.02)
        server.stop()
    raise RuntimeError(
        f"redis-server did not answer PING within {START_DEADLINE} s ({attempts} tries)"
    )


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    """A redis-server for the ``with`` block (see :func:`start_redis`)."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the module; skips when redis-server is not installed."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with running_redis() as server:
        yield server
