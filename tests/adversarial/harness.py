"""What the adversarial tests share: a server process, a well-behaved client, raw attackers.

- :class:`ServerProcess` runs ``tests/adversarial/server_app.py`` with
  ``sys.executable`` on 127.0.0.1 (port 0), logging to a file, and reads its
  RSS, open descriptors and CPU time from ``/proc``. It is always terminated
  (SIGTERM, then SIGKILL) when its block ends. Its environment has no
  ``ASYNCAPY_*`` variable (they would override its settings), and fixed glibc
  malloc thresholds, so that RSS follows live memory rather than what the
  allocator keeps for later.
- :func:`good_client` is the well-behaved client: 8 connections from
  127.0.0.1, each sending a JSON echo request, waiting for the reply and
  checking it, again and again, for a fixed time. A request is lost when its
  reply is wrong (an error code, say), the connection drops, or no reply
  comes within the per-request deadline.
- Attackers connect from other loopback addresses (127.0.0.2 ...), which all
  of 127/8 is on Linux, so that per-address limits see them as other peers.
  :class:`RawPeer` is a bare asyncio Protocol: it counts what arrives, tells
  error replies from others, and records when the server closed it.
- :class:`Bench` holds one test's measurements (the good client unattacked,
  attacked, and again once the attack is over; the CPU seconds the server and
  this process used in each run; RSS and descriptors before, at peak and
  after) and :meth:`Bench.report` writes them:
  a ``record_property`` per figure, one JSON line to the file named by
  ``ASYNCAPY_ADVERSARIAL_REPORT`` (if set), and one printed line (``pytest -s``).

Times are measured with ``time.perf_counter`` (uvloop's ``loop.time()``
counts whole milliseconds).

``ADVERSARIAL_LENIENT_SETTINGS=1`` makes the server drop settings it does not
know instead of failing to start: a way to see how code without those
settings fares on the rest of a test. It is off by default.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import termios
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from asyncapy.codecs import CODECS, JSON
from asyncapy.protocol import Frame, FrameDecoder, encode_frame

REPO = Path(__file__).resolve().parents[2]
REPORT_ENV = "ASYNCAPY_ADVERSARIAL_REPORT"
LENIENT_ENV = "ADVERSARIAL_LENIENT_SETTINGS"

HOST = "127.0.0.1"
GOOD_SOURCE = "127.0.0.1"
ATTACK_SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")

GOOD_CONNECTIONS = 8
GOOD_DURATION = 1.5
REQUEST_DEADLINE = 2.0

START_TIMEOUT = 15.0
STOP_TIMEOUT = 3.0
MIB = 1024 * 1024

P = TypeVar("P", bound="RawPeer")


def frame(payload: bytes, encoding: int = 0, version: int = 22) -> bytes:
    """One frame carrying ``payload`` (4-byte big-endian Content-Length); any version byte."""
    if version == 22:
        return encode_frame(payload, encoding)
    return (len(payload) + 2).to_bytes(4, "big") + bytes((version, encoding)) + payload


def loop_time() -> float:
    return asyncio.get_running_loop().time()


now = time.perf_counter
"""The clock of every measured time (uvloop's ``loop.time()`` counts whole milliseconds)."""


# -- the server process


@dataclass(frozen=True)
class TLSFiles:
    """A server certificate for ``localhost``/127.0.0.1 and the CA that signed it."""

    certfile: Path
    cafile: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))


