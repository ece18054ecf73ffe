"""Server lifecycle: real processes and signals, hooks, graceful stop, run_sync_task.

The process tests run ``examples/echo.py`` and ``lifecycle_server.py`` with
``sys.executable`` on a free loopback port (``ASYNCAPY_PORT``; the environment
overrides the constructor) and read their output from files. The in-process
tests run ``Server.serve()`` on asyncio's loop and on uvloop's (``arun``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from asyncapy import Client, Packet, Server
from asyncapy.codecs import JSON
from asyncapy.protocol import Frame, FrameDecoder, encode_frame
from tests.conftest import Runner
from tests.helpers import Peer, serving

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "examples" / "echo.py"
TESTCLIENT = REPO / "examples" / "testclient.py"
LIFECYCLE_SERVER = Path(__file__).with_name("lifecycle_server.py")

START_TIMEOUT = 10.0
EXIT_TIMEOUT = 10.0
IO_TIMEOUT = 5.0


# -- running server processes


def free_ports(count: int) -> list[int]:
    """Distinct ports that were free a moment ago (bound to port 0, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def process_env(port: int | None, **extra: str) -> dict[str, str]:
    """The environment of a server process: ours, with ASYNCAPY_* replaced."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ASYNCAPY_")}
    env.update(ASYNCAPY_ADDR="127.0.0.1", PYTHONUNBUFFERED="1", **extra)
    if port is not None:
        env["ASYNCAPY_PORT"] = str(port)
    return env


class ServerProcess:
    """A server script run with ``sys.executable``; stdout and stderr go to files."""

    def __init__(
        self, script: Path, directory: Path, env: dict[str, str], args: Sequence[str] = ()
    ) -> None:
        self.stdout_path = directory / f"{script.stem}.stdout"
        self.stderr_path = directory / f"{script.stem}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(script), *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        return (
            f"exit code {self.process.poll()}\nstdout:\n{self.stdout()}\nstderr:\n{self.stderr()}"
        )

    def wait_for(
        self, text: str, *, stream: str = "stderr", timeout: float = START_TIMEOUT, count: int = 1
    ) -> None:
        """Wait until ``text`` shows ``count`` times in the output, for at most ``timeout`` s."""
        read = self.stderr if stream == "stderr" else self.stdout
        deadline = time.monotonic() + timeout
        while read().count(text) < count:
            if self.process.poll() is not None:
                pytest.fail(f"the process ended before printing {text!r}: {self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} within {timeout} s: {self.describe()}")
            time.sleep(0.02)

    def send_signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the process did not exit within {timeout} s: {self.describe()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(EXIT_TIMEOUT)


@contextlib.contextmanager
def running(
    script: Path, directory: Path, env: dict[str, str], args: Sequence[str] = ()
) -> Iterator[ServerProcess]:
    proc = ServerProcess(script, directory, env, args)
    try:
        yield proc
    finally:
        proc.kill()


def blocking_request(port: int, payload: dict[str, Any]) -> socket.socket:
    """Connect to the server and send one JSON frame; return the open socket."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.sendall(encode_frame(JSON.encode(payload), 0))
    return sock


def blocking_reply(sock: socket.socket) -> dict[Any, Any] | None:
    """The next reply on ``sock``, or None when the server closes it first."""
    decoder = FrameDecoder(4, "big", 1 << 20)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not data:
            return None
        for event in decoder.feed(data):
            assert isinstance(event, Frame), event
            return JSON.decode(event.payload)


SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]


# -- the seed's echo example, as a real process


