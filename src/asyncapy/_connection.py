"""The asyncio Protocol that carries one session: the only code that touches sockets.

Theory of operation
-------------------
Bytes go to the sans-I/O :class:`~asyncapy.protocol.FrameDecoder`, which is
asked for at most ``max_frames_per_read`` frames per *turn* (one, after a
turn that rejected a frame: a stream of errors is cheap to send and not to
answer), and never for more than fit in the queue (``max_pending``). What
the decoder does not give yet stays there, unread; while it holds input,
reading from the socket is paused and the connection asks the server's
state for another turn, which comes after the other connections have had
theirs: turns are queued by address, one per address per loop iteration
(``_state``), so many connections from one address share one turn. So one
read cannot make the server work for long, and memory per connection is one
read chunk plus ``max_pending`` frames, whatever the peer sends
(``docs/threat-model.md``, T4).

A frame is decoded (JSON or ZiProto) when its turn to be handled comes, not
before: a waiting frame costs its bytes, not its objects. Items are handled
strictly in order: while a dispatch runs (its handler suspended), later
items wait in the queue. A dispatch runs at once
(:meth:`~asyncapy.dispatch.Dispatcher.run`: each handler starts eagerly, see
:mod:`asyncapy._eager`); the connection waits for a Task only when a handler
suspends.

Fair share: a turn that handled more than one frame, or a large one, is
timed; one that took more than ``FAIR_SLICE`` seconds makes the connection
wait as long before its next turn, and again while other connections were
read meanwhile, up to ``FAIR_SHARE`` times as long.

Replies written during a turn are gathered and written once at its end (one
syscall for a pipelined burst); a big batch is flushed early, at
``write_buffer_size``, so that the transport can call ``pause_writing``.
After a turn of several frames whose replies the kernel would not all take
(the peer reads slower than it sends), writing is paused at once, until the
transport's buffer is empty. While writing is paused nothing is handled or
read, and a peer that stays so for ``timeout`` seconds is reset.

The idle timer is armed once and re-armed lazily: a complete frame only
records the time, and the timer, when it fires, checks whether the peer was
really idle for ``timeout`` seconds. It never fires while a dispatch runs.

Closing is lingering on plain TCP: after the last reply, a FIN
(``write_eof``), then whatever the peer still sends is read and dropped until
it closes too, so that unread input does not turn the close into a reset
that could destroy the replies. ``close_timeout`` bounds it, then the
transport is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import random
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from logging import INFO, WARNING
from typing import Any, Final, cast

from ._eager import Steps
from ._peer import Peer
from ._state import ServerState, Stats
from .codecs import CODECS, DECODE_FAILURES, Codec, get_codec, not_a_map
from .config import Settings
from .core import DONE, Packet, Reply, Session
from .dispatch import Dispatcher, error_payload
from .errors import ErrorCode, LocalProtocolError
from .logging import access_logger as _access
from .logging import error_logger as logger
from .logging import host_port
from .metrics import BUCKETS, OK
from .protocol import ByteOrder, Encoding, FrameDecoder, FrameEncoder, FrameError, RawEvent

__all__ = ["FAIR_SHARE", "FAIR_SLICE", "Connection", "ServerState", "Stats"]

FAIR_SLICE = 0.001
"""Seconds of work in one turn above which a connection yields to the others.

Not ``Final``: read at each use, so that a benchmark or a test may change it
(``bench/hotpath.py`` sets it to infinity), compiled or not."""
FAIR_SHARE: Final = 8
"""How many times its turn's duration such a connection waits while others are served."""
_TIMED_PAYLOAD: Final = 16 * 1024
"""A lone frame at least this large makes its turn timed (smaller ones cannot cost a slice)."""


@functools.lru_cache(maxsize=64)
def error_frame(
    code: ErrorCode, encoding: Encoding, header_size: int, byteorder: ByteOrder
) -> bytes:
    """The whole frame of the error reply ``code`` (built once per format, then cached)."""
    framer = FrameEncoder(header_size, byteorder)
    return framer.encode(CODECS[encoding].encode_payload(error_payload(code)), encoding)


