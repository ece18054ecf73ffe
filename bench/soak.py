"""Soak: a real asyncapy server under well-behaved traffic and injected faults.

    python bench/soak.py [--seconds 60] [--clients 8] [--json PATH]
                         [--server-arg KEY=VALUE ...] [--max-rss-growth-mib 64]

The server runs in a subprocess of the same Python (``sys.executable``), on
127.0.0.1 and a free port, with ``timeout=5``, ``max_packet_size=1 MiB`` and
``session_limit=0``, every other setting at its default (``--server-arg``
overrides any of them). Its handlers, in group 0 and this order:

- ``soak_raise``: the packet has ``"raise": true``; raises, so the peer gets
  ``{"status": "failure", "error": "ERR_INTERNAL"}``;
- ``soak_echo``: ``op`` is ``echo``; ``await client.send(packet)``;
- ``soak_sleep``: ``op`` is ``sleep``; ``asyncio.sleep(ms / 1000)`` (``ms``
  capped at 1000), then the echo.

In this process, on one event loop (uvloop when it imports):

- good clients (``--clients``, alternately JSON and ZiProto sessions) send
  requests one at a time or pipelined 2 to 8 at a time, now and then one in the
  other encoding, now and then pausing (for less than the server's timeout),
  and check every reply: the echo, in the session's encoding, or
  ``ERR_INTERNAL`` for a raising request. A request whose reply is wrong, not
  there within ``--deadline`` seconds, or lost with its connection, is *lost*;
  a connection that cannot be opened loses the request it was for;
- fault injectors (FAULTS below), each kind at its own rate, bounded in time
  and in concurrency; ``--fault-rate`` scales every rate (0 turns them off).
  Each instance ends with an outcome, ``variant:result``; results other than
  the expected ones are counted as unexpected and reported, but decide nothing.

Phases: warm-up (good clients only, ``--warmup`` s); the server's RSS
(``VmRSS`` of ``/proc/PID/status``) and open fds (``/proc/PID/fd``) are read:
*start*; faults for ``--seconds``; the fault instances in flight finish; after
at least 1 s, and until the fd count is back to start + ``--fd-slack`` (at most
``--settle`` s), RSS and fds are read again: *end*; the good clients stop;
SIGTERM stops the server (SIGKILL 5 s later if it has not exited).

Exit status 1 when a good client lost a request, the server ends with more than
start + ``--fd-slack`` fds, or its RSS grew by more than
``--max-rss-growth-mib``; 0 otherwise; 130 on Ctrl-C. The summary goes to
stderr (its last line starts with ``soak: PASS`` or ``soak: FAIL``), the whole
report to ``--json PATH``. Not part of the test suite: ``scripts/test`` runs
it once; bench/README.md, "Soak", says what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import fcntl
import json
import logging
import os
import platform
import random
import re
import selectors
import signal
import socket
import string
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, cast

import asyncapy
from asyncapy.codecs import CODECS
from asyncapy.errors import LocalProtocolError
from asyncapy.protocol import (
    PROTOCOL_VERSION,
    ByteOrder,
    Encoding,
    Event,
    Frame,
    FrameDecoder,
    FrameError,
    encode_frame,
)

HOST: Final = "127.0.0.1"
MIB: Final = 1024 * 1024
SERVER_DEFAULTS: Final[dict[str, int | float | str]] = {
    "timeout": 5,
    "max_packet_size": MIB,
    "session_limit": 0,
}
INTERNAL: Final = {"status": "failure", "error": "ERR_INTERNAL"}
RAISE_MARK: Final = b"soak_raise"
"""The ERROR log lines that a raising request causes name this handler."""
STOP_GRACE: Final = 5.0
"""Seconds the server gets to exit after SIGTERM before SIGKILL."""

FAULTS: Final[dict[str, tuple[float, int, str]]] = {
    # name: (instances per second at --fault-rate 1, at most at once, what it does)
    "garbage": (10, 8, "random bytes (or a TLS or HTTP start), then close"),
    "bad_header": (10, 8, "Protocol-Version or Content-Encoding wrong, then an echo"),
    "malformed": (10, 8, "a payload that does not decode to a map, then an echo"),
    "no_handler": (5, 8, "a map no handler matches, then an echo"),
    "too_large": (5, 8, "Content-Length over max_packet_size (alone, with a tail)"),
    "half_reset": (10, 8, "half a frame, then a reset (SO_LINGER 0)"),
    "slowloris": (1, 16, "a frame trickled (or nothing sent), left to time out"),
    "no_read": (0.5, 4, "requests, never a read; closed after 1-3 s, or after the timeout"),
    "disconnect_slow": (10, 8, "slow requests, then close or reset while they run"),
    "connect_close": (10, 8, "connect, then close or reset without sending"),
    "half_close": (5, 8, "requests, then shutdown(SHUT_WR); every reply, then EOF"),
}
EXPECTED: Final[dict[str, tuple[str, ...] | None]] = {
    # the results (after "variant:") each kind should end with; None: any result
    "garbage": None,
    "bad_header": ("ERR_HEADER_INVALID+echo",),
    "malformed": ("ERR_REQUEST_MALFORMED+echo",),
    "no_handler": ("ERR_NO_HANDLER+echo",),
    "too_large": ("ERR_PACKET_TOO_LARGE+eof", "ERR_PACKET_TOO_LARGE+reset"),
    "half_reset": None,
    "slowloris": ("ERR_TIMED_OUT+eof",),
    "no_read": None,
    "disconnect_slow": None,
    "connect_close": None,
    "half_close": ("echo+eof",),
}
WRAPPER: Final = "-"
"""The variant of an outcome the instance did not report itself (a timeout, an error)."""

ALPHABET: Final = (
    list(string.ascii_letters + string.digits + ' "\\/{}[]:,')
    + list("\b\f\n\r\t\x00\x01\x1f\x7f")
    + list("éßøñжщ中文字😀🚀\u2028\u2029\ufeff\uffff\U0010ffff")
)


# -- the server, in the child process ------------------------------------------


def serve_child(settings_json: str) -> int:
    """Run the soak's server; print ``PORT n loop`` once listening, ``STATS {...}`` at exit."""
    from asyncapy import Filters, Server
    from asyncapy.core import Client, Packet

    settings: dict[str, Any] = json.loads(settings_json)
    defaults = asyncapy.Settings()
    # A root handler in the server's format, so that asyncio's own errors
    # ("Task exception was never retrieved") are logged with a level as well.
    logging.basicConfig(
        level=logging.WARNING,
        format=str(settings.get("console_format", defaults.console_format)),
        datefmt=str(settings.get("datefmt", defaults.datefmt)),
    )
    server = Server(addr=HOST, port=0, **settings)

    asked_to_raise = Filters.create(lambda client, packet: packet.get("raise") is True, "raise")

    @server.add_handler(asked_to_raise)
    async def soak_raise(client: Client, packet: Packet) -> None:
        raise RuntimeError("soak: this request asked the handler to raise")

    @server.add_handler(Filters.Fields(op=r"echo\Z"))
    async def soak_echo(client: Client, packet: Packet) -> None:
        await client.send(packet)

    @server.add_handler(Filters.Fields(op=r"sleep\Z"))
    async def soak_sleep(client: Client, packet: Packet) -> None:
        ms = packet.get("ms")
        if isinstance(ms, int | float) and not isinstance(ms, bool):
            await asyncio.sleep(min(max(float(ms), 0.0), 1000.0) / 1000)
        await client.send(packet)

    def watch_parent() -> None:
        # The parent holds our stdin: EOF means it is gone, whatever killed it.
        # (os.read, not sys.stdin: a daemon thread blocked in a buffered read
        # makes the interpreter abort at exit.)
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        server.stop()

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        started = asyncio.create_task(server.wait_started())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        if started.done():
            loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
            print(f"PORT {server.port} {loop}", flush=True)
        else:
            started.cancel()
        await serving

    threading.Thread(target=watch_parent, name="soak-watch-parent", daemon=True).start()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(main())
    finally:
        print("STATS " + json.dumps(asdict(server.stats)), flush=True)
    return 0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it imports, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


