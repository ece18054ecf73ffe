"""AsyncAProto clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak the wire format of protocol.md: ``send`` frames one map encoded
with the client's encoding, ``receive_raw`` returns the next whole frame as it
came in (header included) and ``receive`` decodes the next frame's payload by
that frame's own Content-Encoding header. Frames may arrive split anywhere or
several in one read; bytes past the end of a frame are kept for the next call.

With ``tls=True`` (the default) the server's certificate and host name are
verified, against the system's CAs or ``cafile``; ``verify=False`` turns the
verification off, and ``ssl_context`` replaces all of it.

``timeout`` bounds ``send`` and each ``receive``/``receive_raw`` as a whole,
and ``connect``: the asyncio client's as a whole, the blocking client's TCP
connection attempt and TLS handshake each. A ``receive`` that times out
loses no byte: the next call goes on with the same frame. A ``send`` that
fails (time-out or I/O error) closes the client, as part of a frame may have
been written.

By default (``reconnect=True``), a client whose server closed the connection at a
frame boundary (every frame received whole: a server's ``max_connection_age``,
its shutdown, its idle ``timeout``) connects again to the same address before
the *next* ``send``; a request already sent is never sent again, since it may
have been handled: a close while a reply is awaited still raises.

The framing, the codecs and the settings live in one sans-I/O base class,
:class:`_ClientCore`; the two public classes only move bytes.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from os import PathLike
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import msgspec

from ._tls import client_context, handshake_error
from .codecs import CODECS
from .errors import (
    ConnectionClosedError,
    DecodeError,
    NotConnectedError,
    RemoteProtocolError,
    TLSMismatchError,
)
from .protocol import (
    DEFAULT_HEADER_SIZE,
    DEFAULT_MAX_PACKET_SIZE,
    ByteOrder,
    Encoding,
    Event,
    Frame,
    FrameDecoder,
    FrameEncoder,
    FrameError,
)

__all__ = ["AsyncClient", "Client", "ConnectionClosedError", "NotConnectedError"]

T = TypeVar("T")

_READ_SIZE = 64 * 1024


class _ClientCore:
    """Settings, framing and codecs shared by both clients; does no I/O."""

    def __init__(
        self,
        byteorder: str = "big",
        header_size: int = DEFAULT_HEADER_SIZE,
        tls: bool = True,
        encoding: str | int = "json",
        timeout: float | None = 60,
        *,
        cafile: str | PathLike[str] | None = None,
        verify: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        server_hostname: str | None = None,
        reconnect: bool = True,
    ) -> None:
        order = cast(ByteOrder, byteorder)
        self._encoder = FrameEncoder(header_size, order)  # validates both
        FrameDecoder(header_size, order, max_packet_size)  # validates max_packet_size
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number or None, not {timeout!r}")
        self._byteorder: ByteOrder = order
        self._header_size = header_size
        self._codec = CODECS[Encoding.parse(encoding)]
        self._timeout = timeout
        self._max_packet_size = max_packet_size
        self._server_hostname = server_hostname
        self._ssl_context = client_context(tls, cafile, verify, ssl_context, server_hostname)
        self._decoder = FrameDecoder(header_size, order, max_packet_size)
        self._events: deque[Event] = deque()
        self._reconnect = bool(reconnect)
        self._address: tuple[str, int] | None = None
        self._closed_at_boundary = False  # the server closed after whole frames
        self.reconnects = 0
        """Times the client connected again by itself (``reconnect=True``)."""

    @property
    def byteorder(self) -> ByteOrder:
        """Byte order of the Content-Length header."""
        return self._byteorder

    @property
    def header_size(self) -> int:
        """Size in bytes of the Content-Length header."""
        return self._header_size

    @property
    def encoding(self) -> Encoding:
        """The encoding of the payloads this client sends."""
        return self._codec.encoding

    @property
    def tls(self) -> bool:
        """Whether connections are wrapped in TLS."""
        return self._ssl_context is not None

    @property
    def timeout(self) -> float | None:
        """Seconds each call may take; None waits forever."""
        return self._timeout

    @property
    def max_packet_size(self) -> int:
        """The largest Content-Length accepted from the server."""
        return self._max_packet_size

    @property
    def _at_boundary(self) -> bool:
        """No frame received in part, none received and not read yet."""
        return not self._events and self._decoder.idle

    def _reset(self) -> None:
        """Forget the frames of a previous connection."""
        self._decoder = FrameDecoder(self._header_size, self._byteorder, self._max_packet_size)
        self._events.clear()

    def _frame(self, payload: Mapping[Any, Any] | str | msgspec.Struct) -> bytes:
        """Encode ``payload`` with the client's codec and frame it.

        Accepts what a handler's ``client.send`` accepts (one function,
        ``Codec.encode_payload``, serves both): a mapping, or a str holding a
        JSON object; the empty map is sent in 3 bytes.

        Raises:
            DecodeError: (a ``ValueError``) for a str that is not a JSON object.
            EncodeError: (a ``TypeError``) for a payload that is not a map, or
                holds what the codec cannot encode.
            ValueError: for a payload too long for ``header_size``.
        """
        return self._encoder.encode(self._codec.encode_payload(payload), self._codec.encoding)

    def _feed(self, data: bytes) -> None:
        self._events.extend(self._decoder.feed(data))

    def _pop(self) -> Frame | None:
        """Return the next complete frame, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: for a frame the decoder rejected; ``keep_connection``
                is False when the stream cannot go on (the caller closes).
        """
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, FrameError):
            if event.tls:
                raise TLSMismatchError(
                    "the server speaks TLS (it answered with a TLS record): connect with tls=True",
                    peer_speaks_tls=True,
                )
            raise RemoteProtocolError(
                f"bad frame from the server: {event.detail}",
                event.code,
                keep_connection=event.keep_connection,
            )
        return event

    def _raw(self, frame: Frame) -> bytes:
        """The frame's bytes as they were on the wire (the header is canonical)."""
        return self._encoder.encode(frame.payload, frame.encoding)

    @staticmethod
    def _decode(frame: Frame) -> dict[Any, Any]:
        return CODECS[frame.encoding].decode(frame.payload)

    @staticmethod
    def _typed(reply: dict[Any, Any], reply_type: type[T]) -> T:
        """``reply`` converted to ``reply_type``, strictly.

        Raises:
            DecodeError: when it does not convert; the message carries the
                server's error code when the reply is an error.
        """
        try:
            return msgspec.convert(reply, reply_type, strict=True)
        except msgspec.ValidationError as exc:
            error = reply.get("error") if reply.get("status") == "failure" else None
            if isinstance(error, str):
                raise DecodeError(f"the server answered {error}: {reply!r}") from None
            raise DecodeError(f"the reply is not a {reply_type.__name__}: {exc}") from None


