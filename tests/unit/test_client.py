"""The blocking and asyncio clients against a scripted server in a thread.

Each test starts a one-connection server on 127.0.0.1 (ephemeral port) whose
handler reads frames with :class:`FrameDecoder` and writes scripted bytes.
Every socket operation of the server is bounded by ``IO_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from asyncapy.client import AsyncClient, Client, ConnectionClosedError, NotConnectedError
from asyncapy.codecs import JSON, ZIPROTO, get_codec
from asyncapy.errors import DecodeError, ErrorCode, ProtocolError
from asyncapy.protocol import ByteOrder, Encoding, Frame, FrameDecoder, encode_frame

IO_TIMEOUT = 5.0
PAYLOAD: dict[str, Any] = {"test": 1, "name": "héllo", "items": [1, 2.5, None], "map": {"a": True}}
SEED_FRAME = bytes.fromhex("0000000d16007b2274657374223a20317d")  # {"test": 1}, JSON

Handler = Callable[[socket.socket], None]


class Server:
    """A server thread that accepts one connection and runs ``handler`` on it."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.errors: list[BaseException] = []
        self.handshake_errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(IO_TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            self.errors.append(exc)
            return
        with conn:
            conn.settimeout(IO_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is None:
                self._handle(conn)
                return
            try:
                tls_conn = self.ssl_context.wrap_socket(conn, server_side=True)
            except OSError as exc:  # ssl.SSLError included: the client refused us
                self.handshake_errors.append(exc)
                return
            with tls_conn:
                self._handle(tls_conn)

    def _handle(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.thread.join(IO_TIMEOUT + 1)
        self.listener.close()
        assert not self.thread.is_alive(), "the server thread did not finish"
        assert not self.errors, self.errors


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> Server:
        server = Server(handler, ssl_context)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


# --- server-side helpers ------------------------------------------------------


def read_frame(conn: socket.socket, decoder: FrameDecoder, pending: list[Frame]) -> Frame | None:
    """The next frame from ``conn``; None at end of stream."""
    for _ in range(10_000):
        if pending:
            return pending.pop(0)
        data = conn.recv(65536)
        if not data:
            return None
        for event in decoder.feed(data):
            assert isinstance(event, Frame), event
            pending.append(event)
    raise AssertionError("no frame in 10,000 reads")


def wait_for_eof(conn: socket.socket) -> None:
    """Read and drop bytes until the client closes."""
    for _ in range(10_000):
        if not conn.recv(65536):
            return
    raise AssertionError("the client never closed")


def echo(
    header_size: int = 4, byteorder: ByteOrder = "big", received: list[Frame] | None = None
) -> Handler:
    """Answer every frame with the same payload and encoding."""

    def handler(conn: socket.socket) -> None:
        decoder = FrameDecoder(header_size, byteorder)
        pending: list[Frame] = []
        for _ in range(100):
            frame = read_frame(conn, decoder, pending)
            if frame is None:
                return
            payload = bytes(frame.payload)
            if received is not None:
                received.append(Frame(frame.version, frame.encoding, payload))
            conn.sendall(
                encode_frame(payload, frame.encoding, header_size=header_size, byteorder=byteorder)
            )

    return handler


def reply(*writes: bytes, pause: float = 0.0, then_close: bool = False) -> Handler:
    """After one request frame, write ``writes`` one by one, then wait for EOF (or close)."""

    def handler(conn: socket.socket) -> None:
        assert read_frame(conn, FrameDecoder(), []) is not None
        for data in writes:
            conn.sendall(data)
            time.sleep(pause)
        if not then_close:
            wait_for_eof(conn)

    return handler


def json_frame(payload: dict[str, Any]) -> bytes:
    return encode_frame(JSON.encode(payload), Encoding.JSON)


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


# --- blocking client ------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "ziproto"])
def test_round_trip(serve: Callable[..., Server], encoding: str) -> None:
    received: list[Frame] = []
    server = serve(echo(received=received))
    codec = get_codec(encoding)
    with Client(tls=False, encoding=encoding, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        assert client.connected
        for _ in range(3):  # keep-alive: several requests on one connection
            client.send(PAYLOAD)
            assert client.receive() == PAYLOAD
        client.send({"raw": 1})
        assert client.receive_raw() == encode_frame(codec.encode({"raw": 1}), codec.encoding)
    assert not client.connected
    assert [frame.encoding for frame in received] == [codec.encoding] * 4
    assert codec.decode(received[0].payload) == PAYLOAD


def test_json_string_is_parsed_and_sent_in_the_client_encoding(
    serve: Callable[..., Server],
) -> None:
    received: list[Frame] = []
    server = serve(echo(received=received))
    with Client(tls=False, encoding="ziproto", timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send('{"test": 1, "list": [1, "two"]}')
        assert client.receive() == {"test": 1, "list": [1, "two"]}
    assert received == [
        Frame(22, Encoding.ZIPROTO, ZIPROTO.encode({"test": 1, "list": [1, "two"]}))
    ]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("not json", ValueError),
        ('{"open": 1', ValueError),
        ("[1, 2]", ValueError),
        ('"a string"', ValueError),
        ("42", ValueError),
        ("", ValueError),
        (42, TypeError),
        (b'{"a": 1}', TypeError),
        ({"bad": object()}, TypeError),
    ],
)
def test_send_rejects_what_is_not_a_map(
    serve: Callable[..., Server], payload: Any, error: type[Exception]
) -> None:
    server = serve(echo())
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        with pytest.raises(error):
            client.send(payload)
        client.send({"still": "usable"})  # nothing was written
        assert client.receive() == {"still": "usable"}


def test_receive_raw_returns_the_whole_frame(serve: Callable[..., Server]) -> None:
    server = serve(reply(SEED_FRAME))
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        assert client.receive_raw() == SEED_FRAME


def test_reply_written_one_byte_at_a_time(serve: Callable[..., Server]) -> None:
    server = serve(reply(*bytewise(json_frame(PAYLOAD)), pause=0.001))
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        assert client.receive() == PAYLOAD


def test_several_frames_in_one_write_are_kept_for_later_calls(
    serve: Callable[..., Server],
) -> None:
    third = encode_frame(ZIPROTO.encode({"n": 3}), Encoding.ZIPROTO)
    first_write = json_frame({"n": 1}) + SEED_FRAME + third[:5]
    server = serve(reply(first_write, third[5:], pause=0.05))
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        assert client.receive() == {"n": 1}
        assert client.receive_raw() == SEED_FRAME
        assert client.receive() == {"n": 3}  # decoded by its own Content-Encoding


@pytest.mark.parametrize("sent", [b"", SEED_FRAME[:6]], ids=["at-boundary", "mid-frame"])
def test_server_close_gives_empty_raw_frame(serve: Callable[..., Server], sent: bytes) -> None:
    server = serve(reply(sent, then_close=True))
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        assert client.receive_raw() == b""
        assert not client.connected
        with pytest.raises(NotConnectedError):
            client.receive_raw()


@pytest.mark.parametrize("sent", [b"", SEED_FRAME[:6]], ids=["at-boundary", "mid-frame"])
def test_server_close_makes_receive_raise(serve: Callable[..., Server], sent: bytes) -> None:
    server = serve(reply(sent, then_close=True))
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        with pytest.raises(ConnectionClosedError) as info:
            client.receive()
        assert isinstance(info.value, ConnectionError)
        assert not client.connected


def test_frames_before_the_close_are_still_delivered(serve: Callable[..., Server]) -> None:
    server = serve(reply(SEED_FRAME + SEED_FRAME, then_close=True))
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        assert client.receive() == {"test": 1}
        assert client.receive() == {"test": 1}
        with pytest.raises(ConnectionClosedError):
            client.receive()


def test_timeout_keeps_the_partial_frame(serve: Callable[..., Server]) -> None:
    go_on = threading.Event()

    def handler(conn: socket.socket) -> None:
        assert read_frame(conn, FrameDecoder(), []) is not None
        conn.sendall(SEED_FRAME[:7])
        assert go_on.wait(IO_TIMEOUT)
        conn.sendall(SEED_FRAME[7:])
        wait_for_eof(conn)

    server = serve(handler)
    with Client(tls=False, timeout=0.2) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            client.receive()
        assert time.monotonic() - start < 2
        assert client.connected
        go_on.set()
        assert client.receive_raw() == SEED_FRAME


@pytest.mark.parametrize(("header_size", "byteorder"), [(2, "little"), (1, "big"), (8, "little")])
def test_other_header_settings(
    serve: Callable[..., Server], header_size: int, byteorder: ByteOrder
) -> None:
    server = serve(echo(header_size, byteorder))
    with Client(byteorder, header_size, tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        raw = client.receive_raw()
        payload = JSON.encode({"test": 1})
        assert raw[:header_size] == (len(payload) + 2).to_bytes(header_size, byteorder)
        assert raw[header_size:] == b"\x16\x00" + payload
        client.send(PAYLOAD)
        assert client.receive() == PAYLOAD


def test_oversized_frame_raises_and_closes(serve: Callable[..., Server]) -> None:
    server = serve(reply(json_frame({"big": "x" * 100}), then_close=True))
    with Client(tls=False, timeout=IO_TIMEOUT, max_packet_size=64) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        with pytest.raises(ProtocolError) as info:
            client.receive_raw()
        assert info.value.code is ErrorCode.ERR_PACKET_TOO_LARGE
        assert not client.connected


def test_frame_with_bad_header_is_skipped(serve: Callable[..., Server]) -> None:
    bad = bytearray(SEED_FRAME)
    bad[4] = 21  # Protocol-Version
    server = serve(reply(bytes(bad) + SEED_FRAME))
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        with pytest.raises(ProtocolError) as info:
            client.receive()
        assert info.value.code is ErrorCode.ERR_HEADER_INVALID
        assert info.value.keep_connection
        assert client.connected
        assert client.receive() == {"test": 1}


def test_undecodable_payload_raises_and_keeps_the_connection(
    serve: Callable[..., Server],
) -> None:
    server = serve(reply(encode_frame(b"[1, 2]", Encoding.JSON) + SEED_FRAME))
    with Client(tls=False, timeout=IO_TIMEOUT) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        with pytest.raises(DecodeError):
            client.receive()
        assert client.receive() == {"test": 1}


def test_missing_cafile_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Client(cafile=tmp_path / "missing.pem")


def test_not_connected_and_idempotent_disconnect(serve: Callable[..., Server]) -> None:
    client = Client(tls=False, timeout=IO_TIMEOUT)
    assert not client.connected
    with pytest.raises(NotConnectedError):
        client.send({"a": 1})
    with pytest.raises(NotConnectedError):
        client.receive()
    client.disconnect()
    server = serve(echo())
    client.connect("127.0.0.1", server.port)
    with pytest.raises(RuntimeError):
        client.connect("127.0.0.1", server.port)
    client.disconnect()
    client.disconnect()
    assert not client.connected
    with pytest.raises(NotConnectedError):
        client.send({"a": 1})


def test_connection_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        Client(tls=False, timeout=IO_TIMEOUT).connect("127.0.0.1", port)


def test_defaults_and_properties() -> None:
    client = Client()
    assert (client.byteorder, client.header_size, client.encoding) == ("big", 4, Encoding.JSON)
    assert client.tls
    assert client.timeout == 60
    assert not client.connected
    assert Client(encoding=1, tls=False, timeout=None).encoding is Encoding.ZIPROTO


@pytest.mark.parametrize("cls", [Client, AsyncClient])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"encoding": "xml"},
        {"encoding": 2},
        {"header_size": 0},
        {"header_size": 9},
        {"byteorder": "middle"},
        {"timeout": 0},
        {"timeout": -1.5},
        {"max_packet_size": 4},
        {"tls": False, "cafile": "ca.pem"},
        {"tls": False, "verify": False},
        {"tls": False, "ssl_context": ssl.create_default_context()},
        {"tls": False, "server_hostname": "localhost"},
        {"cafile": "ca.pem", "verify": False},
        {"ssl_context": ssl.create_default_context(), "cafile": "ca.pem"},
        {"ssl_context": ssl.create_default_context(), "verify": False},
    ],
)
def test_bad_arguments(cls: type[Client | AsyncClient], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every message differs
        cls(**kwargs)


# --- TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def cafile(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def _tls_round_trip(port: int, **kwargs: Any) -> None:
    with Client(timeout=IO_TIMEOUT, **kwargs) as client:
        client.connect("127.0.0.1", port)
        client.send(PAYLOAD)
        assert client.receive() == PAYLOAD


def test_tls_verifies_with_cafile(
    serve: Callable[..., Server], server_tls: ssl.SSLContext, cafile: Path
) -> None:
    _tls_round_trip(serve(echo(), server_tls).port, cafile=cafile)
    _tls_round_trip(serve(echo(), server_tls).port, cafile=str(cafile), server_hostname="localhost")


def test_tls_with_ssl_context(
    serve: Callable[..., Server], server_tls: ssl.SSLContext, ca: trustme.CA
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    _tls_round_trip(serve(echo(), server_tls).port, ssl_context=context)


def test_tls_without_the_ca_fails(serve: Callable[..., Server], server_tls: ssl.SSLContext) -> None:
    server = serve(echo(), server_tls)
    client = Client(timeout=IO_TIMEOUT)
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect("127.0.0.1", server.port)
    assert not client.connected


def test_tls_wrong_host_name_fails(
    serve: Callable[..., Server], server_tls: ssl.SSLContext, cafile: Path
) -> None:
    server = serve(echo(), server_tls)
    client = Client(timeout=IO_TIMEOUT, cafile=cafile, server_hostname="example.com")
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect("127.0.0.1", server.port)


def test_tls_verify_false(serve: Callable[..., Server], server_tls: ssl.SSLContext) -> None:
    _tls_round_trip(serve(echo(), server_tls).port, verify=False)


def test_tls_server_close(
    serve: Callable[..., Server], server_tls: ssl.SSLContext, cafile: Path
) -> None:
    server = serve(reply(SEED_FRAME[:3], then_close=True), server_tls)
    with Client(timeout=IO_TIMEOUT, cafile=cafile) as client:
        client.connect("127.0.0.1", server.port)
        client.send({"test": 1})
        assert client.receive_raw() == b""


# --- asyncio client -----------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["json", "ziproto"])
def test_async_round_trip(serve: Callable[..., Server], encoding: str) -> None:
    received: list[Frame] = []
    server = serve(echo(received=received))

    async def main() -> None:
        async with AsyncClient(tls=False, encoding=encoding, timeout=IO_TIMEOUT) as client:
            await client.connect("127.0.0.1", server.port)
            assert client.connected
            await client.send(PAYLOAD)
            assert await client.receive() == PAYLOAD
            await client.send('{"test": 1}')
            assert await client.receive() == {"test": 1}
            with pytest.raises(ValueError):  # noqa: PT011
                await client.send("[1]")
        assert not client.connected

    run(main())
    assert [frame.encoding for frame in received] == [Encoding.parse(encoding)] * 2


def test_async_split_and_coalesced_frames(serve: Callable[..., Server]) -> None:
    third = encode_frame(ZIPROTO.encode({"n": 3}), Encoding.ZIPROTO)
    writes = [json_frame({"n": 1}) + SEED_FRAME + third[:5], *bytewise(third[5:])]
    server = serve(reply(*writes, pause=0.001))

    async def main() -> None:
        async with AsyncClient(tls=False, timeout=IO_TIMEOUT) as client:
            await client.connect("127.0.0.1", server.port)
            await client.send({"test": 1})
            assert await client.receive() == {"n": 1}
            assert await client.receive_raw() == SEED_FRAME
            assert await client.receive() == {"n": 3}

    run(main())


@pytest.mark.parametrize("sent", [b"", SEED_FRAME[:6]], ids=["at-boundary", "mid-frame"])
def test_async_server_close(serve: Callable[..., Server], sent: bytes) -> None:
    servers = [serve(reply(sent, then_close=True)) for _ in range(2)]

    async def main() -> None:
        async with AsyncClient(tls=False, timeout=IO_TIMEOUT, reconnect=False) as client:
            await client.connect("127.0.0.1", servers[0].port)
            await client.send({"test": 1})
            assert await client.receive_raw() == b""
            assert not client.connected
            await client.connect("127.0.0.1", servers[1].port)
            await client.send({"test": 1})
            with pytest.raises(ConnectionClosedError):
                await client.receive()
            with pytest.raises(NotConnectedError):
                await client.send({"test": 1})

    run(main())


def test_async_close_mid_frame_is_never_reconnected_by_default(
    serve: Callable[..., Server],
) -> None:
    server = serve(reply(SEED_FRAME[:6], then_close=True))

    async def main() -> None:
        async with AsyncClient(tls=False, timeout=IO_TIMEOUT) as client:
            await client.connect("127.0.0.1", server.port)
            await client.send({"test": 1})
            with pytest.raises(ConnectionClosedError):
                await client.receive()
            with pytest.raises(NotConnectedError):  # part of a reply was lost: the caller decides
                await client.send({"test": 1})
            assert client.reconnects == 0

    run(main())


def test_async_timeout_keeps_the_partial_frame(serve: Callable[..., Server]) -> None:
    go_on = threading.Event()

    def handler(conn: socket.socket) -> None:
        assert read_frame(conn, FrameDecoder(), []) is not None
        conn.sendall(SEED_FRAME[:7])
        assert go_on.wait(IO_TIMEOUT)
        conn.sendall(SEED_FRAME[7:])
        wait_for_eof(conn)

    server = serve(handler)

    async def main() -> None:
        async with AsyncClient(tls=False, timeout=0.2) as client:
            await client.connect("127.0.0.1", server.port)
            await client.send({"test": 1})
            with pytest.raises(TimeoutError):
                await client.receive()
            go_on.set()
            assert await client.receive_raw() == SEED_FRAME

    run(main())


def test_async_header_size_2_little_endian(serve: Callable[..., Server]) -> None:
    server = serve(echo(2, "little"))

    async def main() -> None:
        async with AsyncClient("little", 2, tls=False, timeout=IO_TIMEOUT) as client:
            await client.connect("127.0.0.1", server.port)
            await client.send({"test": 1})
            assert await client.receive_raw() == b"\x0c\x00\x16\x00" + JSON.encode({"test": 1})

    run(main())


def test_async_tls(serve: Callable[..., Server], server_tls: ssl.SSLContext, cafile: Path) -> None:
    good, unverified, refused = (serve(echo(), server_tls) for _ in range(3))

    async def round_trip(client: AsyncClient, port: int) -> None:
        async with client:
            await client.connect("127.0.0.1", port)
            await client.send(PAYLOAD)
            assert await client.receive() == PAYLOAD

    async def main() -> None:
        await round_trip(AsyncClient(timeout=IO_TIMEOUT, cafile=cafile), good.port)
        await round_trip(AsyncClient(timeout=IO_TIMEOUT, verify=False), unverified.port)
        client = AsyncClient(timeout=IO_TIMEOUT)
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.connect("127.0.0.1", refused.port)
        assert not client.connected

    run(main())


def test_async_not_connected() -> None:
    async def main() -> None:
        client = AsyncClient(tls=False)
        with pytest.raises(NotConnectedError):
            await client.send({"a": 1})
        with pytest.raises(NotConnectedError):
            await client.receive_raw()
        await client.disconnect()

    run(main())
