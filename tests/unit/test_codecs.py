"""JSON and ZiProto codecs against the shared ZiProto vectors and the spec."""

from __future__ import annotations

import datetime
import time
from typing import Any

import msgspec
import pytest

from asyncapy.codecs import CODECS, JSON, ZIPROTO, get_codec
from asyncapy.errors import DecodeError, EncodeError, ErrorCode
from asyncapy.protocol import Encoding
from tests.helpers import colliding_pairs, literal, msgpack_map_of_pairs, vector_params


def _as_map(value: Any) -> dict[Any, Any]:
    """Wrap a vector value so it is a valid top-level payload."""
    return value if isinstance(value, dict) else {"v": value}


def _wrapped(hex_value: str) -> bytes:
    """``{"v": <value>}`` in MessagePack, around the vector's bytes."""
    return bytes.fromhex("81a176" + hex_value)


@pytest.mark.parametrize("case", vector_params("ziproto", "roundtrip"))
def test_ziproto_round_trip_vectors(case: dict[str, Any]) -> None:
    value = literal(case["value"])
    expected = bytes.fromhex(case["hex"])
    if isinstance(value, dict):
        assert ZIPROTO.encode(value) == expected
        assert ZIPROTO.decode(expected) == value
    else:
        assert ZIPROTO.encode({"v": value}) == _wrapped(case["hex"])
        assert ZIPROTO.decode(_wrapped(case["hex"])) == {"v": value}
    if isinstance(value, float):  # -0.0 == 0.0: compare the sign too
        got = ZIPROTO.decode(_wrapped(case["hex"]))["v"]
        assert repr(got) == repr(value)


@pytest.mark.parametrize("case", vector_params("ziproto", "decode_only"))
def test_ziproto_decode_only_vectors(case: dict[str, Any]) -> None:
    value = literal(case["value"])
    data = bytes.fromhex(case["hex"])
    if isinstance(value, dict):
        assert ZIPROTO.decode(data) == value
    else:
        assert ZIPROTO.decode(_wrapped(case["hex"])) == {"v": value}


@pytest.mark.parametrize("case", vector_params("ziproto", "invalid"))
def test_ziproto_invalid_vectors(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    with pytest.raises(DecodeError) as info:
        ZIPROTO.decode(data)
    assert info.value.code == ErrorCode.ERR_REQUEST_MALFORMED
    assert info.value.keep_connection
    if data:  # inside a map as well (an empty value there is just truncation)
        with pytest.raises(DecodeError):
            ZIPROTO.decode(_wrapped(case["hex"]))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[1, 2, 3]",
        b'"text"',
        b"null",
        b"{",
        b'{"a": 1} trailing',
        b'{"a": "\xff\xfe"}',
        b'{"a": NaN}',
        b'{"a": 1e400}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=lambda b: repr(b[:20]),
)
def test_json_rejects_what_is_not_one_utf8_object(data: bytes) -> None:
    with pytest.raises(DecodeError, match="invalid json payload"):
        JSON.decode(data)


def test_ziproto_rejects_absurd_nesting_with_its_own_error() -> None:
    with pytest.raises(DecodeError):
        ZIPROTO.decode(b"\x81\xa1a" + b"\x91" * 100_000 + b"\xc0")


def test_ziproto_rejects_unhashable_map_keys() -> None:
    with pytest.raises(DecodeError):
        ZIPROTO.decode(bytes.fromhex("81" + "81a161c0" + "c0"))  # {{"a": None}: None}


def test_json_decodes_objects_and_memoryviews() -> None:
    data = b'{"text": "h\xc3\xa9llo \xe2\x98\x83", "n": [1, 2.5, null, true]}'
    expected = {"text": "héllo ☃", "n": [1, 2.5, None, True]}
    assert JSON.decode(data) == expected
    assert JSON.decode(memoryview(data)) == expected
    assert JSON.decode(bytearray(data)) == expected


def test_json_encode_is_compact_utf8() -> None:
    assert JSON.encode({"test": 1}) == b'{"test":1}'
    assert JSON.decode(JSON.encode({"é": "☃"})) == {"é": "☃"}


