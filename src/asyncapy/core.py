"""The objects handlers see: :class:`Packet`, :class:`Client`, :class:`Session`, :class:`Handler`.

``Client.send()`` and ``Client.close()`` act at once and return an awaitable:
``await client.send(p)`` (the seed's style) waits only while the peer is not
reading our replies (back-pressure); ``client.send(p)`` without ``await``
sends as well. Neither suspends a handler that need not wait, so a handler
that never really blocks runs to completion without an asyncio Task.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn, Self, TypeAlias

import msgspec

from ._filterbase import Filter, all_of, require_client_and_packet
from ._typed import check_reply, converter, handler_types
from .codecs import JSON
from .errors import StopPropagation
from .logging import error_logger as _error_logger
from .protocol import Encoding

if TYPE_CHECKING:
    from .server import Server

__all__ = ["DONE", "Client", "Handler", "HandlerFunction", "Packet", "Reply", "Session"]

Reply: TypeAlias = "Mapping[Any, Any] | str | msgspec.Struct | Any"
"""What :meth:`Client.send` takes: a map, a Struct, a dataclass, or a JSON object in a str."""


class _Done(tuple[()]):
    """An awaitable that is already complete: ``await DONE`` never suspends.

    It is an empty tuple whose ``__await__`` is ``tuple.__iter__``: awaiting it
    runs no Python code at all and returns None.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        def __await__(self) -> Generator[Any, None, None]: ...

    else:
        __await__ = tuple.__iter__

    def __repr__(self) -> str:
        return "DONE"

    def __bool__(self) -> bool:  # an empty tuple is falsy; a result should not be
        return True


DONE: Final = _Done()


class Packet(Mapping[Any, Any]):
    """A request or reply payload: a read-only mapping.

    Args:
        fields: the payload, as a dict, or as a JSON object in a ``str`` or
            ``bytes``.
        encoding: ``"json"`` or ``"ziproto"``; the encoding the packet came in
            (replies always go out in the session's encoding).
        sender: the :class:`Client` that sent it, set by the server.

    Raises:
        DecodeError: (a ``ValueError``) when ``fields`` is text that is not a
            JSON object.
        TypeError: when ``fields`` is of another type.
        ValueError: for an unknown encoding.
    """

    # _handler and _code: the name of the last handler called (None: none
    # matched) and the result code ("OK" or an ERR_* code), set by the
    # dispatcher, read by the connection for the metrics and the access log.
    # _value: what a typed handler's type made of the fields (set by its check);
    # _invalid: the types that refused them (read only when nothing matched).
    __slots__ = ("_code", "_fields", "_handler", "_invalid", "_value", "encoding", "sender")
    _invalid: list[Any]
    _value: Any
    # str | None, declared Any: the server sets it to None, then the dispatcher
    # to a name, and a compiled caller (mypyc) would trust the narrowed None.
    _handler: Any

    def __init__(
        self,
        fields: Mapping[Any, Any] | str | bytes,
        encoding: str | Encoding = "json",
        sender: Client | None = None,
    ) -> None:
        if isinstance(fields, dict):
            self._fields: dict[Any, Any] = fields
        elif isinstance(fields, Mapping):
            self._fields = dict(fields)
        elif isinstance(fields, (str, bytes, bytearray, memoryview)):
            data = fields.encode("utf-8") if isinstance(fields, str) else fields
            self._fields = JSON.decode(data)
        else:
            raise TypeError(
                f"Packet fields must be a dict or a JSON string, not {type(fields).__name__}"
            )
        self.encoding: str = str(Encoding.parse(encoding))
        self.sender = sender
        self._handler = None
        self._code = "OK"

    def __getitem__(self, key: Any) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, key: object) -> bool:
        return key in self._fields

    def get(self, key: Any, default: Any = None) -> Any:
        """Return ``packet[key]`` if the key is present, else ``default``."""
        return self._fields.get(key, default)

    def to_dict(self) -> dict[Any, Any]:
        """Return a shallow copy of the payload as a plain dict."""
        return dict(self._fields)

    def stop_propagation(self) -> NoReturn:
        """End the dispatch of this packet: no later group sees it.

        Raises:
            StopPropagation: always (``await packet.stop_propagation()`` works too).
        """
        raise StopPropagation()

    def __repr__(self) -> str:
        try:
            text = json.dumps(self._fields, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):
            text = repr(self._fields)
        return f"Packet({text})"


_NOT_A_NETWORK_CLIENT: Final = (
    "asyncapy.Client (asyncapy.core.Client) is the peer object that handlers receive; "
    "the server builds it. To connect to a server, use asyncapy.BlockingClient "
    "(the seed's asyncapy.client.Client) or asyncapy.AsyncClient."
)


