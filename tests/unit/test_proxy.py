"""The PROXY protocol decoder (asyncapy.proxy): both versions, whole, split, malformed, limits."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncapy.errors import RemoteProtocolError
from asyncapy.proxy import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderDecoder,
    ProxyProtocolError,
    crc32c,
    encode_v1,
    encode_v2,
)

FRAME = b"\x00\x00\x00\x0d\x16\x00" + b'{"test": 1}'


def decode_whole(data: bytes, **kwargs: int) -> tuple[ProxyHeader | None, bytes]:
    decoder = ProxyHeaderDecoder(**kwargs)
    return decoder.feed(data), decoder.rest


def decode_split(data: bytes, cut: int, **kwargs: int) -> tuple[ProxyHeader | None, bytes]:
    """Feed ``data[:cut]`` then ``data[cut:]`` (the second feed only if needed)."""
    decoder = ProxyHeaderDecoder(**kwargs)
    header = decoder.feed(data[:cut])
    if header is not None:  # complete in the first part: the second is all rest
        return header, decoder.rest + data[cut:]
    return decoder.feed(data[cut:]), decoder.rest


def decode_bytewise(data: bytes, **kwargs: int) -> tuple[ProxyHeader | None, bytes]:
    decoder = ProxyHeaderDecoder(**kwargs)
    for index in range(len(data)):
        header = decoder.feed(data[index : index + 1])
        if header is not None:
            return header, decoder.rest + data[index + 1 :]
    return None, b""


def every_way(data: bytes, **kwargs: int) -> ProxyHeader:
    """Decode ``data`` whole, byte by byte and split at every offset: one answer, and the rest."""
    header, rest = decode_whole(data, **kwargs)
    assert header is not None
    assert decode_bytewise(data, **kwargs) == (header, rest)
    for cut in range(len(data) + 1):
        assert decode_split(data, cut, **kwargs) == (header, rest), cut
    return header


def refused_every_way(data: bytes, match: str, **kwargs: int) -> None:
    """``data`` is refused whole, byte by byte, and split at every offset."""
    with pytest.raises(ProxyProtocolError, match=match):
        decode_whole(data, **kwargs)
    with pytest.raises(ProxyProtocolError, match=match):
        decode_bytewise(data, **kwargs)
    for cut in range(len(data) + 1):
        with pytest.raises(ProxyProtocolError, match=match):
            decode_split(data, cut, **kwargs)


# -- version 1


def test_a_tcp4_line_gives_both_addresses_and_leaves_the_frames() -> None:
    data = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 1500\r\n" + FRAME
    header = every_way(data)
    assert header == ProxyHeader(1, "PROXY", ("192.0.2.7", 56324), ("198.51.100.1", 1500))
    assert decode_whole(data)[1] == FRAME


def test_a_tcp6_line_gives_the_addresses_in_their_short_form() -> None:
    line = b"PROXY TCP6 2001:db8:0:0:0:0:0:1 ::ffff:192.0.2.1 65535 0\r\n"
    header = every_way(line + FRAME)
    assert header.source == ("2001:db8::1", 65535)
    # (::ffff:c000:201 up to 3.12; 3.13's ipaddress writes mapped IPv4 dotted)
    assert header.destination == (str(ipaddress.IPv6Address("::ffff:192.0.2.1")), 0)


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 whatever 1 2\r\n"])
def test_unknown_names_no_address_and_the_rest_of_its_line_is_ignored(line: bytes) -> None:
    header = every_way(line + FRAME)
    assert header == ProxyHeader(1, "PROXY", None, None)


def test_the_longest_tcp6_line_fits_in_107_bytes_and_is_accepted() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 104 <= V1_MAX_LENGTH
    assert every_way(line).source == (full, 65535)


@pytest.mark.parametrize(
    ("length", "ok"),
    [(V1_MAX_LENGTH - 1, True), (V1_MAX_LENGTH, True), (V1_MAX_LENGTH + 1, False), (4096, False)],
)
def test_a_line_is_at_most_107_bytes(length: int, ok: bool) -> None:
    prefix = b"PROXY UNKNOWN "
    line = prefix + b"x" * (length - len(prefix) - 2) + b"\r\n"
    assert len(line) == length
    if ok:
        assert every_way(line + FRAME).source is None
    else:
        refused_every_way(line, "no CRLF in the first 107 bytes")


def test_a_long_line_is_refused_at_its_107th_byte_not_later() -> None:
    decoder = ProxyHeaderDecoder()
    assert decoder.feed(b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 15)) is None
    with pytest.raises(ProxyProtocolError):
        decoder.feed(b"x")


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "5 fields, not 6"),
        (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "7 fields"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "7 fields"),
        (b"PROXY TCP4 010.2.3.4 5.6.7.8 1 2\r\n", "not an IPv4Address"),
        (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "not an IPv4Address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4Address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6Address"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "carries a scope"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 999999\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa1\r\n", "not a line of ASCII"),
        (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", "not a line of ASCII"),
        (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "not a line of ASCII"),
    ],
)
def test_a_malformed_line_is_refused(line: bytes, match: str) -> None:
    refused_every_way(line + FRAME, match)


@pytest.mark.parametrize(
    ("start", "bad_at"),
    [(b"{}", 1), (FRAME, 1), (b"GET / HTTP/1.1\r\n", 1), (b"PRXY", 3), (b"PROXY\r\n", 6)],
)
def test_a_stream_that_is_no_proxy_header_is_refused_at_its_first_wrong_byte(
    start: bytes, bad_at: int
) -> None:
    decoder = ProxyHeaderDecoder()
    for byte in start[: bad_at - 1]:
        assert decoder.feed(bytes((byte,))) is None
    with pytest.raises(ProxyProtocolError, match="does not start with a PROXY header"):
        decoder.feed(start[bad_at - 1 : bad_at])


def test_the_error_is_a_remote_protocol_error() -> None:
    assert issubclass(ProxyProtocolError, RemoteProtocolError)


def test_nothing_fed_is_not_an_answer_yet() -> None:
    decoder = ProxyHeaderDecoder()
    assert decoder.feed(b"") is None
    assert decoder.feed(b"PRO") is None
    assert decoder.feed(b"") is None


def test_feeding_after_the_header_is_a_bug_of_the_caller() -> None:
    decoder = ProxyHeaderDecoder()
    assert decoder.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(RuntimeError):
        decoder.feed(FRAME)


# -- version 2


def test_a_v2_ipv4_header_gives_both_addresses_and_leaves_the_frames() -> None:
    data = encode_v2(("192.0.2.7", 56324), ("198.51.100.1", 1500)) + FRAME
    assert data[:12] == V2_SIGNATURE
    header = every_way(data)
    assert header == ProxyHeader(2, "PROXY", ("192.0.2.7", 56324), ("198.51.100.1", 1500))
    assert decode_whole(data)[1] == FRAME


def test_a_v2_ipv6_header_with_tlvs_and_a_checksum() -> None:
    tlvs = ((0x01, b"h2"), (0x02, b"api.example"), (0x05, b"\x00" * 16))
    data = encode_v2(("2001:db8::7", 1), ("2001:db8::1", 2), tlvs=tlvs, checksum=True) + FRAME
    header = every_way(data)
    assert header.source == ("2001:db8::7", 1)
    assert header.destination == ("2001:db8::1", 2)
    assert header.tlvs[:3] == tlvs
    assert header.tlvs[3][0] == 0x03


def test_a_checksum_that_does_not_match_is_refused() -> None:
    data = bytearray(encode_v2(("192.0.2.7", 1), checksum=True))
    data[-1] ^= 0x01
    refused_every_way(bytes(data) + FRAME, "CRC32C checksum does not match")
    data = bytearray(encode_v2(("192.0.2.7", 1), checksum=True))
    data[17] ^= 0x01  # an address byte: the checksum covers the whole header
    refused_every_way(bytes(data) + FRAME, "CRC32C checksum does not match")


def test_crc32c_is_castagnolis() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def test_local_is_the_proxys_own_connection_and_names_no_address() -> None:
    header = every_way(encode_v2(None) + FRAME)
    assert header == ProxyHeader(2, "LOCAL", None, None)
    # LOCAL with an address block: the block is ignored, whatever it holds.
    local = V2_SIGNATURE + b"\x20\x11\x00\x0c" + b"\xff" * 12
    assert every_way(local + FRAME) == ProxyHeader(2, "LOCAL", None, None)


@pytest.mark.parametrize("family", [0x00, 0x31, 0x32])
def test_proxy_over_unspec_or_unix_names_no_ip_address(family: int) -> None:
    size = 216 if family >> 4 == 3 else 0
    data = V2_SIGNATURE + bytes((0x21, family)) + size.to_bytes(2, "big") + b"\x00" * size
    assert every_way(data + FRAME) == ProxyHeader(2, "PROXY", None, None)


def v2(ver_cmd: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes((ver_cmd, family)) + len(body).to_bytes(2, "big") + body


IPV4_BODY = bytes(12)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (v2(0x11, 0x11, IPV4_BODY), "version 1, not 2"),
        (v2(0x31, 0x11, IPV4_BODY), "version 3, not 2"),
        (v2(0x22, 0x11, IPV4_BODY), "unknown command 2"),
        (v2(0x21, 0x13, IPV4_BODY), "unknown family and transport 0x13"),
        (v2(0x21, 0x41, IPV4_BODY), "unknown family and transport 0x41"),
        (v2(0x21, 0x10, IPV4_BODY), "unknown family and transport 0x10"),
        (v2(0x21, 0x12, IPV4_BODY), "a datagram transport"),
        (v2(0x21, 0x11, bytes(11)), "too few for its addresses"),
        (v2(0x21, 0x21, bytes(35)), "too few for its addresses"),
        (v2(0x21, 0x11, IPV4_BODY + b"\x01\x00"), "a TLV cut short"),
        (v2(0x21, 0x11, IPV4_BODY + b"\x01\x00\x05abc"), "runs past the header"),
        (v2(0x21, 0x11, IPV4_BODY + b"\x03\x00\x02ab"), "not one 4-byte value"),
    ],
)
def test_a_malformed_v2_header_is_refused(data: bytes, match: str) -> None:
    refused_every_way(data + FRAME, match)


def test_a_wrong_version_is_refused_before_the_rest_arrives() -> None:
    decoder = ProxyHeaderDecoder()
    assert decoder.feed(V2_SIGNATURE) is None
    with pytest.raises(ProxyProtocolError, match="version 1, not 2"):
        decoder.feed(b"\x11")


def test_a_signature_that_goes_wrong_is_refused_at_that_byte() -> None:
    decoder = ProxyHeaderDecoder()
    assert decoder.feed(V2_SIGNATURE[:5]) is None
    with pytest.raises(ProxyProtocolError, match="does not start with a PROXY header"):
        decoder.feed(b"X")


@pytest.mark.parametrize(("extra", "ok"), [(-1, True), (0, True), (1, False), (60000, False)])
def test_max_v2_length_bounds_the_header(extra: int, ok: bool) -> None:
    limit = 64
    body_size = limit + extra  # the address block (12) and one TLV take it all
    tlv = b"\x04" + (body_size - 12 - 3).to_bytes(2, "big") + b"\x00" * (body_size - 12 - 3)
    data = v2(0x21, 0x11, bytes(12) + tlv) + FRAME
    if ok:
        assert every_way(data, max_v2_length=limit).tlvs == ((0x04, tlv[3:]),)
    else:
        refused_every_way(data, "over max_v2_length", max_v2_length=limit)


def test_an_oversized_length_is_refused_as_soon_as_it_is_read() -> None:
    decoder = ProxyHeaderDecoder(max_v2_length=100)
    with pytest.raises(ProxyProtocolError, match="65535 bytes of addresses and TLVs"):
        decoder.feed(V2_SIGNATURE + b"\x21\x11\xff\xff")


@pytest.mark.parametrize("value", [-1, 65536])
def test_max_v2_length_out_of_range_is_a_value_error(value: int) -> None:
    with pytest.raises(ValueError, match="max_v2_length"):
        ProxyHeaderDecoder(max_v2_length=value)


# -- properties

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 0xFFFF)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)),
    st.tuples(ports, ports),
    st.booleans(),
    st.binary(max_size=40),
    st.integers(0, 200),
)
def test_headers_round_trip_whatever_the_split(
    addresses: tuple[str, str], port_pair: tuple[int, int], version2: bool, rest: bytes, cut: int
) -> None:
    source, destination = (addresses[0], port_pair[0]), (addresses[1], port_pair[1])
    encode = encode_v2 if version2 else encode_v1
    data = encode(source, destination) + rest
    header, after = decode_split(data, min(cut, len(data)))
    assert header is not None
    assert header.source == (str(ipaddress.ip_address(source[0])), source[1])
    assert header.destination == (str(ipaddress.ip_address(destination[0])), destination[1])
    assert after == rest


@given(st.binary(max_size=300), st.integers(0, 300))
def test_any_bytes_give_a_header_more_to_read_or_proxy_protocol_error(
    data: bytes, cut: int
) -> None:
    with contextlib.suppress(ProxyProtocolError):
        decode_split(data, min(cut, len(data)))


@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=300))
def test_bytes_after_a_valid_start_give_the_same_answer_split_anywhere(
    start: bytes, tail: bytes
) -> None:
    data = start + tail
    try:
        expected: object = decode_whole(data)
    except ProxyProtocolError as exc:
        expected = type(exc)
    for cut in (1, len(start), len(data) // 2, len(data) - 1):
        try:
            got: object = decode_split(data, cut)
        except ProxyProtocolError as exc:
            got = type(exc)
        assert got == expected
