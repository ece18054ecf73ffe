"""max_connection_age: aged connections close at a frame boundary; clients reconnect."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from asyncapy import Server
from asyncapy._connection import connection_age
from asyncapy.client import AsyncClient, Client
from asyncapy.config import Settings
from asyncapy.core import Client as Peer_
from asyncapy.errors import ConnectionClosedError
from tests.conftest import Runner
from tests.helpers import Peer, echo_server, server_thread, serving


def test_jitter_spreads_within_its_bounds() -> None:
    settings = Settings(max_connection_age=10.0, max_connection_age_jitter=0.1)
    draw = random.Random(7).uniform
    ages = [connection_age(settings, draw) for _ in range(1000)]
    assert all(ages)
    values = [age for age in ages if age is not None]
    assert 9.0 <= min(values) < 9.1
    assert 10.9 < max(values) <= 11.0
    exact = Settings(max_connection_age=10.0, max_connection_age_jitter=0.0)
    assert {connection_age(exact, draw) for _ in range(10)} == {10.0}
    assert connection_age(Settings(), draw) is None


def test_a_blocking_client_crosses_several_ages_without_a_failure() -> None:
    server = echo_server(max_connection_age=0.3, close_timeout=0.5)
    with server_thread(server), Client(tls=False, timeout=5, reconnect=True) as client:
        client.connect("127.0.0.1", server.port)
        deadline = time.monotonic() + 2.0
        sent = 0
        while time.monotonic() < deadline:
            client.send({"n": sent})
            assert client.receive() == {"n": sent}
            sent += 1
        assert client.reconnects >= 4
        assert server.stats.aged >= 4
        assert server.stats.age_resets == 0
        assert sent > 100


def test_an_async_client_crosses_several_ages_without_a_failure(arun: Runner[Any]) -> None:
    async def main() -> None:
        server = echo_server(max_connection_age=0.3, close_timeout=0.5)
        async with serving(server), AsyncClient(tls=False, timeout=5, reconnect=True) as client:
            await client.connect("127.0.0.1", server.port)
            deadline = time.monotonic() + 2.0
            sent = 0
            while time.monotonic() < deadline:
                await client.send({"n": sent})
                assert await client.receive() == {"n": sent}
                sent += 1
            assert client.reconnects >= 4
            assert server.stats.aged >= 4

    arun(main())


def slow_server(seconds: float, **settings: Any) -> Server:
    server = Server(addr="127.0.0.1", port=0, **settings)

    @server.add_handler()
    async def slow(client: Peer_, packet: Any) -> None:
        await asyncio.sleep(seconds)
        await client.send(packet)

    return server


def test_an_in_flight_request_is_answered_before_the_close(arun: Runner[Any]) -> None:
    async def main() -> None:
        async with serving(slow_server(0.5, max_connection_age=0.2)) as server:
            peer = await Peer.connect(server.port)
            await peer.send({"n": 1})
            assert await peer.recv() == {"n": 1}  # answered though aged at 0.2
            assert await peer.closed(timeout=2)  # then the FIN
            assert server.stats.aged == 1
            assert server.stats.age_resets == 0

    arun(main())


def test_past_the_grace_an_aged_connection_is_reset(arun: Runner[Any]) -> None:
    async def main() -> None:
        settings = {"max_connection_age": 0.2, "max_connection_age_grace": 0.3}
        async with serving(slow_server(5.0, **settings)) as server:
            peer = await Peer.connect(server.port)
            await peer.send({"n": 1})
            started = time.monotonic()
            assert await peer.frame_in(timeout=3) is None  # no reply: reset
            assert 0.35 <= time.monotonic() - started < 1.5
            assert server.stats.age_resets == 1
            await peer.close()

    arun(main())


@pytest.mark.parametrize(
    ("age", "closed_by"),
    [(0.2, 0.6), (0.4, 0.8)],
    ids=["short", "longer"],
)
def test_an_idle_connection_closes_after_its_age_and_close_timeout(
    arun: Runner[Any], age: float, closed_by: float
) -> None:
    async def main() -> None:
        server = echo_server(
            max_connection_age=age, max_connection_age_jitter=0.0, close_timeout=0.2
        )
        async with serving(server):
            peer = await Peer.connect(server.port)
            started = time.monotonic()
            assert await peer.closed(timeout=3)
            elapsed = time.monotonic() - started
            assert age + 0.2 - 0.05 <= elapsed <= closed_by + 0.3
            assert server.stats.aged == 1

    arun(main())


def test_no_age_no_close(arun: Runner[Any]) -> None:
    async def main() -> None:
        async with serving(echo_server(close_timeout=0.2)) as server:
            peer = await Peer.connect(server.port)
            assert not await peer.closed(timeout=0.8)
            assert server.stats.aged == 0
            await peer.close()

    arun(main())


def test_without_reconnect_the_close_is_reported(arun: Runner[Any]) -> None:
    """With reconnect=False the close is the caller's to handle: not connected."""

    async def main() -> None:
        server = echo_server(
            max_connection_age=0.1, max_connection_age_jitter=0.0, close_timeout=0.1
        )
        async with serving(server), AsyncClient(tls=False, timeout=5, reconnect=False) as client:
            await client.connect("127.0.0.1", server.port)
            await asyncio.sleep(0.5)

            async def request() -> None:
                await client.send({"n": 1})
                await client.receive()

            with pytest.raises((ConnectionClosedError, ConnectionError, OSError)):
                await request()
            assert client.reconnects == 0

    arun(main())
