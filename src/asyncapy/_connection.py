"""The asyncio Protocol that carries one session: the only code that touches sockets.

Theory of operation
-------------------
Bytes go to the sans-I/O :class:`~asyncapy.protocol.FrameDecoder`; each frame
is decoded at once into a :class:`~asyncapy.core.Packet` (or an error), so no
payload outlives the chunk it arrived in. Items are handled strictly in order:
while a dispatch is running (its handler suspended), later items wait in a
queue of at most ``max_pending`` before reading pauses. A dispatch runs at
once (:meth:`~asyncapy.dispatch.Dispatcher.run`: each handler starts eagerly,
see :mod:`asyncapy._eager`); the connection waits for a Task only when a
handler suspends.

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
import functools
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from .codecs import CODECS, DECODE_FAILURES, Codec, get_codec
from .config import Settings
from .core import DONE, Client, Packet, Session
from .dispatch import Dispatcher, error_payload
from .errors import ErrorCode, LocalProtocolError
from .logging import error_logger as logger
from .protocol import ByteOrder, Encoding, FrameDecoder, FrameEncoder, FrameError

if TYPE_CHECKING:
    from .server import Server

__all__ = ["Connection", "ServerState", "Stats"]


@dataclass(slots=True)
class Stats:
    """Counters of one server, kept across its runs of ``serve()``."""

    connections: int = 0
    """Sessions opened."""
    refused: int = 0
    """Connections closed before a session: busy, session limit, shutting down."""
    rejected_frames: int = 0
    """Frames answered with an error code and never handled."""
    timeouts: int = 0
    """Sessions closed by the idle ``timeout``."""
    tls_mismatches: int = 0
    """Peers that started TLS on a plaintext port, or spoke plaintext to a TLS port."""


@dataclass(eq=False, slots=True)
class ServerState:
    """What the connections of one serving server share and change.

    The settings are not here: each connection reads them from the server's
    :class:`~asyncapy.config.Settings`.
    """

    server: Server
    stats: Stats
    connections: set[Connection] = field(default_factory=set)
    by_address: dict[str, set[Connection]] = field(default_factory=dict)
    draining: bool = False
    all_closed: asyncio.Event | None = None


@functools.lru_cache(maxsize=64)
def error_frame(
    code: ErrorCode, encoding: Encoding, header_size: int, byteorder: ByteOrder
) -> bytes:
    """The whole frame of the error reply ``code`` (built once per format, then cached)."""
    framer = FrameEncoder(header_size, byteorder)
    return framer.encode(CODECS[encoding].encode_payload(error_payload(code)), encoding)


_Item = Packet | FrameError
_DECODERS: Final = tuple(codec.raw_decode for codec in CODECS)
_NAMES: Final = tuple(codec.name for codec in CODECS)
_new: Final = object.__new__
_copy_context: Final = contextvars.copy_context


def _send_batch(transport: asyncio.Transport, frames: list[bytes]) -> None:
    """Write ``frames`` with one ``transport.write()``.

    Never ``writelines()``: on CPython 3.12 and 3.13 the selector transport's
    ``writelines()`` does not call ``pause_writing()`` when its buffer passes
    the high-water mark, so a peer that does not read would never be paused.
    ``write()`` checks the mark on every loop and every version.
    """
    transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class _Peer(Client):
    """The :class:`~asyncapy.core.Client` of a live connection, the one handlers get.

    ``send`` is written here, against the connection, so that a reply costs
    one Python call.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection, server: Server) -> None:
        self._conn = conn
        self.server = server
        self.address = ""
        self.port = 0
        self.encoding = None
        self.closed = False

    def send(self, packet: Mapping[Any, Any] | str, close: bool = False) -> Awaitable[None]:
        conn = self._conn
        if conn._closing:
            raise ConnectionError(f"session {conn.session_label} is closed")
        conn._write(conn._reply(packet._fields if type(packet) is Packet else packet))
        if close:
            conn.close()
            return DONE
        if conn._writing_paused:
            waiter: asyncio.Future[None] = conn._loop.create_future()
            conn._drain_waiters.append(waiter)
            return waiter
        return DONE

    def close(self) -> Awaitable[None]:
        self._conn.close()
        return DONE

    def get_sessions(self) -> list[Session]:
        peers = self._conn._state.by_address.get(self.address, ())
        return [conn.client.session for conn in peers]


