"""The connection's bounds against a mock transport (docs/threat-model.md, T4-T9).

Each limit is tried at limit - 1, limit and limit + 1 and far over, fed whole
and in chunks, where that means something for it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import asyncapy._connection
from asyncapy import Packet, Server
from asyncapy._connection import Connection
from asyncapy.core import Client
from asyncapy.protocol import encode_frame
from tests.conftest import Runner
from tests.unit.test_connection import MockTransport, connect, frame

BUSY = {"status": "failure", "error": "ERR_SERVER_BUSY"}


async def settle(rounds: int = 50) -> None:
    """Let the loop run the turns and callbacks the connections scheduled."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def echo_server(**settings: Any) -> Server:
    server = Server(port=0, **settings)

    @server.add_handler()
    async def echo(client: Client, packet: Packet) -> None:
        await client.send(packet)

    return server


def gated_server(gate: asyncio.Event, **settings: Any) -> Server:
    server = Server(port=0, **settings)

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        await gate.wait()
        await client.send(packet)

    return server


# -- max_frames_per_read: the work of one turn


@pytest.mark.parametrize("count", [15, 16, 17, 1000])
@pytest.mark.parametrize("chunked", [False, True])
def test_a_turn_handles_at_most_max_frames_per_read(
    arun: Runner[Any], count: int, chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The turns' cap, not the fair share: a slow moment of the machine would
    # make a turn pass FAIR_SLICE and throttle the connection past settle().
    monkeypatch.setattr(asyncapy._connection, "FAIR_SLICE", float("inf"))
    server = echo_server(max_frames_per_read=16)

    async def main() -> None:
        conn, transport = connect(server)
        data = b"".join(frame({"i": i}) for i in range(count))
        chunks = [data[i : i + 700] for i in range(0, len(data), 700)] if chunked else [data]
        conn.data_received(chunks[0])
        first = len(transport.replies())
        assert first <= 16
        assert transport.reading == (first == count)  # paused while frames wait
        for chunk in chunks[1:]:
            await settle(5 * count)
            assert transport.reading
            conn.data_received(chunk)
        await settle(5 * count)
        assert [reply["i"] for reply in transport.replies()] == list(range(count))
        assert transport.reading
        assert conn.held == 0
        conn.connection_lost(None)

    arun(main())


# -- max_pending: a real bound on frames waiting behind a running handler


@pytest.mark.parametrize("count", [7, 8, 9, 5000])
def test_max_pending_bounds_the_queue_whatever_one_read_holds(
    arun: Runner[Any], count: int
) -> None:
    gate = asyncio.Event()
    server = gated_server(gate, max_pending=8)

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(b"".join(frame({"i": i}) for i in range(1 + count)))
        await settle()
        assert len(conn._queue) == min(count, 8)
        assert transport.reading == (count < 8)
        gate.set()
        await settle(20 * count)
        assert [reply["i"] for reply in transport.replies()] == list(range(1 + count))
        assert transport.reading
        conn.connection_lost(None)

    arun(main())


def test_waiting_frames_are_not_decoded_yet(arun: Runner[Any]) -> None:
    gate = asyncio.Event()
    server = gated_server(gate)

    async def main() -> None:
        conn, _transport = connect(server)
        conn.data_received(frame({"i": 0}) + frame({"i": 1}))
        (waiting,) = conn._queue
        assert type(waiting) is tuple  # (encoding, payload bytes): not a Packet
        assert conn.held == len(frame({"i": 1})) - 6
        gate.set()
        await settle()
        assert conn.held == 0
        conn.connection_lost(None)

    arun(main())


# -- a peer that does not read its replies


def test_a_peer_that_reads_no_reply_for_timeout_seconds_is_reset(arun: Runner[Any]) -> None:
    server = echo_server(timeout=0.2)

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(frame({"i": 0}))
        conn.pause_writing()
        conn.data_received(frame({"i": 1}))  # held: nothing is handled while paused
        await asyncio.sleep(0.1)
        assert not transport.aborted
        await asyncio.sleep(0.2)
        assert transport.aborted
        assert server.stats.write_timeouts == 1
        conn.connection_lost(None)

    arun(main())


def test_a_peer_that_catches_up_is_not_reset(arun: Runner[Any]) -> None:
    server = echo_server(timeout=0.2)

    async def main() -> None:
        conn, transport = connect(server)
        conn.pause_writing()
        await asyncio.sleep(0.15)
        conn.resume_writing()
        await asyncio.sleep(0.15)
        assert not transport.aborted
        assert server.stats.write_timeouts == 0
        conn.connection_lost(None)

    arun(main())


# -- max_buffered_bytes: the server-wide budget of held input


@pytest.mark.parametrize(("second", "evicted"), [(399, False), (400, False), (401, True)])
def test_the_largest_holder_is_closed_when_the_budget_is_passed(
    arun: Runner[Any], second: int, evicted: bool
) -> None:
    server = echo_server(max_buffered_bytes=1000)

    def partial(size: int) -> bytes:  # a header announcing 2,000 payload bytes, then ``size``
        return (2002).to_bytes(4, "big") + b"\x16\x00" + b" " * size

    async def main() -> None:
        big, big_transport = connect(server)
        small, small_transport = connect(server, MockTransport(("10.0.0.9", 1)))
        big.data_received(partial(600))
        assert big.held == 600
        small.data_received(partial(second))
        assert big_transport.replies() == ([BUSY] if evicted else [])
        assert big_transport.finished == evicted
        assert not small_transport.finished
        assert server.stats.over_budget == int(evicted)
        for conn in (big, small):
            conn.connection_lost(None)

    arun(main())


def test_the_budget_is_released_when_frames_complete_or_connections_close(
    arun: Runner[Any],
) -> None:
    server = echo_server(max_buffered_bytes=10_000)

    async def main() -> None:
        conn, transport = connect(server)
        whole = frame({"pad": "x" * 3000})
        conn.data_received(whole[:2000])
        assert conn._state.buffered == 2000 - 6  # the payload so far (the header is parsed)
        conn.data_received(whole[2000:])
        assert conn._state.buffered == 0
        assert len(transport.replies()) == 1
        conn.data_received(whole[:2000])
        conn.connection_lost(None)
        assert conn._state.buffered == 0

    arun(main())


# -- max_connections: who is closed first when the server is full


def test_a_full_server_evicts_the_longest_idle_session_of_the_largest_address(
    arun: Runner[Any],
) -> None:
    server = echo_server(max_connections=4, session_limit=0)

    async def main() -> None:
        crowd = [connect(server, MockTransport(("10.0.0.1", port))) for port in range(3)]
        loop = asyncio.get_running_loop()
        for offset, (conn, _) in enumerate(crowd):
            conn.last_activity = loop.time() - 10 + offset  # the first is the most idle
        lone, _ = connect(server, MockTransport(("10.0.0.2", 1)))
        newcomer, new_transport = connect(server, MockTransport(("10.0.0.3", 1)))
        assert crowd[0][1].replies() == [BUSY]
        assert crowd[0][1].finished
        assert not any(transport.finished for _, transport in crowd[1:])
        assert not new_transport.finished
        assert server.stats.evicted == 1
        crowd[0][0].connection_lost(None)  # (a closing session counts until it is gone)
        # The largest address now holds 2: a newcomer holding 1 cannot take its place.
        again, again_transport = connect(server, MockTransport(("10.0.0.2", 2)))
        assert again_transport.replies() == [BUSY]
        assert server.stats.evicted == 1
        for conn, _ in [*crowd, (lone, None), (newcomer, None), (again, None)]:
            conn.connection_lost(None)

    arun(main())


@pytest.mark.parametrize("count", [2, 3, 4, 50])
def test_session_limit_counts_each_address(arun: Runner[Any], count: int) -> None:
    server = echo_server(session_limit=3)

    async def main() -> None:
        opened = [connect(server) for _ in range(count)]
        refused = [
            t
            for _, t in opened
            if t.replies() == [{"status": "failure", "error": "ERR_SESSION_LIMIT_REACHED"}]
        ]
        assert len(refused) == max(0, count - 3)
        assert all(t.finished for t in refused)
        other, other_transport = connect(server, MockTransport(("10.0.0.2", 1)))
        assert not other_transport.finished  # the limit is per address
        for conn, _ in [*opened, (other, None)]:
            conn.connection_lost(None)

    arun(main())


# -- log floods


def test_rejections_are_logged_at_a_bounded_rate_then_summarised(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log's rate, not the fair share: on a loaded machine a turn of ten
    # rejections passed FAIR_SLICE and was throttled past settle() (667 of 1000).
    monkeypatch.setattr(asyncapy._connection, "FAIR_SLICE", float("inf"))
    server = echo_server(log_rate_limit=5)
    bad_version = b"\x00\x00\x00\x05\x15\x00{ }"

    async def main() -> None:
        conn, transport = connect(server)
        for _ in range(100):
            conn.data_received(bad_version * 10)
            await settle(20)  # after a rejected frame, a turn takes one frame
        assert len(transport.replies()) == 1000
        await asyncio.sleep(1.1)  # the window ends: one summary line
        conn.connection_lost(None)

    with caplog.at_level(logging.INFO, logger="asyncapy"):
        arun(main())
    rejected = [r for r in caplog.records if "Rejected a frame" in r.getMessage()]
    summaries = [r for r in caplog.records if "suppressed" in r.getMessage()]
    assert len(rejected) == 5
    assert len(summaries) == 1
    assert "995 similar 'rejected' lines suppressed" in summaries[0].getMessage()
    assert server.stats.rejected_frames == 1000
    assert server.stats.log_lines_suppressed == 995


# -- closing


def test_a_close_lingers_then_the_peer_closes(arun: Runner[Any]) -> None:
    server = echo_server(max_packet_size=100)

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received((101).to_bytes(4, "big") + b"\x16\x00")
        assert transport.replies() == [{"status": "failure", "error": "ERR_PACKET_TOO_LARGE"}]
        assert transport.eof_written
        assert not transport.closed
        conn.data_received(b"x" * 10_000)  # read and dropped
        assert conn.eof_received() is False  # the transport may close now
        conn.connection_lost(None)

    arun(main())


def test_a_lingering_close_is_reset_after_close_timeout(arun: Runner[Any]) -> None:
    server = echo_server(close_timeout=0.1)

    async def main() -> None:
        conn, transport = connect(server)
        conn.close()
        assert transport.eof_written
        assert not transport.aborted
        await asyncio.sleep(0.2)
        assert transport.aborted
        conn.connection_lost(None)

    arun(main())


# -- fair share


def test_an_expensive_turn_waits_while_others_are_served(arun: Runner[Any]) -> None:
    server = echo_server()
    heavy_payload = {"a": [1e308] * 60_000}  # ~400 KB of JSON: a few ms to decode and encode

    async def main() -> None:
        heavy, heavy_transport = connect(server)
        light, light_transport = connect(server, MockTransport(("10.0.0.7", 1)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        heavy.data_received(frame(heavy_payload))
        spent = loop.time() - started
        assert server.stats.throttled == 1
        assert not heavy_transport.reading  # it waits ...
        count = 0
        while not heavy_transport.reading and loop.time() - started < 5:
            light.data_received(frame({"i": count}))  # ... while another connection is read
            count += 1
            await asyncio.sleep(spent / 10)
        waited = loop.time() - started - spent
        assert heavy_transport.reading
        # at least its own length (uvloop's timers round to the millisecond), at most
        # FAIR_SHARE times it (plus a noisy machine's slack)
        assert spent - 0.002 <= waited < 10 * spent + 0.5
        assert server.stats.throttled == 1
        assert len(light_transport.replies()) == count
        assert len(heavy_transport.replies()) == 1
        for conn in (heavy, light):
            conn.connection_lost(None)

    arun(main())


def test_an_expensive_turn_alone_waits_only_its_own_length(arun: Runner[Any]) -> None:
    server = echo_server()

    async def main() -> None:
        heavy, transport = connect(server)
        loop = asyncio.get_running_loop()
        started = loop.time()
        heavy.data_received(frame({"a": [1e308] * 60_000}))
        spent = loop.time() - started
        assert not transport.reading
        for _ in range(1000):  # bounded: a transport has no event to wait on
            if transport.reading or loop.time() - started > 5:
                break
            await asyncio.sleep(spent / 10)
        assert transport.reading
        assert loop.time() - started < 3 * spent + 0.5  # nobody else: one wait of its length
        heavy.connection_lost(None)

    arun(main())


def test_state_is_shared_by_the_connections_of_one_serve(arun: Runner[Any]) -> None:
    server = echo_server()

    async def main() -> None:
        first, _ = connect(server)
        second, _ = connect(server)
        assert isinstance(first, Connection)
        assert first._state is second._state
        for conn in (first, second):
            conn.connection_lost(None)

    arun(main())


@pytest.mark.parametrize("encoding", [0, 1])
def test_a_rejection_line_carries_no_raw_control_bytes(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture, encoding: int
) -> None:
    server = echo_server()
    forged = b'{"a": "x\n[CRITICAL] forged line \x1b[31m\xff"}'
    data = forged if encoding == 0 else b"\x81\xa1a\xb3x\n[CRITICAL]\x1b[31m\xff"

    async def main() -> None:
        conn, transport = connect(server)
        conn.data_received(encode_frame(data, encoding))
        assert transport.replies() == [{"status": "failure", "error": "ERR_REQUEST_MALFORMED"}]
        conn.connection_lost(None)

    with caplog.at_level(logging.INFO, logger="asyncapy"):
        arun(main())
    (line,) = [r.getMessage() for r in caplog.records if "Rejected a frame" in r.getMessage()]
    assert not any(ord(char) < 0x20 or ord(char) == 0x7F for char in line), repr(line)


def test_a_peer_that_does_not_keep_up_is_paused_until_it_has_read_everything(
    arun: Runner[Any],
) -> None:
    server = echo_server(write_buffer_size=65536)

    async def main() -> None:
        conn, transport = connect(server)
        assert transport.high_water == 65536
        conn.data_received(b"".join(frame({"i": i}) for i in range(4)))
        assert transport.high_water == 65536  # the kernel took every reply
        transport.unsent = 1  # now it does not
        conn.data_received(b"".join(frame({"i": i}) for i in range(4, 8)))
        assert transport.high_water == 0  # the transport pauses us now ...
        conn.pause_writing()  # (as a real one does when its buffer passes the mark)
        conn.data_received(b"".join(frame({"i": i}) for i in range(8, 12)))
        await settle()
        assert len(transport.replies()) == 8  # ... and nothing more is handled
        assert not transport.reading
        transport.unsent = 0
        conn.resume_writing()  # ... until its buffer is empty
        assert transport.high_water == 65536
        await settle()
        assert [reply["i"] for reply in transport.replies()] == list(range(12))
        conn.connection_lost(None)

    arun(main())


def test_a_closed_connection_lets_go_of_its_input_at_once(arun: Runner[Any]) -> None:
    # A dead Connection sits in a reference cycle with its client until the
    # cyclic GC runs: what it held must not wait for that.
    server = echo_server(max_frames_per_read=1)

    async def main() -> None:
        partial, _ = connect(server)
        partial.data_received((100_002).to_bytes(4, "big") + b"\x16\x00" + b" " * 50_000)
        unread, _ = connect(server)
        unread.data_received(b"".join(frame({"i": i}) for i in range(100)))
        assert partial._decoder.buffered == 50_000
        assert unread._decoder.buffered > 0
        partial.close()
        unread.connection_lost(ConnectionResetError())
        assert partial._decoder.buffered == 0
        assert unread._decoder.buffered == 0
        partial.connection_lost(None)

    arun(main())
