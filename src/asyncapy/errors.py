"""Exceptions and the ``ERR_*`` codes of AsyncAProto (protocol.md, section 4).

Error replies carry ``{"status": "failure", "error": CODE}``; ``CODE`` is one of
the :class:`ErrorCode` members below, which are plain strings on the wire.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

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
    "DecodeError",
    "EncodeError",
    "ErrorCode",
    "ProtocolError",
    "StopPropagation",
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


ERR_HEADER_INVALID: Final = ErrorCode.ERR_HEADER_INVALID
ERR_REQUEST_MALFORMED: Final = ErrorCode.ERR_REQUEST_MALFORMED
ERR_PACKET_TOO_LARGE: Final = ErrorCode.ERR_PACKET_TOO_LARGE
ERR_TIMED_OUT: Final = ErrorCode.ERR_TIMED_OUT
ERR_SESSION_LIMIT_REACHED: Final = ErrorCode.ERR_SESSION_LIMIT_REACHED
ERR_SERVER_BUSY: Final = ErrorCode.ERR_SERVER_BUSY
ERR_INTERNAL: Final = ErrorCode.ERR_INTERNAL
ERR_NO_HANDLER: Final = ErrorCode.ERR_NO_HANDLER


class StopPropagation(Exception):  # noqa: N818 - the seed's public name
    """Raised by a handler (or ``packet.stop_propagation()``) to end the dispatch.

    No handler of a later group sees the packet. The connection stays open
    unless the handler closed it.
    """


class AsyncAPYError(Exception):
    """Base class of every error asyncapy raises on purpose."""


class ProtocolError(AsyncAPYError):
    """The peer broke AsyncAProto, or the protocol engine was misused.

    Attributes:
        code: the ``ERR_*`` code to answer with.
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


class DecodeError(ProtocolError, ValueError):
    """A payload did not decode with its codec, or did not decode to a map.

    Always ``ERR_REQUEST_MALFORMED``; the connection can go on. It is also a
    ``ValueError``, which is what user code building a ``Packet`` expects.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.ERR_REQUEST_MALFORMED, keep_connection=True)


class EncodeError(AsyncAPYError, TypeError):
    """A reply could not be encoded (an unsupported type, a non-map top level)."""
