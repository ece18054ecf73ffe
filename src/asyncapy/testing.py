"""Test your handlers without a network: :class:`TestClient` and :class:`BlockingTestClient`.

Theory of operation
-------------------
``async with TestClient(server) as client`` does what :meth:`Server.serve`
does, in the test's own event loop, except listening: it makes the server's
state, awaits ``setup()``, and on exit, also when the test body raised,
half-closes each open connection (the test sends no more: the server answers
what it has read and closes it), stops the server gracefully (the server's
own ``_close_gracefully``) and awaits ``shutdown()``. ``server.stop()``
called by a test or a handler meanwhile starts that graceful stop at once,
as it would in production.

Each client connection is a :func:`socket.socketpair`. The server's end is
attached with ``loop.connect_accepted_socket`` to the server's own
:class:`~asyncapy._connection.Connection`, so every byte goes through the
real decoder, limits, codecs, dispatcher and error replies. The subclass used
here changes two things only: the transport the connection sees reports a
chosen peer address (a socket pair has none; ``Filters.Ip`` and
``session_limit`` read it), and the end of the server's side resolves a future
(:meth:`TestConnection.close` waits for it).

The client's end is a small Protocol that feeds a
:class:`~asyncapy.protocol.FrameDecoder` with the server's ``header_size``
and ``byteorder`` and keeps whole frames until ``receive`` asks for them; the
server's end-of-stream is remembered (:attr:`TestConnection.closed`) and the
client's end is closed at once, as a client that reads EOF would. Every wait
is bounded by the client's ``timeout``.

:class:`BlockingTestClient` runs the same coroutines on an
:class:`asyncio.Runner` in the calling thread: the loop (uvloop's when the
server's ``loop`` setting picks it) runs while a call waits, so handlers run
in the test's thread, without races with the test body.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import socket
from collections import deque
from collections.abc import Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from . import logging as _logging
from ._connection import Connection
from .codecs import CODECS, get_codec
from .core import Session
from .errors import ConnectionClosedError, NotConnectedError, RemoteProtocolError
from .protocol import (
    PROTOCOL_VERSION,
    Buffer,
    ByteOrder,
    Encoding,
    Event,
    Frame,
    FrameDecoder,
    FrameEncoder,
)
from .protocol import FrameError as _FrameError
from .server import Server, _new_event_loop

if TYPE_CHECKING:
    from ._state import ServerState
    from .config import Settings

__all__ = ["BlockingTestClient", "BlockingTestConnection", "TestClient", "TestConnection"]

T = TypeVar("T")
Address = str | tuple[str, int]
_FIRST_PORT = 50000
"""The port of the first connection when only a host is given; each next one adds 1."""


class _PeerView(asyncio.Transport):
    """The server's transport, as the connection sees it: with a chosen ``peername``."""

    def __init__(self, transport: asyncio.Transport, peername: tuple[str, int]) -> None:
        super().__init__()
        self._t = transport
        self._peername = peername

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        return self._t.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._t.is_closing()

    def close(self) -> None:
        self._t.close()

    def abort(self) -> None:
        self._t.abort()

    def is_reading(self) -> bool:
        return self._t.is_reading()

    def pause_reading(self) -> None:
        self._t.pause_reading()

    def resume_reading(self) -> None:
        self._t.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._t.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._t.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._t.get_write_buffer_limits()

    def write(self, data: Buffer) -> None:
        self._t.write(data)

    def write_eof(self) -> None:
        self._t.write_eof()

    def can_write_eof(self) -> bool:
        return self._t.can_write_eof()


class _ServerEnd(asyncio.Protocol):
    """The server's Connection, with a chosen peer address; tells when it is gone.

    A wrapper, not a subclass: :class:`~asyncapy._connection.Connection` may
    be compiled (mypyc), and Python code cannot subclass a compiled class.
    """

    def __init__(self, peer: tuple[str, int], gone: asyncio.Future[None], *args: Any) -> None:
        self.conn = Connection(*args)
        self._tc_peername = peer
        self._tc_gone = gone

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(_PeerView(cast(asyncio.Transport, transport), self._tc_peername))

    def data_received(self, data: bytes) -> None:
        self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)
        if not self._tc_gone.done():
            self._tc_gone.set_result(None)


