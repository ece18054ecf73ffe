"""Serving behind a load balancer: PROXY protocol v1/v2 headers over real loopback sockets.

The test client stands in for HAProxy: it writes a header
(``asyncapy.proxy.encode_v1``/``encode_v2``) then AsyncAProto frames, or the
TLS handshake (``send-proxy-v2`` in TCP mode puts the header first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from asyncapy import Filters, Server
from asyncapy.codecs import CODECS
from asyncapy.core import Client
from asyncapy.protocol import FrameDecoder, encode_frame
from asyncapy.proxy import encode_v1, encode_v2
from tests.conftest import Runner
from tests.helpers import serving

CLIENT = ("203.0.113.7", 40001)
OTHER = ("203.0.113.8", 40002)
CLIENT6 = ("2001:db8::7", 40003)
REQUEST = encode_frame(CODECS[0].encode({"who": 1}), 0)

Encoder = Callable[[tuple[str, int] | None], bytes]
ENCODERS: dict[str, Encoder] = {"v1": encode_v1, "v2": encode_v2}


def who_server(**settings: Any) -> Server:
    """A server that answers every request with the address and port it sees."""
    settings.setdefault("proxy_protocol", True)
    settings.setdefault("trusted_proxies", ["127.0.0.1"])
    server = Server(addr="127.0.0.1", port=0, **settings)

    @server.add_handler(Filters.Ip(["203.0.113.7", "2001:db8::/32"]))
    async def known(client: Client, packet: Any) -> None:
        await client.send({"address": client.address, "port": client.port, "known": True})

    @server.add_handler(group=1)
    async def anyone(client: Client, packet: Any) -> None:
        if not packet.get("known"):
            await client.send({"address": client.address, "port": client.port})

    return server


async def connect_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_reply(reader: asyncio.StreamReader, timeout: float = 5) -> dict[Any, Any] | None:
    """The next reply frame's payload, or None when the server closed first."""
    decoder = FrameDecoder(4, "big", 1 << 20)
    async with asyncio.timeout(timeout):
        while True:
            data = await reader.read(65536)
            if not data:
                return None
            events = decoder.feed(data)
            if events:
                frame = events[0]
                return CODECS[frame.encoding].decode(frame.payload)  # type: ignore[union-attr]


async def closed_without_reply(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(65536)
                if not data:
                    return True
                if data:
                    return False
    except ConnectionError:
        return True


async def send_chunks(writer: asyncio.StreamWriter, chunks: list[bytes]) -> None:
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.002)  # each chunk its own read