_DECODERS: Final = tuple(codec.loads for codec in CODECS)
_NAMES: Final = tuple(codec.name for codec in CODECS)
_new: Final = object.__new__
_copy_context: Final = contextvars.copy_context
_clock: Final = time.perf_counter
_OK: Final = OK
_FIRST_BUCKET = BUCKETS[0]
"""Dispatches up to this long are counted on the fast path. Not ``Final``: each
connection reads it when made, so a benchmark may change it (bench/hotpath.py)."""
_ERR_INTERNAL: Final = ErrorCode.ERR_INTERNAL.value


def connection_age(settings: Settings, draw: Callable[[float, float], float]) -> float | None:
    """Seconds a new connection may live: ``max_connection_age`` * (1 ± jitter), or None.

    Args:
        settings: the server's settings.
        draw: ``random.uniform`` (tests pass their own).
    """
    age = settings.max_connection_age
    if age is None:
        return None
    jitter = settings.max_connection_age_jitter
    return age * draw(1.0 - jitter, 1.0 + jitter)


def _send_batch(transport: asyncio.Transport, frames: list[bytes]) -> None:
    """Write ``frames`` with one ``transport.write()``.

    Never ``writelines()``: on CPython 3.12 and 3.13 the selector transport's
    ``writelines()`` does not call ``pause_writing()`` when its buffer passes
    the high-water mark, so a peer that does not read would never be paused.
    ``write()`` checks the mark on every loop and every version.
    """
    transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class Connection:
    """One accepted connection: one :class:`~asyncapy.core.Session`.

    An asyncio Protocol by its methods, not by inheritance: compiled with
    mypyc it is a native class, which may not subclass ``asyncio.Protocol``
    (a Python class), and Python code may not subclass it.

    Args:
        settings: the server's settings (limits, framing, timeouts).
        state: what the server's connections share.
        dispatcher: the server's handlers.
        origin: the peer's ``(address, port)`` when it is not the socket's
            peer: the client a PROXY protocol header named.
        admitted: the listener admitted the connection already (TLS, PROXY).
    """

    def __init__(
        self,
        settings: Settings,
        state: ServerState,
        dispatcher: Dispatcher,
        origin: tuple[str, int] | None = None,
        admitted: bool = False,
    ) -> None:
        self._settings = settings
        self._origin = origin
        self._admitted = admitted
        self._cluster_wait = False  # reads nothing until the cluster admits it
        self._cluster_held = False  # counted in the cluster's registry: release at the end
        self._aged = False  # past max_connection_age: close at the next frame boundary
        self._age_drain = False  # aged while busy: read no more
        self._age_timers: list[asyncio.TimerHandle] = []
        self._state = state
        self._loop = asyncio.get_running_loop()
        self._dispatcher = dispatcher
        self._steps = Steps(self._loop)
        self._decoder = FrameDecoder(
            settings.header_size, settings.byteorder, settings.max_packet_size
        )
        self._feed = self._decoder.feed_fast
        self._framer = FrameEncoder(settings.header_size, settings.byteorder)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[RawEvent] = deque()
        self._queued_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._closing = False
        self._eof = False
        self._lost = False
        self._registered = False
        self._reading_paused = False
        self._writing_paused = False
        self._write_paused_at = 0.0
        self._continuing = False
        self._deferred = b""  # a read that waits for its address's turn
        self._throttled = False
        self._one_frame = False
        self._heard = False  # any input yet: the drain waits for a newcomer's first request
        self._throttle_until = 0.0
        self._turns_seen = 0
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._out: list[bytes] | None = None
        self._out_size = 0
        self._flush_at = settings.write_buffer_size
        self._max_pending = settings.max_pending
        self._per_turn = settings.max_frames_per_read
        self._idle_limit = min(self._per_turn, self._max_pending + 1)
        self._shared_turn = max(1, self._per_turn // 4)
        self._codec: Codec
        self._reply: Callable[[Any, list[bytes]], int]
        self._use_codec(get_codec(settings.encoding))  # until a frame decodes
        self._session_codec = False
        self._timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self.last_activity = 0.0
        self.held = 0
        """Bytes of input this connection holds (decoder and queue): the server's budget."""
        self.address = ""
        self.client = Peer(self, state.server)
        self.session_label = ""
        # Metrics and the access log (docs/metrics-and-logs.md); the dispatch
        # under way: (packet, its start, bytes written before it, its payload size).
        self._metrics = state.server.metrics
        self._count = self._metrics.packet
        self._series = self._metrics.series
        self._dispatching: tuple[Packet, float, int, int] | None = None
        self._first_bucket = _FIRST_BUCKET
        self.bytes_in = 0
        """Bytes read from the peer."""
        self.bytes_out = 0
        """Bytes of frames written to the peer."""
        self._access = settings.access_log and _access.isEnabledFor(INFO)
        self._peer = ""

    @property
    def busy(self) -> bool:
        """True while a dispatch runs, items wait, or received input is not decoded yet."""
        return self._busy or bool(self._queue) or self._decoder.pending or bool(self._deferred)

    @property
    def closing(self) -> bool:
        """True once the connection is closing."""
        return self._closing

    def peer_send(self, packet: Reply, close: bool = False) -> Awaitable[None]:
        """:meth:`Client.send <asyncapy.core.Client.send>` of this connection's peer.

        During a turn, the reply's header and payload are appended to the
        turn's batch as two pieces (one join when the batch is written).
        """
        if self._closing:
            raise ConnectionError(f"session {self.session_label} is closed")
        payload = packet._fields if type(packet) is Packet else packet
        out = self._out
        if out is None:  # outside a turn (after a handler suspended): a write of its own
            frame: list[bytes] = []
            self._reply(payload, frame)
            self._write(b"".join(frame))
        else:
            self._out_size += self._reply(payload, out)
            if self._out_size >= self._flush_at:
                self._flush(out)
        if close:
            self.close()
            return DONE
        if self._writing_paused:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(waiter)
            return waiter
        return DONE

    def peer_close(self) -> Awaitable[None]:
        """:meth:`Client.close <asyncapy.core.Client.close>` of this connection's peer."""
        self.close()
        return DONE

    def same_address(self) -> tuple[Connection, ...]:
        """The open connections from this connection's address (itself included)."""
        return tuple(self._state.by_address.get(self.address, ()))

    def close(self, linger: bool = True) -> None:
        """Write what is pending, then close; drop the items not handled yet.

        Args:
            linger: on plain TCP, send a FIN and read (and drop) what the
                peer still sends until it closes, for up to ``close_timeout``
                seconds, so that the replies are not lost to a reset.
        """
        if self._closing:
            return
        self._closing = True
        self.client.closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._decoder.close()  # what it holds goes now, not when the GC finds the cycle
        self._deferred = b""
        if self.held:
            self._state.hold(self, 0)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is None or self._lost:
            return
        out = self._out
        if out:
            _send_batch(transport, out)
            out.clear()
        self._close_timer = self._loop.call_later(self._settings.close_timeout, self._close_late)
        if linger and not self._eof and transport.can_write_eof() and not transport.is_closing():
            try:
                transport.write_eof()
            except OSError:  # the peer is gone already (ENOTCONN)
                transport.abort()
                return
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()
        else:
            transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data, and cancel a running dispatch."""
        self.close(linger=False)
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()

    def evict(self, code: ErrorCode, why: str) -> None:
        """Answer ``code`` and close: the server needs the room (see ``_state``)."""
        self._state.log.log(
            "evicted",
            WARNING,
            "(%s) {Client handler} Closing the session of %s:%d: %s (%s)",
            self.session_label,
            self.address,
            self.client.port,
            why,
            code,
        )
        if not self._closing:
            self._error_reply(code)
            self.close()

    def drain(self) -> None:
        """Start a graceful close: read no more, answer every request already
        read (the running dispatch, the frames waiting, the rest of the last
        read), then close with a FIN. Bounded by ``shutdown_timeout``.

        A connection that has sent nothing yet (accepted just before or during
        the drain: its request is on its way) keeps reading for up to
        ``close_timeout`` seconds, and closes once its first request is answered.
        """
        self._update_reading()
        if not self._heard and not self._closing:
            self._loop.call_later(self._settings.close_timeout, self._drain_unheard)
        elif not self.busy:
            self.close()

    def _cluster_admitted(self, outcome: bool | None) -> None:
        """The cluster's answer: True counted, False refused, None failed (admitted)."""
        self._cluster_wait = False
        state = self._state
        if outcome and (self._lost or self._closing):  # gone meanwhile: give it back
            assert state.cluster is not None
            state.cluster.release(self.address)
            return
        self._cluster_held = bool(outcome)
        if outcome is False and not self._closing:
            state.stats.cluster_refused += 1
            limit = self._settings.session_limit
            state.refused(
                f"{self.address}:{self.client.port}",
                ErrorCode.ERR_SESSION_LIMIT_REACHED,
                f"session_limit ({limit}) reached in the cluster",
            )
            self._error_reply(ErrorCode.ERR_SESSION_LIMIT_REACHED, CODECS[Encoding.JSON])
            self.close(linger=False)
            return
        self._after_feed()  # read what came meanwhile

    def _on_age(self) -> None:
        """``max_connection_age`` (with its jitter) has passed: close at a frame boundary.

        Busy (a dispatch runs, frames wait): read no more, answer what was
        read, then close. Idle: answer the next read, if one comes within
        ``close_timeout``, then close; else close then. Either way the last
        replies leave with the FIN (``TCP_CORK``), so that a client sees the
        close before it sends again; after ``max_connection_age_grace`` (or
        ``shutdown_timeout``) the connection is reset.
        """
        if self._closing:
            return
        settings = self._settings
        self._aged = True
        self._state.stats.aged += 1
        logger.info(
            "(%s) {Client handler} max_connection_age reached: closing at a frame boundary",
            self.session_label,
        )
        transport = self._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and hasattr(socket, "TCP_CORK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        grace = settings.max_connection_age_grace
        grace = settings.shutdown_timeout if grace is None else grace
        later = self._loop.call_later
        self._age_timers.append(later(grace, self._age_reset))
        if self.busy:
            self._age_drain = True
            self._update_reading()
        else:
            self._age_timers.append(later(settings.close_timeout, self._age_boundary))

    def _age_boundary(self) -> None:
        """Aged: close now if nothing is owed; else read no more and close when done."""
        if self._closing:
            return
        if not self.busy:
            self.close()
        elif not self._age_drain:
            self._age_drain = True
            self._update_reading()

    def _age_reset(self) -> None:
        """The grace of an aged connection is over: reset it."""
        if not self._closing:
            self._state.stats.age_resets += 1
            self.abort()

    def _drain_unheard(self) -> None:
        if not self._heard and not self._closing:
            self.close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        state = self._state
        settings = self._settings
        peer = self._origin or transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            address, port = str(peer[0]), int(peer[1])
        else:
            address, port = (str(peer) if peer else ""), 0
        session_id = uuid.uuid4()
        client = self.client
        self.address = client.address = address
        client.port = port
        client.session = Session(session_id, client)
        self.session_label = str(session_id)
        transport.set_write_buffer_limits(high=settings.write_buffer_size)
        # A TLS connection was admitted by the listener before its handshake,
        # one behind a PROXY header once the header was read.
        admitted = self._admitted or transport.get_extra_info("sslcontext") is not None
        refusal = None if admitted else state.admit(address)
        if refusal is not None:
            self._refuse(*refusal)
            return
        state.join(self)
        self._registered = True
        if state.cluster is not None and settings.session_limit:
            self._cluster_wait = self._reading_paused = True
            transport.pause_reading()
            state.cluster.admit(address, self._cluster_admitted)
        state.stats.connections += 1
        self._metrics.sessions += 1
        self._peer = host_port(address, port)
        logger.info(
            "{Client handler} New session started, UUID is %s (peer %s:%d)",
            self.session_label,
            address,
            port,
        )
        self.last_activity = self._loop.time()
        self._timer = self._loop.call_later(settings.timeout, self._on_timer)
        if settings.max_connection_age is not None:
            age = connection_age(settings, random.uniform)
            self._age_timers.append(self._loop.call_later(age or 0.0, self._on_age))
        if state.draining:  # accepted as the listener closed: serve its first request
            self.drain()

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._closing:  # lingering: the peer's last bytes are dropped
            return
        self._heard = True
        state = self._state
        state.turns += 1
        if self._cluster_wait or (state.turn_queues and state.shares_turns(self.address)):
            # Other connections of this address wait for their turn: so does this read.
            # (Or the cluster has not admitted the connection yet: uvloop reads once
            # before a pause_reading() in connection_made.)
            self._deferred = data if not self._deferred else self._deferred + data
            self._after_feed()
            return
        queue = self._queue
        idle = not (queue or self._busy or self._writing_paused or self._one_frame)
        try:
            events = self._feed(data, self._idle_limit if idle else self._room())
        except LocalProtocolError:  # fed after a fatal error: we are closing anyway
            return
        if idle and len(events) == 1:
            # One frame, handled at once: the usual case, inlined. (A payload
            # as big as a slice is either in a big read or was gathered in a
            # bytearray; an error's [1] is a bool.)
            self.last_activity = self._loop.time()
            event = events[0]
            started = _clock()
            out: list[bytes] = []
            self._out = out
            self._steps.begin()
            try:
                self._handle(event, started)
            finally:
                self._end_batch(out)
            if len(data) >= _TIMED_PAYLOAD or type(event[1]) is bytearray:
                spent = _clock() - started
                if spent > FAIR_SLICE and not self._closing:
                    self._throttle(spent)
        elif events:
            self._turn(events)
        if self._decoder.holding or self._queued_bytes or self.held:
            self._after_feed()  # input held: account for it, pause reading, go on
        elif len(queue) >= self._max_pending:
            self._update_reading()
        if self._aged:
            self._age_boundary()

    def eof_received(self) -> bool | None:
        # The peer will send no more; replies to what it sent still go out.
        # (TLS cannot half-close: there the transport closes whatever we say,
        # and saying True only makes asyncio log a warning. docs/protocol.md.)
        self._eof = True
        if not self._closing and not self.busy:
            self.close()
        if self._closing:
            return False  # we are done (or lingering, and the peer closed too)
        return self._transport is not None and self._transport.can_write_eof()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._write_paused_at = self._loop.time()
        self._update_reading()
        if self._timer is not None and not self._closing:
            self._timer.cancel()
            self._timer = self._loop.call_later(self._settings.timeout, self._on_timer)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._transport is not None and not self._closing:
            self._transport.set_write_buffer_limits(high=self._settings.write_buffer_size)
        self.last_activity = self._loop.time()
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._process_queue()
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        self.client.closed = True
        self._queue.clear()
        self._decoder.close()
        self._deferred = b""
        if self.held:
            self._state.hold(self, 0)
        for timer in (self._timer, self._close_timer, *self._age_timers):
            if timer is not None:
                timer.cancel()
        self._timer = self._close_timer = None
        self._age_timers.clear()
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"session {self.session_label} is closed"))
        self._drain_waiters.clear()
        if self._cluster_held:
            self._cluster_held = False
            cluster = self._state.cluster
            if cluster is not None:
                cluster.release(self.address)
        if self._registered:
            self._registered = False
            self._state.leave(self)
            if exc is None:
                logger.info("(%s) {Client handler} The connection was closed", self.session_label)
            else:
                logger.info(
                    "(%s) {Client handler} The connection was lost: %s", self.session_label, exc
                )

    # -- turns

    def _room(self) -> int:
        """How many frames the decoder may give now: the turn's cap, and the queue's room.

        All but the first may end up in the queue (its handler may suspend),
        and all of them if a dispatch runs already or writing is paused.
        """
        if self._one_frame:  # the last turn rejected a frame
            self._one_frame = False
            return 1 if len(self._queue) < self._max_pending else 0
        room = self._max_pending - len(self._queue)
        if not (self._busy or self._queue or self._writing_paused):
            room += 1
        return min(self._per_turn, room)

    def _turn(self, events: list[RawEvent]) -> None:
        """Handle (or queue) the frames of one turn; time it when it may be long."""
        self.last_activity = self._loop.time()
        if len(events) > 1:
            timed = True
        else:
            event = events[0]
            timed = type(event) is tuple and len(event[1]) >= _TIMED_PAYLOAD  # type: ignore[arg-type]
        started = mark = _clock()
        out: list[bytes] = []
        self._out = out
        self._steps.begin()
        try:
            queue = self._queue
            for event in events:
                if self._busy or queue or self._writing_paused:
                    queue.append(event)
                    if type(event) is tuple:
                        self._queued_bytes += len(event[1])  # type: ignore[arg-type]
                else:
                    mark = self._handle(event, mark)  # one clock reading per frame
                if self._closing:
                    break
        finally:
            self._end_batch(out)
        transport = self._transport
        if (
            transport is not None
            and not self._writing_paused
            and not self._lost
            and transport.get_write_buffer_size()
        ):
            # The kernel took not all of the replies: the peer reads slower than
            # it sends. Handle nothing more until it has read them all: a high
            # mark of 0 makes the transport pause us now and resume us when its
            # buffer is empty (resume_writing restores write_buffer_size). Else
            # each reply to a peer that is behind becomes one write request.
            transport.set_write_buffer_limits(high=0)
        if timed:
            spent = _clock() - started
            if spent > FAIR_SLICE and not self._closing:
                self._throttle(spent)

    def _after_feed(self) -> None:
        """After a feed that left input in the decoder or the queue: account, pause, go on."""
        if self._closing:
            return
        held = self._decoder.buffered + self._queued_bytes + len(self._deferred)
        if held != self.held:
            self._state.hold(self, held)
            if self._closing:
                return
        self._update_reading()
        self._go_on()

    def _go_on(self) -> None:
        """Schedule the next turn if the decoder holds input and a turn may run."""
        if (
            (self._decoder.pending or self._deferred)
            and not self._continuing
            and not self._cluster_wait
            and not self._closing
            and not self._throttled
            and not self._writing_paused
            and len(self._queue) < self._max_pending
        ):
            self._continuing = True
            self._state.want_turn(self)

    def next_turn(self, shared: bool = False) -> None:
        """Handle what the decoder holds (or a read that waited): called by the state.

        Args:
            shared: other connections of this address wait for a turn too:
                this one takes a quarter of ``max_frames_per_read``.
        """
        self._continuing = False
        if self._closing:
            return
        data, self._deferred = self._deferred, b""
        limit = self._room()
        if shared:
            limit = min(limit, self._shared_turn)
        try:
            events = self._feed(data, limit)
        except LocalProtocolError:
            return
        if events:
            self._turn(events)
        self._after_feed()
        if not self.busy and (self._eof or self._aged or (self._state.draining and self._heard)):
            self.close()

    def _throttle(self, spent: float) -> None:
        """Wait before the next turn while other connections are served (fair share).

        The connection waits ``spent`` seconds; if other connections were read
        meanwhile, it waits again, up to ``FAIR_SHARE * spent`` in all: at most
        a ninth of a contended loop, half of an idle one.
        """
        self._state.stats.throttled += 1
        self._throttled = True
        self._throttle_until = self._loop.time() + spent * FAIR_SHARE
        self._turns_seen = self._state.turns
        self._update_reading()
        self._loop.call_later(spent, self._throttle_check, spent)

    def _throttle_check(self, spent: float) -> None:
        if self._closing:
            return
        turns = self._state.turns
        left = self._throttle_until - self._loop.time()
        if turns != self._turns_seen and left > 0:  # others were served: wait again
            self._turns_seen = turns
            self._loop.call_later(min(spent, left), self._throttle_check, spent)
            return
        self._throttled = False
        self._update_reading()
        self._go_on()

    # -- internals

    def _use_codec(self, codec: Codec) -> None:
        """Encode replies (and error replies) with ``codec``."""
        self._codec = codec
        self._reply = self._framer.writer(codec.raw_encode, codec.encode_payload, codec.encoding)

    def _set_codec(self, codec: Codec) -> None:
        """Fix the session's encoding: every reply from now on uses it."""
        self._use_codec(codec)
        self._session_codec = True
        self.client.encoding = codec.name

    def _end_batch(self, out: list[bytes]) -> None:
        """Write the replies gathered during one turn (or one queue run), and give
        back the current task: every batch starts with ``self._out = out`` and
        ``self._steps.begin()`` (inlined on the hot path) and ends here, in a
        ``finally``."""
        self._steps.end()
        self._out = None
        self.bytes_out += self._out_size
        self._out_size = 0
        if out and not self._lost:
            assert self._transport is not None
            # _send_batch(), inlined on the hot path: one write(), never writelines()
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _write(self, frame: bytes) -> None:
        # Bytes out: counted here for a lone frame, by the batch otherwise
        # (bytes_out + _out_size is what was written so far).
        out = self._out
        if out is None:
            self.bytes_out += len(frame)
            if self._transport is not None and not self._lost:
                self._transport.write(frame)
            return
        out.append(frame)
        self._out_size += len(frame)
        if self._out_size >= self._flush_at:
            self._flush(out)

    def _flush(self, out: list[bytes]) -> None:
        """Write a big batch now, so that the transport can tell us (pause_writing)
        to stop handling before the batch ends."""
        if self._transport is not None:
            _send_batch(self._transport, out)
            out.clear()
            self.bytes_out += self._out_size
            self._out_size = 0

    def _error_reply(self, code: ErrorCode, codec: Codec | None = None) -> None:
        """Write the error reply ``code`` in ``codec`` (the session's by default)."""
        settings = self._settings
        encoding = (codec or self._codec).encoding
        self._write(error_frame(code, encoding, settings.header_size, settings.byteorder))

    def _refuse(self, code: ErrorCode, why: str) -> None:
        """Answer ``code`` in JSON and close, before any session exists."""
        self._state.refused(f"{self.address}:{self.client.port}", code, why)
        self._error_reply(code, CODECS[Encoding.JSON])
        self.close(linger=False)

    def _reply_error(self, error: FrameError) -> None:
        state = self._state
        if error.tls:
            state.stats.tls_mismatches += 1
            state.log.log(
                "tls",
                WARNING,
                "(%s) {Client handler} %s:%d started a TLS handshake, but this port speaks"
                " plaintext: the client must connect without TLS, or the server serve TLS"
                " (certfile/keyfile)",
                self.session_label,
                self.address,
                self.client.port,
            )
        else:
            self._one_frame = True  # the next turn takes one frame: errors cost more
            state.stats.rejected_frames += 1
            state.log.log(
                "rejected",
                INFO,
                "(%s) {Client handler} Rejected a frame: %s (%s)",
                self.session_label,
                error.code,
                error.detail,
            )
        self._metrics.rejected(str(error.code))
        self._error_reply(error.code)
        if not error.keep_connection:
            self.close()

    def _handle(self, item: RawEvent, started: float) -> float:
        """Decode and dispatch one item now; if its dispatch suspends, mark the connection busy.

        ``started`` is when this item was taken up (a ``_clock()`` reading:
        the end of the previous item of the turn, or the turn's start), from
        which its latency is counted. Returns the reading at which it was
        done with, the next item's start: one clock reading per frame.
        """
        if type(item) is not tuple:
            self._reply_error(item)  # type: ignore[arg-type]
            return _clock()
        # (not cast(): it would build a generic alias on every frame)
        encoding, payload = item  # type: ignore[misc]
        try:
            fields = _DECODERS[encoding](payload)
            if type(fields) is not dict:
                raise not_a_map(fields)  # a DecodeError: one of DECODE_FAILURES
        except DECODE_FAILURES as exc:
            self._reply_error(
                FrameError(ErrorCode.ERR_REQUEST_MALFORMED, True, f"invalid payload: {exc}")
            )
            return _clock()
        if not self._session_codec:
            self._set_codec(CODECS[encoding])
        packet = _new(Packet)  # built without __init__: the fields are checked
        packet._fields = fields
        packet.encoding = _NAMES[encoding]
        packet.sender = self.client
        packet._handler = None
        packet._code = _OK
        sent = self.bytes_out + self._out_size if self._access else 0
        try:
            task = self._dispatcher.run(
                self.client, packet, self._loop, _copy_context(), self._steps
            )
        except Exception:
            packet._code = _ERR_INTERNAL
            self._dispatch_failed()
            task = None
        if task is not None:
            self._busy = True
            self._task = task
            self._dispatching = (packet, started, sent, len(payload))
            task.add_done_callback(self._dispatch_done)
            return started
        # The packet's dispatch ended: count it. The usual case (a handler
        # seen before, OK, in the first latency bucket) inlined.
        ended = _clock()
        seconds = ended - started
        if seconds <= self._first_bucket and packet._code is _OK:
            try:
                series = self._series[packet._handler]
                series.fast += 1
                series.seconds += seconds
            except KeyError:  # its first packet
                self._count(packet._handler, _OK, seconds)
        else:
            self._count(packet._handler, packet._code, seconds)
        if self._access:
            self._log_access(packet, seconds, sent, len(payload))
        return ended

    def _dispatch_failed(self) -> None:
        """A bug in asyncapy itself: log it, answer ERR_INTERNAL, keep the connection."""
        logger.exception("(%s) dispatch failed", self.session_label)
        self._error_reply(ErrorCode.ERR_INTERNAL)

    def _dispatch_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        self._busy = False
        self.last_activity = self._loop.time()
        error = None if task.cancelled() else task.exception()
        if error is not None:
            logger.error("(%s) dispatch failed", self.session_label, exc_info=error)
        if self._dispatching is not None:
            packet, started, sent, size = self._dispatching
            self._dispatching = None
            if error is not None or task.cancelled():  # a bug of ours, or the connection goes
                packet._code = _ERR_INTERNAL
            seconds = _clock() - started
            self._count(packet._handler, packet._code, seconds)
            if self._access:
                self._log_access(packet, seconds, sent, size)
        self._process_queue()
        self._update_reading()

    def _log_access(self, packet: Packet, seconds: float, sent: int, size: int) -> None:
        """Log the access record of ``packet`` (``docs/metrics-and-logs.md``).

        ``sent`` was the bytes written (``bytes_out + _out_size``) when its
        dispatch began: its bytes out are what was written since.
        """
        handler = packet._handler
        code = packet._code
        size += self._settings.header_size + 2  # the whole frame
        out = self.bytes_out + self._out_size - sent
        ms = seconds * 1000.0
        _access.info(
            '%s - "%s" %s %d %d %.2fms',
            self._peer,
            handler or "-",
            code,
            size,
            out,
            ms,
            extra={
                "session": self.session_label,
                "peer": self._peer,
                "handler": handler,
                "code": code,
                "bytes_in": size,
                "bytes_out": out,
                "duration_ms": round(ms, 3),
            },
        )

    def _process_queue(self) -> None:
        queue = self._queue
        if queue and not self._busy and not self._closing and not self._writing_paused:
            out: list[bytes] = []
            self._out = out
            mark = _clock()
            self._steps.begin()
            try:
                while queue and not self._busy and not self._closing and not self._writing_paused:
                    item = queue.popleft()
                    if type(item) is tuple:
                        self._queued_bytes -= len(item[1])  # type: ignore[arg-type]
                    mark = self._handle(item, mark)
            finally:
                self._end_batch(out)
            self._after_feed()
        elif self._decoder.pending or self._deferred:
            self._go_on()
        if (self._eof or self._aged or (self._state.draining and self._heard)) and not self.busy:
            self.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        pause = (
            self._cluster_wait
            or self._age_drain
            or self._writing_paused
            or (self._state.draining and self._heard)
            or self._throttled
            or self._decoder.pending
            or self._deferred
            or len(self._queue) >= self._max_pending
        )
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing:
            return
        timeout = self._settings.timeout
        now = self._loop.time()
        if self._writing_paused:  # the peer does not read its replies
            remaining = self._write_paused_at + timeout - now
            if remaining > 0:
                self._timer = self._loop.call_later(remaining, self._on_timer)
                return
            self._state.stats.write_timeouts += 1
            self._state.log.log(
                "timeout",
                INFO,
                "(%s) {Client handler} The peer read none of its replies in %s seconds: reset",
                self.session_label,
                timeout,
            )
            self.abort()
            return
        if self.busy:  # we owe the peer a reply: not its idleness
            self._timer = self._loop.call_later(timeout, self._on_timer)
            return
        remaining = self.last_activity + timeout - now
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._on_timer)
            return
        self._state.stats.timeouts += 1
        self._state.log.log(
            "timeout",
            INFO,
            "(%s) {Client handler} No complete frame in %s seconds: timed out",
            self.session_label,
            timeout,
        )
        self._error_reply(ErrorCode.ERR_TIMED_OUT)
        self.close()

    def _close_late(self) -> None:
        """``close_timeout`` after a close, the transport is still open: reset it."""
        self._close_timer = None
        if not self._lost and self._transport is not None:
            self._transport.abort()