@pytest.mark.parametrize("sig", SIGNALS)
def test_echo_example_serves_the_test_client_and_stops_on_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    env = process_env(free_port())
    with running(ECHO, tmp_path, env) as server:
        server.wait_for("Serving on")
        client = subprocess.run(
            [sys.executable, str(TESTCLIENT)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
            check=False,
        )
        assert client.stdout == "{'test': 1}\n", client.stderr + server.describe()
        assert client.returncode == 0, client.stderr
        server.wait_for("Echoing back", stream="stdout", timeout=IO_TIMEOUT)
        server.send_signal(sig)
        assert server.wait() == 0, server.describe()
        assert "Stopped" in server.stderr(), server.describe()
        lines = server.stdout().splitlines()
        assert "Hello world from Client(127.0.0.1)!" in lines, server.describe()
        echoed = [line for line in lines if line.startswith("Echoing back Packet(")]
        assert len(echoed) == 1, server.describe()
        assert '"test": 1' in echoed[0]


# -- a server with setup/shutdown hooks, as a real process


@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_runs_setup_then_shutdown_and_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    with running(LIFECYCLE_SERVER, tmp_path, process_env(port)) as server:
        server.wait_for("Serving on")
        with blocking_request(port, {"sleep": 0}) as sock:
            assert blocking_reply(sock) == {"slept": 0}
        server.send_signal(sig)
        assert server.wait() == 0, server.describe()
        assert server.stdout().splitlines() == ["SETUP", "HANDLING 0", "SHUTDOWN"]
        stderr = server.stderr()
        assert f"{sig.name} received" in stderr
        assert "Stopped" in stderr


@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_lets_a_running_handler_finish(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    with running(LIFECYCLE_SERVER, tmp_path, process_env(port)) as server:
        server.wait_for("Serving on")
        with blocking_request(port, {"sleep": 0.5}) as sock:
            server.wait_for("HANDLING 0.5", stream="stdout", timeout=IO_TIMEOUT)
            server.send_signal(sig)
            assert blocking_reply(sock) == {"slept": 0.5}
            assert blocking_reply(sock) is None  # then the server closes the connection
        assert server.wait() == 0, server.describe()
        assert server.stdout().splitlines() == ["SETUP", "HANDLING 0.5", "SHUTDOWN"]


def test_second_sigint_forces_the_exit(tmp_path: Path) -> None:
    port = free_port()
    env = process_env(port, ASYNCAPY_SHUTDOWN_TIMEOUT="60")
    with running(LIFECYCLE_SERVER, tmp_path, env) as server:
        server.wait_for("Serving on")
        with blocking_request(port, {"sleep": 30}) as sock:
            server.wait_for("HANDLING 30", stream="stdout", timeout=IO_TIMEOUT)
            server.send_signal(signal.SIGINT)
            server.wait_for("SIGINT received", timeout=IO_TIMEOUT)
            time.sleep(0.2)
            assert server.process.poll() is None, "the first SIGINT must wait for the handler"
            started = time.monotonic()
            server.send_signal(signal.SIGINT)
            assert server.wait(timeout=4) == 0, server.describe()
            assert time.monotonic() - started < 4
            assert blocking_reply(sock) is None  # closed, with no reply
        assert server.stdout().splitlines() == ["SETUP", "HANDLING 30", "SHUTDOWN"]
        assert "Stopped" in server.stderr()


def test_sigint_stops_every_server_of_the_process(tmp_path: Path) -> None:
    # Found bug: each serve() installs its own SIGINT/SIGTERM handlers on the
    # loop, replacing the other server's, so one signal stops only the last
    # server started, and the process never exits.
    ports = free_ports(2)
    args = [str(port) for port in ports]
    with running(LIFECYCLE_SERVER, tmp_path, process_env(None), args) as server:
        server.wait_for("Serving on", count=2)
        for port in ports:
            with blocking_request(port, {"sleep": 0}) as sock:
                assert blocking_reply(sock) == {"slept": 0}
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=4) == 0, server.describe()
        lines = server.stdout().splitlines()
        assert sorted(lines) == sorted(
            ["SETUP #0", "SETUP #1", "HANDLING 0", "HANDLING 0", "SHUTDOWN #0", "SHUTDOWN #1"]
        )


# -- hooks, in-process


class Recorder(Server):
    """A server that records its hook calls."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[str] = []

    async def setup(self) -> None:
        self.events.append("setup")
        await asyncio.sleep(0)

    async def shutdown(self) -> None:
        self.events.append("shutdown")
        await asyncio.sleep(0)


class SyncHooks(Server):
    """Hooks written with plain ``def``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[str] = []

    def setup(self) -> None:
        self.events.append("setup")

    def shutdown(self) -> None:
        self.events.append("shutdown")


def add_echo(server: Server, name: str = "") -> None:
    @server.add_handler()
    async def echo(client: Client, packet: Packet) -> None:
        await client.send({"echo": dict(packet), "server": name})


async def ask(port: int, payload: dict[str, Any]) -> dict[Any, Any]:
    peer = await Peer.connect(port)
    try:
        await peer.send(payload)
        return await peer.recv()
    finally:
        await peer.close()


def test_hooks_once_each_in_order(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)
        add_echo(server)
        async with serving(server):
            assert server.events == ["setup"]
            assert await ask(server.port, {"a": 1}) == {"echo": {"a": 1}, "server": ""}
            assert server.events == ["setup"]
        assert server.events == ["setup", "shutdown"]
        async with serving(server):  # a server can serve again
            assert server.events == ["setup", "shutdown", "setup"]
        assert server.events == ["setup", "shutdown", "setup", "shutdown"]

    arun(main())


def test_sync_hooks(arun: Runner[None]) -> None:
    async def main() -> None:
        server = SyncHooks(port=0)
        add_echo(server)
        async with serving(server):
            assert server.events == ["setup"]
            assert await ask(server.port, {"b": 2}) == {"echo": {"b": 2}, "server": ""}
        assert server.events == ["setup", "shutdown"]

    arun(main())


def test_setup_runs_before_listening(arun: Runner[None]) -> None:
    async def main() -> None:
        listening_during_setup: list[bool] = []

        class Probe(Server):
            async def setup(self) -> None:
                listening_during_setup.append(self.port != 0)

        server = Probe(port=0)
        async with serving(server):
            assert server.port != 0
        assert listening_during_setup == [False]

    arun(main())


def test_stop_right_after_start(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)
        task = asyncio.create_task(server.serve())
        await asyncio.sleep(0)  # serve() has begun: setup() is running
        server.stop()
        await asyncio.wait_for(task, IO_TIMEOUT)
        assert server.events == ["setup", "shutdown"]

    arun(main())


def test_stop_right_after_started(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)
        task = asyncio.create_task(server.serve())
        await asyncio.wait_for(server.wait_started(), IO_TIMEOUT)
        server.stop()
        await asyncio.wait_for(task, IO_TIMEOUT)
        assert server.events == ["setup", "shutdown"]

    arun(main())


def test_a_stop_before_serving_is_remembered(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)
        server.stop()  # not serving yet: the next serve() returns at once
        await asyncio.wait_for(server.serve(), IO_TIMEOUT)
        assert server.events == ["setup", "shutdown"]
        assert not server._started.is_set()

    arun(main())


def test_stop_is_idempotent(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)
        task = asyncio.create_task(server.serve())
        await asyncio.wait_for(server.wait_started(), IO_TIMEOUT)
        server.stop()
        server.stop(force=True)
        server.stop()
        await asyncio.wait_for(task, IO_TIMEOUT)
        assert server.events == ["setup", "shutdown"]

    arun(main())


def test_serving_twice_at_once_is_refused(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)
        async with serving(server):
            with pytest.raises(RuntimeError, match="already serving"):
                await server.serve()
        assert server.events == ["setup", "shutdown"]

    arun(main())


def test_address_in_use(arun: Runner[None]) -> None:
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as blocker:
            port = blocker.getsockname()[1]
            server = Recorder(port=port)
            with pytest.raises(OSError):  # noqa: PT011 - the errno depends on the loop
                await asyncio.wait_for(server.serve(), IO_TIMEOUT)
        assert server.events == ["setup", "shutdown"]
        # The failed attempt left nothing behind: the server can serve again.
        server.settings = dataclasses.replace(server.settings, port=0)
        async with serving(server):
            pass
        assert server.events == ["setup", "shutdown", "setup", "shutdown"]

    arun(main())


def test_setup_error_propagates_and_server_can_serve_again(arun: Runner[None]) -> None:
    async def main() -> None:
        class Failing(Server):
            fail = True

            async def setup(self) -> None:
                if self.fail:
                    raise LookupError("no database")

        server = Failing(port=0)
        with pytest.raises(LookupError, match="no database"):
            await asyncio.wait_for(server.serve(), IO_TIMEOUT)
        server.fail = False
        async with serving(server):
            pass

    arun(main())


# -- graceful stop


def test_graceful_stop_lets_a_running_handler_finish(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)
        started = asyncio.Event()

        @server.add_handler()
        async def slow(client: Client, packet: Packet) -> None:
            started.set()
            await asyncio.sleep(0.3)
            await client.send({"done": True})

        async with serving(server):
            port = server.port
            peer = await Peer.connect(port)
            await peer.send({"go": 1})
            await asyncio.wait_for(started.wait(), IO_TIMEOUT)
            server.stop()
            assert await peer.recv() == {"done": True}
            assert await peer.closed()
            await peer.close()
            with pytest.raises(OSError):  # noqa: PT011 - refused: no longer listening
                await asyncio.wait_for(Peer.connect(port), IO_TIMEOUT)
        assert server.events == ["setup", "shutdown"]

    arun(main())


def test_graceful_stop_closes_idle_connections_at_once(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Server(port=0)
        add_echo(server)
        task = asyncio.create_task(server.serve())
        await asyncio.wait_for(server.wait_started(), IO_TIMEOUT)
        peer = await Peer.connect(server.port)
        await peer.send({"x": 1})
        assert await peer.recv() == {"echo": {"x": 1}, "server": ""}
        began = time.monotonic()
        server.stop()
        assert await peer.closed(IO_TIMEOUT)
        await asyncio.wait_for(task, IO_TIMEOUT)
        assert time.monotonic() - began < 1.0  # not the 10 s shutdown_timeout
        await peer.close()

    arun(main())


def test_shutdown_timeout_cancels_a_slow_handler(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0, shutdown_timeout=0.2)
        started = asyncio.Event()
        outcome: list[str] = []

        @server.add_handler()
        async def slow(client: Client, packet: Packet) -> None:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise
            outcome.append("finished")
            await client.send({"done": True})

        task = asyncio.create_task(server.serve())
        try:
            await asyncio.wait_for(server.wait_started(), IO_TIMEOUT)
            peer = await Peer.connect(server.port)
            await peer.send({"go": 1})
            await asyncio.wait_for(started.wait(), IO_TIMEOUT)
            began = time.monotonic()
            server.stop()
            assert await peer.closed(3)
            assert peer.pending == []  # no reply
            await asyncio.wait_for(task, 3)
            assert time.monotonic() - began < 1.0
            assert outcome == ["cancelled"]
            assert server.events == ["setup", "shutdown"]
            await peer.close()
        finally:
            server.stop(force=True)
            await asyncio.wait_for(task, IO_TIMEOUT)

    arun(main())


def test_forced_stop_does_not_wait(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)  # shutdown_timeout: 10 s
        started = asyncio.Event()

        @server.add_handler()
        async def slow(client: Client, packet: Packet) -> None:
            started.set()
            await asyncio.sleep(10)

        task = asyncio.create_task(server.serve())
        await asyncio.wait_for(server.wait_started(), IO_TIMEOUT)
        peer = await Peer.connect(server.port)
        await peer.send({"go": 1})
        await asyncio.wait_for(started.wait(), IO_TIMEOUT)
        server.stop()
        await asyncio.sleep(0.1)
        assert not task.done()  # graceful: waiting for the handler
        began = time.monotonic()
        server.stop(force=True)
        await asyncio.wait_for(task, 3)
        assert time.monotonic() - began < 1.0
        assert await peer.closed(1)
        assert server.events == ["setup", "shutdown"]
        await peer.close()

    arun(main())


def test_stop_from_another_thread(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Recorder(port=0)
        task = asyncio.create_task(server.serve())
        await asyncio.wait_for(server.wait_started(), IO_TIMEOUT)
        thread = threading.Thread(target=server.stop)
        thread.start()
        await asyncio.wait_for(task, IO_TIMEOUT)
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()
        assert server.events == ["setup", "shutdown"]

    arun(main())


def test_start_in_a_thread_stopped_from_the_main_thread() -> None:
    server = Recorder(port=0)
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    deadline = time.monotonic() + IO_TIMEOUT
    while server.port == 0:  # the real port shows once listening
        assert thread.is_alive()
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    server.stop()
    thread.join(IO_TIMEOUT)
    assert not thread.is_alive()
    assert server.events == ["setup", "shutdown"]


# -- run_sync_task


async def wait_thread_event(event: threading.Event, timeout: float = IO_TIMEOUT) -> None:
    """Wait, without blocking the loop, until a worker thread sets ``event``."""
    assert await asyncio.to_thread(event.wait, timeout), "the worker thread did not start"


def test_run_sync_task_does_not_block_the_loop(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Server(port=0)
        entered, release = threading.Event(), threading.Event()

        def blocking(value: int) -> int:
            entered.set()
            assert release.wait(IO_TIMEOUT)
            return value * 2

        @server.add_handler()
        async def handler(client: Client, packet: Packet) -> None:
            if "block" in packet:
                result = await server.run_sync_task(blocking, packet["block"])
                await client.send({"result": result})
            else:
                await client.send({"pong": True})

        async with serving(server):
            try:
                busy = await Peer.connect(server.port)
                await busy.send({"block": 21})
                await wait_thread_event(entered)
                assert await ask(server.port, {"ping": 1}) == {"pong": True}
                release.set()
                assert await busy.recv() == {"result": 42}
                await busy.close()
            finally:
                release.set()

    arun(main())


def test_run_sync_task_runs_in_a_worker_thread_with_args(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Server(port=0)
        async with serving(server):

            def work(a: int, b: str, c: list[int]) -> tuple[int, str, int, str]:
                return a, b, sum(c), threading.current_thread().name

            a, b, total, thread = await server.run_sync_task(work, 1, "two", [3, 4])
            assert (a, b, total) == (1, "two", 7)
            assert thread != threading.current_thread().name
            assert thread.startswith("asyncapy-sync")
            assert await server.run_sync_task(pow, 2, 10) == 1024

    arun(main())


def test_run_sync_task_propagates_exceptions(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Server(port=0)
        async with serving(server):

            def broken(text: str) -> None:
                raise ValueError(f"bad {text}")

            with pytest.raises(ValueError, match="bad input"):
                await server.run_sync_task(broken, "input")
            # the worker is still usable afterwards
            assert await server.run_sync_task(len, "four") == 4

    arun(main())


def test_run_sync_task_without_limiter_runs_calls_together(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Server(port=0)
        barrier = threading.Barrier(2, timeout=IO_TIMEOUT)
        async with serving(server):
            # Each call waits for the other: this passes only if they overlap.
            results = await asyncio.gather(
                server.run_sync_task(barrier.wait), server.run_sync_task(barrier.wait)
            )
            assert sorted(results) == [0, 1]

    arun(main())


def test_run_sync_task_limiter(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Server(port=0)
        lock = threading.Lock()
        active = [0]
        peak = [0]
        order: list[int] = []

        def work(n: int) -> int:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1
                order.append(n)
            return n

        limiter = asyncio.Semaphore(1)
        async with serving(server):
            results = await asyncio.gather(
                *(server.run_sync_task(work, n, limiter=limiter) for n in range(3))
            )
        assert results == [0, 1, 2]
        assert peak == [1]
        assert sorted(order) == [0, 1, 2]
        assert not limiter.locked()

    arun(main())


def test_run_sync_task_not_cancellable_waits_for_the_thread(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Server(port=0)
        entered, release, finished = threading.Event(), threading.Event(), threading.Event()

        def blocking() -> int:
            entered.set()
            release.wait(IO_TIMEOUT)
            finished.set()
            return 1

        async with serving(server):
            try:
                task = asyncio.create_task(server.run_sync_task(blocking))
                await wait_thread_event(entered)
                task.cancel()
                await asyncio.sleep(0.1)
                assert not task.done()  # it waits for the thread
                release.set()
                await asyncio.wait({task}, timeout=IO_TIMEOUT)
                assert task.cancelled()
                assert finished.is_set()
            finally:
                release.set()

    arun(main())


def test_run_sync_task_cancellable_returns_at_once(arun: Runner[None]) -> None:
    async def main() -> None:
        server = Server(port=0)
        entered, release, finished = threading.Event(), threading.Event(), threading.Event()

        def blocking() -> int:
            entered.set()
            release.wait(IO_TIMEOUT)
            finished.set()
            return 1

        async with serving(server):
            try:
                task = asyncio.create_task(server.run_sync_task(blocking, cancellable=True))
                await wait_thread_event(entered)
                task.cancel()
                await asyncio.wait({task}, timeout=1)
                assert task.cancelled()
                assert not finished.is_set()  # the thread is abandoned, still running
            finally:
                release.set()
        await wait_thread_event(finished)

    arun(main())


# -- two servers in one process


def test_two_servers_serve_independently(arun: Runner[None]) -> None:
    async def main() -> None:
        first, second = Recorder(port=0), Recorder(port=0, header_size=8, byteorder="little")
        add_echo(first, "first")

        @second.add_handler()
        async def other(client: Client, packet: Packet) -> None:
            await client.send({"other": True})

        async with serving(second):
            async with serving(first):
                assert first.port != second.port
                for n in range(2):
                    assert await ask(first.port, {"n": n}) == {"echo": {"n": n}, "server": "first"}
                peer = await Peer.connect(second.port, header_size=8, byteorder="little")
                await peer.send({"n": 9})
                assert await peer.recv() == {"other": True}
                await peer.close()
            # the first has stopped; the second goes on
            assert first.events == ["setup", "shutdown"]
            assert second.events == ["setup"]
            peer = await Peer.connect(second.port, header_size=8, byteorder="little")
            await peer.send({"n": 10})
            assert await peer.recv() == {"other": True}
            await peer.close()
        assert second.events == ["setup", "shutdown"]
        assert first.stats.connections == 2
        assert second.stats.connections == 2
        assert first.stats is not second.stats

    arun(main())
