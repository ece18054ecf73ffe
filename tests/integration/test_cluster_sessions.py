"""A cluster-wide session_limit: two "workers" (Server instances) share one real store.

SQLite always; Redis when ``tests/services.py`` and redis-server are there.
The workers run in this process and in a child process (the one killed).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncapy import Server
from asyncapy.stores import StoreError
from tests.conftest import Runner
from tests.helpers import Peer, echo_server, serving

try:
    from tests.services import free_port, redis_server  # noqa: F401  (a fixture)

    HAVE_SERVICES = True
except ImportError:  # the redis fixture is not committed yet
    HAVE_SERVICES = False

TTL = 1.5


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/cluster.db"
        return
    if not HAVE_SERVICES:
        pytest.skip("tests/services.py (the redis-server fixture) is not there")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis package is not installed")
    yield request.getfixturevalue("redis_server").url


async def admitted(server: Server) -> Peer | None:
    """A connection with a request answered, or None when refused with the session limit."""
    peer = await Peer.connect(server.port)
    await peer.send({"n": 1})
    reply = await peer.recv()
    if reply == {"n": 1}:
        return peer
    assert reply == {"status": "failure", "error": "ERR_SESSION_LIMIT_REACHED"}
    assert await peer.closed()
    return None


async def wait_count(server: Server, expected: int, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while await server.store.sessions.acount("127.0.0.1") != expected:
        assert time.monotonic() < deadline, "the registry did not reach the count"
        await asyncio.sleep(0.02)


def test_the_limit_holds_across_two_workers(arun: Runner[Any], store_url: str) -> None:
    """session_limit=3 over two workers: limit-1, limit admitted; limit+1 refused on either."""

    async def main() -> None:
        first = echo_server(store=store_url, session_limit=3, session_ttl=TTL)
        second = echo_server(store=store_url, session_limit=3, session_ttl=TTL)
        async with serving(first), serving(second):
            peers = [await admitted(first), await admitted(second)]  # limit - 1
            assert all(peers)
            peers.append(await admitted(first))  # limit
            assert peers[-1] is not None
            await wait_count(first, 3)
            assert await admitted(second) is None  # limit + 1, on the other worker
            assert await admitted(first) is None  # and on this one
            assert second.stats.cluster_refused + first.stats.cluster_refused == 2
            leaving = peers[0]
            assert leaving is not None
            await leaving.close()  # one leaves: its place is given back
            await wait_count(first, 2)
            replacement = await admitted(second)
            assert replacement is not None
            for peer in [*peers[1:], replacement]:
                assert peer is not None
                await peer.close()
            await wait_count(first, 0)
            assert first.stats.cluster_errors == second.stats.cluster_errors == 0

    arun(main())


def test_far_over_the_limit(arun: Runner[Any], store_url: str) -> None:
    async def main() -> None:
        first = echo_server(store=store_url, session_limit=1, session_ttl=TTL)
        second = echo_server(store=store_url, session_limit=1, session_ttl=TTL)
        async with serving(first), serving(second):
            held = await admitted(first)
            assert held is not None
            refusals = await asyncio.gather(*(admitted(second) for _ in range(20)))
            assert refusals == [None] * 20
            await held.close()

    arun(main())


WORKER = """
import asyncio, sys
from asyncapy import Server

server = Server(port=0, store=sys.argv[1], session_limit=2, session_ttl=float(sys.argv[2]))

@server.add_handler()
async def echo(client, packet):
    await client.send(packet)

async def main():
    task = asyncio.create_task(server.serve())
    await server.wait_started()
    print(server.port, flush=True)
    await task

asyncio.run(main())
"""


def test_a_killed_workers_sessions_stop_counting_after_session_ttl(
    arun: Runner[Any], store_url: str
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER, store_url, str(TTL)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())

        async def main() -> None:
            other = echo_server(store=store_url, session_limit=2, session_ttl=TTL)
            async with serving(other):
                peers = []
                for _ in range(2):
                    peer = await Peer.connect(port)
                    await peer.send({"n": 1})
                    assert await peer.recv() == {"n": 1}
                    peers.append(peer)
                await wait_count(other, 2)
                assert await admitted(other) is None  # the child holds the limit
                child.kill()
                child.wait(5)
                killed_at = time.monotonic()
                for peer in peers:
                    await peer.close()
                while True:  # bounded: within session_ttl and a margin
                    found = await admitted(other)
                    if found is not None:
                        break
                    assert time.monotonic() - killed_at < TTL + 2.0
                    await asyncio.sleep(0.1)
                assert time.monotonic() - killed_at <= TTL + 1.0
                await found.close()

        arun(main())
    finally:
        child.kill()
        child.wait(5)
        if child.stdout is not None:
            child.stdout.close()


def test_a_registry_that_fails_admits_on_the_local_limit(
    arun: Runner[Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fail-open: a store that cannot be opened freezes no connection."""
    url = f"sqlite:///{tmp_path}/missing-directory/cluster.db"
    server = echo_server(store=url, session_limit=2, session_ttl=TTL)
    with pytest.raises(StoreError):  # the store itself says so...
        arun(server.store.sessions.astart("probe", TTL))

    async def main() -> None:
        async with serving(server):  # ...and the server serves all the same
            first, second = await admitted(server), await admitted(server)
            assert first is not None
            assert second is not None
            assert await admitted(server) is None  # the local limit still holds
            await first.close()
            await second.close()

    with caplog.at_level(logging.WARNING, logger="asyncapy"):
        arun(main())
    assert server.stats.cluster_errors >= 1
    assert any("session registry failed" in r.getMessage() for r in caplog.records)
