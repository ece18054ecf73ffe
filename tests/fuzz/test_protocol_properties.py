"""Property tests: round trips, and the decoder's error contract on byte soup."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from asyncapy.codecs import JSON, ZIPROTO
from asyncapy.errors import DecodeError, ErrorCode, ProtocolError
from asyncapy.protocol import Frame, FrameDecoder, FrameError, encode_frame

header_sizes = st.integers(min_value=1, max_value=8)
byteorders = st.sampled_from(["big", "little"])


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[last:point])
        last = point
    return chunks


@settings(max_examples=300, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=3, max_size=300), min_size=1, max_size=8),
    encodings=st.lists(st.sampled_from([0, 1]), min_size=8, max_size=8),
    header_size=header_sizes,
    byteorder=byteorders,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_encode_then_decode_round_trips(
    payloads: list[bytes],
    encodings: list[int],
    header_size: int,
    byteorder: Any,
    cuts: list[int],
) -> None:
    payloads = [p for p in payloads if len(p) + 2 < 256**header_size]
    stream = b"".join(
        encode_frame(p, e, header_size=header_size, byteorder=byteorder)
        for p, e in zip(payloads, encodings, strict=False)
    )
    decoder = FrameDecoder(header_size, byteorder)
    events = []
    for chunk in _chunked(stream, cuts):
        events.extend(decoder.feed(chunk))
    assert all(isinstance(e, Frame) for e in events)
    assert [(bytes(e.payload), int(e.encoding)) for e in events if isinstance(e, Frame)] == list(
        zip(payloads, encodings, strict=False)
    )
    assert decoder.idle


@settings(max_examples=500, deadline=None)
@given(
    soup=st.binary(max_size=2000),
    header_size=header_sizes,
    byteorder=byteorders,
    max_packet_size=st.integers(min_value=5, max_value=600),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_byte_soup_never_escapes_the_contract(
    soup: bytes, header_size: int, byteorder: Any, max_packet_size: int, cuts: list[int]
) -> None:
    decoder = FrameDecoder(header_size, byteorder, max_packet_size)
    for chunk in _chunked(soup, cuts):
        try:
            events = decoder.feed(chunk)
        except ProtocolError:
            assert decoder.closed
            break
        assert decoder.buffered <= max_packet_size + header_size
        for event in events:
            if isinstance(event, Frame):
                assert len(event.payload) + 2 <= max_packet_size
                for codec in (JSON, ZIPROTO):
                    with contextlib.suppress(DecodeError):
                        assert isinstance(codec.decode(event.payload), dict)
            else:
                assert isinstance(event, FrameError)
                fatal = event.code == ErrorCode.ERR_PACKET_TOO_LARGE
                assert event.keep_connection is not fatal
                # a fatal error is the last event, and closes the decoder
                assert not fatal or (event is events[-1] and decoder.closed)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
maps = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@settings(max_examples=300, deadline=None)
@given(payload=maps)
def test_codecs_round_trip_maps(payload: dict[str, Any]) -> None:
    assert JSON.decode(JSON.encode(payload)) == payload
    assert ZIPROTO.decode(ZIPROTO.encode(payload)) == payload


@settings(max_examples=500, deadline=None)
@given(soup=st.binary(max_size=200))
def test_codecs_raise_only_their_own_error(soup: bytes) -> None:
    for codec in (JSON, ZIPROTO):
        with contextlib.suppress(DecodeError):
            assert isinstance(codec.decode(soup), dict)
