"""Payload codecs: JSON and ZiProto (MessagePack), behind one small interface.

A request payload must decode to a map; anything else, and any malformed
input, raises :class:`~asyncapy.errors.DecodeError` (``ERR_REQUEST_MALFORMED``).
Encoding a value the codec cannot represent raises
:class:`~asyncapy.errors.EncodeError`.

Theory of operation
-------------------
Every decode must cost time linear in the payload's size, whatever its bytes
(``docs/threat-model.md``, T1 and T2), so each direction uses the C library
that guarantees it:

* **JSON** is decoded by orjson, whose float parser is linear (msgspec's
  spends 1.6 s per MiB of ``1e308``), and whose nesting stops at 1,024 levels.
  JSON map keys are strings, whose hashes are salted.
* **ZiProto** is decoded by msgpack with ``strict_map_key=False``: a map key
  may be a string, an integer (PHP clients send ``{"1": x}`` as ``{1: x}``),
  or another scalar, but never an array or a map. msgspec decodes an array
  key as a tuple, and tuples of integers have unsalted hashes that can be
  made to collide: one 468 KiB map took 9.4 s to build. Integer and float
  keys cannot share one hash more than a few dozen times, so their cost stays
  linear. Decoding is strict (truncated input, trailing bytes, the code
  ``c1`` and invalid UTF-8 are errors); extension types become
  :class:`msgspec.msgpack.Ext` and timestamps ``datetime`` (UTC), as before.
* Both are **encoded** with msgspec (the fastest writer of both): str as str,
  bytes as bin (base64 in JSON), floats as float64, the smallest integer
  widths; JSON compactly (``{"a":1}``), integer map keys as strings.

The worst case that remains is allocation: a byte may become one object (a
MessagePack ``0x90`` is an empty list), about 0.2 s per MiB here. Hence the
server's default ``max_packet_size`` of 1 MiB and its per-connection fair
share of decoding time (``_connection``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import msgpack
import msgspec
import orjson

from .errors import DecodeError, EncodeError
from .protocol import MIN_CONTENT_LENGTH, Buffer, Encoding

__all__ = [
    "CODECS",
    "DECODE_FAILURES",
    "JSON",
    "ZIPROTO",
    "Codec",
    "JsonCodec",
    "ZiprotoCodec",
    "get_codec",
]

MIN_PAYLOAD: Final = MIN_CONTENT_LENGTH - 2
"""The smallest payload a frame may carry (3 bytes)."""

DECODE_FAILURES: Final = (ValueError, TypeError, RecursionError)
"""What a codec's ``raw_decode`` raises on bad input: ValueError (orjson's
JSONDecodeError, msgpack's format, stack and extra-data errors, invalid UTF-8,
and :class:`~asyncapy.errors.DecodeError` for a top level that is not a map),
TypeError (msgpack: an array or map used as a map key)."""


def not_a_map(value: object) -> DecodeError:
    """The error for a payload that decoded to ``value``, not to a map."""
    return DecodeError(f"the payload must be a map, not {type(value).__name__}")


def _checked(loads: Callable[[Buffer], Any]) -> Callable[[Buffer], dict[Any, Any]]:
    def decode(data: Buffer) -> dict[Any, Any]:
        value = loads(data)
        if type(value) is not dict:
            raise not_a_map(value)
        return value

    return decode


def _is_record(obj: object) -> bool:
    """A msgspec.Struct that encodes as a map (not ``array_like``), or a dataclass instance."""
    if isinstance(obj, msgspec.Struct):
        return not type(obj).__struct_config__.array_like
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _ext(code: int, data: bytes) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(code, data)


def _msgpack_loads(
    data: Buffer, unpackb: Callable[..., Any] = msgpack.unpackb, ext: Any = _ext
) -> Any:
    return unpackb(data, strict_map_key=False, ext_hook=ext, timestamp=3)


class Codec(Protocol):
    """What every payload codec offers."""

    name: str
    encoding: Encoding
    loads: Callable[[Buffer], Any]
    raw_decode: Callable[[Buffer], dict[Any, Any]]
    raw_encode: Callable[[Any], bytes]

    def decode(self, data: Buffer) -> dict[Any, Any]:
        """Decode one payload that must be a map.

        Raises:
            DecodeError: when ``data`` is not one valid value of this codec, or
                not a map.
        """
        ...

    def encode(self, obj: Mapping[Any, Any] | str | msgspec.Struct) -> bytes:
        """Encode a map, or a str holding a JSON object (decoded first).

        Raises:
            EncodeError: (a ``TypeError``) when ``obj`` is not a map, or holds
                something this codec cannot write.
            DecodeError: (a ``ValueError``) when ``obj`` is a str that is not
                a JSON object.
        """
        ...

    def encode_payload(self, obj: Mapping[Any, Any] | str | msgspec.Struct) -> bytes:
        """:meth:`encode` for a frame: the empty map meets the 3-byte minimum payload.

        JSON ``{}`` and MessagePack ``80`` are shorter than protocol.md allows
        (section 1); the empty map goes out as JSON ``{ }`` and as MessagePack
        map16 with no entries, ``de 00 00``, which every decoder reads as ``{}``.

        Raises:
            The errors of :meth:`encode`.
        """
        ...


class _MsgspecCodec:
    __slots__ = ("_empty", "encoding", "loads", "name", "raw_decode", "raw_encode")

    def __init__(
        self,
        encoding: Encoding,
        loads: Callable[[Buffer], Any],
        encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder,
        empty: bytes,
    ) -> None:
        self.name = str(encoding)
        self.encoding = encoding
        self._empty = empty  # the empty map, written to meet the 3-byte minimum
        self.loads: Callable[[Buffer], Any] = loads
        """Decode one value of any type, without wrapping errors: raises one of
        :data:`DECODE_FAILURES`. The server's hot path checks for a map itself."""
        self.raw_decode: Callable[[Buffer], dict[Any, Any]] = _checked(loads)
        """Decode without wrapping errors: raises one of :data:`DECODE_FAILURES`
        (the server's hot path, which turns them into an error reply itself)."""
        self.raw_encode: Callable[[Any], bytes] = encoder.encode
        """Encode a dict without checks or wrapping: raises TypeError,
        ValueError or OverflowError on what it cannot encode."""

    def decode(self, data: Buffer) -> dict[Any, Any]:
        try:
            return self.raw_decode(data)
        except DECODE_FAILURES as exc:
            raise DecodeError(f"invalid {self.name} payload: {exc}") from None

    def encode(self, obj: Mapping[Any, Any] | str | msgspec.Struct) -> bytes:
        if isinstance(obj, str):
            obj = _json_object(obj)
        elif not isinstance(obj, dict):
            if _is_record(obj):  # a Struct or a dataclass: msgspec writes it as a map
                pass
            elif not isinstance(obj, Mapping):
                raise EncodeError(
                    "a payload must be a map, a msgspec.Struct, a dataclass or a JSON object"
                    f" in a str, not {type(obj).__name__}"
                )
            else:
                obj = dict(obj)
        try:
            return self.raw_encode(obj)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise EncodeError(f"cannot encode as {self.name}: {exc}") from None

    def encode_payload(self, obj: Mapping[Any, Any] | str | msgspec.Struct) -> bytes:
        body = self.encode(obj)
        return body if len(body) >= MIN_PAYLOAD else self._empty

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class JsonCodec(_MsgspecCodec):
    """JSON: UTF-8 text whose top level is an object."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(Encoding.JSON, orjson.loads, msgspec.json.Encoder(), b"{ }")


class ZiprotoCodec(_MsgspecCodec):
    """ZiProto: MessagePack, strict, whose top level is a map."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(
            Encoding.ZIPROTO,
            _msgpack_loads,
            msgspec.msgpack.Encoder(),
            b"\xde\x00\x00",  # map16 with no entries
        )


JSON: Final = JsonCodec()
ZIPROTO: Final = ZiprotoCodec()
CODECS: Final[tuple[Codec, Codec]] = (JSON, ZIPROTO)
"""Codecs indexed by Content-Encoding value."""


def _json_object(text: str) -> dict[Any, Any]:
    """The map in ``text``, a JSON object: what the clients and ``Client.send`` accept as a str.

    Raises:
        DecodeError: when ``text`` is not a JSON object.
    """
    try:
        return JSON.decode(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise DecodeError(f"the payload string is not valid text: {exc}") from None


def get_codec(encoding: str | int) -> Codec:
    """Return the codec for ``"json"``/``"ziproto"`` or the code 0/1.

    Raises:
        ValueError: for an unknown encoding.
    """
    return CODECS[Encoding.parse(encoding)]
