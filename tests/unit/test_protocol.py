"""The sans-I/O frame decoder and encoder against the spec and the shared vectors."""

from __future__ import annotations

from typing import Any

import pytest

from asyncapy.errors import ErrorCode, LocalProtocolError, ProtocolError
from asyncapy.protocol import (
    DEFAULT_MAX_PACKET_SIZE,
    MIN_CONTENT_LENGTH,
    PROTOCOL_VERSION,
    Encoding,
    Event,
    Frame,
    FrameDecoder,
    FrameEncoder,
    FrameError,
    encode_frame,
    looks_like_tls,
)
from tests.helpers import feed_chunks, literal, outcomes, splits, vector_params


def _decoder(case: dict[str, Any]) -> FrameDecoder:
    return FrameDecoder(
        case["header_size"],
        case["byteorder"],
        case.get("max_packet_size", DEFAULT_MAX_PACKET_SIZE),
    )


@pytest.mark.parametrize("case", vector_params("frames", "valid"))
def test_valid_vectors_whole_bytewise_and_split(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    expected = [("packet", case["encoding"], literal(case["payload"]))]
    for chunks in splits(data):
        decoder = _decoder(case)
        assert outcomes(feed_chunks(decoder, chunks)) == expected
        assert decoder.idle
        assert decoder.buffered == 0


@pytest.mark.parametrize("case", vector_params("frames", "rejected"))
def test_rejected_vectors_whole_bytewise_and_split(case: dict[str, Any]) -> None:
    data = bytes.fromhex(case["hex"])
    expected = [("error", case["error"], case["keeps_connection"])]
    for chunks in splits(data):
        decoder = _decoder(case)
        assert outcomes(feed_chunks(decoder, chunks)) == expected
        assert decoder.closed is not case["keeps_connection"]


@pytest.mark.parametrize("case", vector_params("frames", "rejected"))
def test_what_follows_a_rejected_frame(case: dict[str, Any]) -> None:
    """After a kept rejection the next frame decodes; after a fatal one nothing does."""
    good = encode_frame(
        b'{"next": true}',
        Encoding.JSON,
        header_size=case["header_size"],
        byteorder=case["byteorder"],
    )
    data = bytes.fromhex(case["hex"]) + good
    expected = [("error", case["error"], case["keeps_connection"])]
    if case["keeps_connection"]:
        expected.append(("packet", "json", {"next": True}))
    for chunks in splits(data):
        decoder = _decoder(case)
        assert outcomes(feed_chunks(decoder, chunks)) == expected
        if not case["keeps_connection"]:
            with pytest.raises(ProtocolError):
                decoder.feed(good)


def test_seed_example_bytes() -> None:
    frame = encode_frame(b'{"test": 1}', Encoding.JSON)
    assert frame == bytes.fromhex("0000000d16007b2274657374223a20317d")


@pytest.mark.parametrize("header_size", range(1, 9))
@pytest.mark.parametrize("byteorder", ["big", "little"])
def test_encode_decode_round_trip_every_header_format(header_size: int, byteorder: Any) -> None:
    payload = b'{"a": [1, 2, 3]}'
    frame = encode_frame(payload, Encoding.ZIPROTO, header_size=header_size, byteorder=byteorder)
    assert len(frame) == header_size + 2 + len(payload)
    assert int.from_bytes(frame[:header_size], byteorder) == len(payload) + 2
    assert frame[header_size : header_size + 2] == bytes((PROTOCOL_VERSION, 1))
    for chunks in splits(frame * 3):
        decoder = FrameDecoder(header_size, byteorder)
        events = feed_chunks(decoder, chunks)
        assert [(e.encoding, bytes(e.payload)) for e in events if isinstance(e, Frame)] == [
            (Encoding.ZIPROTO, payload)
        ] * 3


def test_pipelined_frames_in_one_chunk_are_slices_without_copies() -> None:
    data = b"".join(encode_frame(b'{"i": %d}' % i, 0) for i in range(100))
    events = FrameDecoder().feed(data)
    assert [bytes(e.payload) for e in events if isinstance(e, Frame)] == [
        b'{"i": %d}' % i for i in range(100)
    ]
    assert all(isinstance(e, Frame) and isinstance(e.payload, memoryview) for e in events)


def test_accepts_bytearray_and_memoryview_input() -> None:
    frame = encode_frame(b'{"a": 1}', 0)
    assert outcomes(FrameDecoder().feed(bytearray(frame))) == [("packet", "json", {"a": 1})]
    assert outcomes(FrameDecoder().feed(memoryview(frame))) == [("packet", "json", {"a": 1})]


def test_empty_feed_is_a_no_op() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.idle


# -- limits: max_packet_size at limit - 1, limit, limit + 1 and far over, whole and in chunks


LIMIT = 1024


def _frame_with_length(content_length: int) -> bytes:
    return encode_frame(b"{}" + b" " * (content_length - 4), 0)


@pytest.mark.parametrize("content_length", [LIMIT - 1, LIMIT])
def test_content_length_up_to_the_limit_is_accepted(content_length: int) -> None:
    data = _frame_with_length(content_length)
    for chunks in (
        [data],
        [data[i : i + 7] for i in range(0, len(data), 7)],
        [data[:4], data[4:]],
    ):
        decoder = FrameDecoder(max_packet_size=LIMIT)
        events = feed_chunks(decoder, chunks)
        assert [type(e) for e in events] == [Frame]
        assert isinstance(events[0], Frame)
        assert len(events[0].payload) == content_length - 2


@pytest.mark.parametrize("content_length", [LIMIT + 1, 10 * LIMIT, 2**32 - 1])
def test_content_length_over_the_limit_is_fatal_after_the_header(content_length: int) -> None:
    header = content_length.to_bytes(4, "big")
    for chunks in ([header + b"\x16\x00" + b"x" * 50], [header[:2], header[2:]], [header]):
        decoder = FrameDecoder(max_packet_size=LIMIT)
        events = feed_chunks(decoder, chunks)
        assert len(events) == 1
        assert isinstance(events[0], FrameError)
        assert events[0].code == ErrorCode.ERR_PACKET_TOO_LARGE
        assert not events[0].keep_connection
        assert f"Content-Length {content_length} exceeds" in events[0].detail
        assert decoder.closed
        assert decoder.buffered == 0


def test_0xffffffff_is_refused_after_reading_only_the_header() -> None:
    """Four bytes are enough: no byte of the payload is waited for or buffered."""
    decoder = FrameDecoder()
    events = decoder.feed(b"\xff\xff\xff\xff")
    assert len(events) == 1
    assert isinstance(events[0], FrameError)
    assert events[0].code == ErrorCode.ERR_PACKET_TOO_LARGE
    assert not events[0].keep_connection
    assert decoder.buffered == 0


def test_feeding_after_a_fatal_error_is_a_local_protocol_error() -> None:
    decoder = FrameDecoder(max_packet_size=LIMIT)
    decoder.feed((LIMIT + 1).to_bytes(4, "big"))
    with pytest.raises(LocalProtocolError) as info:  # the caller's mistake, not the peer's
        decoder.feed(b"more")
    assert isinstance(info.value, ProtocolError)
    assert not info.value.keep_connection


@pytest.mark.parametrize("content_length", range(MIN_CONTENT_LENGTH))
def test_every_content_length_below_the_minimum_is_skipped(content_length: int) -> None:
    body = bytes([PROTOCOL_VERSION, 0, 0x7B, 0x7D])[:content_length]
    bad = content_length.to_bytes(4, "big") + body
    data = bad + encode_frame(b'{"ok": 1}', 0)
    for chunks in splits(data):
        got = outcomes(feed_chunks(FrameDecoder(), chunks))
        assert got == [("error", "ERR_REQUEST_MALFORMED", True), ("packet", "json", {"ok": 1})]


def test_minimum_content_length_is_accepted() -> None:
    frame = encode_frame(b"\x81\xa0\xc0", 1)
    assert frame[:4] == MIN_CONTENT_LENGTH.to_bytes(4, "big")
    assert outcomes(FrameDecoder().feed(frame)) == [("packet", "ziproto", {"": None})]


def test_split_payload_grows_with_what_arrives_not_with_what_was_declared() -> None:
    decoder = FrameDecoder()
    decoder.feed((DEFAULT_MAX_PACKET_SIZE).to_bytes(4, "big") + b"\x16\x00{")
    assert decoder.buffered == 1
    decoder.feed(b" " * 100)
    assert decoder.buffered == 101


def test_a_header_invalid_frame_is_skipped_without_buffering() -> None:
    decoder = FrameDecoder()
    events = decoder.feed((1000).to_bytes(4, "big") + b"\x15\x00")
    assert [e.code for e in events if isinstance(e, FrameError)] == [ErrorCode.ERR_HEADER_INVALID]
    decoder.feed(b"x" * 500)
    assert decoder.buffered == 0
    assert not decoder.idle
    assert outcomes(decoder.feed(b"x" * 498 + encode_frame(b'{"a": 2}', 0))) == [
        ("packet", "json", {"a": 2})
    ]


# -- construction and encoding errors


@pytest.mark.parametrize("header_size", [0, 9, -1, 2.0, True, "4"])
def test_bad_header_size_is_refused(header_size: Any) -> None:
    with pytest.raises(ValueError, match="header_size"):
        FrameDecoder(header_size)
    with pytest.raises(ValueError, match="header_size"):
        FrameEncoder(header_size)


def test_bad_byteorder_and_max_packet_size_are_refused() -> None:
    with pytest.raises(ValueError, match="byteorder"):
        FrameDecoder(4, "middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_packet_size"):
        FrameDecoder(max_packet_size=MIN_CONTENT_LENGTH - 1)


def test_encoder_refuses_a_payload_too_long_for_the_header() -> None:
    assert len(encode_frame(b"x" * 253, 0, header_size=1)) == 256
    with pytest.raises(ValueError, match="does not fit"):
        encode_frame(b"x" * 254, 0, header_size=1)
    with pytest.raises(ValueError, match="does not fit"):
        encode_frame(b"x" * 70000, 0, header_size=2)


def test_encoder_refuses_an_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="Content-Encoding"):
        encode_frame(b"{}x", 2)


