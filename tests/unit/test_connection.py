"""The connection Protocol against a mock transport: batching, back-pressure, order."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import pytest

from asyncapy import Packet, Server
from asyncapy._connection import Connection, ServerState
from asyncapy.codecs import JSON
from asyncapy.core import Client
from asyncapy.protocol import Frame, FrameDecoder, encode_frame
from tests.conftest import Runner


class MockTransport:
    """Just enough of asyncio.Transport, recording what the connection does."""

    def __init__(self, peer: Any = ("127.0.0.1", 40000)) -> None:
        self.peer = peer
        self.writes: list[bytes] = []
        self.write_calls = 0
        self.closed = False
        self.eof_written = False
        self.unsent = 0  # what the kernel would not take (get_write_buffer_size)
        self.aborted = False
        self.reading = True
        self.high_water: int | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high_water = high

    @property
    def finished(self) -> bool:
        """Closed, or closing with a FIN sent (a lingering close)."""
        return self.closed or self.eof_written

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def write_eof(self) -> None:
        assert not self.finished, "write_eof after close"
        self.eof_written = True

    def write(self, data: bytes) -> None:
        assert not self.finished, "write after close"
        self.write_calls += 1
        self.writes.append(bytes(data))

    def writelines(self, lines: list[bytes]) -> None:
        assert not self.finished, "write after close"
        self.write_calls += 1
        self.writes.append(b"".join(lines))

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def replies(self) -> list[dict[Any, Any]]:
        decoder = FrameDecoder()
        events = decoder.feed(b"".join(self.writes))
        return [JSON.decode(e.payload) for e in events if isinstance(e, Frame)]


_STATES: weakref.WeakKeyDictionary[Server, ServerState] = weakref.WeakKeyDictionary()


def frame(payload: dict[str, Any]) -> bytes:
    return encode_frame(JSON.encode(payload), 0)


def connect(
    server: Server, transport: MockTransport | None = None
) -> tuple[Connection, MockTransport]:
    state = _STATES.get(server)
    if state is None:
        state = _STATES[server] = server._new_state()
    conn = server._protocol_factory(state)()
    transport = transport or MockTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def test_a_pipelined_burst_is_answered_with_one_write(arun: Runner[Any]) -> None:
    server = Server(port=0)

    @server.add_handler()
    async def echo(client: Client, packet: Packet) -> None:
        await client.send(packet)

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(b"".join(frame({"i": i}) for i in range(16)))
        assert transport.write_calls == 1
        assert transport.replies() == [{"i": i} for i in range(16)]
        conn.connection_lost(None)

    arun(main())


def test_a_handler_that_never_suspends_runs_without_a_task(arun: Runner[Any]) -> None:
    server = Server(port=0)

    @server.add_handler()
    async def echo(client: Client, packet: Packet) -> None:
        await client.send(packet)

    async def main() -> None:
        conn, transport = connect(server)
        before = len(asyncio.all_tasks())
        conn.data_received(frame({"a": 1}))
        assert transport.replies() == [{"a": 1}]  # answered synchronously
        assert not conn.busy
        assert len(asyncio.all_tasks()) == before
        conn.connection_lost(None)

    arun(main())


def test_a_suspending_handler_keeps_later_frames_in_order(arun: Runner[Any]) -> None:
    server = Server(port=0)
    gate = asyncio.Event()

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        if packet["i"] == 0:
            await gate.wait()
        await client.send(packet)

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(b"".join(frame({"i": i}) for i in range(3)))
        assert transport.replies() == []
        assert conn.busy
        gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert transport.replies() == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert not conn.busy
        conn.connection_lost(None)

    arun(main())


def test_reading_pauses_at_max_pending_and_resumes(arun: Runner[Any]) -> None:
    server = Server(port=0, max_pending=4)
    gate = asyncio.Event()

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        await gate.wait()
        await client.send(packet)

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(b"".join(frame({"i": i}) for i in range(3)))
        assert transport.reading  # 1 running + 2 waiting < 4
        conn.data_received(b"".join(frame({"i": i}) for i in range(3, 6)))
        assert not transport.reading  # 5 waiting >= 4
        gate.set()
        for _ in range(50):
            await asyncio.sleep(0)
        assert transport.reading
        assert [r["i"] for r in transport.replies()] == list(range(6))
        conn.connection_lost(None)

    arun(main())


def test_pause_writing_holds_handling_until_resume(arun: Runner[Any]) -> None:
    server = Server(port=0)
    handled: list[int] = []

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        handled.append(packet["i"])
        await client.send(packet)

    async def main() -> None:
        conn, transport = connect(server)
        conn.pause_writing()
        assert not transport.reading
        conn.data_received(b"".join(frame({"i": i}) for i in range(3)))
        assert handled == []
        conn.resume_writing()
        assert handled == [0, 1, 2]
        assert transport.reading
        assert [r["i"] for r in transport.replies()] == [0, 1, 2]
        conn.connection_lost(None)

    arun(main())


def test_await_send_waits_while_the_peer_does_not_read(arun: Runner[Any]) -> None:
    server = Server(port=0)
    progress: list[str] = []

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        progress.append("first send")
        conns[0].pause_writing()  # as the transport would when its buffer fills
        await client.send({"part": 1})
        progress.append("second send")
        await client.send({"part": 2})

    async def main() -> None:
        conn, transport = connect(server)
        conns.append(conn)
        conn.data_received(frame({"go": True}))
        await asyncio.sleep(0)
        assert progress == ["first send"]
        conn.resume_writing()
        for _ in range(10):
            await asyncio.sleep(0)
        assert progress == ["first send", "second send"]
        assert transport.replies() == [{"part": 1}, {"part": 2}]
        conn.connection_lost(None)

    conns: list[Connection] = []
    arun(main())


def test_a_fatal_error_writes_its_reply_then_closes(arun: Runner[Any]) -> None:
    server = Server(port=0, max_packet_size=100)

    @server.add_handler()
    async def echo(client: Client, packet: Packet) -> None:
        await client.send(packet)

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(
            frame({"a": 1}) + (101).to_bytes(4, "big") + b"\x16\x00" + frame({"b": 2})
        )
        assert transport.replies() == [
            {"a": 1},
            {"status": "failure", "error": "ERR_PACKET_TOO_LARGE"},
        ]
        assert transport.eof_written  # a lingering close: FIN, then drop what comes
        conn.data_received(frame({"c": 3}))  # ignored after close
        assert len(transport.replies()) == 2
        conn.connection_lost(None)

    arun(main())


def test_eof_after_requests_closes_once_they_are_answered(arun: Runner[Any]) -> None:
    server = Server(port=0)
    gate = asyncio.Event()

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        await gate.wait()
        await client.send(packet)

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(frame({"a": 1}) + frame({"b": 2}))
        assert conn.eof_received() is True  # keep the write side open
        assert not transport.closed
        gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert transport.replies() == [{"a": 1}, {"b": 2}]
        assert transport.closed
        conn.connection_lost(None)

    arun(main())


def test_peer_lost_mid_handler_is_quiet(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(port=0)
    gate = asyncio.Event()
    outcome: list[str] = []

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        await gate.wait()
        try:
            await client.send(packet)
        except ConnectionError:
            outcome.append("ConnectionError")
            raise

    async def main() -> None:
        conn, _transport = connect(server)
        conn.data_received(frame({"a": 1}) + frame({"b": 2}))
        conn.connection_lost(ConnectionResetError("peer reset"))
        gate.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert outcome == ["ConnectionError"]
        assert not conn.busy  # the second frame was dropped with the connection

    with caplog.at_level(logging.DEBUG, logger="asyncapy"):
        arun(main())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("lost" in r.getMessage() for r in caplog.records)


def test_refused_connections_get_a_json_error_and_no_session(arun: Runner[Any]) -> None:
    server = Server(port=0, session_limit=1)

    async def main() -> None:
        first, _ = connect(server)
        second, transport = connect(server)
        assert transport.replies() == [{"status": "failure", "error": "ERR_SESSION_LIMIT_REACHED"}]
        assert transport.closed
        other, other_transport = connect(server, MockTransport(("10.0.0.2", 1)))
        assert not other_transport.closed  # the limit is per address
        assert len(first.client.get_sessions()) == 1
        for conn in (first, second, other):
            conn.connection_lost(None)
        assert first.client.get_sessions() == []

    arun(main())


def test_unix_socket_peer_has_an_empty_address(arun: Runner[Any]) -> None:
    server = Server(port=0)

    async def main() -> None:
        conn, _ = connect(server, MockTransport(peer=""))
        assert conn.client.address == ""
        assert conn.client.port == 0
        conn.connection_lost(None)

    arun(main())


def test_send_after_close_raises_connection_error(arun: Runner[Any]) -> None:
    server = Server(port=0)

    async def main() -> None:
        conn, transport = connect(server)
        conn.client.close()
        assert transport.finished
        with pytest.raises(ConnectionError):
            conn.client.send({"a": 1})
        conn.connection_lost(None)

    arun(main())


def test_big_batches_are_flushed_early_so_back_pressure_can_act(arun: Runner[Any]) -> None:
    server = Server(port=0, write_buffer_size=4096)

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        await client.send({"pad": "x" * 3000})

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(b"".join(frame({"i": i}) for i in range(4)))
        assert transport.write_calls >= 2  # not one 12 KB write at the end
        assert len(transport.replies()) == 4
        conn.connection_lost(None)

    arun(main())


class PausingTransport(MockTransport):
    """A transport like CPython 3.12's selector transport: ``write()`` calls
    ``pause_writing()`` past the high-water mark, ``writelines()`` never does."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Connection | None = None
        self.buffered = 0
        self.paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self.buffered += len(data)
        if not self.paused and self.high_water is not None and self.buffered > self.high_water:
            self.paused = True
            assert self.protocol is not None
            self.protocol.pause_writing()

    def writelines(self, lines: list[bytes]) -> None:
        super().writelines(lines)
        self.buffered += sum(map(len, lines))


def test_back_pressure_does_not_depend_on_writelines_pausing(arun: Runner[Any]) -> None:
    server = Server(port=0, write_buffer_size=8192)
    handled: list[int] = []

    @server.add_handler()
    async def flood(client: Client, packet: Packet) -> None:
        handled.append(packet["i"])
        await client.send({"i": packet["i"], "pad": "x" * 1000})

    async def main() -> None:
        transport = PausingTransport()
        conn = server._protocol_factory(server._new_state())()
        transport.protocol = conn
        conn.connection_made(transport)  # type: ignore[arg-type]
        conn.data_received(b"".join(frame({"i": i}) for i in range(100)))
        assert transport.paused, "the transport's buffer passed its mark unseen"
        assert not transport.reading, "reading goes on while the peer does not read"
        assert len(handled) < 20, "handling goes on while the peer does not read"
        transport.paused = False
        transport.buffered = 0
        conn.resume_writing()
        assert len(handled) > 8  # handling resumed where it stopped
        conn.connection_lost(None)

    arun(main())
