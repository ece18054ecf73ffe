"""The :class:`~asyncapy.core.Client` of a live connection: the object handlers get.

It stays a Python class where :mod:`asyncapy._connection` is compiled with
mypyc: a compiled subclass of a Python class is not reliable, and users'
test doubles subclass :class:`~asyncapy.core.Client` too. Its ``send`` and
``close`` are the connection's own bound methods, stored on the instance, so
that a handler's ``client.send(reply)`` is one call into the connection,
compiled or not, with no Python frame of its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from .core import Client, Reply, Session

__all__ = ["Peer"]


class _Send(Protocol):
    def __call__(self, packet: Reply, close: bool = False) -> Awaitable[None]: ...


class _Conn(Protocol):
    """What a peer needs of its connection (:class:`asyncapy._connection.Connection`)."""

    @property
    def client(self) -> Client: ...

    def peer_send(self, packet: Reply, close: bool = False) -> Awaitable[None]: ...

    def peer_close(self) -> Awaitable[None]: ...

    def same_address(self) -> Sequence[_Conn]: ...


class Peer(Client):
    """The peer of ``conn``, as its handlers see it.

    Args:
        conn: the connection.
        server: the server that accepted it.
    """

    send: _Send
    close: Callable[[], Awaitable[None]]

    def __init__(self, conn: _Conn, server: Any) -> None:
        self._conn = conn
        self.send = conn.peer_send
        self.close = conn.peer_close
        self.server = server
        self.address = ""
        self.port = 0
        self.encoding = None
        self.closed = False

    def get_sessions(self) -> list[Session]:
        peers = self._conn.same_address()
        return [conn.client.session for conn in peers]
