"""Exceptions and the ``ERR_*`` codes of AsyncAProto (protocol.md, section 4).

Error replies carry ``{"status": "failure", "error": CODE}``; ``CODE`` is one of
the :class:`ErrorCode` members below, which are plain strings on the wire.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Any, Final

__all__ = [
    "ERR_HEADER_INVALID",
    "ERR_INTERNAL",
    "ERR_NO_HANDLER",
    "ERR_PACKET_TOO_LARGE",
    "ERR_REQUEST_MALFORMED",
    "ERR_SERVER_BUSY",
    "ERR_SESSION_LIMIT_REACHED",
    "ERR_TIMED_OUT",
    "AsyncAPYError",
    "ConfigError",
    "ConnectionClosedError",
    "DecodeError",
    "EncodeError",
    "ErrorCode",
    "LocalProtocolError",
    "NotConnectedError",
    "ProtocolError",
    "Reject",
    "RemoteProtocolError",
    "StopPropagation",
    "TLSMismatchError",
    "os_reason",
]


class ErrorCode(StrEnum):
    """The error codes a server answers with; each value is its own name."""

    ERR_HEADER_INVALID = "ERR_HEADER_INVALID"
    ERR_REQUEST_MALFORMED = "ERR_REQUEST_MALFORMED"
    ERR_PACKET_TOO_LARGE = "ERR_PACKET_TOO_LARGE"
    ERR_TIMED_OUT = "ERR_TIMED_OUT"
    ERR_SESSION_LIMIT_REACHED = "ERR_SESSION_LIMIT_REACHED"
    ERR_SERVER_BUSY = "ERR_SERVER_BUSY"
    ERR_INTERNAL = "ERR_INTERNAL"
    ERR_NO_HANDLER = "ERR_NO_HANDLER"
    ERR_RATE_LIMITED = "ERR_RATE_LIMITED"
    ERR_REQUEST_INVALID = "ERR_REQUEST_INVALID"


ERR_HEADER_INVALID: Final = ErrorCode.ERR_HEADER_INVALID
ERR_REQUEST_MALFORMED: Final = ErrorCode.ERR_REQUEST_MALFORMED
ERR_PACKET_TOO_LARGE: Final = ErrorCode.ERR_PACKET_TOO_LARGE
ERR_TIMED_OUT: Final = ErrorCode.ERR_TIMED_OUT
ERR_SESSION_LIMIT_REACHED: Final = ErrorCode.ERR_SESSION_LIMIT_REACHED
ERR_SERVER_BUSY: Final = ErrorCode.ERR_SERVER_BUSY
ERR_INTERNAL: Final = ErrorCode.ERR_INTERNAL
ERR_NO_HANDLER: Final = ErrorCode.ERR_NO_HANDLER
ERR_RATE_LIMITED: Final = ErrorCode.ERR_RATE_LIMITED
ERR_REQUEST_INVALID: Final = ErrorCode.ERR_REQUEST_INVALID


class StopPropagation(Exception):  # noqa: N818 - the seed's public name
    """Raised by a handler (or ``packet.stop_propagation()``) to end the dispatch.

    No handler of a later group sees the packet. The connection stays open
    unless the handler closed it.
    """


class Reject(Exception):  # noqa: N818 - a verb, like StopPropagation
    """Raised by a filter (or a handler): answer the packet with an error code, end its dispatch.

    The reply is ``{"status": "failure", "error": CODE}`` plus ``fields``
    (:class:`~asyncapy.filters.Filters.RateLimit` adds ``retry_after``); no
    later handler or group sees the packet, and the connection stays open.

    Args:
        code: the error code of the reply.
        **fields: more fields of the reply; they must not be ``status`` or ``error``.

    Raises:
        ValueError: when ``fields`` names ``status`` or ``error``.
    """

    def __init__(self, code: ErrorCode, **fields: Any) -> None:
        if "status" in fields or "error" in fields:
            raise ValueError("Reject fields must not be 'status' or 'error'")
        super().__init__(code)
        self.code = ErrorCode(code)
        self.fields = fields

    def payload(self) -> dict[str, Any]:
        """The reply: ``{"status": "failure", "error": CODE, **fields}``."""
        return {"status": "failure", "error": str(self.code), **self.fields}


class AsyncAPYError(Exception):
    """Base class of every error asyncapy raises on purpose.

    The tree::

        AsyncAPYError
        ├── ConfigError (ValueError)          a setting is unknown or out of range
        ├── ProtocolError                     AsyncAProto was broken (code, keep_connection)
        │   ├── RemoteProtocolError           ...by the peer: its bytes
        │   │   ├── DecodeError (ValueError)  a payload that is not a map of its encoding
        │   │   └── TLSMismatchError (ConnectionError)  TLS on one side only
        │   └── LocalProtocolError            ...by this side: what it was asked to send
        │       └── EncodeError (TypeError)   a payload the codec cannot write
        ├── NotConnectedError (ConnectionError)      a client used before connect()
        └── ConnectionClosedError (ConnectionError)  the server closed mid-exchange

    As in h11, a ``RemoteProtocolError`` is the peer's fault (answer it, log
    it, go on) and a ``LocalProtocolError`` is a bug on this side.
    """


class ConfigError(AsyncAPYError, ValueError):
    """A setting is unknown, or its value has the wrong type or range.

    The message names the key and where it came from (argument, file, environment).
    """


class ProtocolError(AsyncAPYError):
    """AsyncAProto was broken; see :class:`RemoteProtocolError` and :class:`LocalProtocolError`.

    Attributes:
        code: the ``ERR_*`` code that answers it.
        keep_connection: whether the connection can carry more frames.
    """

    def __init__(
        self,
        message: str,
        code: ErrorCode = ErrorCode.ERR_REQUEST_MALFORMED,
        *,
        keep_connection: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.keep_connection = keep_connection


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break AsyncAProto (a bad frame or payload)."""