def test_encode_accepts_any_mapping() -> None:
    from types import MappingProxyType

    assert JSON.encode(MappingProxyType({"a": 1})) == b'{"a":1}'
    assert ZIPROTO.encode(MappingProxyType({"a": 1})) == bytes.fromhex("81a16101")


@pytest.mark.parametrize("codec", [JSON, ZIPROTO], ids=str)
def test_encode_refuses_non_maps_and_unsupported_values(codec: Any) -> None:
    with pytest.raises(EncodeError, match="must be a map"):
        codec.encode([1, 2])
    with pytest.raises(EncodeError, match="cannot encode"):
        codec.encode({"a": object()})
    if codec is ZIPROTO:  # MessagePack integers stop at 64 bits; JSON has no limit
        with pytest.raises(EncodeError):
            codec.encode({"a": 2**70})
    assert isinstance(EncodeError("x"), TypeError)


def test_get_codec() -> None:
    assert get_codec("json") is JSON
    assert get_codec("ziproto") is ZIPROTO
    assert get_codec(1) is ZIPROTO
    assert CODECS[Encoding.JSON] is JSON
    assert ZIPROTO.name == "ziproto"
    with pytest.raises(ValueError, match="unknown encoding"):
        get_codec("yaml")


# -- decoding costs time linear in the payload (docs/threat-model.md, T1 and T2)


def test_colliding_pairs_really_collide() -> None:
    pairs = colliding_pairs(50)
    assert len({hash(pair) for pair in pairs}) == 1
    assert len(set(pairs)) == 50


def test_ziproto_refuses_array_keys_before_building_the_map() -> None:
    # 20,000 keys sharing one hash: quadratic to insert (seconds); refused at the first.
    payload = msgpack_map_of_pairs(colliding_pairs(20_000))
    started = time.process_time()
    with pytest.raises(DecodeError, match="invalid ziproto payload"):
        ZIPROTO.decode(payload)
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x82\x01\xa1a\xa1b\x02", {1: "a", "b": 2}),  # PHP's integer keys
        (b"\x81\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\x01", {1.5: 1}),
        (b"\x81\xc0\x01", {None: 1}),
        (b"\x81\xc4\x01k\x01", {b"k": 1}),
    ],
)
def test_ziproto_keeps_scalar_map_keys(data: bytes, expected: dict[Any, Any]) -> None:
    assert ZIPROTO.decode(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\x92\x01\x02\x03",  # {[1, 2]: 3}
        b"\x81\xa1a\x81\x92\x01\x02\x03",  # nested
        b"\x81\x80\x01",  # {{}: 1}
    ],
)
def test_ziproto_refuses_container_map_keys(data: bytes) -> None:
    with pytest.raises(DecodeError):
        ZIPROTO.decode(data)


def test_ziproto_extensions_and_timestamps_decode_as_before() -> None:
    ext = ZIPROTO.decode(b"\x81\xa1e\xd4\x05\x01")["e"]
    assert isinstance(ext, msgspec.msgpack.Ext)
    assert (ext.code, ext.data) == (5, b"\x01")
    stamp = ZIPROTO.decode(b"\x81\xa1t\xd6\xff\x00\x00\x00\x01")["t"]
    assert stamp == datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize("number", ["1e308", "4.9e-324", "1.7976931348623157e308"])
def test_json_numbers_that_are_slow_elsewhere_decode_fast(number: str) -> None:
    # msgspec's decoder took 1.6 s per MiB of 1e308 (0.75 s of 4.9e-324).
    count = (1 << 20) // (len(number) + 1)
    payload = ('{"a":[' + ",".join([number] * count) + "]}").encode()
    started = time.process_time()
    assert len(JSON.decode(payload)["a"]) == count
    assert time.process_time() - started < 0.4


def test_json_refuses_integers_beyond_64_bits_and_deep_nesting_cheaply() -> None:
    started = time.process_time()
    with pytest.raises(DecodeError):
        JSON.decode(b'{"a":' + b"9" * (1 << 20) + b"}")
    with pytest.raises(DecodeError):
        JSON.decode(b'{"a":' + b"[" * (1 << 19) + b"]" * (1 << 19) + b"}")
    assert time.process_time() - started < 0.2