# -- framing and payloads --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wire:
    """The server's framing settings, for building and reading frames."""

    header_size: int
    byteorder: ByteOrder
    max_packet_size: int

    @property
    def largest_length(self) -> int:
        """The largest Content-Length the header can express."""
        return (1 << (8 * self.header_size)) - 1

    def frame(self, fields: dict[Any, Any], encoding: Encoding) -> bytes:
        """The frame of ``fields`` encoded with ``encoding``."""
        payload = CODECS[encoding].encode_payload(fields)
        return encode_frame(
            payload, encoding, header_size=self.header_size, byteorder=self.byteorder
        )

    def raw(self, length: int, version: int, encoding: int, payload: bytes = b"") -> bytes:
        """A frame with the header given as is (any length, version or encoding)."""
        head = length.to_bytes(self.header_size, self.byteorder)
        return head + bytes((version, encoding)) + payload

    def decoder(self) -> FrameDecoder:
        """A decoder for the server's replies (which may be as long as the header allows)."""
        return FrameDecoder(self.header_size, self.byteorder, min(self.largest_length, 1 << 30))


def decode_reply(event: Event) -> dict[Any, Any] | None:
    """The map a reply frame carries, or None when it is not a good frame of a map."""
    if not isinstance(event, Frame):
        return None
    try:
        return CODECS[event.encoding].decode(event.payload)
    except ValueError:
        return None


def random_text(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(ALPHABET, k=size))


def random_float(rng: random.Random) -> float:
    special = (0.0, -0.0, 0.1, 1 / 3, 1e308, -1e-308, 5e-324, float(2**53 + 2))
    return rng.choice(special) if rng.random() < 0.3 else rng.uniform(-1e9, 1e9)


def random_value(rng: random.Random, depth: int, rich: bool) -> Any:
    """A random value JSON can carry; with ``rich``, also bytes and int map keys."""
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return rng.randint(-1000, 1000)
    if kind == 1:
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == 2:
        return random_float(rng)
    if kind == 3:
        return random_text(rng, rng.randrange(40))
    if kind == 4:
        return rng.random() < 0.5
    if kind == 5:
        return None
    if kind == 6:
        return rng.randbytes(rng.randrange(40)) if rich else random_text(rng, 5)
    if kind in (7, 8):
        return [random_value(rng, depth + 1, rich) for _ in range(rng.randrange(6))]
    return random_map(rng, depth + 1, rich)


def random_map(rng: random.Random, depth: int, rich: bool) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for _ in range(rng.randrange(6)):
        key: Any = rng.randint(-100, 100) if rich and rng.random() < 0.3 else None
        if key is None:
            key = random_text(rng, rng.randrange(1, 12))
        out[key] = random_value(rng, depth, rich)
    return out


class Pool:
    """Request bodies made once: small, medium and large; JSON-safe, and ZiProto-rich."""

    def __init__(self, rng: random.Random, max_packet_size: int) -> None:
        large_cap = max(64, max_packet_size // 8)  # a char can take 6 bytes in JSON
        self.small = [random_map(rng, 0, False) for _ in range(64)]
        self.small_rich = [random_map(rng, 0, True) for _ in range(64)]
        self.medium: list[dict[Any, Any]] = [
            {"text": random_text(rng, min(large_cap, rng.randrange(1024, 8192)))} for _ in range(8)
        ] + [{"ints": [rng.randint(-(2**40), 2**40) for _ in range(500)]} for _ in range(4)]
        self.medium_rich: list[dict[Any, Any]] = [
            {"bin": rng.randbytes(min(large_cap, rng.randrange(1024, 16384))), 7: "int key"}
            for _ in range(8)
        ]
        self.large = [
            {"blob": random_text(rng, min(large_cap, size))}
            for size in (32 * 1024, 64 * 1024, 128 * 1024, 256 * 1024)
        ]

    def pick(self, rng: random.Random, rich: bool) -> dict[Any, Any]:
        roll = rng.random()
        if roll < 0.02:
            return rng.choice(self.large)
        rich = rich and rng.random() < 0.5
        if roll < 0.15:
            return rng.choice(self.medium_rich if rich else self.medium)
        return rng.choice(self.small_rich if rich else self.small)


# -- good clients ------------------------------------------------------------------


@dataclass
class Totals:
    """What the good clients did."""

    answered: int = 0
    lost: int = 0
    reconnects: int = 0
    batches: int = 0
    pipelined: int = 0
    cross_encoding: int = 0
    pauses: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    lost_examples: list[str] = field(default_factory=list)

    def lose(self, count: int, why: str) -> None:
        self.lost += count
        if len(self.lost_examples) < 20:
            stamp = datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]
            self.lost_examples.append(f"{stamp} {count} lost: {why}")


@dataclass(slots=True)
class Request:
    seq: int
    frame: bytes
    expect: dict[Any, Any]
    op: str