def test_encoding_names() -> None:
    assert str(Encoding.JSON) == "json"
    assert Encoding.parse("ZiProto") is Encoding.ZIPROTO
    assert Encoding.parse(0) is Encoding.JSON
    with pytest.raises(ValueError, match="unknown encoding"):
        Encoding.parse("xml")
    with pytest.raises(ValueError, match="unknown encoding"):
        Encoding.parse(True)
    with pytest.raises(ValueError):  # noqa: PT011 - IntEnum's own message
        Encoding.parse(5)


def test_feed_fast_gives_the_same_events_as_plain_tuples() -> None:
    bad = (1000).to_bytes(4, "big") + b"\x15\x00" + b"x" * 998
    data = encode_frame(b'{"a": 1}', 0) + bad + encode_frame(b"\x81\xa1b\x02", 1)
    for chunks in splits(data):
        slow, fast = FrameDecoder(), FrameDecoder()
        events = feed_chunks(slow, chunks)
        raw = [event for chunk in chunks for event in fast.feed_fast(chunk)]
        assert [type(e) for e in raw] == [tuple, FrameError, tuple]
        assert [
            e if isinstance(e, FrameError) else Frame(PROTOCOL_VERSION, e[0], e[1]) for e in raw
        ] == events


# -- a TLS handshake at the start of a stream (a TLS client on a plaintext port)