class Client(_ClientCore):
    """A blocking AsyncAProto client.

    Args:
        byteorder: byte order of the Content-Length header, ``"big"`` or ``"little"``.
        header_size: size of the Content-Length header, 1 to 8 bytes.
        tls: wrap the TCP connection in TLS.
        encoding: ``"json"`` or ``"ziproto"``, the encoding of sent payloads.
        timeout: seconds each call may take (``connect`` with its handshake,
            ``send``, each ``receive``); None waits forever.
        cafile: PEM file of the CAs to trust instead of the system's.
        verify: False turns off certificate and host name checks (insecure).
        ssl_context: the context to use, replacing ``cafile`` and ``verify``.
        max_packet_size: the largest Content-Length accepted from the server.
        server_hostname: the name to check the certificate against (and send
            as SNI); defaults to the host name given to :meth:`connect`.
        reconnect: connect again, before the next :meth:`send`, when the
            server closed the connection at a frame boundary (see the module); True
            by default.

    Raises:
        ValueError: for a bad byte order, header size, encoding, timeout or
            ``max_packet_size``, or contradictory TLS arguments (one given with
            ``tls=False``; ``cafile`` with ``verify=False``; ``ssl_context``
            with either).
        OSError: when ``cafile`` cannot be loaded.

    The client is a context manager that disconnects on exit.
    """

    _sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and the connection's end."""
        return self._sock is not None

    def connect(self, hostname: str, port: int) -> None:
        """Connect to ``hostname``:``port``, with a TLS handshake when ``tls``.

        Raises:
            RuntimeError: when already connected.
            TimeoutError: when it takes longer than ``timeout``.
            ssl.SSLCertVerificationError: when the server's certificate or
                name does not verify.
            OSError: when the connection fails.
        """
        if self._sock is not None:
            raise RuntimeError("the client is already connected; disconnect() first")
        sock = socket.create_connection((hostname, port), timeout=self._timeout)
        if self._ssl_context is not None:
            try:
                sock = self._ssl_context.wrap_socket(
                    sock, server_hostname=self._server_hostname or hostname
                )
            except BaseException as exc:
                sock.close()
                mismatch = handshake_error(exc)
                if mismatch is not None:
                    raise mismatch from exc
                raise
        self._reset()
        self._sock = sock
        self._address = (hostname, port)
        self._closed_at_boundary = False

    def disconnect(self) -> None:
        """Close the connection; does nothing when not connected. Never raises."""
        self._closed_at_boundary = False
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def send(self, payload: Mapping[Any, Any] | str | msgspec.Struct) -> None:
        """Send ``payload`` as one frame.

        Args:
            payload: a mapping, or a string holding a JSON object; it is sent
                in the client's encoding.

        Raises:
            NotConnectedError: when not connected.
            ValueError: for a string that is not a JSON object.
            TypeError: for a payload that cannot be encoded.
            TimeoutError, OSError: when sending fails; the client is closed.
            OSError: what :meth:`connect` raises (refused, timed out, TLS), when it
                connects again.
        """
        if self._reconnect:
            self._connect_again()
        sock = self._connection()
        data = self._frame(payload)
        try:
            sock.settimeout(self._timeout)
            sock.sendall(data)
        except BaseException:
            self.disconnect()
            raise

    def receive_raw(self) -> bytes:
        """Return the next whole frame, header included.

        Returns:
            The frame's bytes, or ``b""`` when the server closed the connection
            first (the client is then disconnected).

        Raises:
            NotConnectedError: when not connected.
            TimeoutError: when no whole frame arrived within ``timeout``; the
                bytes read so far are kept for the next call.
            RemoteProtocolError: for a frame the client rejects: larger than
                ``max_packet_size`` (the client is closed), or with an invalid
                header or a Content-Length below 5 (skipped; the connection
                goes on).
            OSError: when reading fails.
        """
        frame = self._next_frame()
        return b"" if frame is None else self._raw(frame)

    def request(self, payload: Any, reply_type: type[T]) -> T:
        """Send ``payload`` (a map, a Struct, a dataclass) and return the reply as a ``reply_type``.

        Raises:
            DecodeError: when the reply does not convert to ``reply_type``
                (strictly); an error reply says its code. Also what
                :meth:`send` and :meth:`receive` raise.
        """
        self.send(payload)
        return self._typed(self.receive(), reply_type)

    def receive(self) -> dict[Any, Any]:
        """Return the decoded payload of the next frame.

        The payload is decoded by the frame's own Content-Encoding header.

        Raises:
            ConnectionClosedError: when the server closed the connection
                before a whole frame arrived (the client is disconnected).
            DecodeError: when the payload is not a valid map of its encoding.
            NotConnectedError, TimeoutError, RemoteProtocolError, OSError: as
                :meth:`receive_raw`.
        """
        frame = self._next_frame()
        if frame is None:
            raise ConnectionClosedError("the server closed the connection")
        return self._decode(frame)

    def _connect_again(self) -> None:
        """Connect again if the server closed the connection at a frame boundary."""
        if self._sock is not None and self._at_boundary and self._peer_closed(self._sock):
            self.disconnect()
            self._closed_at_boundary = True
        if self._sock is None and self._closed_at_boundary and self._address is not None:
            self.connect(*self._address)
            self.reconnects += 1

    def _peer_closed(self, sock: socket.socket) -> bool:
        """Whether the server's FIN (or reset) waits in ``sock``, without blocking."""
        try:
            if not select.select([sock], [], [], 0)[0]:
                return False
            if isinstance(sock, ssl.SSLSocket):
                sock.setblocking(False)
                try:
                    data = sock.recv(_READ_SIZE)
                except (ssl.SSLWantReadError, BlockingIOError):
                    return False
                finally:
                    sock.settimeout(self._timeout)
                if data:  # a frame the server sent unasked: keep it for receive()
                    self._feed(data)
                    return False
                return True
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:  # reset: closed too
            return True

    def _connection(self) -> socket.socket:
        if self._sock is None:
            raise NotConnectedError("the client is not connected; call connect() first")
        return self._sock

    def _next_frame(self) -> Frame | None:
        """Read until a frame is complete; None at end of stream (then disconnect)."""
        sock = self._connection()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:  # each pass reads >= 1 byte; a frame is at most max_packet_size
            try:
                frame = self._pop()
            except RemoteProtocolError as exc:
                if not exc.keep_connection:
                    self.disconnect()
                raise
            if frame is not None:
                return frame
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("timed out waiting for a frame")
                sock.settimeout(remaining)
            else:
                sock.settimeout(None)
            data = sock.recv(_READ_SIZE)
            if not data:
                boundary = self._at_boundary
                self.disconnect()
                self._closed_at_boundary = boundary
                return None
            self._feed(data)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()