class GoodClient:
    """One well-behaved keep-alive connection (reconnects only after a loss)."""

    def __init__(
        self,
        index: int,
        port: int,
        wire: Wire,
        pool: Pool,
        totals: Totals,
        options: argparse.Namespace,
        server_timeout: float,
    ) -> None:
        self.index = index
        self.port = port
        self.wire = wire
        self.pool = pool
        self.totals = totals
        self.deadline = float(options.deadline)
        self.rate = float(options.rate) / max(1, int(options.clients))
        self.server_timeout = server_timeout
        self.rng = random.Random(f"{options.seed}-client-{index}")
        self.home = Encoding.JSON if index % 2 == 0 else Encoding.ZIPROTO
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.decoder = wire.decoder()
        self.pending: deque[Event] = deque()
        self.fresh = True  # no request sent on this connection yet
        self.seq = 0
        self.sent = 0

    async def run(self, stop: asyncio.Event) -> None:
        rng = self.rng
        started = time.monotonic()
        next_pause = started + rng.uniform(8, 20)
        connections = 0
        try:
            while not stop.is_set():
                if self.writer is None:
                    if connections:
                        self.totals.reconnects += 1
                    connections += 1
                    if not await self.connect():
                        await wait_or_stop(stop, 0.5)
                        continue
                await self.one_batch()
                now = time.monotonic()
                if self.rate > 0:
                    ahead = self.sent / self.rate - (now - started)
                    if ahead > 0:
                        await wait_or_stop(stop, ahead)
                if now >= next_pause:
                    self.totals.pauses += 1
                    await wait_or_stop(stop, rng.uniform(0.2, 0.6 * self.server_timeout))
                    next_pause = time.monotonic() + rng.uniform(8, 20)
        finally:
            await self.disconnect(graceful=True)

    async def connect(self) -> bool:
        try:
            async with asyncio.timeout(self.deadline):
                self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        except (OSError, TimeoutError) as exc:
            self.totals.lose(1, f"client {self.index}: cannot connect: {exc!r}")
            return False
        self.decoder = self.wire.decoder()
        self.pending.clear()
        self.fresh = True
        return True

    async def disconnect(self, graceful: bool) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is None:
            return
        if not graceful:
            writer.transport.abort()
            return
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2):
                await writer.wait_closed()

    def make_batch(self) -> list[Request]:
        rng = self.rng
        count = 1 if rng.random() < 0.6 else rng.randint(2, 8)
        batch = []
        for _ in range(count):
            self.seq += 1
            encoding = self.home
            if not self.fresh and rng.random() < 0.03:
                encoding = Encoding(1 - self.home)
                self.totals.cross_encoding += 1
            self.fresh = False
            rich = self.home == encoding == Encoding.ZIPROTO
            fields: dict[Any, Any] = {"seq": self.seq, "c": self.index}
            roll = rng.random()
            if roll < 0.01:
                op = "raise"
                fields.update(op="echo", body=self.pool.pick(rng, rich))
                fields["raise"] = True
                expect: dict[Any, Any] = INTERNAL
            elif roll < 0.25:
                op = "sleep"
                fields.update(op="sleep", ms=rng.randint(0, 5), body=self.pool.pick(rng, rich))
                expect = fields
            else:
                op = "echo"
                fields.update(op="echo", body=self.pool.pick(rng, rich))
                expect = fields
            batch.append(Request(self.seq, self.wire.frame(fields, encoding), expect, op))
        return batch

    async def one_batch(self) -> None:
        batch = self.make_batch()
        self.totals.batches += 1
        if len(batch) > 1:
            self.totals.pipelined += len(batch)
        writer, reader = self.writer, self.reader
        assert writer is not None
        assert reader is not None
        done = 0
        why = ""
        try:
            async with asyncio.timeout(self.deadline):
                writer.write(b"".join(request.frame for request in batch))
                await writer.drain()
                for request in batch:
                    while not self.pending:
                        data = await reader.read(1 << 18)
                        if not data:
                            raise ConnectionError("the server closed the connection")
                        self.pending.extend(self.decoder.feed(data))
                    wrong = self.check(request, self.pending.popleft())
                    if wrong:
                        why = f"{request.op} seq {request.seq}: {wrong}"
                        break
                    done += 1
                    self.totals.ops[request.op] += 1
        except TimeoutError:
            why = f"no reply within {self.deadline} s"
        except OSError as exc:  # ConnectionError included
            why = f"connection lost: {exc!r}"
        except LocalProtocolError as exc:  # the decoder was fed after a fatal frame error
            why = f"bad reply stream: {exc}"
        self.totals.answered += done
        self.sent += len(batch)
        if done < len(batch):
            self.totals.lose(len(batch) - done, f"client {self.index}: {why}")
            await self.disconnect(graceful=False)

    def check(self, request: Request, event: Event) -> str:
        """Why the reply is wrong, or "" when it is right."""
        if isinstance(event, FrameError):
            return f"bad reply frame: {event.code} ({event.detail})"
        if event.encoding != self.home:
            return f"reply in {event.encoding}, the session is {self.home}"
        got = decode_reply(event)
        if got is None:
            return "the reply does not decode to a map"
        if got != request.expect:
            text = repr(got)
            return f"wrong reply: {text[:200]}{'...' if len(text) > 200 else ''}"
        return ""


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


# -- fault injectors -----------------------------------------------------------------


