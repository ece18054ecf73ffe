"""asyncapy.testing: the TestClient drives a real server over a socket pair."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from asyncapy import Server
from asyncapy.core import Client, Packet
from asyncapy.errors import ConnectionClosedError, NotConnectedError
from asyncapy.filters import Filters
from asyncapy.protocol import Encoding, encode_frame
from asyncapy.testing import BlockingTestClient, TestClient, TestConnection
from tests.conftest import LOOPS, Runner


class Recording(Server):
    """A server that records its hooks, with an echo handler and a few others."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(port=0, **kwargs)
        self.calls: list[str] = []
        self.threads: set[int] = set()
        self.release: asyncio.Event | None = None
        self.entered: asyncio.Event | None = None
        self.register_handler(self.slow, Filters.Fields(method="^slow$"))
        self.register_handler(self.silent, Filters.Fields(method="^silent$"))
        self.register_handler(self.bye, Filters.Fields(method="^bye$"))
        self.register_handler(self.local, Filters.Ip("10.0.0.0/8"))
        self.register_handler(self.echo)

    async def setup(self) -> None:
        self.calls.append("setup")
        self.release = asyncio.Event()  # on the test's loop
        self.entered = asyncio.Event()

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    async def echo(self, client: Client, packet: Packet) -> None:
        self.threads.add(threading.get_ident())
        await client.send(packet)

    async def slow(self, client: Client, packet: Packet) -> None:
        assert self.release is not None
        assert self.entered is not None
        self.entered.set()
        await self.release.wait()
        await client.send({"slow": "done"})

    async def silent(self, client: Client, packet: Packet) -> None:
        pass

    async def bye(self, client: Client, packet: Packet) -> None:
        await client.send({"bye": True}, close=True)

    async def local(self, client: Client, packet: Packet) -> None:
        await client.send({"local": client.address, "port": client.port})


def error_of(reply: dict[Any, Any]) -> str:
    assert reply.get("status") == "failure", reply
    code: str = reply["error"]
    return code


# -- dicts, codecs, raw bytes


def test_a_dict_goes_through_the_real_server_and_back(arun: Runner[Any]) -> None:
    server = Recording()

    async def scenario() -> None:
        async with TestClient(server) as client:
            await client.send({"method": "echo", "n": [1, 2.5, "x"]})
            assert await client.receive() == {"method": "echo", "n": [1, 2.5, "x"]}
            await client.send('{"as": "json text"}')
            assert await client.receive() == {"as": "json text"}
            assert [s.session_id for s in server.sessions] == [client.session.session_id]
            assert client.address == ("127.0.0.1", 50000)

    arun(scenario())
    assert server.sessions == []
    assert server.stats.connections == 1


def test_ziproto_fixes_the_session_encoding(arun: Runner[Any]) -> None:
    server = Recording()

    async def scenario() -> None:
        async with TestClient(server, encoding="ziproto") as client:
            await client.send({"method": "echo", "b": b"\x00\xff"})
            frame = await client.receive_frame()
            assert frame.encoding is Encoding.ZIPROTO
            await client.send({"method": "echo", "then": "json"}, encoding="json")
            frame = await client.receive_frame()
            assert frame.encoding is Encoding.ZIPROTO  # the session's encoding
            assert client.session.client.encoding == "ziproto"

    arun(scenario())


def test_raw_bytes_split_anywhere_and_raw_replies(arun: Runner[Any]) -> None:
    server = Recording(header_size=2, byteorder="little")

    async def scenario() -> None:
        async with TestClient(server) as client:
            frame = client.frame({"method": "echo"})
            assert frame == encode_frame(b'{"method":"echo"}', 0, header_size=2, byteorder="little")
            two = frame + frame
            for piece in (two[:1], two[1:5], two[5:]):
                await client.send_raw(piece)
            assert await client.receive_raw() == frame
            assert await client.receive() == {"method": "echo"}

    arun(scenario())


Build = Callable[[TestConnection], bytes]


@pytest.mark.parametrize(
    ("build", "code"),
    [
        pytest.param(lambda c: c.frame({"a": 1}, version=21), "ERR_HEADER_INVALID", id="version"),
        pytest.param(lambda c: c.frame({"a": 1}, encoding=7), "ERR_HEADER_INVALID", id="encoding"),
        pytest.param(lambda c: c.frame(b"not json"), "ERR_REQUEST_MALFORMED", id="not-json"),
        pytest.param(lambda c: c.frame(b"[1, 2]"), "ERR_REQUEST_MALFORMED", id="not-a-map"),
        pytest.param(
            lambda c: c.frame(b"\x92\x01\x02", encoding="ziproto"),
            "ERR_REQUEST_MALFORMED",
            id="ziproto-array",
        ),
        pytest.param(
            lambda c: c.frame(b"abc", length=4)[:-1], "ERR_REQUEST_MALFORMED", id="length-below-5"
        ),
    ],
)
def test_a_malformed_frame_gets_its_code_and_the_session_goes_on(build: Build, code: str) -> None:
    server = Recording()

    async def scenario() -> None:
        async with TestClient(server) as client:
            await client.send_raw(build(client))
            assert error_of(await client.receive()) == code
            await client.send({"still": "open"})
            assert await client.receive() == {"still": "open"}
            assert not client.closed

    asyncio.run(scenario())
    assert server.stats.rejected_frames == 1


