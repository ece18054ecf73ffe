"""``asyncapy run`` as a real subprocess with 2 workers: serving, replacing, stopping, reloading.

The app is ``tests/integration/apps/supervised.py`` (its docstring says what
it does). Every test starts ``python -m asyncapy run`` with ``--port 0``,
reads the port from the supervisor's "Listening on" line, and always stops
the supervisor at the end (SIGKILL of the whole process group if it hangs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.helpers import Peer

APPS = Path(__file__).resolve().parent / "apps"
START_TIMEOUT = 20.0


class Run:
    """``asyncapy run supervised:server`` in a subprocess (its own process group)."""

    def __init__(self, tmp: Path, args: Sequence[str], env: dict[str, str] | None) -> None:
        self.log_path = tmp / "run.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCAPY_", "APP_"))}
        environ["PYTHONUNBUFFERED"] = "1"
        environ.update(env or {})
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "asyncapy",
                    "run",
                    "supervised:server",
                    "--port",
                    "0",
                    *args,
                ],
                cwd=APPS,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = START_TIMEOUT) -> list[str]:
        """Wait until ``pattern`` matches ``count`` times in the log; return the matches."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} x{count} not logged in {timeout} s:\n{self.log()}"
                )
            time.sleep(0.02)

    def wait_ready(self, workers: int = 2) -> None:
        self.port = int(self.wait_for(r"Listening on 127\.0\.0\.1:(\d+)")[0])
        self.wait_for(r"Worker \d+ \(pid \d+\) is ready", workers)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        with contextlib.suppress(ProcessLookupError):  # the workers too, whatever happened
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(5)

    def worker_pids(self) -> list[int]:
        """Pids of the live workers: the children of the supervisor."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    runs: list[Run] = []

    def start(*args: str, env: dict[str, str] | None = None, ready: bool = True) -> Run:
        process = Run(tmp_path, args, env)
        runs.append(process)
        if ready:
            process.wait_ready()
        return process

    yield start
    for process in runs:
        process.stop()


async def request(port: int, payload: dict[str, Any], timeout: float = 10) -> dict[Any, Any]:
    """One request on a fresh connection."""
    peer = await Peer.connect(port)
    try:
        await peer.send(payload)
        return await peer.recv(timeout)
    finally:
        await peer.close()


async def pids_serving(port: int, connections: int = 40) -> set[int]:
    replies = await asyncio.gather(*(request(port, {"n": n}) for n in range(connections)))
    return {reply["pid"] for reply in replies}


def test_two_workers_both_serve(run: Any) -> None:
    server = run("--workers", "2")
    pids = asyncio.run(pids_serving(server.port))
    assert pids == set(server.worker_pids())
    assert len(pids) == 2


def test_shared_socket_mode_serves_too(run: Any) -> None:
    server = run("--workers", "2", "--socket-mode", "shared")
    assert "(shared socket)" in server.log()
    pids = asyncio.run(pids_serving(server.port, 200))
    assert pids <= set(server.worker_pids())
    assert pids


def test_a_killed_worker_is_replaced(run: Any) -> None:
    server = run("--workers", "2")
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_for(rf"Worker \d+ \(pid {victim}\) exited \(signal SIGKILL\)")
    server.wait_for(r"Worker \d+ \(pid \d+\) is ready", 3)
    pids = asyncio.run(pids_serving(server.port))
    assert victim not in pids
    assert len(pids) == 2
    assert set(server.worker_pids()) == pids


def test_a_stuck_worker_is_replaced(run: Any) -> None:
    server = run("--workers", "2", "--worker-healthcheck-timeout", "1")

    async def block() -> int:
        peer = await Peer.connect(server.port)
        try:
            await peer.send({"block": 4})
            assert await peer.closed(timeout=4)  # killed before it could answer
        finally:
            await peer.close()
        return 0

    asyncio.run(block())
    found = server.wait_for(r"Worker \d+ \(pid (\d+)\) silent for [\d.]+ s: killing it")
    server.wait_for(r"Worker \d+ \(pid \d+\) is ready", 3)
    pids = asyncio.run(pids_serving(server.port))
    assert int(found[0]) not in pids
    assert len(pids) == 2


def test_an_address_in_the_app_that_run_overrides_is_one_formatted_warning(run: Any) -> None:
    server = run("--workers", "2", env={"APP_PORT": "1500"})
    lines = [line for line in server.log().splitlines() if "says addr=" in line]
    assert len(lines) == 1, server.log()  # from the first worker only
    assert lines[0].startswith("[WARNING] "), lines  # the worker's logging is set up by then
    assert "port=1500; asyncapy run listens where its options say" in lines[0]
    assert lines[0].endswith(f": 127.0.0.1:{server.port}")


def test_a_start_up_failure_gives_up_after_the_backoff(run: Any) -> None:
    server = run("--workers", "2", env={"APP_FAIL_SETUP": "1"}, ready=False)
    started = time.monotonic()
    status = server.wait(30)
    elapsed = time.monotonic() - started
    log = server.log()
    assert status == 1
    assert "failed to start 5 times in a row" in log
    assert len(re.findall(r"Started worker", log)) <= 6  # 2, then restarts until 5 failures
    assert "restarting it in 0.25 s" in log
    assert "restarting it in 1.00 s" in log  # backoff doubled
    assert elapsed < 15
    assert not server.worker_pids()


def test_an_app_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asyncapy", "run", "no_such_module:server", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line or "error" in line]
    assert len(errors) == 1, result.stderr
    assert "cannot import module 'no_such_module'" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "two"], "'two' is not a valid integer"),
        (["--workers", "0"], "workers"),
        (["--socket-mode", "fork"], "'fork' is not one of"),
        (["-s", "timeout=-1"], "timeout"),
        (["-s", "nonsense=1"], "unknown setting 'nonsense'"),
        (["--config", "/nonexistent.ini"], "does not exist"),
    ],
)
def test_a_wrong_option_is_one_line(args: list[str], message: str) -> None:
    from asyncapy.cli import main

    result = subprocess.run(
        [sys.executable, "-m", "asyncapy", "run", "supervised:server", *args],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode in (1, 2), result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert main is not None


def test_sigterm_under_load_answers_everything_in_flight(run: Any, tmp_path: Path) -> None:
    shutdown_log = tmp_path / "shutdown.log"
    server = run(
        "--workers", "2", "--graceful-timeout", "10", env={"APP_SHUTDOWN_LOG": str(shutdown_log)}
    )
    workers = set(server.worker_pids())

    async def load() -> list[dict[Any, Any]]:
        peers = [await Peer.connect(server.port) for _ in range(20)]
        try:
            for n, peer in enumerate(peers):
                await peer.send({"sleep": 1.0, "n": n})
            await asyncio.sleep(0.3)  # all in flight in the handlers
            server.signal(signal.SIGTERM)
            return list(await asyncio.gather(*(peer.recv(timeout=10) for peer in peers)))
        finally:
            for peer in peers:
                await peer.close()

    started = time.monotonic()
    replies = asyncio.run(load())
    assert sorted(reply["n"] for reply in replies) == list(range(20))
    assert {reply["pid"] for reply in replies} == workers  # both had requests in flight
    assert server.wait(10) == 0
    assert time.monotonic() - started < 10
    lines = shutdown_log.read_text().splitlines()
    assert sorted(lines) == sorted(f"shutdown {pid}" for pid in workers)


def test_sighup_rolling_restart_under_load_loses_nothing(run: Any) -> None:
    server = run("--workers", "2", "--graceful-timeout", "5")
    before = set(server.worker_pids())

    async def load(stop: asyncio.Event) -> tuple[int, int, set[int]]:
        ok = failed = 0
        pids: set[int] = set()

        async def client() -> None:
            nonlocal ok, failed
            while not stop.is_set():
                try:
                    reply = await request(server.port, {"n": ok})
                except (OSError, asyncio.IncompleteReadError, AssertionError, TimeoutError):
                    failed += 1
                else:
                    ok += 1
                    pids.add(reply["pid"])

        tasks = [asyncio.ensure_future(client()) for _ in range(8)]
        await asyncio.sleep(0.3)
        server.signal(signal.SIGHUP)
        await asyncio.to_thread(server.wait_for, r"Rolling restart done")
        await asyncio.to_thread(server.wait_for, r"stopped \(status 0\)", 2)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        return ok, failed, pids

    ok, failed, pids = asyncio.run(load(asyncio.Event()))
    after = set(server.worker_pids())
    assert failed == 0
    assert ok > 100
    assert len(after) == 2
    assert not after & before  # every worker was replaced
    assert pids >= after  # the new ones served


def test_workers_stop_when_the_supervisor_is_killed(run: Any) -> None:
    server = run("--workers", "2", "--worker-healthcheck-timeout", "2")
    workers = server.worker_pids()
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(5)
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        time.sleep(0.05)
    assert not alive, "workers outlived their supervisor"
    assert "the supervisor is gone: stopping" in server.log()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_tls_workers(run: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    server = run("--workers", "2", "--certfile", str(certfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)

    async def ask() -> dict[Any, Any]:
        peer = await Peer.connect(server.port, ssl=context)
        try:
            await peer.send({"n": 7})
            return await peer.recv()
        finally:
            await peer.close()

    reply = asyncio.run(ask())
    assert reply["n"] == 7
    assert reply["pid"] in server.worker_pids()


# -- /metrics of the supervisor, scraped over HTTP


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the supervisor's ``/metrics``, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def exchange(port: int, payload: Any) -> tuple[int, int, dict[Any, Any]]:
    """One request on a fresh connection: (bytes sent, bytes of the reply frame, reply)."""
    peer = await Peer.connect(port)
    try:
        frame = peer.frame(payload)
        await peer.send_raw(frame)
        reply = await peer.frame_in(10)
        assert reply is not None
        return len(frame), 4 + 2 + len(reply.payload), json.loads(bytes(reply.payload))
    finally:
        await peer.close()


class Expected:
    """What the traffic sent so far must show in ``/metrics``."""

    def __init__(self) -> None:
        self.ok = self.failed = self.malformed = self.received = self.sent = 0

    async def play(self, port: int, ok: int, failed: int = 0, malformed: int = 0) -> set[int]:
        pids: set[int] = set()
        payloads: list[Any] = [{"n": n} for n in range(ok)]
        payloads += [{"fail": True}] * failed + [b"{not json"] * malformed
        for payload in payloads:  # one at a time: the counts are read at the end only
            into, out, reply = await exchange(port, payload)
            self.received += into
            self.sent += out
            if "pid" in reply:
                pids.add(reply["pid"])
        self.ok += ok
        self.failed += failed
        self.malformed += malformed
        return pids

    def check(self, found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> list[str]:
        """The differences between ``found`` and what is expected ([] when none)."""
        want = {
            ("asyncapy_packets_total", (("code", "OK"), ("handler", "work"))): self.ok,
            ("asyncapy_packets_total", (("code", "ERR_INTERNAL"), ("handler", "work"))): (
                self.failed
            ),
            ("asyncapy_handler_duration_seconds_count", (("handler", "work"),)): (
                self.ok + self.failed
            ),
            ("asyncapy_rejected_frames_total", (("code", "ERR_REQUEST_MALFORMED"),)): (
                self.malformed
            ),
            ("asyncapy_sessions_total", ()): self.ok + self.failed + self.malformed,
            ("asyncapy_received_bytes_total", ()): self.received,
            ("asyncapy_sent_bytes_total", ()): self.sent,
        }
        return [
            f"{name}{dict(labels)} = {found.get((name, labels))}, expected {value}"
            for (name, labels), value in want.items()
            if found.get((name, labels), 0) != value
        ]


def wait_for_metrics(port: int, expected: Expected, timeout: float = 10) -> dict[Any, float]:
    """Scrape until the workers' beats have brought every count in (at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        found = scrape(port)
        wrong = expected.check(found)
        if not wrong:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("\n".join(wrong))
        time.sleep(0.1)


