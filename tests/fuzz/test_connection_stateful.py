"""A hypothesis state machine drives one Connection against a mock transport.

The peer sends frames of every kind (valid JSON and ZiProto, bad headers,
short Content-Lengths, undecodable payloads, handler failures, a fatal
Content-Length), split anywhere; the transport pauses and resumes writing;
the peer half-closes or the connection is lost; handlers suspend on a gate
the machine opens when it likes. A small ``max_pending`` and
``max_packet_size`` keep the limits in play.

The model is the list of replies the connection owes, in request order: each
frame owes its reply once the bytes that decide it have been delivered (the
whole frame; the Content-Length alone when it is too short or too large; the
two one-byte headers when they are bad), and nothing is owed after a fatal
error. Invariants, after every step:

* the replies written are a prefix of the owed ones, each in an allowed
  encoding (the session's, or JSON before the session has one);
* nothing is written after the connection began to close (FIN or close) or
  was lost; pause/resume_reading alternate; no callback raised in the loop;
* the connection closes only after a fatal error, the peer's EOF, or loss;
  after ERR_PACKET_TOO_LARGE it is closing.

And when the machine lets everything run (gate open, writing resumed), as
a rule and at the end of every run, every owed reply has been written, unless
the peer's side lost the connection.

The transport is a mock, written against asyncio's documented transport
behaviour: it delivers input only while reading, in the order sent; after
``close()`` it calls ``connection_lost`` on the next loop turn; an EOF from the
peer comes after all its data, and when ``eof_received`` returns a false
value the transport closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import asyncapy._connection
from asyncapy import Packet, Server
from asyncapy._connection import Connection
from asyncapy.codecs import CODECS
from asyncapy.core import Client
from asyncapy.errors import DecodeError, ErrorCode
from asyncapy.protocol import Frame, FrameDecoder, encode_frame, looks_like_tls

MAX_PENDING = 4
MAX_PACKET_SIZE = 256
TIMEOUT = 3600.0  # never reached: the machine runs in real time, for a few ms
SETTLE_TICKS = 20
"""Loop turns (``await asyncio.sleep(0)``) in one settling round; rounds repeat
until one changes nothing the machine can observe."""
MAX_SETTLE_ROUNDS = 50

JSON_ENC, ZIPROTO_ENC = 0, 1
FORMATS = [(4, "big"), (2, "little"), (1, "big"), (3, "big"), (8, "little")]


def failure(code: ErrorCode) -> dict[str, Any]:
    return {"status": "failure", "error": str(code)}


# -- the mock transport


class LoopTransport:
    """asyncio.Transport, as far as a Connection uses it; records and checks its use."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.protocol: Connection | None = None
        self.writes: list[bytes] = []
        self.violations: list[str] = []
        self.reading = True
        self.eof_written = False  # write_eof(): the connection's lingering close
        self.closed = False  # close() or abort()
        self.lost = False  # connection_lost() called
        self.high_water: int | None = None
        # the peer's side
        self.inbox: deque[bytes] = deque()
        self.peer_eof = False
        self.eof_delivered = False
        self.delivered = 0  # bytes handed to data_received before the connection closed

    @property
    def closing(self) -> bool:
        """The connection began to close (FIN or close), or the transport is gone."""
        return self.eof_written or self.closed or self.lost

    def _require(self, condition: bool, what: str) -> None:
        if not condition:
            self.violations.append(what)
            raise AssertionError(what)

    # asyncio.Transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, self.high_water or 0)

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._require(not self.closing, "write after the connection closed or was lost")
        self.writes.append(bytes(data))

    def writelines(self, lines: list[bytes]) -> None:
        self.write(b"".join(lines))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._require(not self.closing, "write_eof after close, loss, or a first write_eof")
        self.eof_written = True

    def pause_reading(self) -> None:
        self._require(self.reading, "pause_reading while paused")
        self.reading = False

    def resume_reading(self) -> None:
        self._require(not self.reading, "resume_reading while reading")
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed or self.lost

    def close(self) -> None:
        if not self.closed and not self.lost:
            self.loop.call_soon(self.lose, None)
        self.closed = True

    def abort(self) -> None:
        self.close()

    # the machine's side

    def lose(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        assert self.protocol is not None
        self.protocol.connection_lost(exc)

    def deliver(self) -> bool:
        """Do the next thing the peer sent, if the transport would now: True if done."""
        protocol = self.protocol
        if protocol is None or self.closed or self.lost or not self.reading:
            return False
        if self.inbox:
            chunk = self.inbox.popleft()
            if not self.eof_written:
                self.delivered += len(chunk)
            protocol.data_received(chunk)
            return True
        if self.peer_eof and not self.eof_delivered:
            self.eof_delivered = True
            if not protocol.eof_received():
                self.close()
            return True
        return False


# -- the model


@dataclass(frozen=True)
class Unit:
    """One frame the peer sends, and what it owes once ``trigger`` of its bytes arrived."""

    data: bytes
    trigger: int
    reply: dict[str, Any]
    fatal: bool = False
    clean: int | None = None
    """The encoding of a frame that decodes cleanly (it sets the session's), else None."""


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31),
    st.text(max_size=16),
    st.lists(st.integers(-1000, 1000), max_size=5),
)
encodings = st.sampled_from([JSON_ENC, ZIPROTO_ENC])
ops = st.sampled_from(["echo", "echo", "yield", "wait", "raise"])
cut_lists = st.lists(st.integers(0, 4096), max_size=8)
rarely = st.integers(0, 4).map(lambda n: n == 0)
"""For the rules that end a session (EOF, loss): act one time in five, so that
most runs go on long enough to be interesting."""
bad_json = st.sampled_from(
    [b"[1, 2]", b'"str"', b"{bad", b"\xff\xfe\xfd", b"nul", b"{}}", b'{"a": 1e999}']
)
bad_ziproto = st.sampled_from(
    [b"\x93\x01\x02\x03", b"\xc1\x00\x00", b"\x81\xa1", b"\xa2\xc3\x28", b"\x80\x00\x00"]
)


