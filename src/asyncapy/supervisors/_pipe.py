"""Messages from a worker to its supervisor, over a pipe.

Theory of operation
-------------------
Each worker has one pipe to the parent, written only by the worker. A
message is a 4-byte big-endian length and a MessagePack array ``[kind, body]``
(``kind`` a short string, ``body`` plain data). The worker writes whole
messages with blocking writes (they are small, and it must not run on if the
parent is gone: a broken pipe tells it so). The parent never blocks on a
worker: it reads what the pipe holds when the loop says it is readable, keeps
at most one incomplete message per worker, and a length over
:data:`MAX_MESSAGE` or bytes that do not decode mark the worker as broken (it
is then replaced), never the parent.
"""

from __future__ import annotations

import os
from typing import Any, Final

import msgspec

__all__ = ["EXIT_FATAL", "MAX_MESSAGE", "PipeError", "Reader", "WorkerArgs", "Writer"]

EXIT_FATAL: Final = 3
"""A worker's exit status when the app cannot be loaded: do not restart it."""

MAX_MESSAGE: Final = 4 * 1024 * 1024
"""Largest message, in bytes: a worker's metrics are a few KiB."""

_READS_PER_CALL: Final = 16

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(tuple[str, Any])


class WorkerArgs(msgspec.Struct, frozen=True):
    """What the supervisor tells a worker (its one command-line argument, as JSON)."""

    app: str
    worker: int
    pipe: int
    sockets: list[int]
    options: dict[str, Any]
    config: str | None
    interval: float


class PipeError(Exception):
    """What a worker wrote is not a message: the worker is replaced."""


class Writer:
    """The worker's end: ``send(kind, body)`` writes one whole message.

    Args:
        fd: the pipe's write end (blocking).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def send(self, kind: str, body: Any = None) -> None:
        """Write one message.

        Raises:
            BrokenPipeError: the parent is gone.
            OSError: another write failure.
        """
        payload = _ENCODER.encode((kind, body))
        data = memoryview(len(payload).to_bytes(4, "big") + payload)
        while data:
            written = os.write(self._fd, data)
            data = data[written:]

    def close(self) -> None:
        """Close the write end (the parent then reads end of file)."""
        os.close(self._fd)


class Reader:
    """The parent's end: feed it what the pipe holds, take whole messages.

    Args:
        fd: the pipe's read end; it is made non-blocking.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._buffer = bytearray()
        self.eof = False

    def read(self) -> list[tuple[str, Any]]:
        """Read what the pipe holds now; return the messages it completes.

        Sets :attr:`eof` when the worker's end is closed.

        Raises:
            PipeError: a message too long, or one that does not decode.
        """
        for _ in range(_READS_PER_CALL):  # then the loop's other work gets its turn
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
        return self._messages()

    def _messages(self) -> list[tuple[str, Any]]:
        messages: list[tuple[str, Any]] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 4:
            size = int.from_bytes(buffer[start : start + 4], "big")
            if size > MAX_MESSAGE:
                raise PipeError(f"a message of {size} bytes (at most {MAX_MESSAGE})")
            if len(buffer) - start - 4 < size:
                break
            try:
                messages.append(_DECODER.decode(buffer[start + 4 : start + 4 + size]))
            except msgspec.DecodeError as exc:
                raise PipeError(f"a message that does not decode: {exc}") from None
            start += 4 + size
        del buffer[:start]
        return messages

    def close(self) -> None:
        """Close the read end."""
        os.close(self.fd)