class Raw:
    """A plain socket for the faults: resets, half-closes, no buffering of ours."""

    def __init__(self, sock: socket.socket, wire: Wire) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.decoder = wire.decoder()
        self.events: list[Event] = []
        self.times: list[float] = []
        self.end = ""  # "eof" or "reset" once the server has closed

    @classmethod
    async def open(cls, port: int, wire: Wire) -> Raw:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock, wire)

    async def send(self, data: bytes) -> bool:
        """Send ``data``; False when the server has closed or reset the connection."""
        try:
            await self.loop.sock_sendall(self.sock, data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def read(self, count: int, *, until_end: bool = False) -> None:
        """Read until ``count`` replies are in (and, with ``until_end``, the server closed)."""
        while not self.end and (until_end or len(self.events) < count):
            try:
                data = await self.loop.sock_recv(self.sock, 1 << 16)
            except ConnectionResetError:
                self.end = "reset"
                break
            if not data:
                self.end = "eof"
                break
            if not self.decoder.closed:
                events = self.decoder.feed(data)
                self.events.extend(events)
                self.times.extend([time.monotonic()] * len(events))

    def result(self, echoes: Iterable[dict[Any, Any]] = (), *, with_end: bool = False) -> str:
        """The replies as ``CODE+echo+...`` (and ``+eof``/``+reset``).

        A reply equal to one of ``echoes`` is ``echo``; an error reply its code.
        Repeated labels in a row are written once.
        """
        wanted = list(echoes)
        labels: list[str] = []
        for event in self.events:
            if isinstance(event, FrameError):
                label = f"bad_frame({event.code})"
            else:
                got = decode_reply(event)
                if got is None:
                    label = "undecodable"
                elif got in wanted:
                    label = "echo"
                elif got.get("status") == "failure":
                    label = str(got.get("error"))
                else:
                    label = "other_reply"
            if not labels or labels[-1] != label:
                labels.append(label)
        if with_end:
            labels.append(self.end or "open")
        return "+".join(labels) or "nothing"

    def close(self, *, reset: bool = False) -> None:
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


@dataclass
class FaultStats:
    count: int = 0
    unexpected: int = 0
    skipped: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    bytes_sent: int = 0


class Injector:
    """Runs every kind of fault at its rate until stopped; counts the outcomes."""

    def __init__(self, port: int, wire: Wire, options: argparse.Namespace, timeout: float):
        self.port = port
        self.wire = wire
        self.timeout = timeout
        self.scale = float(options.fault_rate)
        self.rng = random.Random(f"{options.seed}-faults")
        self.stats: dict[str, FaultStats] = {name: FaultStats() for name in FAULTS}
        self.kinds: dict[str, Callable[[], Awaitable[str]]] = {
            "garbage": self.garbage,
            "bad_header": self.bad_header,
            "malformed": self.malformed,
            "no_handler": self.no_handler,
            "too_large": self.too_large,
            "half_reset": self.half_reset,
            "slowloris": self.slowloris,
            "no_read": self.no_read,
            "disconnect_slow": self.disconnect_slow,
            "connect_close": self.connect_close,
            "half_close": self.half_close,
        }
        if wire.max_packet_size >= wire.largest_length:
            del self.kinds["too_large"]  # no Content-Length can exceed it
        self.running: set[asyncio.Task[None]] = set()
        self.seq = 0
        self.text_cap = min(65536, wire.max_packet_size // 8)  # chars that surely fit a frame

    def max_seconds(self, name: str) -> float:
        """How long one instance of ``name`` may take before it counts as a client timeout."""
        if name == "slowloris":
            return self.timeout + 8
        if name == "no_read":
            return self.timeout + 8
        return 5.0

    async def run(self, stop: asyncio.Event) -> None:
        """Launch instances of every kind until ``stop``; then let those in flight finish.

        Cancelled, it cancels the instances in flight (and does not wait for them).
        """
        try:
            if self.scale > 0:
                async with asyncio.TaskGroup() as group:
                    for name in self.kinds:
                        group.create_task(self.schedule(name, stop))
            if self.running:
                longest = max(self.max_seconds(name) for name in self.kinds) + 2
                await asyncio.wait(self.running, timeout=longest)
        finally:
            late = list(self.running)
            for task in late:
                task.cancel()
        if late:
            await asyncio.wait(late, timeout=2)

    async def schedule(self, name: str, stop: asyncio.Event) -> None:
        rate, limit, _ = FAULTS[name]
        interval = 1 / (rate * self.scale)
        stats = self.stats[name]
        active: set[asyncio.Task[None]] = set()
        next_start = time.monotonic() + self.rng.uniform(0, interval)
        while not stop.is_set():
            await wait_or_stop(stop, next_start - time.monotonic())
            if stop.is_set():
                break
            if len(active) >= limit:
                stats.skipped += 1
            else:
                task = asyncio.create_task(self.instance(name))
                active.add(task)
                self.running.add(task)
                task.add_done_callback(active.discard)
                task.add_done_callback(self.running.discard)
            # Jittered, and never in a burst to catch up after a stall.
            next_start = max(next_start, time.monotonic()) + interval * self.rng.uniform(0.5, 1.5)

    async def instance(self, name: str) -> None:
        stats = self.stats[name]
        stats.count += 1
        try:
            async with asyncio.timeout(self.max_seconds(name)):
                outcome = await self.kinds[name]()
        except TimeoutError:
            outcome = f"{WRAPPER}:client_timeout"
        except OSError as exc:
            outcome = f"{WRAPPER}:{type(exc).__name__}"
        except asyncio.CancelledError:
            outcome = f"{WRAPPER}:cancelled_at_end"
        except Exception as exc:
            outcome = f"{WRAPPER}:{type(exc).__name__}: {exc}"
        stats.outcomes[outcome] += 1
        variant, _, result = outcome.partition(":")
        allowed = EXPECTED[name]
        if variant == WRAPPER or (allowed is not None and result not in allowed):
            stats.unexpected += 1
            if len(stats.examples) < 5:
                stats.examples.append(outcome)

    def echo(self, **extra: Any) -> dict[Any, Any]:
        self.seq += 1
        return {"op": "echo", "fault": self.seq, **extra}

    def encoding(self) -> Encoding:
        return self.rng.choice((Encoding.JSON, Encoding.ZIPROTO))

    # Each fault returns its outcome, "variant:result".

    async def garbage(self) -> str:
        rng = self.rng
        variant = rng.choice(("random", "random", "tls", "http"))
        data = rng.randbytes(rng.randint(1, 2048))
        if variant == "tls":
            data = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + data
        elif variant == "http":
            data = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        raw = await Raw.open(self.port, self.wire)
        try:
            sent = await raw.send(data)
            if rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0, 0.02))
        finally:
            raw.close()
        return f"{variant}:{'sent' if sent else 'reset'}"

    async def bad_header(self) -> str:
        rng = self.rng
        encoding = self.encoding()
        payload = CODECS[encoding].encode_payload(self.echo())
        if rng.random() < 0.5:
            variant = "version"
            bad = self.wire.raw(
                len(payload) + 2, rng.choice([v for v in range(256) if v != 22]), encoding, payload
            )
        else:
            variant = "encoding"
            bad = self.wire.raw(len(payload) + 2, PROTOCOL_VERSION, rng.randint(2, 255), payload)
        return await self.then_echo(variant, bad)

    async def malformed(self) -> str:
        rng = self.rng
        wire = self.wire
        cases: dict[str, tuple[int, bytes]] = {
            "json_truncated": (0, b'{"a": '),
            "json_text": (0, b"not json at all"),
            "json_trailing": (0, b'{"a":1}}'),
            "json_utf8": (0, b'{"a":"\xff\xfe"}'),
            "json_array": (0, b"[1,2,3]"),
            "json_string": (0, b'"just a string"'),
            "json_deep": (0, b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"),
            "zp_c1": (1, b"\xc1\xc1\xc1"),
            "zp_truncated": (1, b"\x82\xa1a\x01\xa1"),
            "zp_trailing": (1, b"\x81\xa1a\x01\x00\x00"),
            "zp_array": (1, b"\x93\x01\x02\x03"),
            "zp_deep": (1, b"\x81\xa1a" + b"\x91" * 5000 + b"\xc0"),
        }
        variant = rng.choice([*cases, "short_length"])
        if variant == "short_length":  # Content-Length 0 to 4, and the bytes it declares
            length = rng.randint(0, 4)
            bad = length.to_bytes(wire.header_size, wire.byteorder) + b"\x16\x00{}"[:length]
        else:
            encoding, payload = cases[variant]
            bad = wire.raw(len(payload) + 2, PROTOCOL_VERSION, encoding, payload)
        return await self.then_echo(variant, bad)

    async def no_handler(self) -> str:
        fields = {"op": self.rng.choice(("missing", "ECHO", "echo2", 7)), "fault": self.seq}
        return await self.then_echo("no_op", self.wire.frame(fields, self.encoding()))

    async def then_echo(self, variant: str, bad: bytes) -> str:
        """Send ``bad`` and an echo (together or apart): expect the error, then the echo."""
        echo = self.echo()
        good = self.wire.frame(echo, self.encoding())
        raw = await Raw.open(self.port, self.wire)
        try:
            if self.rng.random() < 0.5:
                await raw.send(bad + good)
            else:
                await raw.send(bad)
                await raw.read(1)
                await raw.send(good)
            await raw.read(2)
        finally:
            raw.close()
        return f"{variant}:{raw.result([echo])}"

    async def too_large(self) -> str:
        rng = self.rng
        wire = self.wire
        variant = rng.choice(("header", "header", "tail", "late_tail", "huge"))
        if variant == "huge":
            length = wire.largest_length
        else:
            length = min(wire.largest_length, wire.max_packet_size + 1 + rng.randrange(1 << 20))
        header = wire.raw(length, PROTOCOL_VERSION, self.encoding())
        raw = await Raw.open(self.port, wire)
        try:
            if variant == "tail":
                await raw.send(header + rng.randbytes(2048))
            else:
                await raw.send(header)
            if variant == "late_tail":
                await asyncio.sleep(0.05)
                await raw.send(rng.randbytes(8192))
            await raw.read(1, until_end=True)
        finally:
            raw.close()
        return f"{variant}:{raw.result(with_end=True)}"

    async def half_reset(self) -> str:
        rng = self.rng
        frame = self.wire.frame(
            self.echo(body=random_text(rng, rng.randint(16, self.text_cap))), self.encoding()
        )
        if rng.random() < 0.25:
            variant = "half_header"
            part = frame[: rng.randint(1, self.wire.header_size + 1)]
        else:
            variant = "half_payload"
            part = frame[: len(frame) // 2]
        await self._send_and_leave(part, rng.uniform(0, 0.03), reset=True)
        return f"{variant}:reset"

    async def _send_and_leave(self, data: bytes, pause: float, *, reset: bool) -> None:
        """Connect, send ``data``, wait ``pause`` seconds, then reset or close."""
        raw = await Raw.open(self.port, self.wire)
        try:
            await raw.send(data)
            await asyncio.sleep(pause)
        finally:
            raw.close(reset=reset)

    async def slowloris(self) -> str:
        rng = self.rng
        variant = rng.choice(("trickle", "trickle", "trickle", "idle", "after_frame"))
        raw = await Raw.open(self.port, self.wire)
        try:
            since = time.monotonic()
            expect = 1
            echoes = []
            if variant == "after_frame":
                echoes.append(self.echo())
                await raw.send(self.wire.frame(echoes[0], self.encoding()))
                await raw.read(1)
                if raw.result(echoes) != "echo":
                    return f"{variant}:{raw.result(echoes)}"
                since = raw.times[0]
                expect = 2
            rest = b""
            if variant != "idle":
                # A frame declaring 2000 payload bytes, sent a byte at a time:
                # it cannot be complete before the timeout.
                frame = self.wire.frame(self.echo(pad="x" * 2000), self.encoding())
                start = self.wire.header_size + 2 + rng.randint(0, 10)
                if not await raw.send(frame[:start]):
                    return f"{variant}:reset_early"
                rest = frame[start:]
            reader = asyncio.create_task(raw.read(expect, until_end=True))
            try:
                while rest and not reader.done():
                    await asyncio.wait({reader}, timeout=rng.uniform(0.3, 0.7))
                    if reader.done() or not await raw.send(rest[:1]):
                        break
                    rest = rest[1:]
                await reader
            finally:
                reader.cancel()
        finally:
            raw.close()
        result = raw.result(echoes, with_end=True)
        if variant == "after_frame":
            result = result.removeprefix("echo+")
        if result == "ERR_TIMED_OUT+eof":
            elapsed = raw.times[-1] - since
            if elapsed < self.timeout - 0.25:
                result += f":early({elapsed:.1f}s)"
            elif elapsed > self.timeout + 2.5:
                result += f":late({elapsed:.1f}s)"
        return f"{variant}:{result}"

    async def no_read(self) -> str:
        """Pipelined requests, never a read; closed by us after 1-3 s ("held"), or
        held past the server's timeout, then read to see whether the server
        closed it ("outlast")."""
        rng = self.rng
        stats = self.stats["no_read"]
        frame = self.wire.frame(
            self.echo(body=random_text(rng, min(16384, self.text_cap))), self.encoding()
        )
        variant = "outlast" if rng.random() < 0.25 else "held"
        hold = self.timeout + 2 if variant == "outlast" else rng.uniform(1, 3)
        until = time.monotonic() + hold
        sending = "unblocked"  # we could send until the end
        raw = await Raw.open(self.port, self.wire)
        reset = False
        try:
            while (left := until - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(min(0.5, left)):
                        if not await raw.send(frame):
                            sending = "reset_by_server"
                            break
                except TimeoutError:
                    sending = "blocked"  # our buffers and the server's are full
                    await asyncio.sleep(max(0.0, until - time.monotonic()))
                    break
                stats.bytes_sent += len(frame)
            if variant == "outlast":
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(3):
                        await raw.read(0, until_end=True)
                ending = "closed_by_server" if raw.end else "open"
            else:
                reset = rng.random() < 0.5
                ending = "reset" if reset else "close"
        finally:
            raw.close(reset=reset)
        return f"{variant}:{sending}+{ending}"

    async def disconnect_slow(self) -> str:
        rng = self.rng
        encoding = self.encoding()
        count = rng.randint(1, 4)
        frames = b"".join(
            self.wire.frame(
                {"op": "sleep", "ms": rng.randint(50, 500), "fault": self.seq}, encoding
            )
            for _ in range(count)
        )
        reset = rng.random() < 0.5
        await self._send_and_leave(frames, rng.uniform(0.005, 0.02), reset=reset)
        return f"{'one' if count == 1 else 'several'}:{'reset' if reset else 'close'}"

    async def connect_close(self) -> str:
        rng = self.rng
        raw = await Raw.open(self.port, self.wire)
        reset = rng.random() < 0.5
        try:
            if rng.random() < 0.5:
                await asyncio.sleep(rng.uniform(0, 0.05))
        finally:
            raw.close(reset=reset)
        return f"{'reset' if reset else 'close'}:done"

    async def half_close(self) -> str:
        rng = self.rng
        encoding = self.encoding()
        echoes = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.5:
                echoes.append(self.echo())
            else:
                self.seq += 1
                echoes.append({"op": "sleep", "ms": rng.randint(1, 20), "fault": self.seq})
        raw = await Raw.open(self.port, self.wire)
        try:
            await raw.send(b"".join(self.wire.frame(echo, encoding) for echo in echoes))
            raw.sock.shutdown(socket.SHUT_WR)
            await raw.read(len(echoes), until_end=True)
        finally:
            raw.close()
        result = raw.result(echoes, with_end=True)
        if result == "echo+eof" and len(raw.events) != len(echoes):
            result = f"{len(raw.events)}_of_{len(echoes)}_echoes+eof"
        return f"{len(echoes)}:{result}"


# -- the server process, seen from outside --------------------------------------------


@dataclass(slots=True)
class Sample:
    rss_kib: int
    hwm_kib: int
    fds: int
    cpu_s: float


def read_sample(pid: int) -> Sample:
    """The server's RSS, peak RSS (KiB), open fds and CPU time, from /proc."""
    rss = hwm = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        cpu = 0.0
    return Sample(rss, hwm, fds, cpu)


class Sampler:
    """Reads the server's figures 4 times a second: the maxima, and a series for the report."""

    def __init__(self, pid: int, series_every: float) -> None:
        self.pid = pid
        self.series_every = series_every
        self.max_rss = 0
        self.max_fds = 0
        self.max_lag = 0.0
        self.series: list[list[float]] = []
        self.t0 = time.monotonic()

    def take(self) -> Sample:
        sample = read_sample(self.pid)
        self.max_rss = max(self.max_rss, sample.rss_kib)
        self.max_fds = max(self.max_fds, sample.fds)
        return sample

    async def run(self, stop: asyncio.Event) -> None:
        interval = 0.25
        due = time.monotonic()
        last_series = -1e9
        while not stop.is_set():
            due += interval
            await wait_or_stop(stop, due - time.monotonic())
            now = time.monotonic()
            self.max_lag = max(self.max_lag, now - due)  # how late this loop wakes up
            due = max(due, now)
            sample = self.take()
            if now - last_series >= self.series_every:
                last_series = now
                self.series.append([round(now - self.t0, 1), sample.rss_kib, sample.fds])


class LogReader(threading.Thread):
    """Reads the server's stderr (its log) as it comes: counts, keeps the tail and examples.

    A thread, so that a busy event loop never leaves the server blocked on a full pipe.
    """

    def __init__(self, fd: int, keep: Path | None) -> None:
        super().__init__(name="soak-server-log", daemon=True)
        self.fd = fd
        self.keep = keep
        self.bytes = 0
        self.lines = 0
        self.levels: Counter[str] = Counter()
        self.raise_errors = 0
        self.other_errors = 0
        self.kinds: Counter[str] = Counter()  # WARNING and worse, by message shape
        self.examples: list[str] = []  # ERROR lines (not of raising requests), with tracebacks
        self.tail: deque[str] = deque(maxlen=30)
        self._example_lines = 0  # lines still to add to the last example

    def run(self) -> None:
        out = self.keep.open("wb") if self.keep is not None else None
        partial = b""
        try:
            while chunk := os.read(self.fd, 1 << 20):
                self.bytes += len(chunk)
                if out is not None:
                    out.write(chunk)
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                for line in lines:
                    self.line(line)
            if partial:
                self.line(partial)
        except OSError:
            pass
        finally:
            if out is not None:
                out.close()

    def line(self, line: bytes) -> None:
        self.lines += 1
        text = line.decode("utf-8", "replace")
        self.tail.append(text)
        end = line.find(b"]", 0, 12)
        if not line.startswith(b"[") or end < 0:
            if self._example_lines > 0 and self.examples:
                self._example_lines -= 1
                self.examples[-1] += "\n" + text
            return
        self._example_lines = 0
        level = line[1:end].decode("ascii", "replace")
        self.levels[level] += 1
        if level in ("ERROR", "CRITICAL") and RAISE_MARK in line:
            self.raise_errors += 1
        elif level in ("WARNING", "ERROR", "CRITICAL"):
            self.kinds[message_shape(text)] += 1
            if level != "WARNING":
                self.other_errors += 1
                if len(self.examples) < 8:
                    self.examples.append(text)
                    self._example_lines = 20


_SHAPES: Final = (
    (re.compile(r"^\[(\w+)\] \S+ \S+ (?:[AP]M )?"), r"\1 "),  # level, then no date
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<session>"),
    (re.compile(r"\d+\.\d+\.\d+\.\d+:\d+"), "<peer>"),
    (re.compile(r"\d+"), "N"),
)


def message_shape(text: str) -> str:
    """A log line without what changes from one line to the next (date, ids, numbers)."""
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text[:160]


# -- the run -----------------------------------------------------------------------------


class ServerDiedError(Exception):
    pass


@dataclass
class Run:
    """What the soak measured; filled in as it goes, so that a failed run still reports."""

    totals: Totals = field(default_factory=Totals)
    start: Sample | None = None
    end: Sample | None = None
    soak_seconds: float = 0.0
    drain_seconds: float = 0.0
    client_seconds: float = 0.0
    settle_seconds: float = 0.0
    sampler: Sampler | None = None
    injector: Injector | None = None
    server_loop: str = ""
    client_loop: str = "asyncio"
    error: str = ""


async def soak(
    options: argparse.Namespace,
    settings: dict[str, Any],
    server: subprocess.Popen[bytes],
    port: int,
    run: Run,
) -> None:
    wire = Wire(
        int(settings.get("header_size", 4)),
        cast(ByteOrder, settings.get("byteorder", "big")),
        int(settings["max_packet_size"]),
    )
    server_timeout = float(settings["timeout"])
    pool = Pool(random.Random(f"{options.seed}-pool"), wire.max_packet_size)

    def check_server() -> None:
        if server.poll() is not None:
            raise ServerDiedError(
                f"the server exited with status {server.returncode} during the soak"
            )

    sampler = run.sampler = Sampler(server.pid, max(1.0, options.seconds / 300))
    injector = run.injector = Injector(port, wire, options, server_timeout)
    stop_sampler = asyncio.Event()
    stop_clients = asyncio.Event()
    stop_faults = asyncio.Event()
    clients = [
        GoodClient(i, port, wire, pool, run.totals, options, server_timeout)
        for i in range(options.clients)
    ]
    sampling = asyncio.create_task(sampler.run(stop_sampler))
    client_start = time.monotonic()
    client_tasks = [asyncio.create_task(client.run(stop_clients)) for client in clients]
    faults: asyncio.Task[None] | None = None
    aborted = True  # until the run gets to its end
    try:
        warm_until = time.monotonic() + options.warmup
        while time.monotonic() < warm_until:
            check_server()
            await asyncio.sleep(min(0.25, max(0.0, warm_until - time.monotonic())))
        run.start = sampler.take()
        soak_start = time.monotonic()
        faults = asyncio.create_task(injector.run(stop_faults))
        soak_until = soak_start + options.seconds
        while time.monotonic() < soak_until:
            check_server()
            if faults.done():
                faults.result()  # raises what broke it
            await asyncio.sleep(min(0.25, max(0.0, soak_until - time.monotonic())))
        stop_faults.set()
        run.soak_seconds = time.monotonic() - soak_start
        await faults  # the instances in flight finish
        run.drain_seconds = time.monotonic() - soak_start - run.soak_seconds
        # Let the server close what the faults left; wait longer (up to --settle)
        # only while it still has more fds than at the start.
        settle_start = time.monotonic()
        settle_until = settle_start + max(1.0, options.settle)
        while True:
            check_server()
            await asyncio.sleep(0.25)
            now = time.monotonic()
            sample = sampler.take()
            if now >= settle_until or (
                now - settle_start >= 1.0 and sample.fds <= run.start.fds + options.fd_slack
            ):
                break
        run.settle_seconds = time.monotonic() - settle_start
        run.end = sampler.take()
        aborted = False
    finally:
        # At the end, the good clients finish the batch they are on; on Ctrl-C,
        # SIGTERM, an error or the server's death, everything is cancelled at once.
        stop_faults.set()
        stop_clients.set()
        pending = [*client_tasks, *([faults] if faults is not None else [])]
        if aborted:
            for task in (*pending, *injector.running):
                task.cancel()
            pending.extend(injector.running)
        _, late = await asyncio.wait(pending, timeout=2 if aborted else options.deadline + 3)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=2)
        run.client_seconds = time.monotonic() - client_start
        if faults is not None and not run.soak_seconds:  # cut short
            run.soak_seconds = time.monotonic() - soak_start
        stop_sampler.set()
        await sampling
        if not aborted:
            for task in client_tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise cast(BaseException, task.exception())


def parse_value(text: str) -> int | float | str:
    """``"5"`` -> 5, ``"0.5"`` -> 0.5, anything else stays a str."""
    with contextlib.suppress(ValueError):
        return int(text)
    with contextlib.suppress(ValueError):
        return float(text)
    return text


def server_settings(pairs: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = dict(SERVER_DEFAULTS)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise SystemExit(f"soak: --server-arg takes KEY=VALUE, not {pair!r}")
        if key in ("addr", "port", "certfile", "keyfile", "ssl_context"):
            raise SystemExit(f"soak: --server-arg {key}: the soak sets it (127.0.0.1, plaintext)")
        settings[key] = parse_value(value.strip())
    if int(settings.get("header_size", 4)) < 2 or int(settings["max_packet_size"]) < 4096:
        raise SystemExit("soak: its requests need header_size >= 2 and max_packet_size >= 4096")
    return settings


def start_server(settings: dict[str, Any]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-child", json.dumps(settings)]
    # Without ASYNCAPY_* variables: a Server takes each as a setting, over its
    # arguments (and refuses the unknown ones, such as ASYNCAPY_SOAK_SECONDS).
    env = {key: value for key, value in os.environ.items() if not key.startswith("ASYNCAPY_")}
    # Its own session: Ctrl-C reaches this script only, which then stops the server.
    return subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_for_port(server: subprocess.Popen[bytes], limit: float) -> tuple[int, str]:
    """Read the server's ``PORT n loop`` line."""
    assert server.stdout is not None
    fd = server.stdout.fileno()
    buffer = b""
    until = time.monotonic() + limit
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = until - time.monotonic()
            if left <= 0:
                raise ServerDiedError(f"the server did not say its port within {limit} s")
            if selector.select(left):
                chunk = os.read(fd, 4096)
                if not chunk:
                    server.wait(5)
                    raise ServerDiedError(f"the server exited with status {server.returncode}")
                buffer += chunk
    words = buffer.split(b"\n", 1)[0].decode().split()
    if len(words) < 2 or words[0] != "PORT":
        raise ServerDiedError(f"unexpected first line from the server: {buffer!r}")
    return int(words[1]), (words[2] if len(words) > 2 else "?")


def stop_server(server: subprocess.Popen[bytes]) -> tuple[str, float]:
    """SIGTERM, then SIGKILL after STOP_GRACE s; return how it ended and how long it took."""
    began = time.monotonic()
    if server.poll() is not None:
        how = "nothing (it had exited)"
    else:
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(STOP_GRACE)
            how = "SIGTERM"
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            how = f"SIGKILL (still running {STOP_GRACE:g} s after SIGTERM)"
    if server.stdin is not None:
        with contextlib.suppress(OSError):
            server.stdin.close()
    return how, time.monotonic() - began


def read_stats(server: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The ``STATS {...}`` line the server printed as it exited (empty when it did not)."""
    if server.stdout is None:
        return {}
    with contextlib.suppress(OSError, ValueError):
        for line in server.stdout.read().decode("utf-8", "replace").splitlines():
            if line.startswith("STATS "):
                return cast(dict[str, Any], json.loads(line[6:]))
    return {}


# -- report ------------------------------------------------------------------------------


def build_report(
    options: argparse.Namespace,
    settings: dict[str, Any],
    run: Run,
    server_info: dict[str, Any],
    log: LogReader,
) -> dict[str, Any]:
    totals = run.totals
    sampler = run.sampler
    failures: list[str] = []
    if run.error:
        failures.append(run.error)
    if totals.lost:
        failures.append(f"{totals.lost} request(s) of the good clients lost")
    if totals.answered == 0:
        failures.append("no request was answered")
    start, end = run.start, run.end
    if start is None or end is None:
        failures.append("the server's RSS and fds were not measured at start and end")
    else:
        if end.fds > start.fds + options.fd_slack:
            failures.append(
                f"the server has {end.fds} fds at the end, {start.fds} at the start"
                f" (slack {options.fd_slack})"
            )
        growth = (end.rss_kib - start.rss_kib) / 1024
        if growth > options.max_rss_growth_mib:
            failures.append(
                f"the server's RSS grew by {growth:.1f} MiB"
                f" (limit {options.max_rss_growth_mib:g} MiB)"
            )
    faults: dict[str, Any] = {}
    if run.injector is not None:
        for name, stats in run.injector.stats.items():
            faults[name] = {
                "count": stats.count,
                "unexpected": stats.unexpected,
                "skipped": stats.skipped,
                "outcomes": dict(stats.outcomes.most_common()),
                "unexpected_examples": stats.examples,
            }
            if name == "no_read":
                faults[name]["bytes_sent"] = stats.bytes_sent
    peak = max(sampler.max_rss if sampler else 0, end.hwm_kib if end else 0)
    return {
        "ok": not failures,
        "failures": failures,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "asyncapy": asyncapy.__version__,
        "client_loop": run.client_loop,
        "server_loop": run.server_loop,
        "cpus": os.cpu_count(),
        "seconds": options.seconds,
        "duration_s": round(run.soak_seconds, 2),
        "drain_s": round(run.drain_seconds, 2),
        "warmup_s": options.warmup,
        "settle_s": round(run.settle_seconds, 2),
        "clients": options.clients,
        "server_settings": settings,
        "answered": totals.answered,
        "lost": totals.lost,
        "lost_examples": totals.lost_examples,
        "requests_per_s": round(totals.answered / run.client_seconds, 1)
        if run.client_seconds
        else 0.0,
        "good_clients": {
            "by_op": dict(totals.ops),
            "batches": totals.batches,
            "pipelined_requests": totals.pipelined,
            "cross_encoding_requests": totals.cross_encoding,
            "pauses": totals.pauses,
            "reconnects": totals.reconnects,
            "seconds": round(run.client_seconds, 2),
        },
        "faults_total": sum(f["count"] for f in faults.values()),
        "faults_unexpected": sum(f["unexpected"] for f in faults.values()),
        "faults": faults,
        "server": {
            "pid": server_info.get("pid"),
            "rss_kib_start": start.rss_kib if start else None,
            "rss_kib_end": end.rss_kib if end else None,
            "rss_kib_max": peak,
            "rss_growth_mib": round((end.rss_kib - start.rss_kib) / 1024, 2)
            if start and end
            else None,
            "fds_start": start.fds if start else None,
            "fds_end": end.fds if end else None,
            "fds_max": sampler.max_fds if sampler else None,
            "cpu_s": round(end.cpu_s - start.cpu_s, 2) if start and end else None,
            "stopped_by": server_info.get("stopped_by"),
            "stop_s": round(server_info.get("stop_s", 0.0), 2),
            "exit_status": server_info.get("exit_status"),
            "stats": server_info.get("stats", {}),
            "series": sampler.series if sampler else [],
        },
        "server_log": {
            "bytes": log.bytes,
            "lines": log.lines,
            "levels": dict(log.levels),
            "errors_of_raising_requests": log.raise_errors,
            "other_errors": log.other_errors,
            "warnings_and_errors": dict(log.kinds.most_common(20)),
            "error_examples": log.examples,
        },
        "client_loop_max_lag_s": round(sampler.max_lag, 3) if sampler else None,
        "limits": {"fd_slack": options.fd_slack, "max_rss_growth_mib": options.max_rss_growth_mib},
    }


def print_summary(report: dict[str, Any], log: LogReader) -> None:
    def out(text: str = "") -> None:
        print(text, file=sys.stderr)

    server = report["server"]
    good = report["good_clients"]
    out(
        f"== soak: {report['duration_s']:g} s of faults (asked {report['seconds']:g}),"
        f" {report['clients']} good clients, Python {report['python']},"
        f" client loop {report['client_loop']}, server loop {report['server_loop'] or '?'}"
    )
    out(f"   server settings: {json.dumps(report['server_settings'])}")
    out(
        f"good clients: {report['answered']:,} answered, {report['lost']:,} lost,"
        f" {report['requests_per_s']:,.0f} req/s over {good['seconds']:g} s;"
        f" {good['pipelined_requests']:,} pipelined, {good['cross_encoding_requests']:,}"
        f" in the other encoding, {good['by_op'].get('raise', 0):,} raising,"
        f" {good['pauses']} pauses, {good['reconnects']} reconnects"
    )
    for example in report["lost_examples"][:10]:
        out(f"   LOST {example}")
    out(
        f"faults: {report['faults_total']:,} connections,"
        f" {report['faults_unexpected']:,} with an unexpected outcome"
    )
    for name, fault in report["faults"].items():
        if not fault["count"]:
            continue
        outcomes = ", ".join(f"{key} {n:,}" for key, n in list(fault["outcomes"].items())[:6])
        more = " ..." if len(fault["outcomes"]) > 6 else ""
        extra = f", {fault['skipped']} skipped (at their limit)" if fault["skipped"] else ""
        out(f"   {name:<16}{fault['count']:>7,}  {outcomes}{more}{extra}")
        for example in fault["unexpected_examples"][:3]:
            out(f"   {'':<16}unexpected: {example}")
    if server["rss_kib_start"] is not None and server["rss_kib_end"] is not None:
        out(
            f"server: RSS {server['rss_kib_start']:,} -> {server['rss_kib_end']:,} KiB"
            f" ({server['rss_growth_mib']:+.1f} MiB; max {server['rss_kib_max']:,}),"
            f" fds {server['fds_start']} -> {server['fds_end']} (max {server['fds_max']}),"
            f" CPU {server['cpu_s']} s; faults drained in {report['drain_s']:g} s,"
            f" settled in {report['settle_s']:g} s"
        )
    out(
        f"   stopped by {server['stopped_by']} in {server['stop_s']:g} s,"
        f" exit status {server['exit_status']}; counters {json.dumps(server['stats'])}"
    )
    logs = report["server_log"]
    out(
        f"   log: {logs['lines']:,} lines, {logs['bytes']:,} bytes, levels"
        f" {json.dumps(logs['levels'])}; {logs['errors_of_raising_requests']:,} ERROR lines"
        f" from raising requests, {logs['other_errors']} other ERROR lines"
    )
    for shape, count in list(logs["warnings_and_errors"].items())[:6]:
        out(f"   {count:>7,}  {shape}")
    for example in logs["error_examples"][:4]:
        out("   | " + example.replace("\n", "\n   | "))
    if log.tail and (report["lost"] or server["exit_status"] != 0):
        out("   last lines of the server's log:")
        for line in log.tail:
            out(f"   | {line}")
    if server["rss_growth_mib"] is None:
        figures = "server not measured"
    else:
        figures = (
            f"fds {server['fds_start']} -> {server['fds_end']},"
            f" RSS {server['rss_growth_mib']:+.1f} MiB"
        )
    verdict = "PASS" if report["ok"] else "FAIL: " + "; ".join(report["failures"])
    out(
        f"soak: {verdict} ({report['duration_s']:g} s, {report['answered']:,} answered,"
        f" {report['lost']:,} lost, {report['faults_total']:,} faults, {figures})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    faults = "\n".join(
        f"  {name:<16} {f'{rate:g}/s':>6}  {what}" for name, (rate, _, what) in FAULTS.items()
    )
    parser = argparse.ArgumentParser(
        description="Soak an asyncapy server with good clients and injected faults.",
        epilog="Faults (rate at --fault-rate 1):\n" + faults,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="faults run this long (60)")
    parser.add_argument("--clients", type=int, default=8, help="good client connections (8)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the report here")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Server() argument (repeatable); numbers are passed as numbers",
    )
    parser.add_argument(
        "--max-rss-growth-mib", type=float, default=64.0, help="RSS growth allowed (64 MiB)"
    )
    parser.add_argument(
        "--fd-slack", type=int, default=2, help="fds the end may have over the start (2)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="good clients alone first (2 s)")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="longest wait for fds to return (10 s)"
    )
    parser.add_argument(
        "--fault-rate", type=float, default=1.0, help="scales every fault rate; 0: none"
    )
    parser.add_argument(
        "--rate", type=float, default=0.0, help="good requests/s, all clients (0: no limit)"
    )
    parser.add_argument("--deadline", type=float, default=5.0, help="per request batch (5 s)")
    parser.add_argument("--seed", default="soak", help="random seed (payloads, choices)")
    parser.add_argument(
        "--server-log", type=Path, metavar="PATH", help="keep the server's log here"
    )
    parser.add_argument("--serve-child", metavar="SETTINGS", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve_child is None and (options.seconds < 0 or options.clients < 1):
        parser.error("--seconds must be >= 0 and --clients >= 1")
    return options


def on_sigterm(signum: int, frame: Any) -> None:
    # Ctrl-C's path: KeyboardInterrupt, or, while the soak's event loop runs,
    # asyncio.Runner's SIGINT handler, which cancels the soak (it then cleans up).
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    if options.serve_child is not None:
        return serve_child(options.serve_child)
    settings = server_settings(options.server_arg)
    run = Run()
    interrupted = False
    server = start_server(settings)
    assert server.stderr is not None
    with contextlib.suppress(OSError, AttributeError):  # room for bursts of log lines
        fcntl.fcntl(server.stderr.fileno(), fcntl.F_SETPIPE_SZ, MIB)
    log = LogReader(server.stderr.fileno(), options.server_log)
    log.start()
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        port, run.server_loop = wait_for_port(server, 30)
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        try:
            import uvloop

            factory = uvloop.new_event_loop
            run.client_loop = "uvloop"
        except ImportError:
            pass
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(soak(options, settings, server, port, run))
    except KeyboardInterrupt:
        interrupted = True
        run.error = "interrupted"
    except ServerDiedError as exc:
        run.error = str(exc)
    except Exception as exc:
        run.error = f"the soak itself failed: {exc!r}"
        traceback.print_exc()
    finally:
        how, took = stop_server(server)
        signal.signal(signal.SIGTERM, previous)
        log.join(5)
    server_info = {
        "pid": server.pid,
        "stopped_by": how,
        "stop_s": took,
        "exit_status": server.returncode,
        "stats": read_stats(server),
    }
    report = build_report(options, settings, run, server_info, log)
    print_summary(report, log)
    if options.json is not None:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(report, indent=2) + "\n")
    if interrupted:
        return 130
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
