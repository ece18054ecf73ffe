"""Attacks on a server process over loopback, each beside a well-behaved client (issue 8).

Each test starts the server (``server_app``, in a subprocess), measures the
good client alone, then again during the attack (and once more after it, to
report), and asserts that it lost nothing and kept, under attack, at least
half its throughput, plus what the attack itself must come to. See
``harness.py`` for the measurements and the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from asyncapy.codecs import JSON
from tests.conftest import Runner
from tests.helpers import colliding_pairs, msgpack_map_of_pairs

from .harness import (
    ATTACK_SOURCES,
    MIB,
    Bench,
    Crowd,
    Flood,
    RawPeer,
    ServerProcess,
    background,
    frame,
    make_tls,
    median,
    now,
    pipeline,
    stream,
    wait_all_closed,
)

RecordProperty = Any  # pytest's record_property fixture: (name, value) -> None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


# -- 1. ZiProto hash flood


def hash_flood_payload(count: int) -> bytes:
    """A MessagePack map of ``count`` entries ``[a, b]: nil`` whose keys' tuples all collide."""
    pairs = colliding_pairs(count)
    # (a set of hashes, never a dict of the keys: building one is the attack)
    hashes = {hash(pair) for pair in pairs}
    assert len(hashes) == 1, "this Python's tuple hash is not the one the attack solves"
    return msgpack_map_of_pairs(pairs)


def test_ziproto_hash_flood(
    arun: Runner[Any], tmp_path: Path, record_property: RecordProperty
) -> None:
    """A ~250 KiB map of 18,000 colliding array keys, one frame at a time, every 10 ms at most.

    (Unpaced, the same loop pushes 350-650 MB/s through loopback: a bandwidth
    test of the machine, whatever the server does with each frame. One frame
    takes the server seconds to decode when it builds the map.)
    """
    payload = hash_flood_payload(18_000)
    attack = frame(payload, encoding=1)
    flood = Flood()

    with ServerProcess.run(tmp_path) as server:
        bench = Bench(server, "ziproto hash flood")

        def send(attacker: RawPeer) -> Coroutine[Any, Any, Any]:
            return pipeline(
                attacker, [attack], flood, window=1, interval=0.01, duration=10, max_frames=1000
            )

        attacker = arun(bench.beside_one_attacker(RawPeer, send))

    answered = len(attacker.reply_times)
    delays = flood.delays(attacker)
    bench.extra.update(
        frame_kib=len(attack) // 1024,
        frames_answered=answered,
        attacker_replies=dict(attacker.errors) | {"echo": attacker.replies},
        median_reply_ms=_ms(median(delays)),
    )
    bench.report(record_property)
    bench.check_good_client()
    assert answered > 0, f"no flood frame was answered: {bench.summary()}"
    assert attacker.replies == 0, f"a map with array keys was accepted: {bench.summary()}"
    assert set(attacker.errors) == {"ERR_REQUEST_MALFORMED"}, bench.summary()
    assert (median(delays) or 0) < 0.25, f"flood frames are answered slowly: {bench.summary()}"


# -- 2. Slow numbers


def numbers_payload(token: bytes, size: int) -> bytes:
    """``{"a":[token,token,...]}`` of at most ``size`` bytes."""
    count = (size - len(b'{"a":[]}') + 1) // (len(token) + 1)
    return b'{"a":[' + b",".join([token] * count) + b"]}"


def test_slow_numbers(arun: Runner[Any], tmp_path: Path, record_property: RecordProperty) -> None:
    """~1 MiB JSON frames of ``1e308`` and of ``4.9e-324``, each sent once the last is answered.

    Each kind is answered (echoed or refused) fast, its fastest reply within
    250 ms, and the good client keeps half its throughput although the one
    connection always has a frame for the server to decode.
    """
    # Just under 1 MiB, so that any default max_packet_size from 1 MiB up admits them.
    size = MIB - 64
    attacks = [frame(numbers_payload(token, size)) for token in (b"1e308", b"4.9e-324")]
    flood = Flood()

    with ServerProcess.run(tmp_path) as server:
        bench = Bench(server, "slow numbers")

        def send(attacker: RawPeer) -> Coroutine[Any, Any, Any]:
            return pipeline(attacker, attacks, flood, window=1, duration=10, max_frames=2000)

        attacker = arun(bench.beside_one_attacker(RawPeer, send))

    answered = len(attacker.reply_times)
    delays = flood.delays(attacker)
    # The fastest reply of each kind: a server may delay a greedy connection's
    # next frames on purpose (its fair share), which is not slow decoding.
    fastest = {
        "1e308": min(delays[0::2], default=None),
        "4.9e-324": min(delays[1::2], default=None),
    }
    bench.extra.update(
        frame_kib=len(attacks[0]) // 1024,
        frames_answered=answered,
        attacker_replies=dict(attacker.errors) | {"echo": attacker.replies},
        fastest_reply_ms={kind: _ms(delay) for kind, delay in fastest.items()},
        median_reply_ms=_ms(median(delays)),
        max_reply_ms=_ms(max(delays, default=None)),
    )
    bench.report(record_property)
    bench.check_good_client()
    assert answered >= 2, f"number frames were not answered: {bench.summary()}"
    for kind, delay in fastest.items():
        assert delay is not None
        assert delay < 0.25, f"{kind} frames are decoded slowly: {bench.summary()}"