class LocalProtocolError(ProtocolError):
    """This side asked for something AsyncAProto forbids, or misused the protocol engine.

    Its ``code`` is ``ERR_INTERNAL``: to the peer, it is a server fault.
    """

    def __init__(self, message: str, *, keep_connection: bool = True) -> None:
        super().__init__(message, ErrorCode.ERR_INTERNAL, keep_connection=keep_connection)


class DecodeError(RemoteProtocolError, ValueError):
    """A payload did not decode with its codec, or did not decode to a map.

    Always ``ERR_REQUEST_MALFORMED``; the connection can go on. It is also a
    ``ValueError``, which is what user code building a ``Packet`` expects.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.ERR_REQUEST_MALFORMED, keep_connection=True)


class TLSMismatchError(RemoteProtocolError, ConnectionError):
    """One side speaks TLS and the other does not.

    Attributes:
        peer_speaks_tls: True when the peer speaks TLS and this side does not
            (a plaintext client talking to a TLS server); False for the
            opposite (a TLS client talking to a plaintext server).
    """

    def __init__(self, message: str, *, peer_speaks_tls: bool) -> None:
        super().__init__(message, ErrorCode.ERR_HEADER_INVALID, keep_connection=False)
        self.peer_speaks_tls = peer_speaks_tls


class EncodeError(LocalProtocolError, TypeError):
    """A payload could not be encoded (an unsupported type, a top level that is not a map)."""


class NotConnectedError(AsyncAPYError, ConnectionError):
    """A client was used while not connected: never, no longer, or after close."""


class ConnectionClosedError(AsyncAPYError, ConnectionError):
    """The server closed the connection before a whole frame arrived."""


def os_reason(exc: OSError) -> str:
    """The system's words for ``exc`` (``"Address already in use"``), for a log line."""
    return os.strerror(exc.errno) if exc.errno else str(exc)