def test_metrics_scraped_over_http_are_exact_across_a_killed_worker(run: Any) -> None:
    server = run("--workers", "2", "--metrics-port", "0", "--no-access-log")
    metrics_port = int(server.wait_for(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics")[0])
    workers = server.worker_pids()
    expected = Expected()

    pids = asyncio.run(expected.play(server.port, ok=40, failed=4, malformed=3))
    assert pids == set(workers)  # both workers counted some
    before = wait_for_metrics(metrics_port, expected)
    assert before["asyncapy_workers", ()] == 2
    assert before["asyncapy_worker_restarts_total", ()] == 0
    assert before["asyncapy_open_connections", ()] == 0
    assert len([key for key in before if key[0] == "asyncapy_worker_resident_memory_bytes"]) == 2

    # A worker killed with everything it counted already sent: nothing goes backwards.
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    dead = server.wait_for(rf"Worker (\d+) \(pid {victim}\) exited \(signal SIGKILL\)")[0]
    server.wait_for(r"Worker \d+ \(pid \d+\) is ready", 3)
    after = scrape(metrics_port)
    assert expected.check(after) == []
    assert after["asyncapy_worker_restarts_total", ()] == 1
    labels = {dict(key[1])["worker"] for key in after if "worker" in dict(key[1])}
    assert labels == {"1", "2", "3"} - {dead}  # the new worker's gauges came with its ready
    for key, value in before.items():
        if key[0].endswith(("_total", "_bucket", "_count", "_sum")) and "worker" not in dict(
            key[1]
        ):
            assert after[key] >= value, key

    # The new worker's counts add to the old ones.
    pids = asyncio.run(expected.play(server.port, ok=30, failed=1))
    assert victim not in pids
    final = wait_for_metrics(metrics_port, expected)
    assert final["asyncapy_workers", ()] == 2