class _ClientEnd(asyncio.Protocol):
    """The client's end: whole frames kept until read, the end of stream remembered."""

    def __init__(self, decoder: FrameDecoder) -> None:
        self.decoder = decoder
        self.events: deque[Event] = deque()
        self.eof = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        if not self.decoder.closed:
            self.events.extend(self.decoder.feed(data))
            self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our end too: the server's lingering close ends now

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drained(self) -> None:
        """Return once the transport's buffer is below its high-water mark (or lost)."""
        if self._drained is not None:
            await asyncio.shield(self._drained)

    async def changed(self) -> None:
        """Return after the next frame, end of stream or loss."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class TestConnection:
    """One client connection to a :class:`TestClient`'s server (from :meth:`TestClient.connect`).

    Attributes:
        encoding: the :class:`~asyncapy.protocol.Encoding` of the payloads it sends.
        timeout: seconds each call waits at most (a reply, a close, room to
            send); change it at any time. For a shorter wait of one call, wrap
            it in ``asyncio.timeout()``.
        address: the peer address the server sees, ``(host, port)``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, encoding: str | int = "json", timeout: float = 5.0) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number, not {timeout!r}")
        self.encoding: Encoding = get_codec(encoding).encoding
        self.timeout = float(timeout)
        self.address: tuple[str, int] = ("", 0)
        self._framer = FrameEncoder()
        self._header_size = 4
        self._byteorder: ByteOrder = "big"
        self._end: _ClientEnd | None = None
        self._server_end: _ServerEnd | None = None

    # -- what the server sees

    @property
    def session(self) -> Session:
        """The server's :class:`~asyncapy.core.Session` of this connection.

        Raises:
            NotConnectedError: before the connection is made.
        """
        return self._server()[0].conn.client.session

    @property
    def closed(self) -> bool:
        """True once the server has closed the connection, or :meth:`close` was called.

        Frames that arrived before the close can still be received.
        """
        return self._end is not None and self._end.eof

    # -- sending

    def frame(
        self,
        payload: Mapping[Any, Any] | str | Buffer,
        *,
        encoding: str | int | None = None,
        version: int = PROTOCOL_VERSION,
        length: int | None = None,
    ) -> bytes:
        """Build a frame in the server's framing (``header_size``, ``byteorder``), valid or not.

        Args:
            payload: a map, or a str holding a JSON object, encoded with
                ``encoding``; or bytes-like, sent as they are (``b"not json"``).
            encoding: the codec of a map and the Content-Encoding byte
                (``"json"``, ``"ziproto"``, 0 or 1; the connection's by
                default). Any other integer from 0 to 255 is written as it is
                (``ERR_HEADER_INVALID``); a map is then encoded as JSON.
            version: the Protocol-Version byte; not 22 is ``ERR_HEADER_INVALID``.
            length: the Content-Length to write instead of the true one:
                above ``max_packet_size`` is ``ERR_PACKET_TOO_LARGE``, below 5
                ``ERR_REQUEST_MALFORMED``.

        Raises:
            ValueError: for a ``version``, ``encoding`` or ``length`` that
                does not fit its header field, or a str that is not a JSON object.
            TypeError: for a payload the codec cannot encode.
        """
        code = self.encoding if encoding is None else encoding
        if isinstance(code, int) and not isinstance(code, bool) and code not in (0, 1):
            number, codec = code, CODECS[Encoding.JSON]
        else:
            codec = get_codec(code)
            number = codec.encoding
        if isinstance(payload, bytes | bytearray | memoryview):
            body = bytes(payload)
        else:
            body = codec.encode_payload(payload)
        size = len(body) + 2 if length is None else length
        try:
            head = size.to_bytes(self._header_size, self._byteorder)
        except OverflowError:
            raise ValueError(
                f"Content-Length {size} does not fit {self._header_size} bytes"
            ) from None
        return head + bytes((version, number)) + body

    async def send(
        self, payload: Mapping[Any, Any] | str, *, encoding: str | int | None = None
    ) -> None:
        """Send ``payload`` as one frame, as a client would.

        Args:
            payload: a map, or a str holding a JSON object.
            encoding: ``"json"`` or ``"ziproto"`` for this frame; the
                connection's :attr:`encoding` by default.

        Raises:
            NotConnectedError: before the connection is made.
            ConnectionClosedError: when the connection is closed.
            ValueError: for a str that is not a JSON object, or an unknown encoding.
            TypeError: for a payload the codec cannot encode.
            TimeoutError: when the server reads nothing for ``timeout`` seconds
                while the socket's buffer is full (the bytes stay queued, and
                go out once the server reads again).
        """
        code = self.encoding if encoding is None else get_codec(encoding).encoding
        await self.send_raw(self.frame(payload, encoding=code))

    async def send_raw(self, data: Buffer) -> None:
        """Send ``data`` as it is: part of a frame, several frames, or garbage.

        Build malformed frames with :meth:`frame`.

        Raises:
            NotConnectedError, ConnectionClosedError, TimeoutError: as :meth:`send`.
        """
        end = self._client()
        if end.eof or end.transport is None or end.transport.is_closing():
            raise ConnectionClosedError("the connection is closed: nothing can be sent")
        end.transport.write(bytes(data))
        try:
            async with asyncio.timeout(self.timeout):
                await end.drained()
        except TimeoutError:
            raise TimeoutError(f"the server read nothing in {self.timeout} s") from None

    async def send_eof(self) -> None:
        """Close the sending side (a half-close): the server answers what it read, then closes.

        Raises:
            NotConnectedError: before the connection is made.
            ConnectionClosedError: when the connection is closed.
        """
        end = self._client()
        if end.eof or end.transport is None or end.transport.is_closing():
            raise ConnectionClosedError("the connection is closed already")
        end.transport.write_eof()

    # -- receiving

    async def receive_frame(self) -> Frame:
        """Return the next frame from the server, payload not decoded.

        Raises:
            NotConnectedError: before the connection is made.
            TimeoutError: when no whole frame arrives in :attr:`timeout`
                seconds (nothing is lost: a later call goes on with the same frame).
            ConnectionClosedError: when the server closed the connection and
                every frame it sent was received.
            RemoteProtocolError: for a frame that breaks AsyncAProto (a server bug).
        """
        end = self._client()
        wait = self.timeout
        try:
            async with asyncio.timeout(wait):
                while not end.events:
                    if end.eof:
                        raise ConnectionClosedError(
                            "the server closed the connection (no frame is left to receive)"
                        )
                    await end.changed()
        except TimeoutError:
            raise TimeoutError(
                f"no reply from the server in {wait} s (did a handler match, and send?)"
            ) from None
        event = end.events.popleft()
        if isinstance(event, _FrameError):
            raise RemoteProtocolError(
                f"bad frame from the server: {event.detail}",
                event.code,
                keep_connection=event.keep_connection,
            )
        return event

    async def receive(self) -> dict[Any, Any]:
        """Return the next reply's payload, decoded by the frame's own Content-Encoding.

        An error reply is a map too: ``{"status": "failure", "error": "ERR_..."}``.

        Raises:
            DecodeError: when the payload is not a map of its encoding.
            NotConnectedError, TimeoutError, ConnectionClosedError,
            RemoteProtocolError: as :meth:`receive_frame`.
        """
        frame = await self.receive_frame()
        return CODECS[frame.encoding].decode(frame.payload)

    async def receive_raw(self) -> bytes:
        """Return the next frame's bytes, header included.

        Raises:
            NotConnectedError, TimeoutError, ConnectionClosedError,
            RemoteProtocolError: as :meth:`receive_frame`.
        """
        frame = await self.receive_frame()
        return self._framer.encode(bytes(frame.payload), frame.encoding)

    async def wait_closed(self) -> None:
        """Wait until the server closes the connection and forgets its session.

        Frames that arrive before are kept for the ``receive`` methods. Once
        it returns, ``server.sessions`` no longer lists this connection's.

        Raises:
            NotConnectedError: before the connection is made.
            TimeoutError: when the connection is still open after
                :attr:`timeout` seconds.
        """
        server_end, end = self._server()
        wait = self.timeout
        try:
            async with asyncio.timeout(wait):
                while not end.eof:
                    await end.changed()
                await asyncio.shield(server_end._tc_gone)
        except TimeoutError:
            raise TimeoutError(f"the server did not close the connection in {wait} s") from None

    async def close(self) -> None:
        """Close the connection and wait until the server's side is gone too.

        Idempotent: closing a closed connection does nothing.

        Raises:
            TimeoutError: when the server still holds the connection after
                :attr:`timeout` seconds.
        """
        end, server_end = self._end, self._server_end
        if end is None or server_end is None:
            return
        end.eof = True
        if end.transport is not None:
            end.transport.close()
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(end.lost)
                await asyncio.shield(server_end._tc_gone)
        except TimeoutError:
            raise TimeoutError(
                f"the server still holds the connection after {self.timeout} s"
            ) from None

    # -- internals

    async def _open(self, state: ServerState, address: tuple[str, int]) -> None:
        """Connect through a socket pair to the server whose state is ``state``."""
        server, settings = state.server, state.settings
        loop = asyncio.get_running_loop()
        self._use_framing(settings)
        decoder = FrameDecoder(settings.header_size, settings.byteorder, self._framer.max_length)
        theirs, ours = socket.socketpair()
        try:
            gone: asyncio.Future[None] = loop.create_future()
            factory = functools.partial(
                _ServerEnd, address, gone, settings, state, server._dispatcher
            )
            server_transport, server_end = await loop.connect_accepted_socket(factory, theirs)
        except BaseException:
            theirs.close()
            ours.close()
            raise
        try:
            _, end = await loop.connect_accepted_socket(lambda: _ClientEnd(decoder), ours)
        except BaseException:
            server_transport.abort()
            ours.close()
            raise
        self.address = address
        self._server_end, self._end = server_end, end

    def _use_framing(self, settings: Settings) -> None:
        """Frame as the server does: its ``header_size`` and ``byteorder``."""
        self._framer = FrameEncoder(settings.header_size, settings.byteorder)
        self._header_size, self._byteorder = settings.header_size, settings.byteorder

    def _client(self) -> _ClientEnd:
        if self._end is None:
            raise NotConnectedError("not connected: use `async with TestClient(server) as client`")
        return self._end

    def _server(self) -> tuple[_ServerEnd, _ClientEnd]:
        end = self._client()
        assert self._server_end is not None
        return self._server_end, end

    def _done_sending(self) -> None:
        """Half-close, if open: the server answers what it has read, then closes."""
        end = self._end
        transport = None if end is None or end.eof else end.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def _abort(self) -> None:
        """Drop the connection at once (the server is gone)."""
        if self._end is not None and self._end.transport is not None:
            self._end.eof = True
            self._end.transport.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self._end is not None else "not connected"
        return f"<{type(self).__name__} {self.address[0]}:{self.address[1]} {state}>"