class Client:
    """The peer of one connection, as handlers see it.

    The server builds it (a subclass bound to the live connection) and hands
    it to every handler: it cannot be built directly. The client that
    *connects* to a server is :class:`asyncapy.BlockingClient` (the seed's
    ``asyncapy.client.Client``) or :class:`asyncapy.AsyncClient`.

    Attributes:
        address: the peer's IP address (for TCP; the socket path or ``""`` otherwise).
        port: the peer's port (0 when there is none).
        session: this connection's :class:`Session`.
        server: the :class:`~asyncapy.server.Server` that accepted it.
        encoding: the session's encoding, ``"json"`` or ``"ziproto"``, fixed
            by the first frame that decoded cleanly (None before that).
        closed: True once the connection is closed or closing (by either side).

    Raises:
        TypeError: when ``asyncapy.Client`` itself is called, saying which
            class was meant.
    """

    __slots__ = ("address", "closed", "encoding", "port", "server", "session")

    address: str
    port: int
    session: Session
    server: Server
    encoding: str | None
    closed: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        if cls is Client:
            raise TypeError(_NOT_A_NETWORK_CLIENT)
        return super().__new__(cls)

    if not TYPE_CHECKING:  # at run time only: type checkers keep refusing the names
        # The network clients' methods, called on the peer by mistake, say
        # which client was meant. (Not a __getattr__: that would slow every
        # attribute read of a Client on the hot path.)

        def _not_a_network_client(self, *args: Any, **kwargs: Any) -> NoReturn:
            raise AttributeError(
                f"{type(self).__name__} cannot connect, disconnect or receive: "
                + _NOT_A_NETWORK_CLIENT
            )

        connect = disconnect = receive = receive_raw = _not_a_network_client

    def send(self, packet: Reply, close: bool = False) -> Awaitable[None]:
        """Send ``packet`` in the session's encoding.

        Args:
            packet: the reply: a :class:`Packet`, a dict or any mapping the
                session's codec can encode, a :class:`msgspec.Struct` (not
                ``array_like``) or a dataclass instance (written as a map), or
                a str holding a JSON object.
            close: close the connection once the reply is written.

        Returns:
            An awaitable that completes when the reply may be followed by more
            (at once, unless the peer is not reading).

        Raises:
            EncodeError: (a ``TypeError``) when the codec cannot encode
                ``packet``; nothing is sent.
            DecodeError: (a ``ValueError``) when ``packet`` is a str that is
                not a JSON object.
            ConnectionError: when the connection is already closed.
        """
        raise NotImplementedError

    def close(self) -> Awaitable[None]:
        """Close the connection after the replies already sent are written.

        Idempotent; returns an awaitable that is already complete.
        """
        raise NotImplementedError

    def get_sessions(self) -> list[Session]:
        """Return the open sessions of this client's IP address on this server."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Client({self.address})"


class Session:
    """A client session: one connection, from accept to close.

    Args:
        session_id: the session's UUID4.
        client: the :class:`Client` of the connection.
        date: when the session started (UNIX time); now by default.
    """

    __slots__ = ("client", "date", "session_id")

    def __init__(self, session_id: uuid.UUID, client: Client, date: float | None = None) -> None:
        self.session_id = session_id
        self.client = client
        self.date = time.time() if date is None else date

    def close(self) -> Awaitable[None]:
        """Close the session's connection (see :meth:`Client.close`)."""
        return self.client.close()

    def get_client(self) -> Client:
        """Return the session's :class:`Client`."""
        return self.client

    def __repr__(self) -> str:
        return f"Session({self.session_id})"


HandlerFunction = Callable[[Client, Any], Coroutine[Any, Any, Any]]
"""``async def f(client, packet)``: ``packet`` a :class:`Packet`, or the handler's request type."""


def _check_handler_function(function: object) -> None:
    """Refuse what cannot be a handler: it must be ``async def f(client, packet)``."""
    target = function
    if not callable(target):
        raise TypeError(f"a handler must be an async function, not {type(function).__name__}")
    if not inspect.iscoroutinefunction(target) and inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - an async __call__ method
    ):
        target = target.__call__
    name = getattr(function, "__qualname__", repr(function))
    if not inspect.iscoroutinefunction(target):
        raise TypeError(f"handler {name} must be defined with 'async def'")
    require_client_and_packet(target, f"handler {name}")


def _refused(packet: Packet, request: Any) -> None:
    """Note on ``packet`` that the typed handler of ``request`` refused its fields."""
    try:
        packet._invalid.append(request)
    except AttributeError:
        packet._invalid = [request]


def _with_value(function: HandlerFunction) -> HandlerFunction:
    """The call of a typed handler with no reply type: its own coroutine, given the value."""

    def call(client: Client, packet: Packet) -> Any:
        return function(client, packet._value)

    return call


def _debug() -> bool:
    return _error_logger.isEnabledFor(logging.DEBUG)


