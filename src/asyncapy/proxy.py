"""The PROXY protocol, versions 1 and 2 (HAProxy's), without I/O.

Theory of operation
-------------------
A load balancer that speaks the PROXY protocol starts every connection it
opens to a server with one header that names the client it is relaying; the
AsyncAProto frames follow. :class:`ProxyHeaderDecoder` takes the first bytes
of such a stream, as they arrive, and gives the header once it is complete
(:meth:`~ProxyHeaderDecoder.feed`), with the bytes that followed it in
:attr:`~ProxyHeaderDecoder.rest`: the start of the frame stream.

- **Decided early.** Every byte is checked as it comes: a stream that cannot
  be either version's start (``"PROXY "`` for version 1, the 12-byte signature
  for version 2) is refused at its first wrong byte, not after a timeout.
- **Bounded.** A version 1 line is at most 107 bytes, CRLF included, as the
  specification says; a version 2 header at most ``16 + max_v2_length``
  bytes. The decoder never holds more than that, and its work is linear in
  the bytes fed, fed whole or one byte at a time.
- **Strict.** Addresses and ports are checked to the letter (dotted quads
  without leading zeros, IPv6 text, decimal ports without leading zeros up
  to 65535; version 2's lengths, commands, families, TLVs and, when one is
  present, the CRC-32C checksum). What does not check raises
  :class:`ProxyProtocolError`, the only error that escapes; the connection
  must then be closed, never trusted.
- **What it means.** ``LOCAL`` (version 2: the proxy's own health check),
  ``UNKNOWN`` (version 1) and the families that name no IP address (UNSPEC,
  UNIX) give a header whose ``source`` is None: the connection's own address
  stands.

:func:`encode_v1` and :func:`encode_v2` write headers, for tests and for
clients that stand in for a proxy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, Literal

from .errors import RemoteProtocolError

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderDecoder",
    "ProxyProtocolError",
    "encode_v1",
    "encode_v2",
]

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107
"""The longest version 1 line, ``\\r\\n`` included (the specification's figure)."""
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER: Final = 16  # signature, version and command, family, length
DEFAULT_MAX_V2_LENGTH: Final = 4096

_COMMANDS: Final = {0: "LOCAL", 1: "PROXY"}
# The family and transport bytes the specification defines (others are refused):
# UNSPEC; TCP and UDP over IPv4, over IPv6; UNIX stream and datagram.
_FAMILIES: Final = frozenset((0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32))
_ADDRESS_BYTES: Final = {1: 12, 2: 36, 3: 216}  # INET, INET6, UNIX
_PP2_TYPE_CRC32C: Final = 0x03
_PORT_DIGITS: Final = frozenset(b"0123456789")

Address = tuple[str, int]


class ProxyProtocolError(RemoteProtocolError):
    """The first bytes of a connection are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete PROXY protocol header.

    Attributes:
        version: 1 or 2.
        command: ``"PROXY"`` (relayed for a client) or ``"LOCAL"`` (the
            proxy's own connection, such as a health check; version 2 only).
        source: the client's ``(address, port)``; None when the header names
            no IP address (``LOCAL``, ``UNKNOWN``, UNSPEC or UNIX): the
            connection's own peer stands then.
        destination: the address the client connected to, or None likewise.
        tlvs: version 2's type-length-value fields, in order (``(type,
            value)``), the CRC-32C one included.
    """

    version: Literal[1, 2]
    command: Literal["PROXY", "LOCAL"]
    source: Address | None
    destination: Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()


class ProxyHeaderDecoder:
    """Reads the PROXY protocol header at the start of a stream.

    Args:
        max_v2_length: the largest version 2 length field (address block and
            TLVs) accepted, at most 65,535; past it the header is refused as
            soon as the length is read.

    Raises:
        ValueError: for a ``max_v2_length`` out of range.
    """

    def __init__(self, max_v2_length: int = DEFAULT_MAX_V2_LENGTH) -> None:
        if not 0 <= max_v2_length <= 0xFFFF:
            raise ValueError(f"max_v2_length must be 0 to 65535, not {max_v2_length}")
        self.max_v2_length = max_v2_length
        self._buffer = bytearray()
        self._scanned = 0  # version 1: bytes already searched for CR LF
        self.header: ProxyHeader | None = None
        """The header, once :meth:`feed` has returned it."""
        self.rest = b""
        """The bytes fed after the header (the start of the stream it precedes)."""

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Take the next bytes of the stream.

        Returns:
            The header once it is complete (then :attr:`rest` holds what
            followed it); None while more bytes are needed.

        Raises:
            ProxyProtocolError: the bytes cannot begin, or do not make, a valid
                header (the connection must be closed).
            RuntimeError: when fed again after the header was returned.
        """
        if self.header is not None:
            raise RuntimeError("the PROXY header is complete: feed the rest to the frame decoder")
        buffer = self._buffer
        buffer += data
        if buffer[:1] == b"P":
            return self._v1()
        if buffer[:1] == b"\r":
            return self._v2()
        if buffer:
            raise ProxyProtocolError("the connection does not start with a PROXY header")
        return None

    def _done(self, header: ProxyHeader, end: int) -> ProxyHeader:
        self.rest = bytes(self._buffer[end:])
        self._buffer = bytearray()
        self.header = header
        return header

    # -- version 1

    def _v1(self) -> ProxyHeader | None:
        buffer = self._buffer
        if not buffer.startswith(V1_PREFIX) and not V1_PREFIX.startswith(bytes(buffer[:6])):
            raise ProxyProtocolError("the connection does not start with a PROXY header")
        end = buffer.find(b"\r\n", max(self._scanned - 1, 0), V1_MAX_LENGTH)
        if end < 0:
            self._scanned = min(len(buffer), V1_MAX_LENGTH)
            if len(buffer) >= V1_MAX_LENGTH:
                raise ProxyProtocolError(f"PROXY v1: no CRLF in the first {V1_MAX_LENGTH} bytes")
            return None
        return self._done(_parse_v1(bytes(buffer[:end])), end + 2)

    # -- version 2

    def _v2(self) -> ProxyHeader | None:
        buffer = self._buffer
        head = bytes(buffer[:12])
        if not V2_SIGNATURE.startswith(head):
            raise ProxyProtocolError("the connection does not start with a PROXY header")
        if len(buffer) > 12:
            _check_v2_start(buffer)
        if len(buffer) < V2_HEADER:
            return None
        length = int.from_bytes(buffer[14:16], "big")
        if length > self.max_v2_length:
            raise ProxyProtocolError(
                f"PROXY v2: {length} bytes of addresses and TLVs, over max_v2_length"
                f" ({self.max_v2_length})"
            )
        end = V2_HEADER + length
        if len(buffer) < end:
            return None
        return self._done(_parse_v2(bytes(buffer[:end])), end)


def _parse_v1(line: bytes) -> ProxyHeader:
    """The header of a version 1 line (without its CRLF)."""
    if not line.isascii() or b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("PROXY v1: not a line of ASCII text")
    parts = line.split(b" ")
    if parts[1:2] == [b"UNKNOWN"]:  # the rest is to be ignored
        return ProxyHeader(1, "PROXY", None, None)
    if len(parts) != 6:
        raise ProxyProtocolError(f"PROXY v1: {len(parts)} fields, not 6: {line!r}")
    _, family, source, destination, source_port, destination_port = parts
    if family == b"TCP4":
        kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif family == b"TCP6":
        kind = ipaddress.IPv6Address
    else:
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {family!r}")
    return ProxyHeader(
        1,
        "PROXY",
        (_v1_address(source, kind), _v1_port(source_port)),
        (_v1_address(destination, kind), _v1_port(destination_port)),
    )


def _v1_address(text: bytes, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> str:
    try:
        address = kind(text.decode("ascii"))
    except ValueError:
        raise ProxyProtocolError(f"PROXY v1: {text!r} is not an {kind.__name__}") from None
    if kind is ipaddress.IPv6Address and "%" in text.decode("ascii"):
        raise ProxyProtocolError(f"PROXY v1: {text!r} carries a scope")
    return str(address)


def _v1_port(text: bytes) -> int:
    if (
        not text
        or len(text) > 5
        or not _PORT_DIGITS.issuperset(text)
        or (text[0] == 0x30 and len(text) > 1)
        or int(text) > 0xFFFF
    ):
        raise ProxyProtocolError(f"PROXY v1: {text!r} is not a port (0 to 65535)")
    return int(text)


def _check_v2_start(header: bytes | bytearray) -> None:
    """Refuse a version 2 header by its fixed bytes as soon as they have come."""
    if header[12] >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: version {header[12] >> 4}, not 2")
    if header[12] & 0x0F not in _COMMANDS:
        raise ProxyProtocolError(f"PROXY v2: unknown command {header[12] & 0x0F}")
    if len(header) > 13 and header[13] not in _FAMILIES:
        raise ProxyProtocolError(f"PROXY v2: unknown family and transport 0x{header[13]:02x}")


def _parse_v2(header: bytes) -> ProxyHeader:
    """The header of a whole version 2 header (signature included)."""
    _check_v2_start(header)
    command = _COMMANDS[header[12] & 0x0F]
    if command == "LOCAL":  # the proxy's own connection: its block is ignored
        return ProxyHeader(2, "LOCAL", None, None)
    family, transport = header[13] >> 4, header[13] & 0x0F
    body = header[V2_HEADER:]
    size = _ADDRESS_BYTES.get(family, 0)
    if len(body) < size:
        raise ProxyProtocolError(f"PROXY v2: {len(body)} bytes, too few for its addresses ({size})")
    tlvs = _tlvs(header, V2_HEADER + size)
    source = destination = None
    if family in (1, 2):
        if transport == 2:
            raise ProxyProtocolError("PROXY v2: a datagram transport on a stream connection")
        half = (size - 4) // 2
        kind = ipaddress.IPv4Address if family == 1 else ipaddress.IPv6Address
        source = (str(kind(body[:half])), int.from_bytes(body[2 * half : 2 * half + 2], "big"))
        destination = (
            str(kind(body[half : 2 * half])),
            int.from_bytes(body[2 * half + 2 : 2 * half + 4], "big"),
        )
    return ProxyHeader(2, "PROXY", source, destination, tlvs)


def _tlvs(header: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs of a version 2 header from ``start``; checks a CRC-32C one."""
    found: list[tuple[int, bytes]] = []
    crc_at = -1
    pos, end = start, len(header)
    while pos < end:
        if end - pos < 3:
            raise ProxyProtocolError("PROXY v2: a TLV cut short")
        kind, length = header[pos], int.from_bytes(header[pos + 1 : pos + 3], "big")
        if pos + 3 + length > end:
            raise ProxyProtocolError(f"PROXY v2: TLV 0x{kind:02x} runs past the header")
        if kind == _PP2_TYPE_CRC32C:
            if length != 4 or crc_at >= 0:
                raise ProxyProtocolError("PROXY v2: a CRC32C TLV that is not one 4-byte value")
            crc_at = pos + 3
        found.append((kind, header[pos + 3 : pos + 3 + length]))
        pos += 3 + length
    if crc_at >= 0:
        zeroed = header[:crc_at] + b"\x00\x00\x00\x00" + header[crc_at + 4 :]
        if crc32c(zeroed) != int.from_bytes(header[crc_at : crc_at + 4], "big"):
            raise ProxyProtocolError("PROXY v2: the CRC32C checksum does not match")
    return tuple(found)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as the PROXY protocol's checksum TLV holds it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- writing headers

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _endpoints(source: Address, destination: Address | None) -> tuple[_IP, _IP, int, int]:
    """Both addresses parsed, and both ports; the destination defaults to the
    unspecified address of the source's version, port 0.

    Raises:
        ValueError: for addresses that are not both IPv4 or both IPv6.
    """
    src = ipaddress.ip_address(source[0])
    if destination is None:
        destination = ("0.0.0.0" if src.version == 4 else "::", 0)
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of one IP version")
    return src, dst, source[1], destination[1]


def encode_v1(source: Address | None, destination: Address | None = None) -> bytes:
    """A version 1 header: ``PROXY TCP4|TCP6 ...``, or ``PROXY UNKNOWN`` without a source.

    Raises:
        ValueError: for addresses that are not both IPv4 or both IPv6.
    """
    if source is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst, src_port, dst_port = _endpoints(source, destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {src_port} {dst_port}\r\n".encode("ascii")


def encode_v2(
    source: Address | None,
    destination: Address | None = None,
    *,
    tlvs: tuple[tuple[int, bytes], ...] = (),
    checksum: bool = False,
) -> bytes:
    """A version 2 header: ``PROXY`` over TCP for ``source``, or ``LOCAL`` without one.

    Args:
        source: the client's ``(address, port)``; None for a ``LOCAL`` header.
        destination: the address the client connected to (the unspecified
            address and port 0 by default).
        tlvs: ``(type, value)`` fields to append.
        checksum: append a CRC-32C TLV that covers the whole header.

    Raises:
        ValueError: for addresses that are not both IPv4 or both IPv6.
    """
    extra = b"".join(bytes((kind,)) + len(value).to_bytes(2, "big") + value for kind, value in tlvs)
    if checksum:
        extra += bytes((_PP2_TYPE_CRC32C,)) + b"\x00\x04" + b"\x00\x00\x00\x00"
    if source is None:
        body, command_family = b"", b"\x20\x00"
    else:
        src, dst, src_port, dst_port = _endpoints(source, destination)
        command_family = b"\x21\x11" if src.version == 4 else b"\x21\x21"
        body = src.packed + dst.packed + src_port.to_bytes(2, "big") + dst_port.to_bytes(2, "big")
    header = V2_SIGNATURE + command_family + len(body + extra).to_bytes(2, "big") + body + extra
    if checksum:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header