def test_too_large_a_content_length_is_answered_then_closed(arun: Runner[Any]) -> None:
    server = Recording(max_packet_size=1024)

    async def scenario() -> None:
        async with TestClient(server) as client:
            await client.send_raw(client.frame({"a": 1}, length=1025))
            assert error_of(await client.receive()) == "ERR_PACKET_TOO_LARGE"
            await client.wait_closed()
            assert client.closed
            assert server.sessions == []
            with pytest.raises(ConnectionClosedError, match="closed the connection"):
                await client.receive()
            with pytest.raises(ConnectionClosedError):
                await client.send({"a": 1})

    arun(scenario())


def test_frame_refuses_what_its_header_cannot_hold() -> None:
    client = TestClient(Recording(header_size=1))
    with pytest.raises(ValueError, match="Content-Length 256 does not fit 1 bytes"):
        client.frame({"a": 1}, length=256)
    with pytest.raises(ValueError, match="range"):
        client.frame({"a": 1}, version=256)
    with pytest.raises(ValueError, match="encoding"):
        client.frame({"a": 1}, encoding="xml")
    with pytest.raises(ValueError, match="timeout"):
        TestClient(Recording(), timeout=0)
    with pytest.raises(NotConnectedError, match="async with"):
        asyncio.run(client.receive())


# -- closing, timeouts


def test_a_handler_that_closes_is_seen_as_closed(arun: Runner[Any]) -> None:
    server = Recording()

    async def scenario() -> None:
        async with TestClient(server) as client:
            await client.send({"method": "bye"})
            assert await client.receive() == {"bye": True}  # the reply before the close
            with pytest.raises(ConnectionClosedError):
                await client.receive()
            assert client.closed
            await client.wait_closed()
            assert server.sessions == []
            half = await client.connect()
            await half.send({"method": "echo", "then": "eof"})
            await half.send_eof()  # the server answers what it read, then closes
            assert await half.receive() == {"method": "echo", "then": "eof"}
            await half.wait_closed()
            with pytest.raises(ConnectionClosedError):
                await half.send_eof()

    arun(scenario())


def test_receive_times_out_with_a_clear_error_and_loses_nothing(arun: Runner[Any]) -> None:
    server = Recording()

    async def scenario() -> None:
        async with TestClient(server, timeout=0.1) as client:
            await client.send({"method": "silent"})
            with pytest.raises(TimeoutError, match=r"no reply from the server in 0\.1 s"):
                await client.receive()
            await client.send({"method": "slow"})
            with pytest.raises(TimeoutError):
                await client.receive()
            assert server.release is not None
            server.release.set()
            assert await client.receive() == {"slow": "done"}
            with pytest.raises(TimeoutError, match="did not close"):
                await client.wait_closed()

    arun(scenario())


def test_send_times_out_while_the_server_reads_nothing(arun: Runner[Any]) -> None:
    server = Recording(max_pending=1)

    async def scenario() -> None:
        async with TestClient(server, timeout=0.2) as client:
            await client.send({"method": "slow"})  # the server stops reading after one more
            many = client.frame({"method": "echo", "pad": "x" * 1000}) * 2000  # 2 MB
            with pytest.raises(TimeoutError, match=r"the server read nothing in 0\.2 s"):
                await client.send_raw(many)
            assert server.release is not None
            server.release.set()
            client.timeout = 5
            assert await client.receive() == {"slow": "done"}
            for _ in range(2000):
                assert (await client.receive())["pad"] == "x" * 1000

    arun(scenario())


def test_the_server_idle_timeout_runs(arun: Runner[Any]) -> None:
    server = Recording(timeout=0.1)

    async def scenario() -> None:
        async with TestClient(server) as client:
            assert error_of(await client.receive()) == "ERR_TIMED_OUT"
            await client.wait_closed()

    arun(scenario())
    assert server.stats.timeouts == 1


# -- several clients, addresses


def test_two_clients_have_two_sessions(arun: Runner[Any]) -> None:
    server = Recording()

    async def scenario() -> None:
        async with TestClient(server) as first:
            second = await first.connect(encoding="ziproto")
            assert second.address == ("127.0.0.1", 50001)
            assert second.session.session_id != first.session.session_id
            assert len(server.sessions) == 2
            await second.send({"to": 2})
            await first.send({"to": 1})
            assert await first.receive() == {"to": 1}
            assert await second.receive() == {"to": 2}
            await second.close()
            assert second.closed
            assert [s.session_id for s in server.sessions] == [first.session.session_id]
            await second.close()  # idempotent
            await first.send({"to": 1})
            assert await first.receive() == {"to": 1}

    arun(scenario())


