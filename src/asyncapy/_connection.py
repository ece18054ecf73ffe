"""The asyncio Protocol that carries one session: the only code that touches sockets.

Theory of operation
-------------------
Bytes go to the sans-I/O :class:`~asyncapy.protocol.FrameDecoder`; each frame
is decoded at once into a :class:`~asyncapy.core.Packet` (or an error), so no
payload outlives the chunk it arrived in. Items are handled strictly in order:
while a dispatch is running (its handler suspended), later items wait in a
queue of at most ``max_pending`` before reading pauses. A dispatch runs at
once (:meth:`~asyncapy.dispatch.Dispatcher.run`) and becomes a Task only if
a handler suspends.

A big reply batch is flushed to the transport early (at ``write_buffer_size``)
so that the transport can call ``pause_writing`` before the batch ends.

Replies written while handling one read are gathered and written once at the
end of it (one syscall for a pipelined burst). When the transport's buffer
passes ``write_buffer_size`` (the peer is not reading), reading and handling
pause until it drains: memory stays bounded whatever the peer does.

The idle timer is armed once and re-armed lazily: a complete frame only
records the time, and the timer, when it fires, checks whether the peer was
really idle for ``timeout`` seconds. It never fires while a dispatch runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from .codecs import CODECS, DECODE_FAILURES, Codec
from .core import DONE, Client, Packet, Session
from .dispatch import Dispatcher, error_payload
from .errors import ErrorCode, LocalProtocolError
from .protocol import PROTOCOL_VERSION, ByteOrder, FrameDecoder, FrameEncoder

__all__ = ["Connection", "ServerState"]

logger = logging.getLogger("asyncapy")


@dataclass(eq=False, slots=True)
class ServerState:
    """What every connection of one server shares (built when serving starts)."""

    server: Any
    loop: asyncio.AbstractEventLoop
    dispatcher: Dispatcher
    header_size: int
    byteorder: ByteOrder
    max_packet_size: int
    timeout: float
    session_limit: int
    max_connections: int
    max_pending: int
    write_buffer_size: int
    default_codec: Codec
    encoder: FrameEncoder
    connections: set[Connection] = field(default_factory=set)
    by_address: dict[str, set[Connection]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    error_frames: dict[tuple[ErrorCode, int], bytes] = field(default_factory=dict)
    draining: bool = False
    all_closed: asyncio.Event | None = None

    def error_frame(self, code: ErrorCode, codec: Codec) -> bytes:
        """The encoded error reply for ``code`` in ``codec`` (built once, then cached)."""
        key = (code, codec.encoding)
        frame = self.error_frames.get(key)
        if frame is None:
            frame = self.encoder.encode(codec.encode(error_payload(code)), codec.encoding)
            self.error_frames[key] = frame
        return frame

    def count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1


_Item = Packet | tuple[ErrorCode, bool, str]
_DECODERS: Final = tuple(codec.raw_decode for codec in CODECS)
_NAMES: Final = tuple(codec.name for codec in CODECS)
_new: Final = object.__new__
_copy_context: Final = contextvars.copy_context


def _reply_writer(codec: Codec, framer: FrameEncoder) -> Callable[[Any], bytes]:
    """One call from a reply map to its frame: the codec's encode, then the framing.

    Dicts go straight to msgspec; anything else, and any value msgspec refuses,
    takes the checked path (``codec.encode``, ``framer.encode``), which raises
    the documented ``EncodeError``/``ValueError``.
    """
    raw, code, pack, largest = (
        codec.raw_encode,
        codec.encoding,
        framer.header_pack,
        framer.max_length,
    )
    if pack is None:
        return lambda fields: framer.encode(codec.encode(fields), code)

    def write(fields: Any) -> bytes:
        try:
            body = raw(fields) if type(fields) is dict else codec.encode(fields)
        except (TypeError, ValueError, OverflowError, RecursionError):
            body = codec.encode(fields)  # raises EncodeError with the reason
        length = len(body) + 2
        if length > largest:
            return framer.encode(body, code)  # raises ValueError: too long
        return pack(length, PROTOCOL_VERSION, code) + body

    return write


def _send_batch(transport: asyncio.Transport, frames: list[bytes]) -> None:
    """Write ``frames`` with one ``transport.write()``.

    Never ``writelines()``: on CPython 3.12 and 3.13 the selector transport's
    ``writelines()`` does not call ``pause_writing()`` when its buffer passes
    the high-water mark, so a peer that does not read would never be paused.
    ``write()`` checks the mark on every loop and every version.
    """
    transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class _Peer(Client):
    """The :class:`~asyncapy.core.Client` a connection gives its handlers.

    ``send`` is written here, against the connection, so that a reply costs
    one Python call.
    """

    __slots__ = ()
    _conn: Connection

    def send(self, packet: Mapping[Any, Any], close: bool = False) -> Awaitable[None]:
        conn = self._conn
        if conn._closing:
            raise ConnectionError(f"session {conn.session_label} is closed")
        frame = conn._reply(packet._fields if type(packet) is Packet else packet)
        conn._write(frame)
        if close:
            conn.close()
            return DONE
        if conn._writing_paused:
            waiter: asyncio.Future[None] = conn._loop.create_future()
            conn._drain_waiters.append(waiter)
            return waiter
        return DONE


class Connection(asyncio.Protocol):
    """One accepted connection: one :class:`~asyncapy.core.Session`."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._loop = state.loop
        self._run = state.dispatcher.run
        self._feed = FrameDecoder(
            state.header_size, state.byteorder, state.max_packet_size
        ).feed_fast
        self._transport: asyncio.Transport | None = None
        self._queue: deque[_Item] = deque()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._closing = False
        self._eof = False
        self._lost = False
        self._registered = False
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._out: list[bytes] | None = None
        self._out_size = 0
        self._flush_at = state.write_buffer_size
        self._max_pending = state.max_pending
        self._codec: Codec | None = None  # the session's, once a frame decoded
        self._reply = _reply_writer(state.default_codec, state.encoder)
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self.client: _Peer = _Peer("", state.server, self)
        self.session_label = ""

    # -- what core.Client asks of us

    @property
    def busy(self) -> bool:
        """True while a dispatch runs or items wait."""
        return self._busy or bool(self._queue)

    def sessions_of(self, address: str) -> list[Session]:
        return [conn.client.session for conn in self._state.by_address.get(address, ())]

    def send_packet(self, payload: Mapping[Any, Any], close: bool) -> Awaitable[None]:
        return self.client.send(payload, close)

    def close(self) -> None:
        """Write what is pending, then close; drop the items not handled yet."""
        if self._closing:
            return
        self._closing = True
        self.client.closed = True
        self._queue.clear()
        transport = self._transport
        if transport is None:
            return
        out = self._out
        if out:
            _send_batch(transport, out)
            out.clear()
        transport.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        """Close at once, dropping unsent data, and cancel a running dispatch."""
        self.close()
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()

    def drain(self) -> None:
        """Start a graceful close: read no more, finish what was received, then close."""
        self._update_reading()
        if not self.busy:
            self.close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        state = self._state
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            address, port = str(peer[0]), int(peer[1])
        else:
            address, port = (str(peer) if peer else ""), 0
        session_id = uuid.uuid4()
        client = self.client
        client.address = address
        client.port = port
        client.session = Session(session_id, client)
        self.session_label = str(session_id)
        transport.set_write_buffer_limits(high=state.write_buffer_size)
        if state.draining:
            self._refuse(ErrorCode.ERR_SERVER_BUSY, "the server is shutting down")
            return
        if state.max_connections and len(state.connections) >= state.max_connections:
            self._refuse(ErrorCode.ERR_SERVER_BUSY, "max_connections reached")
            return
        peers = state.by_address.get(address)
        if state.session_limit and peers is not None and len(peers) >= state.session_limit:
            self._refuse(ErrorCode.ERR_SESSION_LIMIT_REACHED, "session_limit reached")
            return
        state.connections.add(self)
        if peers is None:
            state.by_address[address] = {self}
        else:
            peers.add(self)
        self._registered = True
        state.count("connections")
        logger.info(
            "{Client handler} New session started, UUID is %s (peer %s:%d)",
            self.session_label,
            address,
            port,
        )
        self._last_activity = self._loop.time()
        self._timer = self._loop.call_later(state.timeout, self._on_timer)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            events = self._feed(data)
        except LocalProtocolError:  # fed after a fatal error: we are closing anyway
            return
        if not events:
            return
        self._last_activity = self._loop.time()
        out: list[bytes] = []
        self._out = out
        try:
            client = self.client
            queue = self._queue
            for event in events:
                item: _Item
                if type(event) is tuple:  # a frame: (encoding, payload)
                    # (not cast(): it would build a generic alias on every frame)
                    encoding, payload = event  # type: ignore[misc]
                    try:
                        fields = _DECODERS[encoding](payload)
                    except DECODE_FAILURES as exc:
                        item = (ErrorCode.ERR_REQUEST_MALFORMED, True, f"invalid payload: {exc}")
                    else:
                        if self._codec is None:
                            self._set_codec(CODECS[encoding])
                        item = _new(Packet)  # built without __init__: the fields are checked
                        item._fields = fields
                        item.encoding = _NAMES[encoding]
                        item.sender = client
                else:
                    item = (event.code, event.keep_connection, event.detail)  # type: ignore[union-attr]
                if self._busy or queue or self._writing_paused:
                    queue.append(item)
                else:
                    self._handle(item)
                if self._closing:
                    break
        finally:
            self._end_batch(out)
        if len(self._queue) >= self._max_pending:
            self._update_reading()

    def eof_received(self) -> bool | None:
        # The peer will send no more; replies to what it sent still go out.
        self._eof = True
        if not self.busy:
            self.close()
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"session {self.session_label} is closed"))
        self._drain_waiters.clear()
        if self._registered:
            self._registered = False
            state = self._state
            state.connections.discard(self)
            peers = state.by_address.get(self.client.address)
            if peers is not None:
                peers.discard(self)
                if not peers:
                    del state.by_address[self.client.address]
            if state.all_closed is not None and not state.connections:
                state.all_closed.set()
            if exc is None:
                logger.info("(%s) {Client handler} The connection was closed", self.session_label)
            else:
                logger.info(
                    "(%s) {Client handler} The connection was lost: %s", self.session_label, exc
                )

    # -- internals

    def _set_codec(self, codec: Codec) -> None:
        """Fix the session's encoding: every reply from now on uses it."""
        self._codec = codec
        self.client.encoding = codec.name
        self._reply = _reply_writer(codec, self._state.encoder)

    def _end_batch(self, out: list[bytes]) -> None:
        """Write the replies gathered while handling one read (or one queue run)."""
        self._out = None
        self._out_size = 0
        if out and not self._lost:
            assert self._transport is not None
            _send_batch(self._transport, out)

    def _write(self, frame: bytes) -> None:
        out = self._out
        if out is None:
            if self._transport is not None:
                self._transport.write(frame)
            return
        out.append(frame)
        self._out_size += len(frame)
        if self._out_size >= self._flush_at and self._transport is not None:
            # A big batch goes out now, so that the transport can tell us
            # (pause_writing) to stop handling before the batch ends.
            _send_batch(self._transport, out)
            out.clear()
            self._out_size = 0

    def _error_reply(self, code: ErrorCode) -> None:
        """Write the error reply ``code`` in the session's encoding (the default before one)."""
        self._write(self._state.error_frame(code, self._codec or self._state.default_codec))

    def _refuse(self, code: ErrorCode, why: str) -> None:
        """Answer ``code`` in JSON and close, before any session exists."""
        logger.warning(
            "{Client handler} Refused %s:%d: %s (%s)",
            self.client.address,
            self.client.port,
            why,
            code,
        )
        self._state.count("refused")
        self._write(self._state.error_frame(code, CODECS[0]))
        self.close()

    def _reply_error(self, code: ErrorCode, keep: bool, detail: str) -> None:
        self._state.count("rejected_frames")
        logger.info(
            "(%s) {Client handler} Rejected a frame: %s (%s)", self.session_label, code, detail
        )
        self._error_reply(code)
        if not keep:
            self.close()

    def _handle(self, item: _Item) -> None:
        """Handle one item now; if its dispatch suspends, mark the connection busy."""
        if type(item) is not Packet:
            self._reply_error(*item)
            return
        try:
            task = self._run(self.client, item, self._loop, _copy_context())
        except Exception:
            self._dispatch_failed()
            return
        if task is not None:
            self._busy = True
            self._task = task
            task.add_done_callback(self._dispatch_done)

    def _dispatch_failed(self) -> None:
        """A bug in asyncapy itself: log it, answer ERR_INTERNAL, keep the connection."""
        logger.exception("(%s) dispatch failed", self.session_label)
        self._error_reply(ErrorCode.ERR_INTERNAL)

    def _dispatch_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        self._busy = False
        self._last_activity = self._loop.time()
        if not task.cancelled() and task.exception() is not None:
            logger.error("(%s) dispatch failed", self.session_label, exc_info=task.exception())
        self._process_queue()
        self._update_reading()

    def _process_queue(self) -> None:
        queue = self._queue
        if queue and not self._busy and not self._closing and not self._writing_paused:
            out: list[bytes] = []
            self._out = out
            try:
                while queue and not self._busy and not self._closing and not self._writing_paused:
                    self._handle(queue.popleft())
            finally:
                self._end_batch(out)
        if (self._eof or self._state.draining) and not self.busy:
            self.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        pause = (
            self._writing_paused or self._state.draining or len(self._queue) >= self._max_pending
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
        timeout = self._state.timeout
        if self.busy:  # we owe the peer a reply: not its idleness
            self._timer = self._loop.call_later(timeout, self._on_timer)
            return
        remaining = self._last_activity + timeout - self._loop.time()
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._on_timer)
            return
        self._state.count("timeouts")
        logger.info(
            "(%s) {Client handler} No complete frame in %s seconds: timed out",
            self.session_label,
            timeout,
        )
        self._error_reply(ErrorCode.ERR_TIMED_OUT)
        self.close()
