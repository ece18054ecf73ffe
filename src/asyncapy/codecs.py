"""Payload codecs: JSON and ZiProto (MessagePack), behind one small interface.

Both are msgspec's C codecs. A request payload must decode to a map; anything
else, and any malformed input, raises :class:`~asyncapy.errors.DecodeError`
(``ERR_REQUEST_MALFORMED``). Encoding a value the codec cannot represent
raises :class:`~asyncapy.errors.EncodeError`.

ZiProto is MessagePack byte for byte (protocol.md, section 2): str as str,
bytes as bin, floats as float64, the smallest integer widths; decoding is
strict (truncated input, trailing bytes, the code ``c1`` and invalid UTF-8 are
errors) and accepts non-string map keys. JSON is UTF-8 text; it is written
compactly (``{"a":1}``), ``bytes`` values become base64 strings and integer
map keys become strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import msgspec

from .errors import DecodeError, EncodeError
from .protocol import Buffer, Encoding

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

DECODE_FAILURES: Final = (msgspec.DecodeError, ValueError, RecursionError)
"""What a codec's ``raw_decode`` raises on bad input: msgspec's DecodeError
(ValidationError, for a top level that is not a map, is a subclass),
UnicodeDecodeError for invalid UTF-8 (a ValueError), RecursionError for
absurdly deep nesting."""


class Codec(Protocol):
    """What every payload codec offers."""

    name: str
    encoding: Encoding
    raw_decode: Callable[[Buffer], dict[Any, Any]]
    raw_encode: Callable[[Any], bytes]

    def decode(self, data: Buffer) -> dict[Any, Any]:
        """Decode one payload that must be a map.

        Raises:
            DecodeError: when ``data`` is not one valid value of this codec, or
                not a map.
        """
        ...

    def encode(self, obj: Mapping[Any, Any]) -> bytes:
        """Encode a map.

        Raises:
            EncodeError: when ``obj`` holds something this codec cannot write.
        """
        ...


class _MsgspecCodec:
    __slots__ = ("encoding", "name", "raw_decode", "raw_encode")

    def __init__(
        self,
        encoding: Encoding,
        decoder: msgspec.json.Decoder[dict[Any, Any]] | msgspec.msgpack.Decoder[dict[Any, Any]],
        encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder,
    ) -> None:
        self.name = str(encoding)
        self.encoding = encoding
        self.raw_decode: Callable[[Buffer], dict[Any, Any]] = decoder.decode
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

    def encode(self, obj: Mapping[Any, Any]) -> bytes:
        if not isinstance(obj, dict):
            if not isinstance(obj, Mapping):
                raise EncodeError(f"a payload must be a map, not {type(obj).__name__}")
            obj = dict(obj)
        try:
            return self.raw_encode(obj)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise EncodeError(f"cannot encode as {self.name}: {exc}") from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class JsonCodec(_MsgspecCodec):
    """JSON: UTF-8 text whose top level is an object."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(
            Encoding.JSON, msgspec.json.Decoder(dict[Any, Any]), msgspec.json.Encoder()
        )


class ZiprotoCodec(_MsgspecCodec):
    """ZiProto: MessagePack, strict, whose top level is a map."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(
            Encoding.ZIPROTO, msgspec.msgpack.Decoder(dict[Any, Any]), msgspec.msgpack.Encoder()
        )


JSON: Final = JsonCodec()
ZIPROTO: Final = ZiprotoCodec()
CODECS: Final[tuple[Codec, Codec]] = (JSON, ZIPROTO)
"""Codecs indexed by Content-Encoding value."""


def get_codec(encoding: str | int) -> Codec:
    """Return the codec for ``"json"``/``"ziproto"`` or the code 0/1.

    Raises:
        ValueError: for an unknown encoding.
    """
    return CODECS[Encoding.parse(encoding)]
