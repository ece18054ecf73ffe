"""The stores against real backends: one behavioural suite over memory, SQLite and redis-server.

Also what only a shared store has (two workers, a worker that dies), and
the Redis connection rules (a cancelled or timed-out command drops its
connection; a bounded pool; an unreachable server) and SQLite persistence
across a process restart.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from asyncapy.stores import KeyRecord, Store, StoreError, open_store
from asyncapy.stores.redis import RedisStore
from tests import services
from tests.conftest import Runner

redis_server = services.redis_server

Factory = Callable[..., Store]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def stores_of(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Stores of one backend, all seeing the same data (one file, one Redis prefix)."""
    made: list[Store] = []
    if backend == "memory":
        url = "memory://"
    elif backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'stores.db'}"
    else:
        url = request.getfixturevalue("redis_server").url
    prefix = f"t{uuid.uuid4().hex[:8]}:"

    def make(**options: Any) -> Store:
        if backend == "redis":
            options.setdefault("prefix", prefix)
        store = open_store(url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    yield from stores_of(backend, request, tmp_path)


@asynccontextmanager
async def closing(*stores: Store) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for store in stores:
            await store.aclose()


def rec(digest: str, created: float, **metadata: Any) -> KeyRecord:
    return KeyRecord(digest, f"ak_{digest[:4]}...", metadata, created)


def test_keys_blocking(make_store: Factory) -> None:
    keys = make_store().keys
    a, b = rec("aa" * 32, 2.5, role="admin"), rec("bb" * 32, 1.25, n=[1, {"x": None}])
    assert keys.get(a.digest) is None
    assert keys.add(a) is True
    assert keys.add(rec(a.digest, 9.0)) is False
    assert keys.get(a.digest) == a
    assert keys.add(b)
    assert keys.records() == [b, a]  # oldest first
    assert keys.set_metadata(a.digest, {"role": "user"})
    assert keys.get(a.digest) == rec(a.digest, 2.5, role="user")
    assert not keys.set_metadata("cc" * 32, {})
    c = rec("cc" * 32, 3.0, new=True)
    assert keys.replace(a.digest, c)
    assert keys.get(a.digest) is None
    assert keys.get(c.digest) == c
    assert not keys.replace(a.digest, rec("dd" * 32, 4.0))
    with pytest.raises(StoreError, match="already stored"):
        keys.replace(c.digest, b)
    assert keys.get(c.digest) == c  # no change
    assert keys.replace(c.digest, rec(c.digest, 3.0, same=1))  # to itself
    assert keys.delete(b.digest)
    assert not keys.delete(b.digest)
    assert keys.records() == [rec(c.digest, 3.0, same=1)]


def test_keys_async_and_what_they_refuse(make_store: Factory, arun: Runner[Any]) -> None:
    store = make_store()
    keys = store.keys

    async def main() -> None:
        async with closing(store):
            a = rec("aa" * 32, 1.0, k="v")
            assert await keys.aget(a.digest) is None
            assert await keys.aadd(a)
            assert not await keys.aadd(a)
            assert await keys.aget(a.digest) == a
            fetched = await keys.aget(a.digest)
            assert fetched is not None
            fetched.metadata["k"] = "changed"  # type: ignore[index]
            assert await keys.aget(a.digest) == a  # a read is a copy
            assert await keys.aset_metadata(a.digest, {"k": 2})
            b = rec("bb" * 32, 0.5)
            assert await keys.areplace(a.digest, b)
            assert await keys.arecords() == [b]
            assert not await keys.areplace(a.digest, b)
            assert await keys.adelete(b.digest)
            assert await keys.arecords() == []
            for bad in ({"s": {1, 2}}, {"f": math.nan}, {"b": b"x"}):
                with pytest.raises(TypeError):
                    await keys.aadd(rec("ee" * 32, 1.0, **bad))
            with pytest.raises(TypeError):
                await keys.aset_metadata(a.digest, ["not", "a", "mapping"])  # type: ignore[arg-type]
            assert await keys.arecords() == []
            if store.shared:  # SQLite and Redis: a blocking method on the loop's thread
                with pytest.raises(StoreError, match="event loop is running"):
                    keys.get(a.digest)

    arun(main())


def test_gcra(make_store: Factory, arun: Runner[Any]) -> None:
    store = make_store()
    rates = store.rates

    async def main() -> None:
        async with closing(store):
            got = [await rates.aconsume("ip:1", 0.4, 3) for _ in range(4)]
            assert [(d.allowed, d.remaining) for d in got] == [
                (True, 2),
                (True, 1),
                (True, 0),
                (False, 0),
            ]
            assert 0.3 < got[3].retry_after <= 0.4
            assert got[3].retry_after > 0.3
            await asyncio.sleep(got[3].retry_after + 0.02)
            again = await rates.aconsume("ip:1", 0.4, 3)
            assert again.allowed
            assert again.remaining == 0
            assert not (await rates.aconsume("ip:1", 0.4, 3)).allowed
            assert (await rates.aconsume("ip:2", 0.4, 3)).remaining == 2  # keys are independent
            await rates.areset("ip:1")
            assert (await rates.aconsume("ip:1", 0.4, 3)).remaining == 2
            with pytest.raises(ValueError, match="burst"):
                await rates.aconsume("ip:1", 0.4, 0)

    arun(main())


def test_sessions_of_one_worker(make_store: Factory, arun: Runner[Any]) -> None:
    store = make_store()
    sessions = store.sessions

    async def main() -> None:
        async with closing(store):
            with pytest.raises(StoreError, match="before astart"):
                await sessions.aacquire("10.0.0.1", 2)
            await sessions.astart(f"w-{uuid.uuid4().hex}", 5.0)
            # limit - 1, limit, limit + 1
            assert [await sessions.aacquire("10.0.0.1", 3) for _ in range(4)] == [True] * 3 + [
                False
            ]
            assert await sessions.acount("10.0.0.1") == 3
            assert await sessions.aacquire("10.0.0.2", 3)
            await sessions.arelease("10.0.0.1")
            assert await sessions.acount("10.0.0.1") == 2
            assert await sessions.aacquire("10.0.0.1", 3)
            for _ in range(5):  # never below zero
                await sessions.arelease("10.0.0.1")
            assert await sessions.acount("10.0.0.1") == 0
            assert await sessions.aacquire("10.0.0.1", 1)
            assert not await sessions.aacquire("10.0.0.1", 0)
            await sessions.aheartbeat()
            assert await sessions.acount("10.0.0.1") == 1
            await sessions.astop()
            with pytest.raises(StoreError):
                await sessions.acount("10.0.0.1")

    arun(main())


@pytest.fixture(params=["sqlite", "redis"])
def shared_backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def make_shared(
    shared_backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Factory]:
    yield from stores_of(shared_backend, request, tmp_path)


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(20):
            return await coro

    return asyncio.run(bounded())


def test_two_workers_never_exceed_the_limit_together(make_shared: Factory) -> None:
    one, two = make_shared(), make_shared()

    async def main() -> None:
        async with closing(one, two):
            await one.sessions.astart("w1", 5.0)
            await two.sessions.astart("w2", 5.0)
            tries = [s.sessions.aacquire("10.0.0.9", 7) for s in (one, two) for _ in range(20)]
            results = await asyncio.gather(*tries)
            assert sum(results) == 7
            assert await one.sessions.acount("10.0.0.9") == 7
            assert await two.sessions.acount("10.0.0.9") == 7
            await one.sessions.astop()  # its sessions stop counting at once
            assert await two.sessions.acount("10.0.0.9") == sum(results[20:])
            decisions = await asyncio.gather(
                *(s.rates.aconsume("k", 60.0, 5) for s in (one, two) * 10)
            )
            assert sum(d.allowed for d in decisions) == 5  # GCRA is atomic across workers too
            await two.sessions.astop()

    run(main())


def test_a_worker_that_stops_heartbeating_stops_counting_after_ttl(make_shared: Factory) -> None:
    one, two = make_shared(), make_shared()

    async def main() -> None:
        async with closing(one, two):
            await one.sessions.astart("dying", 0.3)
            await two.sessions.astart("alive", 5.0)
            assert all([await one.sessions.aacquire("10.0.0.5", 4) for _ in range(3)])
            assert await two.sessions.acount("10.0.0.5") == 3
            assert await two.sessions.aacquire("10.0.0.5", 4)
            assert not await two.sessions.aacquire("10.0.0.5", 4)
            await asyncio.sleep(0.45)  # "dying" misses its heartbeats
            assert await two.sessions.acount("10.0.0.5") == 1
            assert await two.sessions.aacquire("10.0.0.5", 4)  # also purges "dying"
            # It was only slow: its heartbeat writes its own counts back.
            await one.sessions.aheartbeat()
            assert await two.sessions.acount("10.0.0.5") == 5
            await one.sessions.astop()
            await two.sessions.astop()

    run(main())


# --- Redis only ---------------------------------------------------------------


def admin(server: services.RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)


def test_redis_unreachable_is_a_store_error_within_the_command_timeout() -> None:
    store = RedisStore(f"redis://:secret@127.0.0.1:{services.free_port()}/0", command_timeout=0.5)

    async def main() -> None:
        async with closing(store):
            start = time.monotonic()
            with pytest.raises(StoreError) as info:
                await store.keys.aget("aa")
            assert time.monotonic() - start < 0.5
            assert "secret" not in str(info.value)
            assert "redis://:***@127.0.0.1" in str(info.value)

    run(main())
    with pytest.raises(StoreError):
        store.keys.get("aa")
    store.close()


def test_redis_a_cancelled_command_drops_its_connection(redis_server: services.RedisServer) -> None:
    """Cancel a command to a paused server; the next one gets its own reply, not the stale one."""
    store = RedisStore(redis_server.url, prefix=f"c{uuid.uuid4().hex[:6]}:", pool_size=1)
    first, second = rec("aa" * 32, 1.0, which="first"), rec("bb" * 32, 2.0, which="second")
    store.keys.add(first)
    store.keys.add(second)
    control = admin(redis_server)

    async def main() -> None:
        async with closing(store):
            await store.keys.aget(first.digest)  # the pool's one connection is open
            control.client_pause(400, all=True)
            task = asyncio.create_task(store.keys.aget(first.digest))
            await asyncio.sleep(0.1)  # sent; its reply comes when the pause ends
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await store.keys.aget(second.digest) == second
            assert await store.keys.aget(first.digest) == first

    try:
        run(main())
    finally:
        control.client_unpause()
        control.close()
        store.close()


def test_redis_a_timed_out_command_drops_its_connection(redis_server: services.RedisServer) -> None:
    store = RedisStore(
        redis_server.url, prefix=f"c{uuid.uuid4().hex[:6]}:", pool_size=1, command_timeout=0.15
    )
    first, second = rec("aa" * 32, 1.0, which="first"), rec("bb" * 32, 2.0, which="second")
    store.keys.add(first)
    store.keys.add(second)
    control = admin(redis_server)

    async def main() -> None:
        async with closing(store):
            await store.keys.aget(first.digest)
            control.client_pause(350, all=True)
            start = time.monotonic()
            with pytest.raises(StoreError, match="Timeout"):
                await store.keys.aget(first.digest)
            assert 0.1 < time.monotonic() - start < 0.3
            await asyncio.sleep(0.3)
            assert await store.keys.aget(second.digest) == second

    try:
        run(main())
    finally:
        control.close()
        store.close()


def test_redis_pool_bound(redis_server: services.RedisServer) -> None:
    store = RedisStore(
        redis_server.url, prefix="p:", pool_size=1, pool_timeout=0.1, command_timeout=2
    )
    control = admin(redis_server)

    async def main() -> None:
        async with closing(store):
            await store.keys.aget("warm")
            control.client_pause(400, all=True)
            slow = asyncio.create_task(store.keys.aget("one"))
            await asyncio.sleep(0.02)
            start = time.monotonic()
            with pytest.raises(StoreError, match="No connection available"):
                await store.keys.aget("two")
            assert time.monotonic() - start < 0.3
            assert await slow is None  # the first one, on the pool's only connection, completes

    try:
        run(main())
    finally:
        control.close()
        store.close()


def test_redis_pool_is_per_event_loop(redis_server: services.RedisServer) -> None:
    store = RedisStore(redis_server.url, prefix="l:")
    loops = [asyncio.new_event_loop(), asyncio.new_event_loop()]
    try:
        loops[0].run_until_complete(store.keys.aget("x"))
        first = store._pool
        loops[1].run_until_complete(store.keys.aget("x"))
        assert store._pool is not first
        loops[0].run_until_complete(asyncio.sleep(0.01))  # let the first loop close what it held
        loops[1].run_until_complete(store.aclose())
    finally:
        for loop in loops:
            loop.close()


# --- SQLite only ---------------------------------------------------------------


WRITER = """
import sys
from asyncapy.stores import KeyRecord, open_store
store = open_store(sys.argv[1])
assert store.keys.add(KeyRecord("ff" * 32, "ak_ff...", {"from": "child"}, 7.0))
store.close()
"""


def test_sqlite_data_survives_closing_and_a_process_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    store = open_store(url)
    a = rec("aa" * 32, 1.0, x=1)
    store.keys.add(a)
    store.close()
    again = open_store(url)
    assert again.keys.records() == [a]
    again.close()
    subprocess.run([sys.executable, "-c", WRITER, url], check=True, timeout=20)
    reader = (
        "import sys; from asyncapy.stores import open_store; "
        "print(open_store(sys.argv[1]).keys.records())"
    )
    out = subprocess.run(
        [sys.executable, "-c", reader, url], check=True, timeout=20, capture_output=True, text=True
    )
    assert "{'from': 'child'}" in out.stdout
    assert "{'x': 1}" in out.stdout


def test_sqlite_busy_timeout(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'locked.db'}"
    store = open_store(url, busy_timeout=0.2)
    store.keys.add(rec("aa" * 32, 1.0))
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with pytest.raises(StoreError, match=r"busy_timeout 0\.2"):
            store.keys.add(rec("bb" * 32, 2.0))
        assert 0.15 < time.monotonic() - start < 1.5
        assert store.keys.get("aa" * 32) is not None  # WAL: readers do not wait
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.keys.add(rec("bb" * 32, 2.0))
    store.close()