def make_tls(directory: Path) -> TLSFiles:
    """Issue a certificate with ``trustme`` into ``directory``."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, cafile = directory / "server.pem", directory / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    return TLSFiles(certfile, cafile)


class ServerProcess:
    """``server_app`` in a subprocess; stdout and stderr go to files in ``directory``."""

    def __init__(self, directory: Path, settings: Mapping[str, Any]) -> None:
        self.directory = directory
        self.settings = dict(settings)
        self.stdout_path = directory / "server.stdout"
        self.stderr_path = directory / "server.stderr"
        self.port = 0
        env = {key: value for key, value in os.environ.items() if not key.startswith("ASYNCAPY_")}
        env["PYTHONUNBUFFERED"] = "1"
        # Fixed glibc thresholds (setting them turns off their dynamic growth):
        # freed buffers go back to the system, so RSS follows live memory
        # rather than the allocator's retention.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
        env.setdefault("MALLOC_TRIM_THRESHOLD_", "131072")
        config = {"settings": self.settings, "lenient": os.environ.get(LENIENT_ENV) == "1"}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.adversarial.server_app", json.dumps(config)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    @classmethod
    @contextlib.contextmanager
    def run(
        cls, directory: Path, settings: Mapping[str, Any] | None = None
    ) -> Iterator[ServerProcess]:
        """Start the server, wait until it listens, and always stop it after the block.

        ``shutdown_timeout`` defaults to 0.5 s here, so that a stop does not
        wait for attackers' connections.
        """
        merged: dict[str, Any] = {"shutdown_timeout": 0.5}
        merged.update(settings or {})
        server = cls(directory, merged)
        try:
            server._wait_port()
            yield server
        finally:
            server.terminate()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_port(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.stdout_path.read_text(errors="replace").splitlines():
                if line.startswith("PORT "):
                    self.port = int(line.split()[1])
                    return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the server exited with status {self.process.returncode} before listening"
                    f" (settings {self.settings}):\n{self.stderr_tail()}"
                )
            time.sleep(0.02)
        raise AssertionError(f"the server did not listen within {START_TIMEOUT} s")

    def terminate(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds; wait for the process."""
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        """The server's resident set (VmRSS), in KiB; 0 once it has exited."""
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    def fds(self) -> int:
        """How many descriptors the server has open; -1 once it has exited."""
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except (FileNotFoundError, ProcessLookupError):
            return -1

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used; 0 once it has exited."""
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    async def wait_fds(self, at_most: int, timeout: float) -> int:
        """Poll until the server has at most ``at_most`` descriptors open, or ``timeout``."""
        deadline = loop_time() + timeout
        count = self.fds()
        while count > at_most and loop_time() < deadline:
            await asyncio.sleep(0.05)
            count = self.fds()
        return count


# -- the well-behaved client


@dataclass
class GoodResult:
    """What the good client saw in one run."""

    duration: float
    server_cpu: float = 0.0
    """CPU seconds the server used during the run."""
    client_cpu: float = 0.0
    """CPU seconds this process (the good client and the attackers) used during the run."""
    answered: int = 0
    lost: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def p99_ms(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    @property
    def rate(self) -> float:
        return self.answered / self.duration


async def _next_frame(
    reader: asyncio.StreamReader, decoder: FrameDecoder, pending: list[Any]
) -> Frame | None:
    while not pending:
        data = await reader.read(65536)
        if not data:
            return None
        pending.extend(decoder.feed(data))
    event = pending.pop(0)
    return event if isinstance(event, Frame) else None


async def _good_connection(
    index: int,
    port: int,
    context: ssl.SSLContext | None,
    stop_at: float,
    deadline: float,
    result: GoodResult,
) -> None:
    loop = asyncio.get_running_loop()
    seq = 0
    options: dict[str, Any] = {"local_addr": (GOOD_SOURCE, 0)}
    if context is not None:
        options.update(ssl=context, server_hostname="localhost", ssl_handshake_timeout=deadline)
    while loop.time() < stop_at:
        try:
            async with asyncio.timeout(deadline):
                reader, writer = await asyncio.open_connection(HOST, port, **options)
        except (OSError, TimeoutError) as exc:
            result.lost += 1
            result.failures[f"connect: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.05)
            continue
        decoder = FrameDecoder(4, "big", 1 << 30)
        pending: list[Any] = []
        try:
            while loop.time() < stop_at:
                seq += 1
                request = {"client": index, "seq": seq, "pad": "good" * 8}
                started = now()
                try:
                    writer.write(frame(JSON.encode(request)))
                    async with asyncio.timeout(deadline):
                        reply_frame = await _next_frame(reader, decoder, pending)
                except TimeoutError:
                    reason = "no reply in time"
                    reply_frame = None
                except (OSError, EOFError) as exc:
                    reason = f"dropped: {type(exc).__name__}"
                    reply_frame = None
                else:
                    reason = "closed by the server"
                if reply_frame is None:
                    result.lost += 1
                    result.failures[reason] += 1
                    break
                reply = CODECS[reply_frame.encoding].decode(reply_frame.payload)
                if reply != request:
                    result.lost += 1
                    result.failures[str(reply.get("error", "wrong reply"))] += 1
                    break
                result.latencies.append(now() - started)
                result.answered += 1
        finally:
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (OSError, TimeoutError):
                writer.transport.abort()


async def good_client(
    port: int,
    *,
    context: ssl.SSLContext | None = None,
    duration: float = GOOD_DURATION,
    connections: int = GOOD_CONNECTIONS,
    deadline: float = REQUEST_DEADLINE,
) -> GoodResult:
    """Run the well-behaved client for ``duration`` seconds on new connections.

    Every loop ends by ``duration`` plus one ``deadline`` (a request or a
    connect under way) plus the close.
    """
    result = GoodResult(duration)
    stop_at = loop_time() + duration
    await asyncio.gather(
        *(_good_connection(i, port, context, stop_at, deadline, result) for i in range(connections))
    )
    return result


# -- attackers


class RawPeer(asyncio.Protocol):
    """A bare connection for attacks: counts and classifies what the server sends.

    Args:
        parse: decode reply frames (error replies are counted by code; other
            replies, and any over 512 bytes, count as ``replies``). When
            False, only bytes are counted and the first 4 KiB kept in ``head``.
        read: when False, :func:`open_peer` pauses reading as soon as the
            connection is made: the peer never reads. (Not in
            ``connection_made``: uvloop starts reading after it, whatever it said.)
    """

    def __init__(self, *, parse: bool = True, read: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.parse = parse
        self.read = read
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder(4, "big", 1 << 30)
        self.received = 0
        self.head = bytearray()
        self.replies = 0
        self.errors: Counter[str] = Counter()
        self.reply_times: list[float] = []
        self.connected_at = now()
        self.closed_at: float | None = None
        """When the server closed the connection (None while open, or if we closed it)."""
        self.aborted = False
        """True once we closed the connection ourselves (it was still open)."""
        self.closed = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._progress = asyncio.Event()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.connected_at = now()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if len(self.head) < 4096:
            self.head += data[: 4096 - len(self.head)]
        if not self.parse:
            return
        events = self.decoder.feed(data)
        if events:
            self._progress.set()
        for event in events:
            if not isinstance(event, Frame):
                self.errors["unparsable reply"] += 1
                continue
            self.reply_times.append(now())
            payload = event.payload
            if len(payload) <= 512:
                try:
                    reply = CODECS[event.encoding].decode(payload)
                except ValueError:
                    self.errors["undecodable reply"] += 1
                    continue
                if reply.get("status") == "failure":
                    self.errors[str(reply.get("error"))] += 1
                    continue
            self.replies += 1

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.aborted:
            self.closed_at = now()
        self.closed.set()
        self._writable.set()
        self._progress.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # for the attack

    @property
    def is_closed(self) -> bool:
        return self.closed_at is not None or self.aborted

    @property
    def lifetime(self) -> float | None:
        """Seconds from connect to the server's close; None while open or if we closed it."""
        return None if self.closed_at is None else self.closed_at - self.connected_at

    def write(self, data: bytes) -> bool:
        """Write if still open; False once closed."""
        transport = self.transport
        if transport is None or self.is_closed or transport.is_closing():
            return False
        transport.write(data)
        return True

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until the transport takes more (or the peer closed); False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self._writable.wait()
        except TimeoutError:
            return False
        return True

    async def wait_frames(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` reply frames have come (True), the peer closed or ``timeout``."""
        deadline = self.loop.time() + timeout
        while len(self.reply_times) < count and not self.is_closed:
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                return False
            self._progress.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._progress.wait()
            except TimeoutError:
                return False
        return len(self.reply_times) >= count

    def unread(self) -> int:
        """Bytes the server sent that wait, unread, in our socket's receive queue (FIONREAD)."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None or self.is_closed:
            return 0
        count = array.array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
        except OSError:
            return 0
        return count[0]

    def abort(self) -> None:
        """Close at once (a reset); from now on the connection counts as closed by us."""
        if self.closed_at is None:
            self.aborted = True
        if self.transport is not None:
            self.transport.abort()


@dataclass
class Flood:
    """What an attacker loop has sent so far (kept when the loop is cancelled)."""

    sent: list[float] = field(default_factory=list)
    """When each frame was written (:func:`pipeline`)."""
    written: int = 0
    """Bytes written (:func:`stream`)."""

    def delays(self, peer: RawPeer) -> list[float]:
        """Seconds from each frame's write to its reply, for the frames answered."""
        return [
            peer.reply_times[i] - self.sent[i]
            for i in range(min(len(self.sent), len(peer.reply_times)))
        ]


async def pipeline(
    peer: RawPeer,
    frames: Sequence[bytes],
    flood: Flood,
    *,
    window: int,
    duration: float,
    max_frames: int,
    interval: float = 0.0,
) -> None:
    """Send ``frames`` in turn, at most ``window`` unanswered at a time, noting each in ``flood``.

    Consecutive sends are at least ``interval`` seconds apart. Stops after
    ``duration`` seconds, ``max_frames`` frames, or when the peer closes.
    Reply ``i`` (``peer.reply_times[i]``) answers send ``i``.
    """
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration
    sent = flood.sent
    while len(sent) < max_frames and loop.time() < stop_at and not peer.is_closed:
        if len(sent) - len(peer.reply_times) >= window:
            await peer.wait_frames(len(sent) - window + 1, stop_at - loop.time())
            continue
        if sent and now() < sent[-1] + interval:
            await asyncio.sleep(sent[-1] + interval - now())
            continue
        if not peer.write(frames[len(sent) % len(frames)]):
            break
        sent.append(now())
        await peer.drain(max(stop_at - loop.time(), 0.0))


async def stream(
    peer: RawPeer, chunk: bytes, flood: Flood, *, duration: float, max_bytes: int
) -> None:
    """Write ``chunk`` again and again as fast as the transport takes it (counted in ``flood``).

    Stops after ``duration`` seconds, ``max_bytes`` bytes, or when the peer closes.
    """
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration
    while flood.written < max_bytes and loop.time() < stop_at:
        if not peer.write(chunk):
            break
        flood.written += len(chunk)
        if not await peer.drain(max(stop_at - loop.time(), 0.0)):
            break


async def open_peer(
    port: int,
    source: str,
    factory: Callable[[], P],
    *,
    timeout: float = 3.0,
) -> P:
    """Connect ``factory()`` to the server from ``source``.

    Raises:
        OSError, TimeoutError: when the connection cannot be made in time.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        transport, protocol = await loop.create_connection(
            factory, HOST, port, local_addr=(source, 0)
        )
    if not protocol.read:
        transport.pause_reading()
    return protocol


class Crowd:
    """Every attacker connection of a test, so that all of them are aborted at the end."""

    def __init__(self) -> None:
        self.peers: list[RawPeer] = []
        self.failed: Counter[str] = Counter()

    async def open(
        self,
        port: int,
        source: str,
        count: int,
        factory: Callable[[], P],
        *,
        concurrency: int = 64,
        timeout: float = 3.0,
    ) -> list[P]:
        """Open ``count`` connections from ``source``, ``concurrency`` at a time."""
        gate = asyncio.Semaphore(concurrency)
        opened: list[P] = []

        async def one() -> None:
            async with gate:
                try:
                    peer = await open_peer(port, source, factory, timeout=timeout)
                except (OSError, TimeoutError) as exc:
                    self.failed[type(exc).__name__] += 1
                    return
                self.peers.append(peer)
                opened.append(peer)

        await asyncio.gather(*(one() for _ in range(count)))
        return opened

    def abort_all(self) -> None:
        for peer in self.peers:
            peer.abort()

    @contextlib.asynccontextmanager
    async def running(self) -> Any:
        """Abort every connection when the block ends, whatever happens."""
        try:
            yield self
        finally:
            self.abort_all()
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def background(coro: Any) -> Any:
    """Run ``coro`` in a task while the block runs; cancel it after (its errors re-raised)."""
    task: asyncio.Task[Any] = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_all_closed(peers: Sequence[Any], deadline: float) -> None:
    """Wait until every peer's ``closed`` event is set, or ``deadline`` (``now()``) passes."""
    for peer in peers:
        remaining = deadline - now()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(remaining, 0.0)):
                await peer.closed.wait()


# -- one test's measurements


@dataclass
class Bench:
    """The good client unattacked, then attacked; the server's RSS and fds around the attack."""

    server: ServerProcess
    attack: str
    context: ssl.SSLContext | None = None
    unattacked: GoodResult | None = None
    attacked: GoodResult | None = None
    recovered: GoodResult | None = None
    fds_start: int = 0
    rss_before: int = 0
    fds_before: int = 0
    rss_peak: int = 0
    fds_peak: int = 0
    rss_after: int = 0
    fds_after: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    _sampler: asyncio.Task[None] | None = None

    async def measure_unattacked(self) -> None:
        """Run the good client alone; then take the 'before' figures once its sockets are gone."""
        self.fds_start = self.server.fds()
        self.unattacked = await self._run_good_client()
        self.fds_before = await self.server.wait_fds(self.fds_start, 2.0)
        self.rss_before = self.server.rss_kib()
        self.rss_peak, self.fds_peak = self.rss_before, self.fds_before

    def start_sampling(self) -> None:
        """Sample RSS and fds every 50 ms from now on (the attack starts)."""
        self._sampler = asyncio.ensure_future(self._sample())

    async def _sample(self) -> None:
        while True:
            self._take_sample()
            await asyncio.sleep(0.05)

    def _take_sample(self) -> None:
        self.rss_peak = max(self.rss_peak, self.server.rss_kib())
        self.fds_peak = max(self.fds_peak, self.server.fds())

    async def measure_attacked(self) -> None:
        """Run the good client during the attack."""
        if self._sampler is None:
            self.start_sampling()
        self.attacked = await self._run_good_client()

    async def beside_one_attacker(
        self,
        factory: Callable[[], RawPeer],
        attack: Callable[[RawPeer], Coroutine[Any, Any, Any]],
    ) -> RawPeer:
        """The whole measurement of a one-connection attack; returns the attacker.

        The good client alone; then one attacker (``factory()``, from
        ``ATTACK_SOURCES[0]``) runs ``attack(attacker)`` in the background
        while the good client runs again; the 'after' figures; the good
        client once more.
        """
        await self.measure_unattacked()
        crowd = Crowd()
        async with crowd.running():
            (attacker,) = await crowd.open(self.server.port, ATTACK_SOURCES[0], 1, factory)
            self.start_sampling()
            async with background(attack(attacker)):
                await self.measure_attacked()
        await self.settle()
        await self.measure_recovered()
        return attacker

    async def measure_recovered(self) -> None:
        """Run the good client again once the attack is over (every attacker gone).

        Not part of the ratio: it tells whether the server serves as before
        (and, when it is low too, that the machine got busier meanwhile).
        """
        self.recovered = await self._run_good_client()

    async def _run_good_client(self) -> GoodResult:
        server_cpu, client = self.server.cpu_seconds(), os.times()
        result = await good_client(self.server.port, context=self.context)
        after = os.times()
        result.server_cpu = self.server.cpu_seconds() - server_cpu
        result.client_cpu = after.user + after.system - client.user - client.system
        return result

    async def settle(self, timeout: float = 3.0) -> None:
        """After the attack: wait (up to ``timeout``) for the server's fds to come back
        to what they were before it, then take the 'after' figures."""
        await self.server.wait_fds(self.fds_before, timeout)
        await asyncio.sleep(0.1)
        self._take_sample()
        await self.stop_sampling()
        self.fds_after = self.server.fds()
        self.rss_after = self.server.rss_kib()

    async def stop_sampling(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    # -- figures

    @property
    def ratio(self) -> float:
        if self.unattacked is None or self.attacked is None or not self.unattacked.answered:
            return 0.0
        return self.attacked.answered / self.unattacked.answered

    @property
    def lost(self) -> int:
        runs = (self.unattacked, self.attacked, self.recovered)
        return sum(run.lost for run in runs if run is not None)

    @property
    def rss_growth_mib(self) -> float:
        return (self.rss_peak - self.rss_before) / 1024

    def figures(self) -> dict[str, Any]:
        quiet, loud, again = self.unattacked, self.attacked, self.recovered
        failures: Counter[str] = Counter()
        for run in (quiet, loud, again):
            if run is not None:
                failures += run.failures
        return {
            "attack": self.attack,
            "ratio": round(self.ratio, 3),
            "answered_unattacked": quiet.answered if quiet else None,
            "answered_attacked": loud.answered if loud else None,
            "answered_recovered": again.answered if again else None,
            "p99_ms_unattacked": _round(quiet.p99_ms if quiet else None),
            "p99_ms_attacked": _round(loud.p99_ms if loud else None),
            "p99_ms_recovered": _round(again.p99_ms if again else None),
            "lost": self.lost,
            "lost_unattacked": quiet.lost if quiet else None,
            "lost_attacked": loud.lost if loud else None,
            "lost_recovered": again.lost if again else None,
            "failures": dict(failures),
            "cpu_s_unattacked": _cpu(quiet),
            "cpu_s_attacked": _cpu(loud),
            "rss_mib_before": round(self.rss_before / 1024, 1),
            "rss_mib_peak": round(self.rss_peak / 1024, 1),
            "rss_mib_after": round(self.rss_after / 1024, 1),
            "fds_before": self.fds_before,
            "fds_peak": self.fds_peak,
            "fds_after": self.fds_after,
            **self.extra,
        }

    def summary(self) -> str:
        f = self.figures()
        extra = ", ".join(f"{key} {value}" for key, value in self.extra.items())
        return (
            f"[adversarial] {self.attack}: ratio {f['ratio']:.2f}"
            f" ({f['answered_unattacked']} -> {f['answered_attacked']}, then"
            f" {f['answered_recovered']} answered),"
            f" p99 {f['p99_ms_unattacked']} -> {f['p99_ms_attacked']}"
            f" -> {f['p99_ms_recovered']} ms,"
            f" lost {f['lost']} {f['failures'] or ''}, CPU s (server, client)"
            f" {f['cpu_s_unattacked']} -> {f['cpu_s_attacked']}, RSS"
            f" {f['rss_mib_before']}/{f['rss_mib_peak']}/{f['rss_mib_after']} MiB, fds"
            f" {f['fds_before']}/{f['fds_peak']}/{f['fds_after']} (before/peak/after)"
            + (f"; {extra}" if extra else "")
        )

    def report(self, record_property: Callable[[str, object], None]) -> None:
        """Record every figure, append a JSON line to $ASYNCAPY_ADVERSARIAL_REPORT, print a line."""
        figures = self.figures()
        for key, value in figures.items():
            record_property(key, value)
        path = os.environ.get(REPORT_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps(figures, default=str) + "\n")
        print("\n" + self.summary())

    def check_good_client(self, min_ratio: float = 0.5) -> None:
        """The assertions every attack shares: nothing lost, at least ``min_ratio`` throughput."""
        summary = self.summary()
        assert self.unattacked is not None
        assert self.attacked is not None
        assert self.unattacked.answered > 0, f"the unattacked good client got nothing: {summary}"
        assert self.lost == 0, f"the good client lost requests: {summary}"
        assert self.ratio >= min_ratio, f"the good client's throughput fell: {summary}"


def _cpu(result: GoodResult | None) -> tuple[float, float] | None:
    return None if result is None else (round(result.server_cpu, 2), round(result.client_cpu, 2))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