class Connection(asyncio.Protocol):
    """One accepted connection: one :class:`~asyncapy.core.Session`.

    Args:
        settings: the server's settings (limits, framing, timeout).
        state: what the server's connections share.
        dispatcher: the server's handlers.
    """

    def __init__(self, settings: Settings, state: ServerState, dispatcher: Dispatcher) -> None:
        self._settings = settings
        self._state = state
        self._loop = asyncio.get_running_loop()
        self._run = dispatcher.run
        self._feed = FrameDecoder(
            settings.header_size, settings.byteorder, settings.max_packet_size
        ).feed_fast
        self._framer = FrameEncoder(settings.header_size, settings.byteorder)
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
        self._flush_at = settings.write_buffer_size
        self._max_pending = settings.max_pending
        self._codec: Codec
        self._reply: Callable[[Any], bytes]
        self._use_codec(get_codec(settings.encoding))  # until a frame decodes
        self._session_codec = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._half_close = True
        self.client = _Peer(self, state.server)
        self.session_label = ""

    @property
    def busy(self) -> bool:
        """True while a dispatch runs or items wait."""
        return self._busy or bool(self._queue)

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
        settings = self._settings
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
        transport.set_write_buffer_limits(high=settings.write_buffer_size)
        self._half_close = transport.get_extra_info("sslcontext") is None
        if state.draining:
            self._refuse(ErrorCode.ERR_SERVER_BUSY, "the server is shutting down")
            return
        if settings.max_connections and len(state.connections) >= settings.max_connections:
            self._refuse(ErrorCode.ERR_SERVER_BUSY, "max_connections reached")
            return
        peers = state.by_address.get(address)
        limit = settings.session_limit
        if limit and peers is not None and len(peers) >= limit:
            self._refuse(ErrorCode.ERR_SESSION_LIMIT_REACHED, "session_limit reached")
            return
        state.connections.add(self)
        if peers is None:
            state.by_address[address] = {self}
        else:
            peers.add(self)
        self._registered = True
        state.stats.connections += 1
        logger.info(
            "{Client handler} New session started, UUID is %s (peer %s:%d)",
            self.session_label,
            address,
            port,
        )
        self._last_activity = self._loop.time()
        self._timer = self._loop.call_later(settings.timeout, self._on_timer)

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
                        item = FrameError(
                            ErrorCode.ERR_REQUEST_MALFORMED, True, f"invalid payload: {exc}"
                        )
                    else:
                        if not self._session_codec:
                            self._set_codec(CODECS[encoding])
                        item = _new(Packet)  # built without __init__: the fields are checked
                        item._fields = fields
                        item.encoding = _NAMES[encoding]
                        item.sender = client
                else:
                    item = event  # type: ignore[assignment]
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
        # (TLS cannot half-close: there the transport closes whatever we say,
        # and saying True only makes asyncio log a warning.)
        self._eof = True
        if not self.busy:
            self.close()
        return self._half_close

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
        """Write the replies gathered while handling one read (or one queue run)."""
        self._out = None
        self._out_size = 0
        if out and not self._lost:
            assert self._transport is not None
            # _send_batch(), inlined on the hot path: one write(), never writelines()
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

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

    def _error_reply(self, code: ErrorCode, codec: Codec | None = None) -> None:
        """Write the error reply ``code`` in ``codec`` (the session's by default)."""
        settings = self._settings
        encoding = (codec or self._codec).encoding
        self._write(error_frame(code, encoding, settings.header_size, settings.byteorder))

    def _refuse(self, code: ErrorCode, why: str) -> None:
        """Answer ``code`` in JSON and close, before any session exists."""
        logger.warning(
            "{Client handler} Refused %s:%d: %s (%s)",
            self.client.address,
            self.client.port,
            why,
            code,
        )
        self._state.stats.refused += 1
        self._error_reply(code, CODECS[Encoding.JSON])
        self.close()

    def _reply_error(self, error: FrameError) -> None:
        stats = self._state.stats
        if error.tls:
            stats.tls_mismatches += 1
            logger.warning(
                "(%s) {Client handler} %s:%d started a TLS handshake, but this port speaks"
                " plaintext: the client must connect without TLS, or the server serve TLS"
                " (certfile/keyfile)",
                self.session_label,
                self.client.address,
                self.client.port,
            )
        else:
            stats.rejected_frames += 1
            logger.info(
                "(%s) {Client handler} Rejected a frame: %s (%s)",
                self.session_label,
                error.code,
                error.detail,
            )
        self._error_reply(error.code)
        if not error.keep_connection:
            self.close()

    def _handle(self, item: _Item) -> None:
        """Handle one item now; if its dispatch suspends, mark the connection busy."""
        if type(item) is not Packet:
            self._reply_error(item)  # type: ignore[arg-type]
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
        timeout = self._settings.timeout
        if self.busy:  # we owe the peer a reply: not its idleness
            self._timer = self._loop.call_later(timeout, self._on_timer)
            return
        remaining = self._last_activity + timeout - self._loop.time()
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._on_timer)
            return
        self._state.stats.timeouts += 1
        logger.info(
            "(%s) {Client handler} No complete frame in %s seconds: timed out",
            self.session_label,
            timeout,
        )
        self._error_reply(ErrorCode.ERR_TIMED_OUT)
        self.close()