def test_the_peer_address_is_what_filters_and_limits_see(arun: Runner[Any]) -> None:
    server = Recording(session_limit=1)

    async def scenario() -> None:
        async with TestClient(server, address=("10.1.2.3", 4242)) as client:
            await client.send({"method": "echo"})
            assert await client.receive() == {"local": "10.1.2.3", "port": 4242}  # Filters.Ip
            same = await client.connect()
            assert error_of(await same.receive()) == "ERR_SESSION_LIMIT_REACHED"
            await same.wait_closed()
            other = await client.connect(address="192.0.2.7")
            await other.send({"method": "echo"})
            assert await other.receive() == {"method": "echo"}

    arun(scenario())
    assert server.stats.refused == 1


# -- lifecycle


def test_setup_and_shutdown_run_once_each(arun: Runner[Any]) -> None:
    server = Recording()

    async def scenario() -> None:
        async with TestClient(server) as client:
            assert server.calls == ["setup"]
            await client.connect()
            with pytest.raises(RuntimeError, match="serving already"):
                await TestClient(server).__aenter__()
        assert server.calls == ["setup", "shutdown"]
        assert client.closed

    arun(scenario())
    assert server.sessions == []


def test_shutdown_runs_when_the_body_raises_and_the_server_serves_again() -> None:
    server = Recording(shutdown_timeout=0.1)

    async def failing() -> None:
        async with TestClient(server) as client:
            await client.send({"method": "slow"})  # still running at the stop
            raise KeyError("the test failed")

    async def again() -> dict[Any, Any]:
        async with TestClient(server) as client:
            await client.send({"again": 1})
            return await client.receive()

    with pytest.raises(KeyError, match="the test failed"):
        asyncio.run(failing())
    assert server.calls == ["setup", "shutdown"]
    assert asyncio.run(again()) == {"again": 1}
    assert server.calls == ["setup", "shutdown", "setup", "shutdown"]


def test_a_failing_setup_releases_the_server() -> None:
    class Failing(Recording):
        async def setup(self) -> None:
            await super().setup()
            raise OSError("no database")

    server = Failing()

    async def scenario() -> None:
        async with TestClient(server):
            pass  # pragma: no cover

    for _ in range(2):  # the server is free again after the failure
        with pytest.raises(OSError, match="no database"):
            asyncio.run(scenario())
    assert server.calls == ["setup", "setup"]  # no shutdown: as serve()


def test_server_stop_in_a_test_closes_gracefully(arun: Runner[Any]) -> None:
    server = Recording()

    async def scenario() -> None:
        async with TestClient(server) as client:
            await client.send({"method": "slow"})
            await client.send({"method": "echo", "read": "before the stop"})
            assert server.entered is not None
            assert server.release is not None
            await asyncio.wait_for(server.entered.wait(), 5)  # the server read both
            server.stop()
            server.release.set()
            assert await client.receive() == {"slow": "done"}
            assert await client.receive() == {"method": "echo", "read": "before the stop"}
            await client.wait_closed()
            assert server.calls == ["setup"]
        assert server.calls == ["setup", "shutdown"]

    arun(scenario())


# -- the blocking wrapper


@pytest.mark.parametrize("loop", LOOPS)
def test_the_blocking_client_runs_the_server_in_the_test_thread(loop: str) -> None:
    server = Recording()
    with BlockingTestClient(server, loop=loop) as client:
        client.send({"method": "echo", "x": 1})
        assert client.receive() == {"method": "echo", "x": 1}
        other = client.connect(encoding="ziproto")
        other.send({"y": 2})
        assert other.receive_frame().encoding is Encoding.ZIPROTO
        client.timeout = 0.1
        client.send({"method": "silent"})
        with pytest.raises(TimeoutError):
            client.receive()
        client.send_raw(client.frame(b"{}}"))
        assert error_of(client.receive()) == "ERR_REQUEST_MALFORMED"
        loop_type = client.run(_loop_module())
        assert loop_type == ("uvloop" if loop == "uvloop" else "asyncio")
        client.send({"method": "bye"})
        assert client.receive_raw() == client.frame({"bye": True})
        client.wait_closed()
        assert client.closed
        assert server.calls == ["setup"]
    assert server.calls == ["setup", "shutdown"]
    assert server.threads == {threading.get_ident()}


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_the_blocking_client_runs_shutdown_when_the_body_raises() -> None:
    server = Recording()

    def body() -> None:
        with BlockingTestClient(server, loop="asyncio") as client:
            client.send({"x": 1})
            raise KeyError("the test failed")

    with pytest.raises(KeyError, match="the test failed"):
        body()
    assert server.calls == ["setup", "shutdown"]


def test_the_blocking_client_refuses_a_running_loop() -> None:
    server = Recording()

    async def inside() -> None:
        with BlockingTestClient(server, loop="asyncio"):
            pass  # pragma: no cover

    with pytest.raises(RuntimeError, match="running event loop"):
        asyncio.run(inside())
    assert server.calls == []
