"""The server end to end on real loopback sockets, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from asyncapy import Filters, Packet, Server, StopPropagation
from asyncapy.core import Client
from asyncapy.protocol import encode_frame
from tests.conftest import Runner
from tests.helpers import Peer, serving, vector_params


def make_server(**kwargs: Any) -> Server:
    kwargs.setdefault("port", 0)
    kwargs.setdefault("timeout", 10)
    return Server(**kwargs)


def echo_server(**kwargs: Any) -> Server:
    server = make_server(**kwargs)

    @server.add_handler()
    async def echo(client: Client, packet: Packet) -> None:
        await client.send(packet)

    return server


# -- the seed's examples


def test_seed_echo_round_trip_then_close(arun: Runner[Any]) -> None:
    server = make_server()
    seen: list[str] = []

    @server.add_handler()
    async def echo_server(client: Client, packet: Packet) -> None:
        seen.append(f"Hello world from {client}!")
        seen.append(f"Echoing back {packet}...")
        await client.send(packet)
        await client.close()

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"test": 1})
            assert await peer.recv() == {"test": 1}
            assert await peer.closed()

    arun(main())
    assert seen == ["Hello world from Client(127.0.0.1)!", 'Echoing back Packet({"test": 1})...']


def test_keep_alive_many_requests_on_one_connection(arun: Runner[Any]) -> None:
    server = echo_server()

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            for i in range(20):
                await peer.send({"i": i})
                assert await peer.recv() == {"i": i}
            assert not await peer.closed(0.05)
            await peer.close()

    arun(main())


def test_groups_run_lowest_first_and_stop_propagation(arun: Runner[Any]) -> None:
    server = make_server()
    calls: list[str] = []

    @server.add_handler()
    async def group0(client: Client, packet: Packet) -> None:
        calls.append("group0")
        await client.send({"from": "group0"})

    @server.add_handler(group=-1)
    async def group_minus_1(client: Client, packet: Packet) -> None:
        calls.append("group-1")
        await client.send({"from": "group-1"})
        if packet.get("stop") == "method":
            packet.stop_propagation()
        if packet.get("stop") == "await":
            await packet.stop_propagation()
        if packet.get("stop") == "raise":
            raise StopPropagation

    @server.add_handler(group=5)
    async def group5(client: Client, packet: Packet) -> None:
        calls.append("group5")
        await client.send({"from": "group5"})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"x": 1})
            assert [await peer.recv() for _ in range(3)] == [
                {"from": "group-1"},
                {"from": "group0"},
                {"from": "group5"},
            ]
            for how in ("method", "await", "raise"):
                await peer.send({"stop": how})
                assert await peer.recv() == {"from": "group-1"}
            await peer.send({"after": True})  # the connection is still open and in step
            assert [await peer.recv() for _ in range(3)] == [
                {"from": "group-1"},
                {"from": "group0"},
                {"from": "group5"},
            ]
            await peer.close()

    arun(main())
    assert calls.count("group-1") == 5
    assert calls.count("group0") == 2


def test_first_matching_handler_of_a_group_wins(arun: Runner[Any]) -> None:
    server = make_server()

    @server.add_handler(Filters.Fields(kind="a"))
    async def first(client: Client, packet: Packet) -> None:
        await client.send({"handler": "first"})

    @server.add_handler()
    async def catch_all(client: Client, packet: Packet) -> None:
        await client.send({"handler": "catch_all"})

    @server.add_handler()
    async def never(client: Client, packet: Packet) -> None:  # shadowed by catch_all
        await client.send({"handler": "never"})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"kind": "a"})
            assert await peer.recv() == {"handler": "first"}
            await peer.send({"kind": "b"})
            assert await peer.recv() == {"handler": "catch_all"}
            await peer.close()

    arun(main())


def test_a_handler_closing_the_connection_ends_the_dispatch(arun: Runner[Any]) -> None:
    server = make_server()
    calls: list[str] = []

    @server.add_handler(group=0)
    async def closer(client: Client, packet: Packet) -> None:
        calls.append("closer")
        await client.send({"bye": True}, close=True)

    @server.add_handler(group=1)
    async def later(client: Client, packet: Packet) -> None:
        calls.append("later")

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send_raw(peer.frame({"a": 1}) + peer.frame({"b": 2}))
            assert await peer.recv() == {"bye": True}
            assert await peer.closed()

    arun(main())
    assert calls == ["closer"]


# -- filters on a live server


def test_filters_and_their_combinations(arun: Runner[Any]) -> None:
    server = make_server()
    local = Filters.Ip(["127.0.0.1", "::1"])
    elsewhere = Filters.Ip("10.1.2.3")

    @server.add_handler(Filters.Fields(op="^sum$", a=r"\d+", b=r"\d+"), local)
    async def add(client: Client, packet: Packet) -> None:
        await client.send({"sum": int(packet["a"]) + int(packet["b"])})

    @server.add_handler(Filters.Fields(op="^remote$") & elsewhere)
    async def remote_only(client: Client, packet: Packet) -> None:
        await client.send({"remote": True})

    @server.add_handler(Filters.Fields(op="^either$") & (elsewhere | local))
    async def either(client: Client, packet: Packet) -> None:
        await client.send({"either": True})

    @server.add_handler(Filters.Fields(op="^not$") & ~elsewhere)
    async def negated(client: Client, packet: Packet) -> None:
        await client.send({"not": True})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"op": "sum", "a": 2, "b": "40"})
            assert await peer.recv() == {"sum": 42}
            await peer.send({"op": "sum", "a": "x", "b": 1})
            assert await peer.recv_error() == "ERR_NO_HANDLER"
            await peer.send({"op": "remote"})
            assert await peer.recv_error() == "ERR_NO_HANDLER"
            await peer.send({"op": "either"})
            assert await peer.recv() == {"either": True}
            await peer.send({"op": "not"})
            assert await peer.recv() == {"not": True}
            elsewhere.add("127.0.0.1")  # filters can change at run time
            await peer.send({"op": "remote"})
            assert await peer.recv() == {"remote": True}
            await peer.send({"op": "not"})
            assert await peer.recv_error() == "ERR_NO_HANDLER"
            await peer.close()

    arun(main())


# -- the error table (protocol.md section 4), through the shared vectors


@pytest.mark.parametrize("case", vector_params("frames", "rejected"))
def test_rejected_vectors_on_a_live_server(arun: Runner[Any], case: dict[str, Any]) -> None:
    server = echo_server(
        header_size=case["header_size"],
        byteorder=case["byteorder"],
        max_packet_size=case.get("max_packet_size", 4 * 1024 * 1024),
    )
    data = bytes.fromhex(case["hex"])

    async def main() -> None:
        async with serving(server):
            for chunked in (False, True):
                peer = await Peer.connect(
                    server.port, header_size=case["header_size"], byteorder=case["byteorder"]
                )
                if chunked:
                    for i in range(len(data)):
                        await peer.send_raw(data[i : i + 1])
                else:
                    await peer.send_raw(data)
                assert await peer.recv_error() == case["error"]
                if case["keeps_connection"]:
                    await peer.send({"still": "open"})
                    assert await peer.recv() == {"still": "open"}
                    await peer.close()
                else:
                    assert await peer.closed()

    arun(main())
    assert server.stats.rejected_frames == 2


@pytest.mark.parametrize("case", vector_params("frames", "valid"))
def test_valid_vectors_on_a_live_server(arun: Runner[Any], case: dict[str, Any]) -> None:
    server = echo_server(header_size=case["header_size"], byteorder=case["byteorder"])

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(
                server.port, header_size=case["header_size"], byteorder=case["byteorder"]
            )
            await peer.send_raw(bytes.fromhex(case["hex"]))
            frame = await peer.frame_in()
            assert frame is not None
            assert str(frame.encoding) == case["encoding"]
            from tests.helpers import literal

            assert await asyncio.sleep(0, result=True)
            from asyncapy.codecs import CODECS

            assert CODECS[frame.encoding].decode(frame.payload) == literal(case["payload"])
            await peer.close()

    arun(main())


def test_internal_error_keeps_the_connection_and_other_clients(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        if packet.get("boom"):
            raise RuntimeError("secret detail")
        await client.send({"ok": packet["n"]})

    async def main() -> None:
        async with serving(server):
            first, second = await Peer.connect(server.port), await Peer.connect(server.port)
            await first.send({"boom": True})
            reply = await first.recv()
            assert reply == {"status": "failure", "error": "ERR_INTERNAL"}  # no traceback leaks
            await second.send({"n": 2})
            assert await second.recv() == {"ok": 2}
            await first.send({"n": 1})
            assert await first.recv() == {"ok": 1}
            await first.close()
            await second.close()

    arun(main())
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "secret detail" in str(errors[0].exc_info[1])


def test_no_handler_registered_at_all(arun: Runner[Any]) -> None:
    server = make_server()

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"a": 1})
            assert await peer.recv_error() == "ERR_NO_HANDLER"
            await peer.close()

    arun(main())


def test_encode_error_in_a_handler_is_internal(arun: Runner[Any]) -> None:
    server = make_server()

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        await client.send({"value": object()})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"a": 1})
            assert await peer.recv_error() == "ERR_INTERNAL"
            await peer.close()

    arun(main())


# -- framing on the wire


def test_split_and_pipelined_frames(arun: Runner[Any]) -> None:
    server = echo_server()

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            stream = b"".join(peer.frame({"i": i}, i % 2) for i in range(10))
            for i in range(0, len(stream), 3):  # 3-byte pieces, cutting every frame
                await peer.send_raw(stream[i : i + 3])
            assert [await peer.recv() for _ in range(10)] == [{"i": i} for i in range(10)]
            await peer.close()

    arun(main())


def test_100_pipelined_requests_are_answered_in_order(arun: Runner[Any]) -> None:
    server = make_server(max_pending=16)
    rng = random.Random(7)
    delays = [rng.choice([0, 0, 0.001, 0.003]) for _ in range(100)]

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        delay = delays[packet["i"]]
        if delay:
            await asyncio.sleep(delay)
        await client.send({"i": packet["i"]})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send_raw(b"".join(peer.frame({"i": i}) for i in range(100)))
            assert [(await peer.recv())["i"] for _ in range(100)] == list(range(100))
            await peer.close()

    arun(main())


def test_errors_are_answered_in_order_among_replies(arun: Runner[Any]) -> None:
    server = make_server()

    @server.add_handler()
    async def slow(client: Client, packet: Packet) -> None:
        await asyncio.sleep(0.02)
        await client.send({"n": packet["n"]})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            bad_version = bytes.fromhex("0000001015007b22666f6f223a2022626172227d")
            await peer.send_raw(
                peer.frame({"n": 1}) + bad_version + peer.frame(b"[1, 2]") + peer.frame({"n": 2})
            )
            assert await peer.recv() == {"n": 1}
            assert await peer.recv_error() == "ERR_HEADER_INVALID"
            assert await peer.recv_error() == "ERR_REQUEST_MALFORMED"
            assert await peer.recv() == {"n": 2}
            await peer.close()

    arun(main())


# -- limits: max_packet_size at limit - 1, limit, limit + 1 and far over, whole and in chunks

LIMIT = 2048


@pytest.mark.parametrize(
    ("content_length", "accepted"),
    [(LIMIT - 1, True), (LIMIT, True), (LIMIT + 1, False), (50 * LIMIT, False)],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_max_packet_size_boundaries(
    arun: Runner[Any], content_length: int, accepted: bool, chunked: bool
) -> None:
    server = make_server(max_packet_size=LIMIT)

    @server.add_handler()
    async def size(client: Client, packet: Packet) -> None:
        await client.send({"len": len(packet["pad"])})

    pad = content_length - 2 - len(b'{"pad":""}')
    frame = encode_frame(b'{"pad":"' + b"x" * pad + b'"}', 0)
    assert int.from_bytes(frame[:4], "big") == content_length

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            if chunked:
                for i in range(0, len(frame), 1000):
                    await peer.send_raw(frame[i : i + 1000])
            else:
                await peer.send_raw(frame)
            if accepted:
                assert await peer.recv() == {"len": pad}
                await peer.close()
            else:
                assert await peer.recv_error() == "ERR_PACKET_TOO_LARGE"
                assert await peer.closed()

    arun(main())


# -- sessions


def test_session_encoding_is_fixed_by_the_first_clean_frame(arun: Runner[Any]) -> None:
    server = echo_server()

    async def main() -> None:
        async with serving(server):
            ziproto = await Peer.connect(server.port)
            await ziproto.send_raw(ziproto.frame(b"not json"))  # bad: fixes nothing
            assert await ziproto.recv_error() == "ERR_REQUEST_MALFORMED"
            await ziproto.send({"a": 1}, encoding=1)
            frame = await ziproto.frame_in()
            assert frame is not None
            assert int(frame.encoding) == 1
            await ziproto.send({"b": 2}, encoding=0)  # JSON in, still ZiProto out
            frame = await ziproto.frame_in()
            assert frame is not None
            assert int(frame.encoding) == 1
            assert bytes(frame.payload) == bytes.fromhex("81a16202")
            await ziproto.close()

            json_peer = await Peer.connect(server.port)
            await json_peer.send({"c": [1, 2]}, encoding=0)
            await json_peer.send({"d": None}, encoding=1)
            for expected in ({"c": [1, 2]}, {"d": None}):
                frame = await json_peer.frame_in()
                assert frame is not None
                assert int(frame.encoding) == 0
                assert await asyncio.sleep(0, result=True)
                from asyncapy.codecs import JSON

                assert JSON.decode(frame.payload) == expected
            await json_peer.close()

    arun(main())


def test_session_limit_per_address(arun: Runner[Any]) -> None:
    server = echo_server(session_limit=2)

    async def main() -> None:
        async with serving(server):
            first, second = await Peer.connect(server.port), await Peer.connect(server.port)
            for peer in (first, second):
                await peer.send({"hi": 1})
                assert await peer.recv() == {"hi": 1}
            third = await Peer.connect(server.port)
            assert await third.recv_error() == "ERR_SESSION_LIMIT_REACHED"
            assert await third.closed()
            await first.close()
            for _ in range(100):  # the server notices the close
                if len(server.sessions) < 2:
                    break
                await asyncio.sleep(0.01)
            fourth = await Peer.connect(server.port)
            await fourth.send({"hi": 4})
            assert await fourth.recv() == {"hi": 4}
            await second.close()
            await fourth.close()

    arun(main())


def test_max_connections(arun: Runner[Any]) -> None:
    server = echo_server(max_connections=1)

    async def main() -> None:
        async with serving(server):
            first = await Peer.connect(server.port)
            await first.send({"a": 1})
            assert await first.recv() == {"a": 1}
            second = await Peer.connect(server.port)
            assert await second.recv_error() == "ERR_SERVER_BUSY"
            assert await second.closed()
            await first.close()

    arun(main())
    assert server.stats.refused == 1


def test_client_and_session_objects(arun: Runner[Any]) -> None:
    server = make_server()
    seen: dict[str, Any] = {}

    @server.add_handler()
    async def inspect(client: Client, packet: Packet) -> None:
        session = client.session
        seen["address"] = client.address
        seen["session"] = session
        seen["same_client"] = session.get_client() is client
        seen["encoding"] = (client.encoding, packet.encoding)
        seen["sender"] = packet.sender is client
        seen["sessions"] = len(client.get_sessions())
        if packet.get("close"):
            await session.close()
        else:
            await client.send({"ok": True})

    async def main() -> None:
        async with serving(server):
            a, b = await Peer.connect(server.port), await Peer.connect(server.port)
            await a.send({"x": 1}, encoding=1)
            assert await a.recv() == {"ok": True}
            assert seen["sessions"] == 2
            await b.send({"close": True})
            assert await b.closed()
            await a.close()

    arun(main())
    assert seen["address"] == "127.0.0.1"
    assert seen["same_client"]
    assert seen["sender"]
    assert seen["encoding"] == ("json", "json")
    assert len(str(seen["session"].session_id)) == 36
    assert seen["session"].session_id.version == 4


# -- timeouts


def test_idle_connection_times_out(arun: Runner[Any]) -> None:
    server = echo_server(timeout=0.3)

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"a": 1})
            assert await peer.recv() == {"a": 1}
            loop = asyncio.get_running_loop()
            start = loop.time()
            assert await peer.recv_error(timeout=3) == "ERR_TIMED_OUT"
            assert 0.2 <= loop.time() - start <= 2.5
            assert await peer.closed()

    arun(main())
    assert server.stats.timeouts == 1


def test_a_partial_frame_does_not_hold_the_timeout_off(arun: Runner[Any]) -> None:
    server = echo_server(timeout=0.3)

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            frame = peer.frame({"slow": "loris"})
            reply = asyncio.create_task(peer.recv_error(timeout=3))
            with contextlib.suppress(ConnectionError):
                for byte in frame[:-1]:  # trickle, never completing the frame
                    if reply.done():
                        break
                    await peer.send_raw(bytes([byte]))
                    await asyncio.sleep(0.03)
            assert await reply == "ERR_TIMED_OUT"
            assert await peer.closed()

    arun(main())


def test_a_slow_handler_is_not_a_timeout(arun: Runner[Any]) -> None:
    server = make_server(timeout=0.2)

    @server.add_handler()
    async def slow(client: Client, packet: Packet) -> None:
        await asyncio.sleep(0.5)
        await client.send({"done": True})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"a": 1})
            assert await peer.recv(timeout=3) == {"done": True}
            assert await peer.recv_error(timeout=3) == "ERR_TIMED_OUT"  # idle again: now it is
            assert await peer.closed()

    arun(main())


# -- a misbehaving peer


def test_abrupt_disconnect_mid_handler_harms_nobody(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    finished = asyncio.Event

    @server.add_handler()
    async def slow(client: Client, packet: Packet) -> None:
        if packet.get("slow"):
            await asyncio.sleep(0.1)
        await client.send({"n": packet["n"]})

    async def main() -> None:
        async with serving(server):
            leaver = await Peer.connect(server.port)
            await leaver.send({"slow": True, "n": 0})
            leaver.writer.transport.abort()
            stayer = await Peer.connect(server.port)
            for n in range(5):
                await stayer.send({"n": n})
                assert await stayer.recv() == {"n": n}
            await asyncio.sleep(0.2)  # the slow handler finds its peer gone
            await stayer.close()

    arun(main())
    assert finished is asyncio.Event
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_back_pressure_stops_handling_while_the_peer_does_not_read(arun: Runner[Any]) -> None:
    server = make_server(write_buffer_size=64 * 1024)
    handled: list[int] = []
    big = "x" * (256 * 1024)

    @server.add_handler()
    async def flood(client: Client, packet: Packet) -> None:
        handled.append(packet["i"])
        await client.send({"i": packet["i"], "pad": big})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            peer.writer.transport.set_write_buffer_limits(high=1 << 24)
            peer.writer.write(b"".join(peer.frame({"i": i}) for i in range(200)))
            await asyncio.sleep(0.5)  # we read nothing meanwhile
            assert len(handled) < 100, "the server kept handling for a peer that does not read"
            got = [(await peer.recv(timeout=10))["i"] for _ in range(200)]
            assert got == list(range(200))
            await peer.close()

    arun(main())


# -- TLS


def test_tls_with_a_generated_certificate(arun: Runner[Any], tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    import ssl

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, cafile = tmp_path / "server.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    server = echo_server(certfile=str(certfile))
    assert server.tls

    async def main() -> None:
        async with serving(server):
            client_ctx = ssl.create_default_context(cafile=str(cafile))
            peer = await Peer.connect(server.port, ssl=client_ctx)
            await peer.send({"secure": True})
            assert await peer.recv() == {"secure": True}
            await peer.close()
            # a client that does not trust the CA is refused by its own check
            with pytest.raises(ssl.SSLCertVerificationError):
                await Peer.connect(server.port, ssl=ssl.create_default_context())
            # plain TCP against a TLS port gets no AsyncAProto reply
            plain = await Peer.connect(server.port)
            await plain.send({"a": 1})
            assert await plain.closed()

    arun(main())


# -- hostile input: random bytes on many connections never hurt the others


def test_byte_soup_from_many_peers_leaves_the_server_serving(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = echo_server(max_packet_size=4096, timeout=2)
    rng = random.Random(2026)

    def soup() -> bytes:
        # Mostly valid-looking frames with damaged parts, and raw noise.
        parts = []
        for _ in range(rng.randint(1, 8)):
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
            if rng.random() < 0.5:
                body = b'{"k": ' + body + b"}"
            length = len(body) + 2 if rng.random() < 0.8 else rng.randint(0, 9000)
            parts.append(
                length.to_bytes(4, "big")
                + bytes([rng.choice([22, 22, 22, 21]), rng.choice([0, 1, 1, 7])])
                + body
            )
        return b"".join(parts)

    async def hostile() -> None:
        peer = await Peer.connect(server.port)
        data = soup()
        with contextlib.suppress(ConnectionError):
            for i in range(0, len(data), rng.randint(1, 64)):
                await peer.send_raw(data[i : i + 64])
        await peer.close()

    async def main() -> None:
        async with serving(server):
            honest = await Peer.connect(server.port)
            for round_ in range(5):
                await asyncio.gather(*(hostile() for _ in range(20)))
                await honest.send({"round": round_})
                assert await honest.recv() == {"round": round_}
            await honest.close()

    arun(main())
    assert server.stats.rejected_frames > 0  # the soup was noticed, frame by frame
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
