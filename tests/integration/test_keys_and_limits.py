"""APIKeyFactory and Filters.APIFactory over SQLite and a real redis-server; Filters.RateLimit."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from asyncapy import Packet, Server
from asyncapy.errors import ErrorCode, Reject
from asyncapy.filters import Filters
from asyncapy.stores import Store, StoreError
from asyncapy.stores.memory import MemoryRateStore, MemoryStore
from asyncapy.testing import TestClient
from asyncapy.util import APIKeyFactory
from tests.helpers import FakePeer
from tests.services import RedisServer, redis_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A shared store's URL: a SQLite file, or a database of the module's redis-server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    client.close()
    yield server.url


def run(coro: Any, *using: Any) -> Any:
    """Run ``coro`` in a new loop; then close the async connections of the stores ``using`` hold.

    (Factories, filters or stores: each loop gets its own Redis pool.)
    """

    async def main() -> Any:
        try:
            return await asyncio.wait_for(coro, 20)
        finally:
            for thing in using:
                store = getattr(thing, "backend", None) or getattr(thing, "store", None) or thing
                await store.aclose()

    return asyncio.run(main())


C: Any = FakePeer("192.0.2.1")


# -- APIKeyFactory over a shared store


def test_a_key_issued_through_one_factory_works_through_another(store_url: str) -> None:
    first, second = APIKeyFactory(store=store_url), APIKeyFactory(store=store_url)
    assert first.is_async

    async def main() -> None:
        key = await first.aissue({"user": "ann"})
        assert await second.aget(key) == {"user": "ann"}
        new = await second.areissue(key)
        assert not await first.acontains(key)
        assert await first.aget(new) == {"user": "ann"}
        await first.aupdate(new, {"user": "bob"})
        assert await second.aget(new) == {"user": "bob"}
        await second.arevoke(new)
        with pytest.raises(KeyError):
            await first.aget(new)

    run(main(), first, second)


def test_blocking_methods_refuse_a_running_loop_but_work_outside(store_url: str) -> None:
    factory = APIKeyFactory(store=store_url)
    key = factory.issue({"n": 1})  # no loop here: allowed
    assert factory.get(key) == {"n": 1}

    async def main() -> None:
        with pytest.raises(StoreError, match="running"):
            factory.get(key)
        assert await factory.aget(key) == {"n": 1}

    run(main(), factory)
    factory.revoke(key)
    factory.backend.close()


def test_sqlite_keys_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    factory = APIKeyFactory(store=url)
    key = factory.issue({"plan": "pro"})
    factory.backend.close()
    again = APIKeyFactory(store=url)
    assert again.get(key) == {"plan": "pro"}
    (record,) = again.backend.keys.records()
    assert record.hint.endswith(key[-4:])
    assert key not in (tmp_path / "k.db").read_bytes().decode("latin-1")  # never in clear


# -- Filters.APIFactory: asynchronous over a shared store, with an optional cache


def packet(**fields: Any) -> Packet:
    return Packet(fields)


def test_the_filter_is_asynchronous_over_a_shared_store_only(store_url: str) -> None:
    assert not Filters.APIFactory(APIKeyFactory(), "key").is_async
    flt = Filters.APIFactory(APIKeyFactory(store=store_url), "key")
    assert flt.is_async
    assert isinstance(flt, Filters.APIFactory)


def test_async_filter_without_cache_sees_revocation_at_once(store_url: str) -> None:
    issuer, checker = APIKeyFactory(store=store_url), APIKeyFactory(store=store_url)
    flt: Any = Filters.APIFactory(checker, "key")

    async def main() -> None:
        key = await issuer.aissue()
        assert await flt.check(C, packet(key=key)) is True
        await issuer.arevoke(key)
        assert await flt.check(C, packet(key=key)) is False
        assert await flt.check(C, packet(key=123)) is False
        assert await flt.check(C, packet()) is False

    run(main(), issuer, checker)


def test_cached_key_stays_valid_elsewhere_for_at_most_cache_ttl(store_url: str) -> None:
    ttl = 0.4
    issuer, checker = APIKeyFactory(store=store_url), APIKeyFactory(store=store_url)
    flt: Any = Filters.APIFactory(checker, "key", cache_ttl=ttl)

    async def main() -> float:
        key = await issuer.aissue()
        assert await flt.check(C, packet(key=key)) is True  # now cached
        revoked = time.monotonic()
        await issuer.arevoke(key)  # through another factory: another process, say
        while await flt.check(C, packet(key=key)):
            assert time.monotonic() - revoked < ttl + 0.5
            await asyncio.sleep(0.02)
        return time.monotonic() - revoked

    took = run(main(), issuer, checker)
    assert 0.1 < took <= ttl + 0.1


def test_revoking_through_the_same_factory_drops_the_cache_at_once(store_url: str) -> None:
    factory = APIKeyFactory(store=store_url)
    flt: Any = Filters.APIFactory(factory, "key", cache_ttl=60)

    async def main() -> None:
        key = await factory.aissue()
        assert await flt.check(C, packet(key=key))
        new = await factory.areissue(key)
        assert not await flt.check(C, packet(key=key))
        assert await flt.check(C, packet(key=new))
        await factory.arevoke(new)
        assert not await flt.check(C, packet(key=new))

    run(main(), factory)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_the_cache_holds_at_most_cache_size_keys(size: int) -> None:
    factory = APIKeyFactory(store="sqlite:///:memory:")
    flt: Any = Filters.APIFactory(factory, "key", cache_ttl=60, cache_size=size)

    async def main() -> None:
        keys = [await factory.aissue() for _ in range(size + 2)]
        for key in keys:
            assert await flt.check(C, packet(key=key))
        assert len(flt._cache) == size
        assert list(flt._cache) == [factory.digest(key) for key in keys[-size:]]

    run(main())


def test_garbage_keys_cost_no_lookup() -> None:
    factory = APIKeyFactory(store="sqlite:///:memory:")
    flt: Any = Filters.APIFactory(factory, "key", cache_ttl=5)
    looked: list[str] = []
    aget = factory.backend.keys.aget

    async def counted(digest: str) -> Any:
        looked.append(digest)
        return await aget(digest)

    factory.backend.keys.aget = counted  # type: ignore[method-assign]

    async def main() -> None:
        for garbage in ("x" * 32, "aapy_" + "0" * 27, "", "a" * 10_000):
            assert not await flt.check(C, packet(key=garbage))

    run(main())
    assert looked == []


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"cache_ttl": -1}, "cache_ttl"),
        ({"cache_ttl": float("inf")}, "cache_ttl"),
        ({"cache_ttl": "5"}, "cache_ttl"),
        ({"cache_size": 0}, "cache_size"),
        ({"cache_size": True}, "cache_size"),
    ],
)
def test_cache_arguments_are_checked(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Filters.APIFactory(APIKeyFactory(), "key", **kwargs)


# -- Filters.RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clocked_store(clock: Clock) -> Store:
    store = MemoryStore()
    store._rates = MemoryRateStore(clock=clock)
    return store


def consume(flt: Filters.RateLimit, client: Any = C, **fields: Any) -> bool | float:
    """True when it passes, False when not, or the retry_after of a Reject."""
    try:
        return bool(run(flt.check(client, packet(**fields))))
    except Reject as exc:
        rejected = exc
    assert rejected.code is ErrorCode.ERR_RATE_LIMITED
    retry: float = rejected.fields["retry_after"]
    return retry


def test_rate_limit_allows_the_burst_then_one_per_interval() -> None:
    clock = Clock()
    flt = Filters.RateLimit(2, per=1.0, burst=3, store=clocked_store(clock))
    assert [consume(flt) for _ in range(3)] == [True, True, True]  # the burst
    assert consume(flt) == pytest.approx(0.5)  # one more in T = 0.5 s
    clock.now += 0.49
    assert consume(flt) == pytest.approx(0.01)
    clock.now += 0.01
    assert consume(flt) is True
    assert consume(flt) == pytest.approx(0.5)
    clock.now += 10  # quiet: the whole burst again, never more
    assert [consume(flt) for _ in range(4)][:3] == [True, True, True]


@pytest.mark.parametrize("burst", [1, 2, 5])
def test_rate_limit_burst_boundaries(burst: int) -> None:
    clock = Clock()
    flt = Filters.RateLimit(10, per=1.0, burst=burst, store=clocked_store(clock))
    results = [consume(flt) for _ in range(burst + 1)]
    assert results[: burst - 1] == [True] * (burst - 1)  # burst - 1
    assert results[burst - 1] is True  # at the burst
    assert isinstance(results[burst], float)  # burst + 1
    assert [consume(flt) for _ in range(100)].count(True) == 0  # far over


def test_rate_limit_counts_per_address_or_per_field() -> None:
    clock = Clock()
    store = clocked_store(clock)
    by_ip = Filters.RateLimit(1, per=60, store=store)
    assert consume(by_ip, FakePeer("10.0.0.1")) is True
    assert isinstance(consume(by_ip, FakePeer("10.0.0.1")), float)
    assert consume(by_ip, FakePeer("10.0.0.2")) is True
    by_key = Filters.RateLimit(1, per=60, field="key", store=store)
    assert consume(by_key, key="a") is True
    assert isinstance(consume(by_key, key="a"), float)
    assert consume(by_key, key="b") is True
    assert consume(by_key, key=7) is True  # ints count as their text
    assert isinstance(consume(by_key, key="7"), float)
    assert consume(by_key) is False  # no field: does not pass, not counted
    assert consume(by_key, key=["a"]) is False
    long_value = "v" * 100_000  # hashed: a bounded key in the store
    assert consume(by_key, key=long_value) is True
    assert max(map(len, store.rates._tat)) < 120  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((0,), {}, "rate"),
        ((1.5,), {}, "rate"),
        ((1,), {"per": 0}, "per"),
        ((1,), {"per": float("inf")}, "per"),
        ((1,), {"burst": 0}, "burst"),
    ],
)
def test_rate_limit_arguments_are_checked(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        Filters.RateLimit(*args, **kwargs)


def test_rate_limit_is_shared_by_two_workers_through_a_store(store_url: str) -> None:
    # Two filters on two Store objects of one URL: two workers, or two hosts.
    limits = [Filters.RateLimit(3, per=60, field="key", store=store_url) for _ in range(2)]

    async def main() -> list[bool | float]:
        results: list[bool | float] = []
        for i in range(8):
            try:
                results.append(await limits[i % 2].check(C, packet(key="k")))
            except Reject as exc:
                results.append(exc.fields["retry_after"])
        return results

    results = run(main(), *limits)
    assert results[:3] == [True, True, True]
    assert all(isinstance(value, float) and 0 < value <= 20 for value in results[3:])


def test_rate_limited_reply_through_a_server() -> None:
    server = Server(addr="127.0.0.1", port=0)

    @server.add_handler(Filters.Fields(request=None), Filters.RateLimit(2, per=60))
    async def limited(client: Any, packet: Packet) -> None:
        await client.send({"ok": True})

    async def main() -> list[Any]:
        async with TestClient(server) as client:
            replies = []
            for _ in range(3):
                await client.send({"request": 1})
                replies.append(await client.receive())
            return replies

    replies = run(main())
    assert replies[:2] == [{"ok": True}, {"ok": True}]
    assert replies[2]["error"] == "ERR_RATE_LIMITED"
    assert replies[2]["status"] == "failure"
    assert 29 < replies[2]["retry_after"] <= 30


def test_server_store_follows_the_setting_until_first_use(tmp_path: Path) -> None:
    """What asyncapy run does: the app imports with memory://, then --store applies."""
    server = Server(addr="127.0.0.1", port=0)
    keys = APIKeyFactory(store=server.store)
    flt: Any = Filters.APIFactory(keys, "key")
    limit = Filters.RateLimit(1, per=60, store=server.store)
    assert flt.is_async  # decided now, whatever the URL becomes
    url = f"sqlite:///{tmp_path / 'late.db'}"
    server.settings = dataclasses.replace(server.settings, store=url)

    async def main() -> None:
        key = await keys.aissue({"late": True})
        assert await flt.check(C, packet(key=key))
        assert await limit.check(C, packet())

    run(main(), server.store)
    assert server.store.shared
    assert APIKeyFactory(store=url).backend.keys.records()[0].metadata == {"late": True}
    assert server.store.rates is server.store.rates  # opened once