CLIENT_HELLO = bytes.fromhex("160301020001") + bytes(514)  # record, handshake, ClientHello...
TLS_ALERT = bytes.fromhex("15030300020246")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x16\x03\x01", True),
        (b"\x15\x03\x03", True),  # an alert
        (b"\x17\x03\x04", True),
        (b"\x16\x03\x05", False),  # no such version
        (b"\x18\x03\x01", False),  # no such record type
        (b"\x16\x03", False),  # too short to tell
        (b"\x00\x00\x00", False),
    ],
)
def test_looks_like_tls(head: bytes, expected: bool) -> None:
    assert looks_like_tls(head) is expected


@pytest.mark.parametrize("first", [len(CLIENT_HELLO), 6, 7, 64])
def test_a_tls_client_hello_is_one_fatal_tls_error(first: int) -> None:
    decoder = FrameDecoder()
    events = decoder.feed(CLIENT_HELLO[:first])
    assert len(events) == 1
    error = events[0]
    assert isinstance(error, FrameError)
    assert error.tls
    assert error.code == ErrorCode.ERR_HEADER_INVALID
    assert not error.keep_connection
    assert decoder.closed
    assert decoder.buffered == 0


def test_an_empty_first_feed_leaves_the_tls_check_to_the_first_bytes() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    (error,) = decoder.feed(CLIENT_HELLO)
    assert isinstance(error, FrameError)
    assert error.tls