def _undecodable(encoding: int, body: bytes) -> bool:
    try:
        CODECS[encoding].decode(body)
    except DecodeError:
        return True
    return False


class ConnectionMachine(RuleBasedStateMachine):
    """One Connection on a real event loop, fed by a model peer."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.transport = LoopTransport(self.loop)
        self.gate = asyncio.Event()
        self.waiting = 0  # handlers waiting on a gate
        self.units: list[Unit] = []
        self.sent = 0  # bytes of the stream the peer sent (queued in the inbox or delivered)
        self.sequence = 0
        self.flip = 0
        self.lost_by_peer = False  # the connection_lost rule acted (not the server's close)
        self.writing_paused = False
        self.header_size = 4
        self.byteorder: Any = "big"
        self.replies: list[tuple[int, dict[Any, Any]]] = []  # (encoding, payload)
        self.parsed = 0
        self.reply_decoder = FrameDecoder(4, "big", 1 << 30)

    # -- running the loop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def _observed(self) -> tuple[Any, ...]:
        t = self.transport
        return (len(t.writes), t.reading, t.eof_written, t.closed, t.lost, len(t.inbox))

    def call(self, method: Callable[..., Any], *args: Any) -> None:
        """Call a protocol method from inside the loop, as a transport does; then settle."""

        async def call() -> None:
            method(*args)

        self.run(call())
        self.settle()

    def settle(self) -> None:
        """Deliver what the transport would and run the loop until nothing changes."""

        async def ticks() -> None:
            for _ in range(SETTLE_TICKS):
                await asyncio.sleep(0)

        async def settle() -> None:
            for _ in range(MAX_SETTLE_ROUNDS):
                before = self._observed()
                await ticks()
                while self.transport.deliver():
                    await ticks()
                if self._observed() == before:
                    return
            raise AssertionError("the connection kept the loop busy without end")

        self.run(settle())

    @initialize(fmt=st.sampled_from(FORMATS), flip=st.booleans())
    def start(self, fmt: tuple[int, str], flip: bool) -> None:
        self.header_size, self.byteorder = fmt
        self.flip = int(flip)  # swaps the encodings drawn: ZiProto sessions as often as JSON
        self.reply_decoder = FrameDecoder(self.header_size, self.byteorder, 1 << 30)
        server = Server(
            port=0,
            header_size=self.header_size,
            byteorder=self.byteorder,
            max_pending=MAX_PENDING,
            max_packet_size=MAX_PACKET_SIZE,
            timeout=TIMEOUT,
        )

        @server.add_handler()
        async def handler(client: Client, packet: Packet) -> None:
            op = packet["op"]
            if op == "raise":
                raise RuntimeError("this packet is marked to fail")
            if op == "wait":
                self.waiting += 1
                try:
                    await self.gate.wait()
                finally:
                    self.waiting -= 1
            elif op == "yield":
                await asyncio.sleep(0)
            await client.send(packet)

        async def connect() -> Connection:
            conn = server._protocol_factory(server._new_state())()
            self.transport.protocol = conn
            conn.connection_made(self.transport)  # type: ignore[arg-type]
            return conn

        self.conn = self.run(connect())
        self.settle()

    # -- building frames

    @property
    def largest(self) -> int:
        """The largest Content-Length the peer may send and have accepted."""
        return min(MAX_PACKET_SIZE, (1 << (8 * self.header_size)) - 1)

    def head(self, length: int, version: int = 22, encoding: int = 0) -> bytes:
        return length.to_bytes(self.header_size, self.byteorder) + bytes((version, encoding))

    def frame(self, body: bytes, encoding: int) -> bytes:
        return encode_frame(body, encoding, header_size=self.header_size, byteorder=self.byteorder)

    def valid(self, encoding: int, op: str, value: Any) -> Unit:
        encoding ^= self.flip
        self.sequence += 1
        packet = {"i": self.sequence, "op": op, "v": value}
        body = CODECS[encoding].encode(packet)
        if len(body) + 2 > self.largest:
            packet["v"] = None
            body = CODECS[encoding].encode(packet)
        reply = failure(ErrorCode.ERR_INTERNAL) if op == "raise" else packet
        data = self.frame(body, encoding)
        return Unit(data, len(data), reply, clean=encoding)

    def bad_header(self, length: int, version: int, encoding: int, fill: int) -> Unit:
        data = self.head(length, version, encoding) + bytes([fill]) * (length - 2)
        return Unit(data, self.header_size + 2, failure(ErrorCode.ERR_HEADER_INVALID))

    def send(self, units: list[Unit], cuts: list[int]) -> None:
        """Queue the units' bytes, split at ``cuts``, and let the connection have them."""
        stream = b"".join(unit.data for unit in units)
        if self.sent == 0:
            # Not a TLS ClientHello lookalike: the first feed is sniffed for TLS.
            assume(not looks_like_tls(stream[:3]))
        points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
        for start, end in itertools.pairwise(points):
            if end > start:
                self.transport.inbox.append(stream[start:end])
        self.units += units
        self.sent += len(stream)
        self.settle()

    # -- rules: the peer sends

    def can_send(self) -> bool:
        return not self.transport.peer_eof and not self.transport.lost

    @precondition(can_send)
    @rule(
        frames=st.lists(st.tuples(encodings, ops, values), min_size=1, max_size=6), cuts=cut_lists
    )
    def send_valid_frames(self, frames: list[tuple[int, str, Any]], cuts: list[int]) -> None:
        self.send([self.valid(*frame) for frame in frames], cuts)

    @precondition(can_send)
    @rule(encoding=encodings, value=values, cuts=cut_lists)
    def send_failing_packet(self, encoding: int, value: Any, cuts: list[int]) -> None:
        self.send([self.valid(encoding, "raise", value)], cuts)

    @precondition(can_send)
    @rule(
        bad_version=st.booleans(),
        version=st.integers(0, 255).filter(lambda v: v not in (3, 22)),
        encoding=st.integers(2, 255),
        length=st.integers(5, 40),
        fill=st.integers(0, 255),
        cuts=cut_lists,
    )
    def send_bad_header(
        self,
        bad_version: bool,
        version: int,
        encoding: int,
        length: int,
        fill: int,
        cuts: list[int],
    ) -> None:
        if bad_version:
            unit = self.bad_header(length, version, encoding % 2, fill)
        else:
            unit = self.bad_header(length, 22, encoding, fill)
        self.send([unit], cuts)

    @precondition(can_send)
    @rule(length=st.integers(0, 4), fill=st.binary(min_size=4, max_size=4), cuts=cut_lists)
    def send_short_content_length(self, length: int, fill: bytes, cuts: list[int]) -> None:
        data = length.to_bytes(self.header_size, self.byteorder) + fill[:length]
        self.send([Unit(data, self.header_size, failure(ErrorCode.ERR_REQUEST_MALFORMED))], cuts)

    @precondition(can_send)
    @rule(
        encoding=encodings,
        known=st.one_of(bad_json, bad_ziproto),
        soup=st.binary(min_size=3, max_size=40),
        use_soup=st.booleans(),
        cuts=cut_lists,
    )
    def send_undecodable_payload(
        self, encoding: int, known: bytes, soup: bytes, use_soup: bool, cuts: list[int]
    ) -> None:
        body = soup if use_soup else known
        assume(_undecodable(encoding, body))
        data = self.frame(body, encoding)
        self.send([Unit(data, len(data), failure(ErrorCode.ERR_REQUEST_MALFORMED))], cuts)

    @precondition(lambda self: self.can_send() and self.header_size > 1)
    @rule(excess=st.integers(1, 1 << 40), tail=st.binary(max_size=8), cuts=cut_lists)
    def send_too_large(self, excess: int, tail: bytes, cuts: list[int]) -> None:
        length = min(MAX_PACKET_SIZE + excess, (1 << (8 * self.header_size)) - 1)
        data = length.to_bytes(self.header_size, self.byteorder) + tail
        reply = failure(ErrorCode.ERR_PACKET_TOO_LARGE)
        self.send([Unit(data, self.header_size, reply, fatal=True)], cuts)

    @precondition(can_send)
    @rule(
        frames=st.lists(st.tuples(encodings, ops, values), max_size=4),
        shorts=st.lists(st.integers(0, 4), max_size=2),
        bad_versions=st.lists(st.integers(23, 255), max_size=2),
        cuts=cut_lists,
        order=st.randoms(use_true_random=False),
    )
    def send_a_mix(
        self,
        frames: list[tuple[int, str, Any]],
        shorts: list[int],
        bad_versions: list[int],
        cuts: list[int],
        order: Any,
    ) -> None:
        units = [self.valid(*frame) for frame in frames]
        units += [
            Unit(
                n.to_bytes(self.header_size, self.byteorder) + b"\x00" * n,
                self.header_size,
                failure(ErrorCode.ERR_REQUEST_MALFORMED),
            )
            for n in shorts
        ]
        units += [self.bad_header(9, version, 0, 0x20) for version in bad_versions]
        assume(units)
        order.shuffle(units)
        self.send(units, cuts)

    # -- rules: the transport and the peer

    @precondition(lambda self: not self.writing_paused and not self.transport.closed)
    @rule()
    def pause_writing(self) -> None:
        if self.transport.lost:
            return
        self.writing_paused = True
        self.call(self.conn.pause_writing)

    @precondition(lambda self: self.writing_paused)
    @rule()
    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.transport.lost:
            self.call(self.conn.resume_writing)
        else:
            self.settle()

    @rule()
    def open_the_gate(self) -> None:
        gate, self.gate = self.gate, asyncio.Event()
        gate.set()
        self.settle()

    @precondition(can_send)
    @rule(now=rarely)
    def peer_sends_eof(self, now: bool) -> None:
        if now:
            self.transport.peer_eof = True
        self.settle()

    @precondition(lambda self: not self.transport.lost)
    @rule(now=rarely, reset=st.booleans())
    def connection_lost(self, now: bool, reset: bool) -> None:
        if now:
            self.lost_by_peer = True
            self.call(self.transport.lose, ConnectionResetError("reset") if reset else None)

    @rule()
    def let_everything_run(self) -> None:
        """Open the gates, resume writing: every owed reply must then be written."""
        if self.writing_paused:
            self.resume_writing()
        self.open_the_gate()
        for _ in range(len(self.units)):  # a handler that starts later waits on a new gate
            if not self.waiting:
                break
            self.open_the_gate()
        self.check_replies()
        t = self.transport
        if self.lost_by_peer:
            return  # replies may have been lost with the connection
        owed = self.owed()
        assert len(self.replies) == len(owed), (
            f"{len(owed) - len(self.replies)} owed replies were never written:"
            f" {owed[len(self.replies) :]!r}"
        )
        if not t.closing:
            assert not t.inbox, "input left undelivered by an idle, open connection"
        if self.fatal_owed() or t.eof_delivered:
            assert t.closing, "still open after a fatal error or the peer's EOF"

    # -- the model and the invariants

    def owed(self) -> list[Unit]:
        """The units whose reply is due: decided by the bytes delivered, none after a fatal."""
        due = []
        start = 0
        for unit in self.units:
            if start + unit.trigger > self.transport.delivered:
                break
            due.append(unit)
            if unit.fatal:
                break
            start += len(unit.data)
        return due

    def fatal_owed(self) -> bool:
        owed = self.owed()
        return bool(owed) and owed[-1].fatal

    def check_replies(self) -> None:
        """Parse what was written since the last check; compare with the model."""
        writes = self.transport.writes
        for chunk in writes[self.parsed :]:
            for event in self.reply_decoder.feed(chunk):
                assert isinstance(event, Frame), f"the connection wrote a bad frame: {event}"
                payload = CODECS[event.encoding].decode(event.payload)
                self.replies.append((int(event.encoding), payload))
        self.parsed = len(writes)
        owed = self.owed()
        assert len(self.replies) <= len(owed), (
            f"{len(self.replies)} replies for {len(owed)} owed: {self.replies[len(owed) :]!r}"
        )
        session = next((unit.clean for unit in owed if unit.clean is not None), None)
        before_session = True
        for index, ((encoding, payload), unit) in enumerate(zip(self.replies, owed, strict=False)):
            before_session = before_session and unit.clean is None
            assert payload == unit.reply, f"reply {index} is {payload!r}, owed {unit.reply!r}"
            allowed = {session} | ({JSON_ENC} if before_session else set())
            assert encoding in allowed, f"reply {index} in encoding {encoding}, not {allowed}"

    @invariant()
    def transport_used_correctly(self) -> None:
        assert not self.transport.violations, self.transport.violations
        assert not self.loop_errors, [context.get("message") for context in self.loop_errors]

    @invariant()
    def replies_follow_the_model(self) -> None:
        self.check_replies()

    @invariant()
    def closes_only_for_a_reason(self) -> None:
        t = self.transport
        if t.eof_written or t.closed:
            assert self.fatal_owed() or t.eof_delivered, "closed with no fatal error and no EOF"
        if self.replies and self.replies[-1][1] == failure(ErrorCode.ERR_PACKET_TOO_LARGE):
            assert t.closing, "open after ERR_PACKET_TOO_LARGE"

    def teardown(self) -> None:
        try:
            if hasattr(self, "conn"):
                if sys.exc_info()[0] is None:  # the run went well: end it with the full check
                    self.let_everything_run()
                self.gate.set()
                if not self.transport.lost:
                    self.call(self.transport.lose, None)
                self.settle()
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.run(asyncio.wait(pending))
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


MACHINE_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    derandomize=True,  # the project's tests are deterministic
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.timeout(120)
def test_connection_state_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fair share makes a connection wait after a turn that took over a
    # millisecond of wall-clock time: on a loaded machine that would change
    # which rules apply from one run of an example to the next (hypothesis:
    # "inconsistent data generation"). It has its own tests
    # (tests/unit/test_connection_limits.py); here turns are never timed out.
    monkeypatch.setattr(asyncapy._connection, "FAIR_SLICE", float("inf"))
    run_state_machine_as_test(ConnectionMachine, settings=MACHINE_SETTINGS)


def test_the_mock_transport_checks_reading_pairs() -> None:
    loop = asyncio.new_event_loop()
    try:
        transport = LoopTransport(loop)
        transport.pause_reading()
        with pytest.raises(AssertionError):
            transport.pause_reading()
        transport.resume_reading()
        with pytest.raises(AssertionError):
            transport.resume_reading()
        transport.write_eof()
        with pytest.raises(AssertionError):
            transport.write(b"late")
        assert len(transport.violations) == 3
    finally:
        with contextlib.suppress(Exception):
            loop.close()