class AsyncClient(_ClientCore):
    """An asyncio AsyncAProto client: :class:`Client` with coroutine methods.

    Takes the arguments of :class:`Client` and raises the same errors; time-outs
    use :func:`asyncio.timeout`. Use ``async with`` to disconnect on exit.
    """

    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and the connection's end."""
        return self._writer is not None

    async def connect(self, hostname: str, port: int) -> None:
        """Connect to ``hostname``:``port``; see :meth:`Client.connect`.

        Raises:
            RuntimeError: when already connected.
            TimeoutError: when it takes longer than ``timeout``.
            ssl.SSLCertVerificationError: when the server's certificate or
                name does not verify.
            OSError: when the connection fails.
        """
        if self._writer is not None:
            raise RuntimeError("the client is already connected; disconnect() first")
        async with asyncio.timeout(self._timeout):
            if self._ssl_context is None:
                reader, writer = await asyncio.open_connection(hostname, port)
            else:
                try:
                    reader, writer = await asyncio.open_connection(
                        hostname,
                        port,
                        ssl=self._ssl_context,
                        server_hostname=self._server_hostname or hostname,
                    )
                except OSError as exc:
                    mismatch = handshake_error(exc)
                    if mismatch is not None:
                        raise mismatch from exc
                    raise
        self._reset()
        self._reader, self._writer = reader, writer
        self._address = (hostname, port)
        self._closed_at_boundary = False

    async def disconnect(self) -> None:
        """Close the connection; does nothing when not connected.

        Waits at most ``timeout`` for the close to complete, then aborts.
        Raises nothing but :class:`asyncio.CancelledError`.
        """
        self._closed_at_boundary = False
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        try:
            async with asyncio.timeout(self._timeout):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()

    async def send(self, payload: Mapping[Any, Any] | str | msgspec.Struct) -> None:
        """Send ``payload`` as one frame; see :meth:`Client.send`.

        Raises:
            NotConnectedError: when not connected.
            ValueError: for a string that is not a JSON object.
            TypeError: for a payload that cannot be encoded.
            TimeoutError, OSError: when sending fails; the client is closed.
            OSError: what :meth:`connect` raises (refused, timed out, TLS), when it
                connects again.
        """
        if self._reconnect:
            await self._connect_again()
        writer = self._connection()[1]
        data = self._frame(payload)
        try:
            writer.write(data)
            async with asyncio.timeout(self._timeout):
                await writer.drain()
        except BaseException:
            await self.disconnect()
            raise

    async def receive_raw(self) -> bytes:
        """Return the next whole frame, header included; see :meth:`Client.receive_raw`.

        Returns:
            The frame's bytes, or ``b""`` when the server closed the connection
            first (the client is then disconnected).

        Raises:
            NotConnectedError: when not connected.
            TimeoutError: when no whole frame arrived within ``timeout``.
            RemoteProtocolError: for a frame the client rejects.
            OSError: when reading fails.
        """
        frame = await self._next_frame()
        return b"" if frame is None else self._raw(frame)

    async def request(self, payload: Any, reply_type: type[T]) -> T:
        """Send ``payload`` (a map, a Struct, a dataclass) and return the reply as a ``reply_type``.

        Raises:
            DecodeError: when the reply does not convert to ``reply_type``
                (strictly: ``"1"`` is not an int); an error reply says its
                code. Also what :meth:`send` and :meth:`receive` raise.
        """
        await self.send(payload)
        return self._typed(await self.receive(), reply_type)

    async def receive(self) -> dict[Any, Any]:
        """Return the decoded payload of the next frame; see :meth:`Client.receive`.

        Raises:
            ConnectionClosedError: when the server closed the connection
                before a whole frame arrived.
            DecodeError: when the payload is not a valid map of its encoding.
            NotConnectedError, TimeoutError, RemoteProtocolError, OSError: as
                :meth:`receive_raw`.
        """
        frame = await self._next_frame()
        if frame is None:
            raise ConnectionClosedError("the server closed the connection")
        return self._decode(frame)

    async def _connect_again(self) -> None:
        """Connect again if the server closed the connection at a frame boundary."""
        reader = self._reader
        if reader is not None and self._at_boundary:
            await asyncio.sleep(0)  # a FIN that came with the last reply is read now
            if reader.at_eof() or reader.exception() is not None:
                await self.disconnect()
                self._closed_at_boundary = True
        if self._writer is None and self._closed_at_boundary and self._address is not None:
            await self.connect(*self._address)
            self.reconnects += 1

    def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            raise NotConnectedError("the client is not connected; call connect() first")
        return self._reader, self._writer

    async def _next_frame(self) -> Frame | None:
        """Read until a frame is complete; None at end of stream (then disconnect)."""
        reader = self._connection()[0]
        async with asyncio.timeout(self._timeout):
            while True:  # each pass reads >= 1 byte; a frame is at most max_packet_size
                try:
                    frame = self._pop()
                except RemoteProtocolError as exc:
                    if not exc.keep_connection:
                        await self.disconnect()
                    raise
                if frame is not None:
                    return frame
                data = await reader.read(_READ_SIZE)
                if not data:
                    boundary = self._at_boundary
                    await self.disconnect()
                    self._closed_at_boundary = boundary
                    return None
                self._feed(data)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()