class TestClient(TestConnection):
    """Serve ``server`` to the test, in the test's own event loop, and connect to it.

    ``async with TestClient(server) as client`` runs ``setup()``, connects
    through a socket pair (no port is opened; the server's framing, codecs,
    limits and error replies all run) and gives the first connection; on
    exit, even when the body raised, the server stops gracefully and
    ``shutdown()`` runs. ``setup()`` and ``shutdown()`` run once each.
    :meth:`connect` adds connections.

    Args:
        server: the server to test; not serving (nor in another TestClient).
        encoding: ``"json"`` or ``"ziproto"``, the encoding of sent payloads.
        timeout: seconds each call waits at most (a reply, a close, room to
            send); the ``timeout`` attribute of each connection.
        address: the peer address the server sees: a host, each connection
            then getting the next port from 50000, or a ``(host, port)``.

    Entering it raises what ``setup()`` raises (``shutdown()`` does not
    run then, as with :meth:`Server.serve`); leaving it raises what
    ``shutdown()`` raises, chained to the test's own error if there is one.

    Raises:
        ValueError: for an unknown encoding or a timeout that is not positive.
        RuntimeError: on entering, when the server is serving already
            (``serve()``, ``start()``, another TestClient) or this client is open.
    """

    def __init__(
        self,
        server: Server,
        *,
        encoding: str | int = "json",
        timeout: float = 5.0,
        address: Address = "127.0.0.1",
    ) -> None:
        super().__init__(encoding, timeout)
        self.server = server
        self._use_framing(server.settings)
        self._address = address
        self._ports = itertools.count(_FIRST_PORT)
        self._state: ServerState | None = None
        self._stopper: asyncio.Task[None] | None = None
        self._connections: list[TestConnection] = []

    async def __aenter__(self) -> Self:
        """Start the server (``setup()``) and connect; raises what ``setup()`` raises.

        Raises:
            RuntimeError: when the server is serving already, or this client is open.
        """
        server = self.server
        if self._state is not None:
            raise RuntimeError("this TestClient is open already")
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        with server._lock:
            if server._stop_event is not None:
                raise RuntimeError("the server is serving already (serve() or a TestClient)")
            server._loop, server._stop_event = loop, stop
            server._stop_pending = False  # a stop asked before this test is not for it
        server._force = False
        settings = server.settings
        _logging.configure(settings.logging_level, settings.console_format, settings.datefmt)
        self._state = state = server._new_state()
        server._state = state
        try:
            await server._call_hook(server.setup)
        except BaseException:
            self._release()
            raise
        server._started.set()
        self._stopper = loop.create_task(self._stop_when_asked(stop, state))
        try:
            await self._open(state, self._next_address(None))
        except BaseException:
            await self._stop()
            raise
        self._connections.append(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server gracefully, then run ``shutdown()``; never swallows the body's error.

        Raises what ``shutdown()`` raises.
        """
        await self._stop()

    async def connect(
        self,
        *,
        encoding: str | int | None = None,
        address: Address | None = None,
    ) -> TestConnection:
        """Open one more connection to the server: another session.

        Args:
            encoding: its encoding; this client's by default.
            address: the peer address the server sees (see :class:`TestClient`).

        Raises:
            NotConnectedError: when the client is not open.
            ValueError: for an unknown encoding.
        """
        if self._state is None:
            raise NotConnectedError("the TestClient is not open: use `async with`")
        conn = TestConnection(self.encoding if encoding is None else encoding, self.timeout)
        await conn._open(self._state, self._next_address(address))
        self._connections.append(conn)
        return conn

    # -- internals

    def _next_address(self, address: Address | None) -> tuple[str, int]:
        chosen = self._address if address is None else address
        if isinstance(chosen, str):
            return chosen, next(self._ports)
        host, port = chosen
        return str(host), int(port)

    async def _stop_when_asked(self, stop: asyncio.Event, state: ServerState) -> None:
        """What serve() does on stop: close gracefully (``server.stop()`` sets ``stop``)."""
        await stop.wait()
        await self.server._close_gracefully(state)

    async def _stop(self) -> None:
        server, stopper = self.server, self._stopper
        if self._state is None or stopper is None:
            return
        assert server._stop_event is not None
        for conn in self._connections:
            conn._done_sending()  # the test is over: as a client that has nothing more to send
        server._stop_event.set()
        try:
            await stopper
        finally:
            try:
                await server._call_hook(server.shutdown)
            finally:
                await self._drop_connections()
                self._release()

    async def _drop_connections(self) -> None:
        """After the server's graceful close: close our ends, wait (briefly) for them to go."""
        lost = []
        for conn in self._connections:
            conn._abort()
            if conn._end is not None:
                lost.append(conn._end.lost)
        self._connections.clear()
        if lost:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(*lost)

    def _release(self) -> None:
        """Give the server back: not serving, as before ``__aenter__``."""
        server = self.server
        if server._executor is not None:
            server._executor.shutdown(wait=False, cancel_futures=True)
            server._executor = None
        server._state = None
        self._state = None
        self._stopper = None
        with server._lock:
            server._loop = server._stop_event = None
        server._started = asyncio.Event()


class BlockingTestConnection:
    """A :class:`TestConnection` for plain (not ``async``) tests: the same methods, blocking.

    Each call runs the event loop of its :class:`BlockingTestClient` until
    the call returns.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, conn: TestConnection, runner: asyncio.Runner) -> None:
        self._conn = conn
        self._runner = runner

    @property
    def connection(self) -> TestConnection:
        """The asynchronous connection this one drives."""
        return self._conn

    @property
    def session(self) -> Session:
        """See :attr:`TestConnection.session`."""
        return self._conn.session

    @property
    def closed(self) -> bool:
        """See :attr:`TestConnection.closed`."""
        return self._conn.closed

    @property
    def address(self) -> tuple[str, int]:
        """The peer address the server sees."""
        return self._conn.address

    @property
    def timeout(self) -> float:
        """Seconds each call waits at most; see :class:`TestConnection`."""
        return self._conn.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._conn.timeout = value

    def frame(
        self,
        payload: Mapping[Any, Any] | str | Buffer,
        *,
        encoding: str | int | None = None,
        version: int = PROTOCOL_VERSION,
        length: int | None = None,
    ) -> bytes:
        """See :meth:`TestConnection.frame` (same arguments and errors)."""
        return self._conn.frame(payload, encoding=encoding, version=version, length=length)

    def send(self, payload: Mapping[Any, Any] | str, *, encoding: str | int | None = None) -> None:
        """See :meth:`TestConnection.send` (same arguments and errors)."""
        self.run(self._conn.send(payload, encoding=encoding))

    def send_raw(self, data: Buffer) -> None:
        """See :meth:`TestConnection.send_raw` (same errors)."""
        self.run(self._conn.send_raw(data))

    def send_eof(self) -> None:
        """See :meth:`TestConnection.send_eof` (same errors)."""
        self.run(self._conn.send_eof())

    def receive(self) -> dict[Any, Any]:
        """See :meth:`TestConnection.receive` (same arguments and errors)."""
        return self.run(self._conn.receive())

    def receive_frame(self) -> Frame:
        """See :meth:`TestConnection.receive_frame` (same arguments and errors)."""
        return self.run(self._conn.receive_frame())

    def receive_raw(self) -> bytes:
        """See :meth:`TestConnection.receive_raw` (same arguments and errors)."""
        return self.run(self._conn.receive_raw())

    def wait_closed(self) -> None:
        """See :meth:`TestConnection.wait_closed` (same arguments and errors)."""
        self.run(self._conn.wait_closed())

    def close(self) -> None:
        """See :meth:`TestConnection.close` (same errors)."""
        self.run(self._conn.close())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the test's event loop and return its result (or raise its error).

        For what the methods do not cover: ``client.run(asyncio.sleep(0.1))``
        lets the server work meanwhile.

        Raises:
            RuntimeError: when called from a running event loop (an ``async``
                test: use :class:`TestClient` there).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._runner.run(coro)
        coro.close()
        raise RuntimeError(
            "a BlockingTestClient cannot run inside a running event loop:"
            " in an async test, use `async with TestClient(server)`"
        )


class BlockingTestClient(BlockingTestConnection):
    """:class:`TestClient` for plain test functions: ``with BlockingTestClient(server) as client``.

    The event loop is an :class:`asyncio.Runner`'s in the calling thread; it
    runs while a call waits (for a reply, a close), which is when a test can
    see what the server does. Handlers thus run in the test's thread, never
    concurrently with the test body.

    Args:
        server: as :class:`TestClient`.
        encoding: as :class:`TestClient`.
        timeout: as :class:`TestClient`.
        address: as :class:`TestClient`.
        loop: ``"auto"`` (uvloop's when installed), ``"asyncio"`` or
            ``"uvloop"``; the server's ``loop`` setting by default, the loop
            it runs on in production.

    Raises:
        ValueError: for an unknown encoding or a timeout that is not positive.
        ConfigError: on entering, for ``loop="uvloop"`` without uvloop.
        RuntimeError: on entering, as :class:`TestClient`; or inside a
            running event loop (an ``async`` test: use :class:`TestClient`).
    """

    def __init__(
        self,
        server: Server,
        *,
        encoding: str | int = "json",
        timeout: float = 5.0,
        address: Address = "127.0.0.1",
        loop: str | None = None,
    ) -> None:
        kind = server.settings.loop if loop is None else loop
        runner = asyncio.Runner(loop_factory=functools.partial(_new_event_loop, kind))
        client = TestClient(server, encoding=encoding, timeout=timeout, address=address)
        super().__init__(client, runner)
        self._client = client
        self.server = server

    def connect(
        self,
        *,
        encoding: str | int | None = None,
        address: Address | None = None,
    ) -> BlockingTestConnection:
        """See :meth:`TestClient.connect` (same arguments and errors)."""
        conn = self.run(self._client.connect(encoding=encoding, address=address))
        return BlockingTestConnection(conn, self._runner)

    def __enter__(self) -> Self:
        """Start the server (``setup()``) and connect; raises as entering a :class:`TestClient`."""
        try:
            self.run(self._client.__aenter__())
        except BaseException:
            self._runner.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and run ``shutdown()``, then close the event loop.

        Raises what ``shutdown()`` raises.
        """
        try:
            self.run(self._client.__aexit__(exc_type, exc, tb))
        finally:
            self._runner.close()