def cuts(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield f"at-{cut}", [data[:cut], data[cut:]]


# -- plain TCP


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_carried_address_is_the_clients(arun: Runner[Any], version: str) -> None:
    """Fed whole, byte by byte and cut at every offset; the request follows in the same read."""

    async def main() -> None:
        async with serving(who_server()) as server:
            header = ENCODERS[version](CLIENT)
            for name, chunks in cuts(header + REQUEST):
                reader, writer = await connect_raw(server.port)
                await send_chunks(writer, chunks)
                reply = await read_reply(reader)
                assert reply == {"address": CLIENT[0], "port": CLIENT[1], "known": True}, name
                writer.close()
            assert server.stats.proxy_refused == 0

    arun(main())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_ipv6_clients_and_the_header_then_frames_in_later_reads(
    arun: Runner[Any], version: str
) -> None:
    async def main() -> None:
        async with serving(who_server()) as server:
            reader, writer = await connect_raw(server.port)
            writer.write(ENCODERS[version](CLIENT6))
            await writer.drain()
            await asyncio.sleep(0.01)
            for _ in range(3):  # the session goes on: frames after the header
                writer.write(REQUEST)
                reply = await read_reply(reader)
                assert reply == {"address": CLIENT6[0], "port": CLIENT6[1], "known": True}
            writer.close()

    arun(main())


@pytest.mark.parametrize(
    "header", [encode_v2(None), encode_v1(None)], ids=["v2-LOCAL", "v1-UNKNOWN"]
)
def test_local_and_unknown_keep_the_proxys_address(arun: Runner[Any], header: bytes) -> None:
    """HAProxy's health checks: the connection is the proxy's own."""

    async def main() -> None:
        async with serving(who_server()) as server:
            reader, writer = await connect_raw(server.port)
            own_port = writer.get_extra_info("sockname")[1]
            writer.write(header + REQUEST)
            assert await read_reply(reader) == {"address": "127.0.0.1", "port": own_port}
            writer.close()

    arun(main())


def test_an_untrusted_source_is_closed_at_once(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        server = who_server(trusted_proxies=["10.0.0.0/8"], log_rate_limit=2)
        async with serving(server):
            for _ in range(5):
                reader, writer = await connect_raw(server.port)
                writer.write(encode_v2(CLIENT) + REQUEST)  # a spoofed source: never read
                started = time.monotonic()
                assert await closed_without_reply(reader)
                assert time.monotonic() - started < 1.0
                writer.close()
            await asyncio.sleep(0.05)
            assert server.stats.proxy_refused == 5
            assert server.stats.refused == 5
            assert server.stats.connections == 0
            assert server.metrics.snapshot()["refused"] == {"PROXY_UNTRUSTED": 5}

    with caplog.at_level(logging.WARNING, logger="asyncapy"):
        arun(main())
    lines = [
        r.getMessage() for r in caplog.records if "not one of trusted_proxies" in r.getMessage()
    ]
    assert 1 <= len(lines) <= 2  # rate-limited: log_rate_limit=2 per second


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        REQUEST,  # a client that skipped the proxy
        b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n",
        b"PROXY TCP4 203.0.113.007 127.0.0.1 1 80\r\n",
        b"PROXY " + b"X" * 120,
        encode_v2(CLIENT)[:12] + b"\x11" + encode_v2(CLIENT)[13:],  # version 1 in a v2 header
        encode_v2(CLIENT, checksum=True)[:-1] + b"\x00",  # a wrong CRC32C
    ],
    ids=["http", "bare-frame", "port", "leading-zero", "no-crlf", "v2-version", "v2-crc"],
)
def test_a_malformed_header_is_closed(arun: Runner[Any], data: bytes) -> None:
    async def main() -> None:
        async with serving(who_server()) as server:
            reader, writer = await connect_raw(server.port)
            writer.write(data + REQUEST)
            assert await closed_without_reply(reader)
            writer.close()
            await asyncio.sleep(0.02)
            assert server.stats.proxy_refused == 1
            assert server.metrics.snapshot()["refused"] == {"PROXY_MALFORMED": 1}
            assert server.stats.connections == 0

    arun(main())


def test_a_slow_header_is_closed_at_the_deadline_while_others_are_served(
    arun: Runner[Any],
) -> None:
    async def main() -> None:
        async with serving(who_server(proxy_header_timeout=0.5)) as server:
            slow_reader, slow_writer = await connect_raw(server.port)
            header = encode_v2(CLIENT)
            slow_writer.write(header[:10])
            started = time.monotonic()
            for _ in range(5):  # others are served meanwhile, at once
                reader, writer = await connect_raw(server.port)
                writer.write(encode_v1(OTHER) + REQUEST)
                reply = await read_reply(reader, timeout=0.4)
                assert reply == {"address": OTHER[0], "port": OTHER[1]}
                writer.close()
            assert await closed_without_reply(slow_reader, timeout=3)
            elapsed = time.monotonic() - started
            assert 0.45 <= elapsed < 1.5
            slow_writer.close()
            await asyncio.sleep(0.02)
            assert server.metrics.snapshot()["refused"] == {"PROXY_TIMEOUT": 1}
            assert server.stats.connections == 5

    arun(main())


@pytest.mark.parametrize(
    ("finish_after", "served"),
    [(0.1, True), (0.3, True), (0.7, False), (2.0, False)],
    ids=["well-before", "before", "after", "far-after"],
)
def test_proxy_header_timeout_boundaries(
    arun: Runner[Any], finish_after: float, served: bool
) -> None:
    """proxy_header_timeout=0.5: the header's last byte before it, and after it."""

    async def main() -> None:
        async with serving(who_server(proxy_header_timeout=0.5)) as server:
            reader, writer = await connect_raw(server.port)
            header = encode_v1(CLIENT)
            writer.write(header[:-1])
            await asyncio.sleep(finish_after)
            with_contextlib_suppress_write(writer, header[-1:] + REQUEST)
            if served:
                reply = await read_reply(reader)
                assert reply is not None
                assert reply["address"] == CLIENT[0]
            else:
                assert await closed_without_reply(reader)
                assert server.stats.proxy_refused == 1
            writer.close()

    arun(main())


