"""The server's own accept loop: TLS ports, and PROXY headers in front of any port.

Theory of operation
-------------------
On a **TLS port**, :class:`TLSListener` accepts connections itself (asyncio
would start the handshake at once, fail it silently, and tell the protocol
nothing) and peeks at the first byte the client sends, without reading it:
``0x16`` starts a TLS handshake, which ``loop.connect_accepted_socket`` then
performs as ``create_server(ssl=...)`` would; anything else is a plaintext
peer: it is logged, answered with a TLS alert record
(:data:`~asyncapy._tls.TLS_ALERT`, which the plaintext
:class:`~asyncapy.client.Client` recognises: "the server speaks TLS"), and
closed.

With ``proxy_protocol``, the same loop serves plain ports too: a connection
from outside ``trusted_proxies`` is closed before a byte is read; one from a
trusted proxy must start with a PROXY header (:func:`read_proxy_header`,
with peeks, so that nothing after the header is taken), whole within
``proxy_header_timeout``, before its TLS handshake if any. While the header
is pending the connection counts as a handshake of the proxy's address;
admission then applies to the address the header carries.

Waiting for the first byte and the handshake share one deadline,
``tls_handshake_timeout``. A connection is admitted (``session_limit``,
``max_connections``: :meth:`~asyncapy._state.ServerState.admit`) as soon as it
is accepted, before its first byte, and counts toward both limits while its
handshake runs: stalled handshakes cannot take every descriptor. One that is
not admitted is closed at once (it cannot be told why: it speaks no
AsyncAProto yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Final

from ._state import ServerState
from ._tls import TLS_ALERT
from .codecs import CODECS
from .config import Settings
from .dispatch import error_payload
from .errors import ErrorCode
from .logging import error_logger as logger
from .logging import host_port
from .protocol import Encoding, FrameEncoder
from .proxy import V1_MAX_LENGTH, ProxyHeader, ProxyHeaderDecoder, ProxyProtocolError

__all__ = ["TLSListener", "listening_sockets", "read_proxy_header", "refusal_frame"]

_ACCEPT_RETRY: Final = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_ACCEPT_RETRY_DELAY: Final = 0.5


def refusal_frame(code: ErrorCode, settings: Settings) -> bytes:
    """The JSON error frame ``code`` that refuses a connection before its session."""
    framer = FrameEncoder(settings.header_size, settings.byteorder)
    return framer.encode(CODECS[Encoding.JSON].encode_payload(error_payload(code)), Encoding.JSON)


def listening_sockets(
    host: str | None, port: int, backlog: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Bind and listen on every address of ``host`` (all interfaces for None or ""),
    non-blocking, with ``SO_REUSEADDR``, as ``loop.create_server`` does.

    With ``reuse_port``, ``SO_REUSEPORT`` too: several such sockets can be
    bound to one address, and the kernel spreads new connections over them.

    Raises:
        OSError: when an address cannot be bound (all sockets are closed then).
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: {exc.strerror}",
                ) from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class TLSListener:
    """Serves on listening sockets with its own accept loop (see the module's docstring).

    It serves TLS, and, with ``proxy_protocol``, reads each connection's PROXY
    header before anything else (then also on a plaintext port: ``context``
    None). It answers what :class:`~asyncapy.server.Server` asks of an
    ``asyncio.Server``: ``sockets``, ``close()``, ``wait_closed()``.

    Args:
        sockets: listening sockets (:func:`listening_sockets`).
        protocol_factory: makes the Protocol of each connection; called with
            ``origin=(host, port)`` (the address the PROXY header carries) and
            ``admitted=True`` when ``proxy_protocol`` is on.
        context: the server's TLS context; None for plain TCP.
        state: the serving server's state: its settings
            (``tls_handshake_timeout``, ``proxy_header_timeout``, the limits),
            counters and log.
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[..., asyncio.BaseProtocol],
        context: ssl.SSLContext | None,
        state: ServerState,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._factory = protocol_factory
        self._context = context
        self._state = state
        self._timeout = state.settings.tls_handshake_timeout
        self._proxy = state.settings.proxy_protocol
        self._tasks: set[asyncio.Task[None]] = set()
        for sock in sockets:
            self._spawn(self._accept(sock))

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def close(self) -> None:
        """Stop accepting and drop the handshakes under way; sessions go on."""
        for task in list(self._tasks):
            task.cancel()
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    async def wait_closed(self) -> None:
        """Wait until the accept loops and the handshakes under way have ended."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_owning(self, sock: socket.socket, coro: Coroutine[object, object, None]) -> None:
        """:meth:`_spawn` a connection's task; close ``sock`` if the task is cancelled.

        ``close()`` may cancel the task before its first step, when its own
        cleanup cannot run: the accepted socket would be left to the GC (a
        ResourceWarning, and a descriptor held until then). Closing a socket
        twice is harmless.
        """
        task = self._spawn(coro)

        def close_if_cancelled(done: asyncio.Task[None]) -> None:
            if done.cancelled():
                sock.close()

        task.add_done_callback(close_if_cancelled)

    async def _accept(self, listener: socket.socket) -> None:
        loop = self._loop
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:  # out of descriptors or memory: back off
                    logger.error("{Server} Cannot accept connections: %s; retrying", exc)
                    await asyncio.sleep(_ACCEPT_RETRY_DELAY)
                    continue
                if listener.fileno() == -1:  # closed under us
                    return
                logger.debug("{Server} accept() failed: %s", exc)  # ECONNABORTED and kin
                continue
            sock.setblocking(False)
            if not isinstance(address, tuple):
                address = (str(address), 0)
            if self._proxy:
                self._accept_proxied(sock, address)
                continue
            state = self._state
            host = str(address[0])
            refusal = state.admit(host)
            if refusal is not None:
                state.refused(f"{host} before its TLS handshake", *refusal)
                sock.close()
                continue
            state.handshake_started(host)
            self._spawn_owning(sock, self._start(sock, address, host))

    def _accept_proxied(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """A proxy's connection: refuse an untrusted source; else read its header (a task)."""
        state = self._state
        host = str(address[0])
        peer = host_port(host, address[1])
        if not state.is_trusted(host):
            sock.close()
            state.proxy_refused(peer, "PROXY_UNTRUSTED", "not one of trusted_proxies")
            return
        if state.full():  # bounded before its header: no eviction for an unknown client
            sock.close()
            state.proxy_refused(peer, "SERVER_BUSY", "max_connections reached")
            return
        state.handshake_started(host)  # counts against the proxy until its header is read
        self._spawn_owning(sock, self._start_proxied(sock, address, host))

    async def _start_proxied(
        self, sock: socket.socket, address: tuple[str, int], host: str
    ) -> None:
        """Read the PROXY header, admit the client it names, then serve (TLS or not)."""
        state = self._state
        settings = state.settings
        try:
            origin = await self._read_proxy_header(sock, address)
        finally:
            state.handshake_ended(host)
        if origin is None:
            return
        real = origin[0]
        refusal = state.admit(real)
        if refusal is not None:
            state.refused(host_port(*origin), *refusal)
            if self._context is None:  # it speaks AsyncAProto: tell it why
                with contextlib.suppress(OSError):
                    sock.send(refusal_frame(refusal[0], settings))
            sock.close()
            return
        state.handshake_started(real)  # until connection_made counts it as a session
        try:
            if self._context is None:
                await self._loop.connect_accepted_socket(
                    functools.partial(self._factory, origin=origin, admitted=True), sock
                )
            else:
                await self._handshake(sock, origin, origin=origin)
        except asyncio.CancelledError:
            sock.close()
            raise
        except OSError as exc:  # gone before its transport was made
            sock.close()
            logger.debug("{Server} %s left before its session: %r", host_port(*origin), exc)
        finally:
            state.handshake_ended(real)

    async def _read_proxy_header(
        self, sock: socket.socket, address: tuple[str, int]
    ) -> tuple[str, int] | None:
        """The client address of the connection's PROXY header (the proxy's own for
        LOCAL and UNKNOWN); None when it was refused (the socket is closed then)."""
        state = self._state
        peer = host_port(*address[:2])
        deadline = self._loop.time() + state.settings.proxy_header_timeout
        try:
            header = await read_proxy_header(self._loop, sock, deadline)
        except TimeoutError:
            sock.close()
            state.proxy_refused(
                peer,
                "PROXY_TIMEOUT",
                f"no whole PROXY header in {state.settings.proxy_header_timeout} s",
            )
            return None
        except ProxyProtocolError as exc:
            sock.close()
            state.proxy_refused(peer, "PROXY_MALFORMED", str(exc))
            return None
        except (OSError, EOFError) as exc:
            sock.close()
            state.proxy_refused(
                peer, "PROXY_MALFORMED", f"closed before its PROXY header ({exc!r})"
            )
            return None
        except asyncio.CancelledError:
            sock.close()
            raise
        if header.source is None:  # LOCAL or UNKNOWN: the proxy's own connection
            return (str(address[0]), int(address[1]))
        return header.source

    async def _start(self, sock: socket.socket, address: tuple[str, int], host: str) -> None:
        """Tell TLS from plaintext by the first byte, then hand a TLS peer to the loop."""
        try:
            await self._handshake(sock, address)
        finally:
            self._state.handshake_ended(host)

    async def _handshake(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        origin: tuple[str, int] | None = None,
    ) -> None:
        loop = self._loop
        state = self._state
        deadline = loop.time() + self._timeout
        factory = (
            self._factory
            if origin is None
            else functools.partial(self._factory, origin=origin, admitted=True)
        )
        try:
            try:
                head = await _peek(loop, sock, deadline)
            except (TimeoutError, OSError) as exc:
                sock.close()
                self._failed(address, exc)
                return
            if not head:  # closed before a byte
                sock.close()
                return
            if head[0] != 0x16:  # not a TLS handshake record
                state.stats.tls_mismatches += 1
                state.log.log(
                    "tls",
                    logging.WARNING,
                    "{Server} %s:%s spoke plaintext to this TLS port: the client must connect"
                    " with TLS (tls=True)",
                    *address[:2],
                )
                _refuse_plaintext(sock)
                return
            await loop.connect_accepted_socket(
                factory,
                sock,
                ssl=self._context,
                ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
            )
        except asyncio.CancelledError:
            sock.close()
            raise
        except (OSError, TimeoutError, EOFError) as exc:  # the handshake failed; sock is closed
            sock.close()
            self._failed(address, exc)

    def _failed(self, address: tuple[str, int], exc: BaseException) -> None:
        self._state.stats.tls_handshake_failures += 1
        self._state.log.log(
            "handshake",
            logging.DEBUG,
            "{Server} TLS handshake with %s:%s failed: %r",
            *address[:2],
            exc,
        )


_PEEK_SIZE: Final = V1_MAX_LENGTH + 16 + 4096  # more than the largest header the decoder takes


async def read_proxy_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float
) -> ProxyHeader:
    """Read the PROXY header at the start of ``sock``, and not one byte more.

    What follows the header (frames, or a TLS ClientHello) stays in the
    socket for the transport. Each read is a peek; the bytes that belong to
    the header are then consumed, so a header sent one byte at a time costs
    two system calls a byte, and a whole one two in all.

    Raises:
        TimeoutError: when the header is not whole by ``deadline``.
        ProxyProtocolError: when the bytes are not a valid header.
        EOFError: when the peer closes first.
        OSError: when the connection fails.
    """
    decoder = ProxyHeaderDecoder()
    while True:
        await _readable(loop, sock, deadline)
        try:
            data = sock.recv(_PEEK_SIZE, socket.MSG_PEEK)
        except BlockingIOError:  # woken with nothing to read after all: wait again
            continue
        if not data:
            raise EOFError("the connection closed before its PROXY header was whole")
        header = decoder.feed(data)
        used = len(data) - len(decoder.rest) if header is not None else len(data)
        while used:  # peeked, so there: recv() takes them at once
            used -= len(sock.recv(used))
        if header is not None:
            return header


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float) -> None:
    """Wait until ``sock`` has something to read (or its end).

    Raises:
        TimeoutError: at ``deadline``.
    """
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, wake)
    try:
        async with asyncio.timeout_at(deadline):
            await ready
    finally:
        loop.remove_reader(fd)


async def _peek(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float) -> bytes:
    """The first byte the peer sends, left unread; ``b""`` if it closes first.

    Raises:
        TimeoutError: when nothing arrives before ``deadline``.
        OSError: when the connection fails.
    """
    while True:
        await _readable(loop, sock, deadline)
        try:
            return sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:  # woken with nothing to read after all: wait again
            continue


def _refuse_plaintext(sock: socket.socket) -> None:
    """Read what the peer sent (so the close is not a reset), answer a TLS alert, close."""
    with contextlib.suppress(OSError):
        sock.recv(65536)
        sock.send(TLS_ALERT)
        sock.shutdown(socket.SHUT_WR)
    sock.close()
