"""AsyncAProto framing, sans-I/O: bytes in, events out (protocol.md, section 1).

Theory of operation
-------------------
A frame is ``Content-Length | Protocol-Version | Content-Encoding | payload``
where Content-Length (``header_size`` bytes, ``byteorder``) counts the two
one-byte headers plus the payload. :class:`FrameDecoder` is fed bytes as they
arrive and returns, per call, the events that those bytes completed:

* :class:`Frame` - a frame with a valid header; ``payload`` is bytes-like;
* :class:`FrameError` - a rejected frame, with its ``ERR_*`` code and whether
  the connection can go on (``keep_connection``).

The decoder is a small state machine over one position in the input:

``HEAD``  reading the length header (and the two one-byte headers). When a
          whole header is in the current chunk it is parsed in place with one
          ``struct`` call; a header split across chunks is gathered in a
          bytearray of at most ``header_size + 2`` bytes.
``BODY``  a payload split across chunks is copied, once, into a bytearray
          that grows as its bytes arrive (memory follows what the peer sent,
          not what it declared) and becomes the frame's payload. A payload
          that lies whole in one chunk is not copied at all: the frame carries
          a memoryview slice of that chunk (so a caller that feeds a buffer it
          later overwrites must consume the frame first) - except a chunk that
          is exactly one small frame (under ``_SLICE_COPY`` bytes), whose
          payload is copied once into ``bytes``, which costs less than a view.
``SKIP``  the rest of a rejected but well-delimited frame (bad version or
          encoding, Content-Length < 5) is discarded without being buffered.
``CLOSED`` after a fatal error (Content-Length > ``max_packet_size``) the
          stream cannot be trusted; feeding more raises :class:`LocalProtocolError`.
``START`` before the first byte. The first feed alone is checked for a TLS
          handshake (a TLS client on a plaintext port): when it begins with a
          TLS record (:func:`looks_like_tls`) and is not a valid frame header,
          it is one fatal ``FrameError`` with ``tls=True``. Later feeds pay
          nothing for this check. A first feed shorter than a frame header is
          not checked.

A caller may ask for at most ``limit`` events per call (the server handles a
bounded number of frames per turn, so that one peer cannot hold the loop):
the decoder stops after the ``limit``-th event and keeps the rest of the
chunk, unread, as a view (no copy); :attr:`FrameDecoder.pending` tells, and
``feed(b"")`` goes on from there.

The Content-Length is checked against ``max_packet_size`` as soon as the length
header is complete, so the decoder never holds more than
``header_size + max_packet_size`` bytes, plus the unread rest of one chunk.
Errors in a frame are reported as events; the only exception :meth:`FrameDecoder.feed` raises is
:class:`~asyncapy.errors.LocalProtocolError`, when it is fed after a fatal error.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from .errors import ErrorCode, LocalProtocolError

__all__ = [
    "DEFAULT_HEADER_SIZE",
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_HEADER_SIZE",
    "MIN_CONTENT_LENGTH",
    "MIN_HEADER_SIZE",
    "PROTOCOL_VERSION",
    "ByteOrder",
    "Encoding",
    "Event",
    "Frame",
    "FrameDecoder",
    "FrameEncoder",
    "FrameError",
    "encode_frame",
    "looks_like_tls",
]

PROTOCOL_VERSION: Final = 22
"""The only Protocol-Version byte AsyncAProto defines (0x16)."""
MIN_CONTENT_LENGTH: Final = 5
"""The smallest acceptable Content-Length: two headers and a 3-byte payload."""
DEFAULT_MAX_PACKET_SIZE: Final = 4 * 1024 * 1024
"""Default limit on Content-Length (4 MiB)."""
DEFAULT_HEADER_SIZE: Final = 4
MIN_HEADER_SIZE: Final = 1
MAX_HEADER_SIZE: Final = 8

ByteOrder: TypeAlias = Literal["big", "little"]
"""The byte order of the Content-Length header."""
Buffer: TypeAlias = bytes | bytearray | memoryview
"""Bytes the decoder reads, and a payload it hands out (a slice, a copy or a gathered buffer)."""


class Encoding(IntEnum):
    """Content-Encoding values; ``str(Encoding.JSON) == "json"``."""

    JSON = 0
    ZIPROTO = 1

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | int) -> Encoding:
        """Return the encoding named by ``"json"``/``"ziproto"`` or by its code.

        Raises:
            ValueError: for any other name or number.
        """
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(
                    f"unknown encoding {value!r}: expected 'json' or 'ziproto'"
                ) from None
        if isinstance(value, bool):
            raise ValueError(f"unknown encoding {value!r}")
        return cls(value)


class Frame(NamedTuple):
    """A frame whose header is valid; its payload is not decoded yet."""

    version: int
    encoding: Encoding
    payload: Buffer


class FrameError(NamedTuple):
    """A rejected frame: answer with ``code``; close unless ``keep_connection``.

    ``tls`` is True when the stream is not AsyncAProto but TLS: it began with
    a TLS record (:func:`looks_like_tls`).
    """

    code: ErrorCode
    keep_connection: bool
    detail: str
    tls: bool = False


def looks_like_tls(head: Buffer) -> bool:
    """True when ``head``, the first bytes of a stream, start a TLS record.

    A TLS record begins with its content type (20 to 23: change_cipher_spec,
    alert, handshake, application_data) and the protocol version 3.0 to 3.4;
    a client's first record is a handshake (``16 03 01``...).
    """
    return len(head) >= 3 and 20 <= head[0] <= 23 and head[1] == 3 and head[2] <= 4


Event: TypeAlias = Frame | FrameError
RawEvent: TypeAlias = tuple[Encoding, Buffer] | FrameError
"""What :meth:`FrameDecoder.feed_fast` returns: a frame as ``(encoding, payload)``."""

_ENCODINGS: Final = (Encoding.JSON, Encoding.ZIPROTO)
_SLICE_COPY: Final = 2048
"""Below this Content-Length a payload that arrived whole is handed out as a
bytes copy (one small memcpy is cheaper than the memoryview objects); from it
on, as a memoryview slice of the chunk (no copy)."""


def _check_header_size(header_size: object) -> int:
    """Return ``header_size`` if it is an int from 1 to 8; else raise ValueError.

    Typed ``object`` where the constructors take it: compiled with mypyc, an
    ``int`` parameter would turn True into 1 before the check could see a bool.
    """
    if (
        not isinstance(header_size, int)
        or isinstance(header_size, bool)
        or not MIN_HEADER_SIZE <= header_size <= MAX_HEADER_SIZE
    ):
        raise ValueError(
            f"header_size must be an integer from {MIN_HEADER_SIZE} to {MAX_HEADER_SIZE},"
            f" not {header_size!r}"
        )
    return header_size


def _check_byteorder(byteorder: str) -> None:
    if byteorder not in ("big", "little"):
        raise ValueError(f"byteorder must be 'big' or 'little', not {byteorder!r}")


_STRUCT_CODES: Final = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _header_unpacker(
    header_size: int, byteorder: str
) -> Callable[[Buffer, int], tuple[int, int, int]]:
    """Return ``f(buf, offset) -> (length, version, encoding)`` for this format."""
    code = _STRUCT_CODES.get(header_size)
    if code is not None:
        fmt = (">" if byteorder == "big" else "<") + code + "BB"
        return struct.Struct(fmt).unpack_from

    def unpack(buf: Buffer, offset: int) -> tuple[int, int, int]:
        end = offset + header_size
        length = int.from_bytes(buf[offset:end], byteorder)  # type: ignore[arg-type]
        return length, buf[end], buf[end + 1]

    return unpack


class FrameEncoder:
    """Builds frames for one ``header_size``/``byteorder`` pair.

    Args:
        header_size: bytes of the Content-Length header, 1 to 8.
        byteorder: ``"big"`` or ``"little"``.

    Raises:
        ValueError: for a header size or byte order out of range.
    """

    __slots__ = ("_byteorder", "_header_size", "_max_length", "_pack")

    def __init__(self, header_size: object = DEFAULT_HEADER_SIZE, byteorder: ByteOrder = "big"):
        header_size = _check_header_size(header_size)
        _check_byteorder(byteorder)
        self._header_size = header_size
        self._byteorder: ByteOrder = byteorder
        self._max_length = (1 << (8 * header_size)) - 1
        code = _STRUCT_CODES.get(header_size)
        self._pack: Callable[[int, int, int], bytes] | None = (
            struct.Struct((">" if byteorder == "big" else "<") + code + "BB").pack
            if code is not None
            else None
        )

    @property
    def max_length(self) -> int:
        """The largest Content-Length the header can express."""
        return self._max_length

    def writer(
        self,
        encode: Callable[[dict[Any, Any]], bytes],
        checked: Callable[[Any], bytes],
        encoding: int,
    ) -> Callable[[Any, list[bytes]], int]:
        """Return ``write(payload, out) -> size``: one call from a reply map to its frame.

        The server's hot path. ``write`` appends the frame to ``out`` as two
        pieces, header then body (the server joins a batch once, when it
        writes it), and returns the frame's size. A dict goes to ``encode``
        (a codec's raw, unchecked encoder); anything else, a dict that
        ``encode`` refuses, and a payload under the 3-byte minimum (the
        empty map) go to ``checked``, which returns a valid payload or raises
        the caller's documented error. Nothing is appended when it raises.

        Raises:
            ValueError: at once, for an ``encoding`` other than 0 or 1; from
                ``write``, for a payload that does not fit the header (or
                whatever ``checked`` raises).
        """
        if encoding not in _ENCODINGS:
            raise ValueError(f"Content-Encoding must be 0 or 1, not {encoding!r}")
        pack, largest, head = self._pack, self._max_length, self.head
        header_size = self._header_size

        def write(payload: Any, out: list[bytes]) -> int:
            if type(payload) is dict:
                try:
                    body = encode(payload)
                except Exception:
                    body = checked(payload)  # raises the documented error
            else:
                body = checked(payload)
            length = len(body) + 2
            if length < MIN_CONTENT_LENGTH:  # the empty map: ``checked`` pads it
                body = checked(payload)
                length = len(body) + 2
            if pack is None or length > largest:
                out.append(head(length, encoding))  # the checked path: raises when too long
            else:
                out.append(pack(length, PROTOCOL_VERSION, encoding))
            out.append(body)
            return header_size + length

        return write

    def head(self, length: int, encoding: int) -> bytes:
        """Return the header of a frame whose Content-Length is ``length``.

        Raises:
            ValueError: when ``length`` does not fit the header size, or
                ``encoding`` is not 0 or 1.
        """
        if length > self._max_length:
            raise ValueError(
                f"payload of {length - 2} bytes does not fit a"
                f" {self._header_size}-byte Content-Length header"
            )
        if encoding not in _ENCODINGS:
            raise ValueError(f"Content-Encoding must be 0 or 1, not {encoding!r}")
        if self._pack is not None:
            return self._pack(length, PROTOCOL_VERSION, encoding)
        return length.to_bytes(self._header_size, self._byteorder) + bytes(
            (PROTOCOL_VERSION, encoding)
        )

    def encode(self, payload: Buffer, encoding: int) -> bytes:
        """Return the frame carrying ``payload`` with Content-Encoding ``encoding``.

        Raises:
            ValueError: when the payload is too long for the header size, or
                ``encoding`` is not 0 or 1.
        """
        return self.head(len(payload) + 2, encoding) + payload


def encode_frame(
    payload: Buffer,
    encoding: int,
    *,
    header_size: int = DEFAULT_HEADER_SIZE,
    byteorder: ByteOrder = "big",
) -> bytes:
    """Return one AsyncAProto frame carrying ``payload``.

    Args:
        payload: the encoded payload.
        encoding: ``Encoding.JSON`` (0) or ``Encoding.ZIPROTO`` (1).
        header_size: bytes of the Content-Length header, 1 to 8.
        byteorder: ``"big"`` or ``"little"``.

    Raises:
        ValueError: for a bad header size, byte order or encoding, or a payload
            too long for the header size.
    """
    return FrameEncoder(header_size, byteorder).encode(payload, encoding)


_HEAD, _BODY, _SKIP, _CLOSED, _START = 0, 1, 2, 3, 4
_TLS_ERROR: Final = FrameError(
    ErrorCode.ERR_HEADER_INVALID,
    False,
    "the stream starts with a TLS record: the peer speaks TLS, this side does not",
    True,
)


class FrameDecoder:
    """Incremental AsyncAProto frame decoder (see the module's theory of operation).

    Args:
        header_size: bytes of the Content-Length header, 1 to 8.
        byteorder: ``"big"`` or ``"little"``.
        max_packet_size: the largest Content-Length accepted; a larger one is a
            fatal ``ERR_PACKET_TOO_LARGE``. At least ``MIN_CONTENT_LENGTH``.

    Raises:
        ValueError: for arguments out of range (at construction only).
    """

    __slots__ = (
        "_body",
        "_encoding",
        "_head",
        "_head_size",
        "_max",
        "_remaining",
        "_rest",
        "_state",
        "_unpack",
        "byteorder",
        "header_size",
        "holding",
        "max_packet_size",
    )

    def __init__(
        self,
        header_size: object = DEFAULT_HEADER_SIZE,
        byteorder: ByteOrder = "big",
        max_packet_size: object = DEFAULT_MAX_PACKET_SIZE,
    ) -> None:
        header_size = _check_header_size(header_size)
        _check_byteorder(byteorder)
        if (
            not isinstance(max_packet_size, int)
            or isinstance(max_packet_size, bool)
            or max_packet_size < MIN_CONTENT_LENGTH
        ):
            raise ValueError(
                f"max_packet_size must be an integer >= {MIN_CONTENT_LENGTH},"
                f" not {max_packet_size!r}"
            )
        self.header_size = header_size
        self.byteorder: ByteOrder = byteorder
        self.max_packet_size = max_packet_size
        self._max = max_packet_size
        self._head_size = header_size + 2
        self._unpack = _header_unpacker(header_size, byteorder)
        self._state = _START
        self._head = bytearray()  # a header split across feeds
        self._body = bytearray()  # a payload split across feeds
        self._remaining = 0  # bytes still to skip (SKIP)
        self._rest: Buffer = b""  # what a feed with a limit left unread
        self.holding = False
        """True when the last feed left input here (an incomplete frame, or input
        not read yet): :attr:`buffered` is then worth asking for."""
        self._encoding = Encoding.JSON

    @property
    def buffered(self) -> int:
        """How many bytes the decoder holds now: an incomplete frame, and input left unread."""
        return len(self._head) + len(self._body) + len(self._rest)

    @property
    def pending(self) -> bool:
        """True when a feed stopped at its ``limit`` with input left: ``feed(b"")`` goes on."""
        return bool(self._rest)

    @property
    def closed(self) -> bool:
        """True after a fatal error: the decoder accepts no more input."""
        return self._state == _CLOSED

    @property
    def idle(self) -> bool:
        """True when the decoder is between frames (holds nothing, skips nothing)."""
        return self._state in (_HEAD, _START) and not self._head and not self._rest

    def close(self) -> None:
        """Drop every byte held (an incomplete frame, unread input) and accept no more.

        Payloads already handed out stay valid. Feeding afterwards raises
        :class:`~asyncapy.errors.LocalProtocolError`.
        """
        self._state = _CLOSED
        self._head = bytearray()
        self._body = bytearray()
        self._rest = b""
        self.holding = False

    def feed(self, data: Buffer, limit: int = 1 << 62) -> list[Event]:
        """Consume ``data`` and return the events it completed, in order.

        Args:
            data: the next bytes of the stream, of any length (``b""`` consumes
                only what an earlier call left unread).
            limit: return at most this many events (at least 1); the input
                after the last of them is kept unread (:attr:`pending`).

        Returns:
            Zero or more :class:`Frame` and :class:`FrameError` events. After
            a fatal :class:`FrameError` the rest of ``data`` is dropped.

        Raises:
            LocalProtocolError: if called after a fatal error. Nothing else escapes.
        """
        return [
            event if isinstance(event, FrameError) else Frame(PROTOCOL_VERSION, *event)
            for event in self.feed_fast(data, limit)
        ]

    def feed_fast(self, data: Buffer, limit: int = 1 << 62) -> list[RawEvent]:
        """:meth:`feed`, with each frame as a plain ``(encoding, payload)`` tuple.

        Building a :class:`Frame` costs more than the rest of a small frame's
        decoding; the server's connections use this form. Errors are
        :class:`FrameError` (a tuple subclass: tell them apart with
        ``type(event) is tuple``). Raises what :meth:`feed` raises.
        """
        if self._rest:
            self.holding = False
            rest, self._rest = self._rest, b""
            data = rest if not data else bytes(rest) + bytes(data)
        state = self._state
        if state == _HEAD and not self._head and type(data) is bytes:
            # Fastest path: a chunk that is exactly one valid frame (a request
            # at a time, the usual case of a client waiting for each reply).
            # Frames in a chunk of bytes are bytes or memoryview slices of it.
            end = len(data)
            if end >= self._head_size:
                length, version, encoding = self._unpack(data, 0)
                if (
                    end == self.header_size + length
                    and MIN_CONTENT_LENGTH <= length <= self._max
                    and version == PROTOCOL_VERSION
                    and encoding <= 1
                ):
                    start = self._head_size
                    payload = data[start:] if length < _SLICE_COPY else memoryview(data)[start:]
                    return [(_ENCODINGS[encoding], payload)]
        if state >= _CLOSED:
            if state == _CLOSED:
                raise LocalProtocolError(
                    "the decoder is closed after a fatal error", keep_connection=False
                )
            if not data:  # nothing yet: the first bytes are still to be checked
                return []
            self._state = _HEAD  # _START: the stream's first bytes
            if looks_like_tls(data[:3]) and not self._valid_header(data):
                self._state = _CLOSED
                return [_TLS_ERROR]
        events: list[RawEvent] = []
        if type(data) is bytes:
            view = memoryview(data)
        else:
            view = data if isinstance(data, memoryview) else memoryview(data)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
        end = len(view)
        pos = 0
        hs = self.header_size
        head_size = self._head_size
        unpack = self._unpack
        min_length, max_length = MIN_CONTENT_LENGTH, self._max
        while pos < end:
            if len(events) >= limit:
                self._rest = view[pos:]
                self.holding = True
                return events
            state = self._state
            if state == _HEAD:
                if self._head or end - pos < head_size:
                    pos = self._feed_head(view, pos, end, events)
                    if self._state == _CLOSED:
                        return events
                    continue
                # Fast path: the whole header lies in this chunk.
                length, version, encoding = unpack(view, pos)
                stop = pos + hs + length
                if (
                    stop <= end
                    and min_length <= length <= max_length
                    and version == PROTOCOL_VERSION
                    and encoding <= 1
                ):
                    # ... and so does the payload: hand out a slice, no copy.
                    events.append((_ENCODINGS[encoding], view[pos + head_size : stop]))
                    pos = stop
                    continue
                pos += hs
                if not self._length_ok(length, events):
                    if self._state == _CLOSED:
                        return events
                    continue
                pos += 2
                self._start_payload(length, version, encoding, events)
                continue
            take = min(self._remaining, end - pos)
            if state == _BODY:
                self._body += view[pos : pos + take]
            pos += take
            self._remaining -= take
            if self._remaining == 0:
                if state == _BODY:
                    events.append((self._encoding, self._body))
                    self._body = bytearray()
                self._state = _HEAD
        self.holding = bool(self._head or self._body)
        return events

    def _valid_header(self, data: Buffer) -> bool:
        """True when ``data`` starts with a whole, valid frame header (or is too short to tell)."""
        if len(data) < self._head_size:
            return True
        length, version, encoding = self._unpack(data, 0)
        return (
            MIN_CONTENT_LENGTH <= length <= self._max
            and version == PROTOCOL_VERSION
            and encoding <= 1
        )

    def _feed_head(self, view: memoryview, pos: int, end: int, events: list[RawEvent]) -> int:
        """Gather a header split across feeds; return the new position."""
        head = self._head
        hs = self.header_size
        if len(head) < hs:
            take = min(hs - len(head), end - pos)
            head += view[pos : pos + take]
            pos += take
            if len(head) < hs:
                return pos
            if not self._length_ok(int.from_bytes(head, self.byteorder), events):
                head.clear()
                return pos
        take = min(hs + 2 - len(head), end - pos)
        head += view[pos : pos + take]
        pos += take
        if len(head) == hs + 2:
            length = int.from_bytes(head[:hs], self.byteorder)
            version, encoding = head[hs], head[hs + 1]
            head.clear()
            self._start_payload(length, version, encoding, events)
        return pos

    def _length_ok(self, length: int, events: list[RawEvent]) -> bool:
        """Judge a Content-Length as soon as it is known.

        Too large: a fatal error, the decoder closes. Too small: the frame is
        rejected and its ``length`` declared bytes are skipped. Returns True
        when the frame can go on to its one-byte headers.
        """
        if length > self._max:
            self._state = _CLOSED
            self._head.clear()
            self._body = bytearray()
            self.holding = False
            events.append(
                FrameError(
                    ErrorCode.ERR_PACKET_TOO_LARGE,
                    False,
                    f"Content-Length {length} exceeds max_packet_size {self._max}",
                )
            )
            return False
        if length < MIN_CONTENT_LENGTH:
            events.append(
                FrameError(
                    ErrorCode.ERR_REQUEST_MALFORMED,
                    True,
                    f"Content-Length {length} is below the minimum of {MIN_CONTENT_LENGTH}",
                )
            )
            self._remaining = length
            self._state = _SKIP if length else _HEAD
            return False
        return True

    def _start_payload(
        self, length: int, version: int, encoding: int, events: list[RawEvent]
    ) -> bool:
        """Judge the one-byte headers; return True when a payload is to be read."""
        self._remaining = length - 2
        if version != PROTOCOL_VERSION or encoding not in _ENCODINGS:
            what = (
                f"Protocol-Version {version} (expected {PROTOCOL_VERSION})"
                if version != PROTOCOL_VERSION
                else f"Content-Encoding {encoding} (expected 0 or 1)"
            )
            events.append(FrameError(ErrorCode.ERR_HEADER_INVALID, True, f"invalid {what}"))
            self._state = _SKIP
            return False
        self._encoding = _ENCODINGS[encoding]
        self._state = _BODY
        return True