def test_a_tls_alert_is_recognised_by_a_client_decoder() -> None:
    (error,) = FrameDecoder().feed(TLS_ALERT)
    assert isinstance(error, FrameError)
    assert error.tls


def test_only_the_first_feed_is_checked_for_tls() -> None:
    decoder = FrameDecoder()
    first = encode_frame(b'{"ok": 1}', 0)
    assert isinstance(decoder.feed(first)[0], Frame)
    events = decoder.feed(CLIENT_HELLO)  # later: an ordinary (too large) frame
    assert len(events) == 1
    assert isinstance(events[0], FrameError)
    assert not events[0].tls
    assert events[0].code == ErrorCode.ERR_PACKET_TOO_LARGE


def test_a_valid_frame_that_starts_like_tls_is_a_frame() -> None:
    # header_size=3: Content-Length 0x160301 (1,442,561) is in range, version
    # 22 and encoding 0 are valid: an AsyncAProto frame, though its first
    # three bytes are those of a TLS record.
    length = 0x160301
    payload = b'"' + b"x" * (length - 4) + b'"'
    data = length.to_bytes(3, "big") + bytes((PROTOCOL_VERSION, 0)) + payload
    assert looks_like_tls(data[:3])
    events = FrameDecoder(header_size=3, max_packet_size=2 * length).feed(data)
    assert len(events) == 1
    assert isinstance(events[0], Frame)


def test_a_first_feed_shorter_than_a_header_is_not_checked() -> None:
    decoder = FrameDecoder(header_size=8)
    assert decoder.feed(CLIENT_HELLO[:5]) == []  # a header split across feeds
    events = decoder.feed(CLIENT_HELLO[5:])
    assert events
    assert isinstance(events[0], FrameError)
    assert not events[0].tls


# -- at most ``limit`` events per feed


def _mixed_stream() -> bytes:
    good = encode_frame(b'{"a":1}', 0)
    bad_version = b"\x00\x00\x00\x05\x15\x00{ }"
    too_short = b"\x00\x00\x00\x03\x16\x00\x00"
    return good * 3 + bad_version + good + too_short + good * 2


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100])
@pytest.mark.parametrize("split", [None, 5, 13])
def test_a_limited_feed_keeps_the_rest_unread_and_goes_on(limit: int, split: int | None) -> None:
    stream = _mixed_stream()
    expected = outcomes(FrameDecoder().feed(stream))
    decoder = FrameDecoder()
    chunks = [stream] if split is None else [stream[:split], stream[split:]]
    got: list[Event] = []
    for chunk in chunks:
        events = decoder.feed(chunk, limit)
        while True:
            assert len(events) <= limit
            got.extend(events)
            if not decoder.pending:
                break
            assert decoder.buffered > 0
            assert not decoder.idle
            events = decoder.feed(b"", limit)
    assert outcomes(got) == expected
    assert decoder.idle
    assert decoder.buffered == 0


def test_a_limited_feed_joins_new_input_to_the_rest() -> None:
    frame = encode_frame(b'{"a":1}', 0)
    decoder = FrameDecoder()
    assert len(decoder.feed(frame * 3, 1)) == 1
    assert decoder.buffered == 2 * len(frame)
    assert len(decoder.feed(frame[:4], 10)) == 2  # the rest first, then the new bytes
    assert decoder.buffered == 4
    assert len(decoder.feed(frame[4:], 10)) == 1