class NoMatch(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a handler's call when its asynchronous filters do not pass.

    Internal to the dispatcher: it goes on with the next handler.
    """


class Handler:
    """A handler function together with its filters.

    Args:
        function: ``async def f(client, packet)``.
        filters: filters that must all pass for the handler to be called.

    Raises:
        TypeError: when ``function`` is not an async function taking
            ``(client, packet)``, or a filter is not a :class:`Filter`.
    """

    __slots__ = (
        "_call",
        "_convert",
        "_deferred",
        "_match",
        "filters",
        "function",
        "name",
        "reply_type",
        "request_type",
        "task_name",
    )

    def __init__(self, function: HandlerFunction, filters: Sequence[Filter] | None = None) -> None:
        _check_handler_function(function)
        self.function = function
        self.filters: list[Filter] = list(filters or ())
        for item in self.filters:
            if not isinstance(item, Filter):
                raise TypeError(f"filters must be Filter objects, not {type(item).__name__}")
        self.name: str = getattr(function, "__name__", repr(function))
        self.task_name = f"asyncapy:{self.name}"
        """The name of the Task that runs this handler."""
        # Decided once here: no filters means "always", several are one AND;
        # an asynchronous combination is awaited by the dispatcher (_deferred).
        # An asynchronous combination is awaited inside the call the dispatcher
        # makes (_call), which raises NoMatch when it fails: the dispatcher's
        # synchronous path is the same with or without asynchronous filters.
        # A typed handler (asyncapy._typed) converts the fields in its check,
        # after its filters, and gets the converted value.
        request, reply = handler_types(function, Packet)
        self.request_type: Any = request
        """The type the handler's ``packet`` annotation asks for; None: untyped (a Packet)."""
        self.reply_type: Any = reply
        """The type of the handler's replies (its ``->`` annotation); None: not declared."""
        combined = all_of(self.filters)
        self._match: Callable[[Client, Packet], bool] | None = None
        self._deferred: Callable[[Client, Packet], Awaitable[bool]] | None = None
        self._convert: Callable[[dict[Any, Any]], Any] | None = None
        self._call: HandlerFunction = function
        if combined is not None and combined.is_async:
            self._deferred = combined.check  # type: ignore[assignment]
            self._call = self._filtered
        elif combined is not None:
            self._match = combined.checker()  # type: ignore[assignment]
        if request is not None:
            self._convert = converter(request)
            if self._deferred is None:
                self._match = self._typed_match(self._match, self._convert, request)
                self._call = self._typed_call if reply is not None else _with_value(function)
        elif reply is not None and self._deferred is None:
            self._call = self._replying_call

    @staticmethod
    def _typed_match(
        match: Callable[[Client, Packet], bool] | None,
        convert: Callable[[dict[Any, Any]], Any],
        request: Any,
    ) -> Callable[[Client, Packet], bool]:
        """The check of a typed handler: its filters, then the conversion."""
        # RecursionError: msgspec.convert on Python 3.11/3.12 for a value nested
        # ~1,000 deep in a recursive type (the decoders allow 1,024).
        invalid = (msgspec.ValidationError, RecursionError)

        def typed(client: Client, packet: Packet) -> bool:
            if match is not None and not match(client, packet):
                return False
            try:
                packet._value = convert(packet._fields)
            except invalid:
                _refused(packet, request)
                return False
            return True

        return typed

    async def _typed_call(self, client: Client, packet: Packet) -> Any:
        """Call a typed handler with the converted value; send what it returns."""
        result = await self.function(client, packet._value)
        if result is not None:
            if _debug():
                check_reply(result, self.reply_type, self.name)
            await client.send(result)

    async def _replying_call(self, client: Client, packet: Packet) -> Any:
        """Call an untyped handler that declares its reply type; send what it returns."""
        result = await self.function(client, packet)
        if result is not None:
            await self._answer(client, result)

    async def _answer(self, client: Client, result: Any) -> None:
        if self.reply_type is not None and _debug():
            check_reply(result, self.reply_type, self.name)
        await client.send(result)

    async def _filtered(self, client: Client, packet: Packet) -> Any:
        """Await the asynchronous filters, then run the handler; NoMatch when they fail."""
        assert self._deferred is not None
        if not await self._deferred(client, packet):
            raise NoMatch(self.name)
        if self._convert is None:
            result = await self.function(client, packet)
        else:
            try:
                value = self._convert(packet._fields)
            except (msgspec.ValidationError, RecursionError):
                _refused(packet, self.request_type)
                raise NoMatch(self.name) from None
            result = await self.function(client, value)
        if result is not None and (self.reply_type is not None or self._convert is not None):
            await self._answer(client, result)
        return None

    @property
    def is_async(self) -> bool:
        """Whether the filters are asynchronous (checked with :meth:`acheck`)."""
        return self._deferred is not None

    def check(self, client: Client, packet: Packet) -> bool:
        """Return True when every filter passes for ``client`` and ``packet``.

        Raises:
            TypeError: when a filter is asynchronous: use :meth:`acheck`.
        """
        if self._deferred is not None:
            raise TypeError(f"handler {self.name!r} has asynchronous filters: use acheck()")
        match = self._match
        return True if match is None else bool(match(client, packet))

    async def acheck(self, client: Client, packet: Packet) -> bool:
        """Return True when every filter passes, awaiting the asynchronous ones."""
        if self._deferred is not None:
            return bool(await self._deferred(client, packet))
        return self.check(client, packet)

    def call(self, *args: Any) -> Awaitable[Any]:
        """Call the handler function with ``args`` (a client and a packet)."""
        return self.function(*args)

    def __repr__(self) -> str:
        return f"Handler({self.name}, filters={self.filters!r})"