# -- 3. Stalled TLS handshakes

TLS_HANDSHAKE_TIMEOUT = 1.0
DEFAULT_SESSION_LIMIT = 256  # the new default of session_limit


def client_hello() -> bytes:
    """The first flight of a TLS client: a ClientHello record."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16", "not a TLS handshake record"
    return hello


class HalfHello(RawPeer):
    """Sends the first half of a ClientHello, then nothing."""

    hello = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(self.hello[: len(self.hello) // 2])


def test_stalled_tls_handshakes(
    arun: Runner[Any], tmp_path: Path, record_property: RecordProperty
) -> None:
    """1,000 silent connections from one address and 300 half ClientHellos from another.

    Each is closed by the server within ``tls_handshake_timeout`` (+ 1 s), those
    over the default ``session_limit`` at once, and the server's descriptors
    come back to what they were, all before we close anything.
    """
    tls = make_tls(tmp_path)
    HalfHello.hello = client_hello()
    silent_count, half_count = 1000, 300
    settings = {"certfile": str(tls.certfile), "tls_handshake_timeout": TLS_HANDSHAKE_TIMEOUT}

    with ServerProcess.run(tmp_path, settings) as server:
        bench = Bench(server, "stalled TLS handshakes", context=tls.client_context())

        async def main() -> Crowd:
            await bench.measure_unattacked()
            crowd = Crowd()
            async with crowd.running():
                bench.start_sampling()
                opening = asyncio.gather(
                    crowd.open(server.port, ATTACK_SOURCES[0], silent_count, RawPeer),
                    crowd.open(server.port, ATTACK_SOURCES[1], half_count, HalfHello),
                )
                async with background(opening):
                    await asyncio.sleep(0.2)
                    await bench.measure_attacked()
                # every attacker should be closed by the server by now, or very soon
                last = max((peer.connected_at for peer in crowd.peers), default=0.0)
                await wait_all_closed(crowd.peers, last + TLS_HANDSHAKE_TIMEOUT + 1.0)
                await bench.settle(timeout=1.0)  # before we close anything ourselves
            await bench.measure_recovered()
            return crowd

        crowd = arun(main())

    lifetimes = [peer.lifetime for peer in crowd.peers]
    still_open = sum(1 for life in lifetimes if life is None)
    closed = sorted(life for life in lifetimes if life is not None)
    at_once = sum(1 for life in closed if life < 0.5 * TLS_HANDSHAKE_TIMEOUT)
    over_limit = max(silent_count - DEFAULT_SESSION_LIMIT, 0) + max(
        half_count - DEFAULT_SESSION_LIMIT, 0
    )
    bench.extra.update(
        attackers=len(crowd.peers),
        connect_failures=dict(crowd.failed),
        left_open_by_server=still_open,
        closed_at_once=at_once,
        max_lifetime_s=round(closed[-1], 2) if closed else None,
    )
    bench.report(record_property)
    bench.check_good_client()
    assert len(crowd.peers) >= 0.95 * (silent_count + half_count), bench.summary()
    assert still_open == 0, f"stalled handshakes were left open: {bench.summary()}"
    assert closed[-1] <= TLS_HANDSHAKE_TIMEOUT + 1.0, bench.summary()
    assert at_once >= 0.9 * over_limit, f"handshakes over session_limit held: {bench.summary()}"
    assert bench.fds_after <= bench.fds_before, f"descriptors not released: {bench.summary()}"


# -- 4. Work per read, and peers that do not read


def test_minimal_frames_streamed_without_reading(
    arun: Runner[Any], tmp_path: Path, record_property: RecordProperty
) -> None:
    """One connection writes 9-byte frames as fast as the server takes them, never reading.

    The good client's p99 latency stays under 50 ms (work per read is bounded).
    """
    tiny = frame(b"{ }")  # 9 bytes, echoed as 9 bytes
    chunk = tiny * (65536 // len(tiny) + 1)
    flood = Flood()

    with ServerProcess.run(tmp_path) as server:
        bench = Bench(server, "minimal frames, no reading")

        def factory() -> RawPeer:
            return RawPeer(parse=False, read=False)

        def send(attacker: RawPeer) -> Coroutine[Any, Any, Any]:
            return stream(attacker, chunk, flood, duration=10, max_bytes=1 << 30)

        arun(bench.beside_one_attacker(factory, send))

    bench.extra.update(frames_written_k=flood.written // len(tiny) // 1000)
    bench.report(record_property)
    bench.check_good_client()
    p99 = bench.attacked.p99_ms if bench.attacked else None
    assert p99 is not None
    assert p99 < 50, f"a flood of tiny frames holds the loop: {bench.summary()}"


NON_READERS = 50
NON_READER_TIMEOUT = 2.0
# The timeout runs from when the server's writes pause, not from connect; and
# the 50 share one address's turns, so each takes a while to fill its buffers.
NON_READER_SLACK = 5.0
# The good client keeps at least this share of its throughput. Not the 0.5 of
# the other attacks. Before the 50 non-readers' writes stop, their socket
# buffers take about 4 MiB of replies each (on loopback, where the kernel
# grows them): the server echoes some 210,000 1 KiB frames, 1.65 s of CPU,
# across the whole 1.5 s window. Per-address turns then give the good
# address one connection's frame for the attacker's four per loop iteration,
# so what it keeps is about a fifth to a half. Measured: 0.30-0.61 (0.44-0.60
# on the code before issue 9). Serving addresses by the CPU they use, not by
# turns, is the fix (docs/threat-model.md, T4).
NON_READER_MIN_RATIO = 0.2


def test_pipelining_peers_that_never_read(
    arun: Runner[Any], tmp_path: Path, record_property: RecordProperty
) -> None:
    """50 connections pipeline 1 KiB echo requests and never read (``timeout=2``).

    RSS grows less than 64 MiB; each is closed by the server within timeout +
    2.5 s of its connect (the timeout runs once the server's writes pause);
    then the descriptors are back, and RSS within 8 MiB of before.
    """
    request = frame(JSON.encode({"pad": "r" * 1000}))
    chunk = request * 64
    settings = {"max_pending": 64, "timeout": NON_READER_TIMEOUT}
    unread: list[int] = []  # reply bytes waiting in the non-readers' sockets after the good run

    with ServerProcess.run(tmp_path, settings) as server:
        bench = Bench(server, "pipelining non-readers")

        async def main() -> Crowd:
            await bench.measure_unattacked()
            crowd = Crowd()
            async with crowd.running():

                def factory() -> RawPeer:
                    return RawPeer(parse=False, read=False)

                bench.start_sampling()
                peers = await crowd.open(server.port, ATTACK_SOURCES[0], NON_READERS, factory)
                floods = asyncio.gather(
                    *(
                        stream(peer, chunk, Flood(), duration=8, max_bytes=64 * MIB)
                        for peer in peers
                    )
                )
                async with background(floods):
                    await bench.measure_attacked()
                    unread.append(sum(peer.unread() for peer in peers))
                    deadline = (
                        max(peer.connected_at for peer in peers)
                        + NON_READER_TIMEOUT
                        + NON_READER_SLACK
                    )
                    await wait_all_closed(peers, deadline)
                await bench.settle(timeout=1.0)  # before we close anything ourselves
            await bench.measure_recovered()
            return crowd

        crowd = arun(main())

    lifetimes = [peer.lifetime for peer in crowd.peers]
    still_open = sum(1 for life in lifetimes if life is None)
    closed = [life for life in lifetimes if life is not None]
    bench.extra.update(
        non_readers=len(crowd.peers),
        unread_reply_mib=round(unread[0] / MIB, 1) if unread else None,
        left_open_by_server=still_open,
        max_lifetime_s=round(max(closed), 2) if closed else None,
        rss_growth_mib=round(bench.rss_growth_mib, 1),
    )
    bench.report(record_property)
    bench.check_good_client(NON_READER_MIN_RATIO)
    assert len(crowd.peers) == NON_READERS, bench.summary()
    assert bench.rss_growth_mib < 64, f"non-readers grow the server: {bench.summary()}"
    assert still_open == 0, f"non-readers were not closed after timeout: {bench.summary()}"
    assert max(closed) <= NON_READER_TIMEOUT + NON_READER_SLACK, bench.summary()
    assert bench.fds_after <= bench.fds_before, f"descriptors not released: {bench.summary()}"
    assert (bench.rss_after - bench.rss_before) / 1024 < 8, f"RSS stays up: {bench.summary()}"


# -- 5. One address, or a few, cannot lock everyone out

MAX_CONNECTIONS = 600
KEEPALIVE = frame(JSON.encode({"k": 1}))


async def keep_alive(crowd: Crowd, interval: float = 0.5, duration: float = 10.0) -> None:
    """Send one small frame on every open attacker connection every ``interval`` seconds."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + duration
    while loop.time() < stop_at:
        for peer in crowd.peers:
            peer.write(KEEPALIVE)
        await asyncio.sleep(interval)


def test_one_address_cannot_lock_everyone_out(
    arun: Runner[Any], tmp_path: Path, record_property: RecordProperty
) -> None:
    """1,000 connections from 127.0.0.2, kept alive, against ``max_connections=600``.

    The address holds at most the default ``session_limit`` (256) and the good
    client's new connections get in.
    """
    settings = {"max_connections": MAX_CONNECTIONS, "timeout": 2}

    with ServerProcess.run(tmp_path, settings) as server:
        bench = Bench(server, "one address fills max_connections")

        async def main() -> tuple[Crowd, int]:
            await bench.measure_unattacked()
            crowd = Crowd()
            async with crowd.running():
                bench.start_sampling()
                await crowd.open(server.port, ATTACK_SOURCES[0], 1000, RawPeer)
                async with background(keep_alive(crowd)):
                    await asyncio.sleep(0.3)  # the refused ones are closed by now
                    held = sum(1 for peer in crowd.peers if not peer.is_closed)
                    await bench.measure_attacked()
            await bench.settle()
            await bench.measure_recovered()
            return crowd, held

        crowd, held = arun(main())

    errors: Counter[str] = sum((peer.errors for peer in crowd.peers), start=Counter())
    bench.extra.update(
        attackers=len(crowd.peers), attacker_sessions_held=held, attacker_errors=dict(errors)
    )
    bench.report(record_property)
    bench.check_good_client()
    assert held <= DEFAULT_SESSION_LIMIT, f"one address holds too many: {bench.summary()}"


def test_many_addresses_filling_max_connections_are_evicted(
    arun: Runner[Any], tmp_path: Path, record_property: RecordProperty
) -> None:
    """Four addresses, 256 connections each, fill ``max_connections=600``.

    The good client's new connections still get in, by evicting attackers'
    idle sessions (answered ``ERR_SERVER_BUSY``).
    """
    settings = {"max_connections": MAX_CONNECTIONS, "timeout": 2}

    with ServerProcess.run(tmp_path, settings) as server:
        bench = Bench(server, "four addresses fill max_connections")

        async def main() -> tuple[Crowd, int, float]:
            await bench.measure_unattacked()
            crowd = Crowd()
            async with crowd.running():
                bench.start_sampling()
                await asyncio.gather(
                    *(
                        crowd.open(server.port, source, DEFAULT_SESSION_LIMIT, RawPeer)
                        for source in ATTACK_SOURCES
                    )
                )
                async with background(keep_alive(crowd)):
                    await asyncio.sleep(0.3)
                    held = sum(1 for peer in crowd.peers if not peer.is_closed)
                    good_started = now()
                    await bench.measure_attacked()
            await bench.settle()
            await bench.measure_recovered()
            return crowd, held, good_started

        crowd, held, good_started = arun(main())

    evicted = sum(
        1
        for peer in crowd.peers
        if peer.closed_at is not None
        and peer.closed_at >= good_started
        and peer.errors["ERR_SERVER_BUSY"]
    )
    errors: Counter[str] = sum((peer.errors for peer in crowd.peers), start=Counter())
    bench.extra.update(
        attackers=len(crowd.peers),
        attacker_sessions_held=held,
        evicted=evicted,
        attacker_errors=dict(errors),
    )
    bench.report(record_property)
    assert held >= MAX_CONNECTIONS - 10, f"the attackers did not fill the server: {bench.summary()}"
    bench.check_good_client()
    assert evicted >= 1, f"no attacker session was evicted: {bench.summary()}"


# -- 6. Log flood

LOG_LINES_BOUND = 200


def test_log_flood(arun: Runner[Any], tmp_path: Path, record_property: RecordProperty) -> None:
    """2 MiB of 9-byte frames with a bad version from one connection, which reads its replies.

    Every frame is answered ``ERR_HEADER_INVALID``; the server's whole log has
    fewer than 200 lines, one of which says "suppressed".
    """
    bad = frame(b"{ }", version=21)  # ERR_HEADER_INVALID, connection kept
    count = 2 * MIB // len(bad)
    data = bad * count
    error_reply = frame(JSON.encode({"status": "failure", "error": "ERR_HEADER_INVALID"}))

    with ServerProcess.run(tmp_path) as server:
        bench = Bench(server, "log flood")

        async def main() -> RawPeer:
            await bench.measure_unattacked()
            crowd = Crowd()
            async with crowd.running():

                def factory() -> RawPeer:
                    return RawPeer(parse=False)  # reads, counts bytes only

                (attacker,) = await crowd.open(server.port, ATTACK_SOURCES[0], 1, factory)
                bench.start_sampling()

                async def flood() -> None:
                    for start in range(0, len(data), 65536):
                        if not attacker.write(data[start : start + 65536]):
                            return
                        await attacker.drain(5.0)

                async with background(flood()):
                    await bench.measure_attacked()
                    stop_at = now() + 5.0
                    while attacker.received < count * len(error_reply) and now() < stop_at:
                        if attacker.is_closed:
                            break
                        await asyncio.sleep(0.05)
                stop_at = now() + 2.5
                while "suppressed" not in server.stderr_text():
                    if now() > stop_at:
                        break
                    await asyncio.sleep(0.1)
            await bench.settle()
            await bench.measure_recovered()
            return attacker

        attacker = arun(main())

    log = server.stderr_text().splitlines()  # the whole log: the server has exited
    suppressed = [line for line in log if "suppressed" in line]
    bench.extra.update(
        frames=count,
        answered=attacker.received // len(error_reply),
        closed_by_server=attacker.closed_at is not None,
        log_lines=len(log),
        suppressed_lines=len(suppressed),
    )
    bench.report(record_property)
    bench.check_good_client()
    assert bytes(attacker.head[: len(error_reply)]) == error_reply, bench.summary()
    assert attacker.received == count * len(error_reply), f"not all answered: {bench.summary()}"
    assert len(log) < LOG_LINES_BOUND, f"the log was flooded: {bench.summary()}"
    assert suppressed, f"no 'suppressed' summary line: {bench.summary()}"


# -- 7. Buffered partial frames

PARTIAL_ATTACKERS = 40
BUFFER_BUDGET = 8 * MIB


def test_buffered_partial_frames(
    arun: Runner[Any], tmp_path: Path, record_property: RecordProperty
) -> None:
    """40 connections each announce a 1 MiB frame, send all of it but one byte, and hold.

    With ``max_buffered_bytes`` 8 MiB, RSS grows less than three times that,
    and some holders are answered ``ERR_SERVER_BUSY`` and closed.
    """
    length = MIB  # the Content-Length announced: max_packet_size itself
    head = length.to_bytes(4, "big") + bytes((22, 0))
    partial = head + b"x" * (length - 2 - 1)  # one byte short of the frame
    settings = {"max_packet_size": MIB, "max_buffered_bytes": BUFFER_BUDGET}

    with ServerProcess.run(tmp_path, settings) as server:
        bench = Bench(server, "buffered partial frames")

        async def main() -> Crowd:
            await bench.measure_unattacked()
            crowd = Crowd()
            async with crowd.running():
                bench.start_sampling()
                peers = await crowd.open(server.port, ATTACK_SOURCES[0], PARTIAL_ATTACKERS, RawPeer)
                for peer in peers:
                    peer.write(partial)
                await asyncio.gather(*(peer.drain(3.0) for peer in peers))
                await asyncio.sleep(0.2)
                await bench.measure_attacked()
                await bench.stop_sampling()
            await bench.settle()
            await bench.measure_recovered()
            return crowd

        crowd = arun(main())

    busy = sum(
        1 for peer in crowd.peers if peer.errors["ERR_SERVER_BUSY"] and peer.closed_at is not None
    )
    bench.extra.update(
        attackers=len(crowd.peers),
        answered_busy=busy,
        rss_growth_mib=round(bench.rss_growth_mib, 1),
    )
    bench.report(record_property)
    bench.check_good_client()
    assert len(crowd.peers) == PARTIAL_ATTACKERS, bench.summary()
    # Budget-bound buffering peaks near 11 MiB with glibc; unbounded, 40 x 1 MiB is ~41 MiB.
    growth_bound = 3 * BUFFER_BUDGET / MIB
    assert bench.rss_growth_mib < growth_bound, f"partial frames grow it: {bench.summary()}"
    assert busy >= 1, (
        f"no holder of a partial frame was answered ERR_SERVER_BUSY: {bench.summary()}"
    )