def with_contextlib_suppress_write(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write, ignoring a connection the server closed already."""
    with contextlib.suppress(ConnectionError, RuntimeError):
        writer.write(data)


def test_session_limit_counts_the_carried_address(arun: Runner[Any]) -> None:
    """session_limit=2: limit-1 and limit served, limit+1 refused, another client served."""

    async def main() -> None:
        async with serving(who_server(session_limit=2)) as server:
            held = []
            for _ in range(2):
                reader, writer = await connect_raw(server.port)
                writer.write(encode_v2(CLIENT) + REQUEST)
                assert (await read_reply(reader) or {}).get("address") == CLIENT[0]
                held.append(writer)
            reader, writer = await connect_raw(server.port)
            writer.write(encode_v2(CLIENT) + REQUEST)
            assert await read_reply(reader) == {
                "status": "failure",
                "error": "ERR_SESSION_LIMIT_REACHED",
            }
            writer.close()
            for _ in range(2):  # the same proxy, another client: not limited by the first
                reader, writer = await connect_raw(server.port)
                writer.write(encode_v2(OTHER) + REQUEST)
                assert (await read_reply(reader) or {}).get("address") == OTHER[0]
                held.append(writer)
            assert set(server._state.by_address) == {CLIENT[0], OTHER[0]}  # type: ignore[union-attr]
            for writer in held:
                writer.close()

    arun(main())


def test_max_connections_bounds_pending_headers(arun: Runner[Any]) -> None:
    """Connections whose header has not come count toward max_connections."""

    async def main() -> None:
        async with serving(who_server(max_connections=3, proxy_header_timeout=2)) as server:
            pending = []
            for _ in range(3):  # limit - ... limit: held, header unfinished
                reader, writer = await connect_raw(server.port)
                writer.write(b"PROXY TCP4 ")
                pending.append((reader, writer))
            await asyncio.sleep(0.05)
            assert server._state.handshaking == 3  # type: ignore[union-attr]
            reader, writer = await connect_raw(server.port)  # limit + 1
            assert await closed_without_reply(reader, timeout=1)
            writer.close()
            assert server.metrics.snapshot()["refused"] == {"SERVER_BUSY": 1}
            for _, pending_writer in pending:
                pending_writer.close()
            await asyncio.sleep(0.05)
            reader, writer = await connect_raw(server.port)  # room again
            writer.write(encode_v1(CLIENT) + REQUEST)
            assert (await read_reply(reader) or {}).get("address") == CLIENT[0]
            writer.close()

    arun(main())


def test_the_access_log_and_session_lines_name_the_client(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with serving(who_server(access_log=True)) as server:
            reader, writer = await connect_raw(server.port)
            writer.write(encode_v2(CLIENT) + REQUEST)
            assert await read_reply(reader) is not None
            writer.close()
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.INFO, logger="asyncapy"):
        arun(main())
    access = [r for r in caplog.records if r.name == "asyncapy.access"]
    assert access
    assert getattr(access[0], "peer", None) == "203.0.113.7:40001"
    started = [r.getMessage() for r in caplog.records if "New session started" in r.getMessage()]
    assert started
    assert "peer 203.0.113.7:40001" in started[0]


def test_without_proxy_protocol_a_header_is_just_bad_bytes(arun: Runner[Any]) -> None:
    async def main() -> None:
        async with serving(who_server(proxy_protocol=False)) as server:
            reader, writer = await connect_raw(server.port)
            writer.write(REQUEST)
            assert (await read_reply(reader) or {}).get("address") == "127.0.0.1"
            writer.close()

    arun(main())


# -- TLS: the header comes before the handshake


@pytest.fixture(scope="module")
def tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


class BlockingTLS:
    """TLS over a connected socket through memory BIOs (no SSLSocket to leak on failure)."""

    def __init__(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        self.raw = raw
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self._call(self.tls.do_handshake)

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending:
            self.raw.sendall(pending)

    def _call(self, step: Callable[[], Any]) -> Any:
        for _ in range(10_000):  # each pass reads >= 1 byte or ends
            try:
                result = step()
            except ssl.SSLWantReadError:
                self._flush()
                data = self.raw.recv(65536)
                if not data:
                    raise ConnectionResetError("the server closed the connection") from None
                self.incoming.write(data)
                continue
            self._flush()
            return result
        raise AssertionError("TLS did not progress")

    def send(self, data: bytes) -> None:
        self._call(lambda: self.tls.write(data))

    def recv(self) -> bytes:
        try:
            return bytes(self._call(lambda: self.tls.read(65536)))
        except (ssl.SSLZeroReturnError, ConnectionResetError):
            return b""


def blocking_tls_request(
    port: int, chunks: list[bytes], context: ssl.SSLContext
) -> dict[Any, Any] | None:
    """Send the header ``chunks`` on a raw socket, then TLS, then one request; its reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        for chunk in chunks:
            raw.sendall(chunk)
            time.sleep(0.002)
        tls = BlockingTLS(raw, context)
        tls.send(REQUEST)
        decoder = FrameDecoder(4, "big", 1 << 20)
        while True:
            data = tls.recv()
            if not data:
                return None
            events = decoder.feed(data)
            if events:
                frame = events[0]
                return CODECS[frame.encoding].decode(frame.payload)  # type: ignore[union-attr]


async def tls_request(
    port: int, chunks: list[bytes], context: ssl.SSLContext
) -> dict[Any, Any] | None:
    """:func:`blocking_tls_request` in a thread (the server runs on this loop)."""
    return await asyncio.to_thread(blocking_tls_request, port, chunks, context)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_tls_after_the_header(
    arun: Runner[Any], tls_pair: tuple[ssl.SSLContext, ssl.SSLContext], version: str
) -> None:
    server_context, client_context = tls_pair

    async def main() -> None:
        async with serving(who_server(ssl_context=server_context)) as server:
            header = ENCODERS[version](CLIENT)
            for name, chunks in cuts(header):
                reply = await tls_request(server.port, chunks, client_context)
                assert reply == {"address": CLIENT[0], "port": CLIENT[1], "known": True}, name
            assert server.stats.tls_handshake_failures == 0

    arun(main())


def test_tls_untrusted_and_malformed_are_closed(
    arun: Runner[Any], tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_pair

    async def main() -> None:
        server = who_server(ssl_context=server_context, trusted_proxies=["127.0.0.1"])
        async with serving(server):
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                # a TLS client that skipped the proxy: its ClientHello is no header
                await tls_request(server.port, [], client_context)
            assert server.metrics.snapshot()["refused"] == {"PROXY_MALFORMED": 1}
        untrusted = who_server(ssl_context=server_context, trusted_proxies=["10.0.0.0/8"])
        async with serving(untrusted):
            with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                await tls_request(untrusted.port, [encode_v2(CLIENT)], client_context)
            assert untrusted.metrics.snapshot()["refused"] == {"PROXY_UNTRUSTED": 1}

    arun(main())


def test_tls_session_limit_counts_the_carried_address(
    arun: Runner[Any], tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_pair

    def hold(port: int) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        raw.sendall(encode_v2(CLIENT))
        tls = BlockingTLS(raw, client_context)
        tls.send(REQUEST)
        assert tls.recv()  # its reply: the session is open
        return raw

    async def main() -> None:
        server = who_server(ssl_context=server_context, session_limit=1)
        async with serving(server):
            held = await asyncio.to_thread(hold, server.port)
            try:
                with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
                    await tls_request(server.port, [encode_v2(CLIENT)], client_context)
                assert await tls_request(server.port, [encode_v2(OTHER)], client_context) == {
                    "address": OTHER[0],
                    "port": OTHER[1],
                }
                assert server.metrics.snapshot()["refused"] == {"ERR_SESSION_LIMIT_REACHED": 1}
            finally:
                held.close()

    arun(main())
