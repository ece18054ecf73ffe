"""Store URLs, and the memory store's GCRA and bound on an injected clock (no I/O)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from asyncapy.stores import RateDecision, StoreError, open_store, redact_url
from asyncapy.stores.memory import DEFAULT_MAX_KEYS, PURGE_PER_CALL, MemoryRateStore, MemoryStore
from asyncapy.stores.redis import RedisStore
from asyncapy.stores.sqlite import SQLiteStore


@pytest.mark.parametrize(
    ("url", "cls", "attrs"),
    [
        ("memory://", MemoryStore, {}),
        ("sqlite:///rel/keys.db", SQLiteStore, {"path": Path("rel/keys.db")}),
        ("sqlite:////abs/keys.db", SQLiteStore, {"path": Path("/abs/keys.db")}),
        ("sqlite:///with%20space.db", SQLiteStore, {"path": Path("with space.db")}),
        ("redis://localhost:6379/0", RedisStore, {"prefix": "asyncapy:"}),
        ("redis://:secret@10.0.0.1:6380/2", RedisStore, {}),
        ("redis://user:secret@[::1]:6379", RedisStore, {}),
        ("redis://cache", RedisStore, {}),
        ("rediss://cache.example:6380/1", RedisStore, {}),
    ],
)
def test_accepted_urls(url: str, cls: type, attrs: dict[str, Any]) -> None:
    store = open_store(url)
    assert type(store) is cls
    assert store.url == url
    for name, value in attrs.items():
        assert getattr(store, name) == value


@pytest.mark.parametrize(
    "url",
    [
        "",
        "memory:",
        "memory://x",
        "mysql://localhost/db",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/file.db",
        "sqlite:///dir/",
        "sqlite:///file.db?mode=ro",
        "redis://",
        "redis://:secret@",
        "redis://:secret@host:notaport/0",
        "redis://:secret@host:99999/0",
        "redis://:secret@host:0/0",
        "redis://:secret@host:6379/zero",
        "redis://:secret@host:6379/0#frag",
        "localhost:6379",
    ],
)
def test_malformed_urls_name_the_accepted_forms_and_never_the_password(url: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert "accepted forms: memory://, sqlite:///" in message
    assert "secret" not in message


def test_a_url_that_is_not_a_str_is_refused() -> None:
    with pytest.raises(StoreError, match="accepted forms"):
        open_store(b"memory://")  # type: ignore[arg-type]


def test_unknown_options_are_refused_with_the_accepted_ones() -> None:
    with pytest.raises(
        StoreError, match=r"unknown option\(s\) pool_size \(accepted: busy_timeout\)"
    ):
        open_store("sqlite:///x.db", pool_size=3)
    with pytest.raises(StoreError, match="unknown option") as info:
        open_store("redis://:secret@h/0", busy_timeout=1)
    assert "secret" not in str(info.value)
    assert open_store("redis://h/0", prefix="p:", pool_size=3, pool_timeout=1, command_timeout=1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:secret@host/0", "redis://user:***@host/0"),
        ("redis://:p@ss:w@host/0", "redis://:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert repr(open_store(url)).endswith(f"({shown!r})")


def test_option_values_are_checked() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryStore(max_keys=0)
    with pytest.raises(ValueError, match="busy_timeout"):
        open_store("sqlite:///x.db", busy_timeout=0)
    with pytest.raises(ValueError, match="pool_size"):
        open_store("redis://h", pool_size=0)
    with pytest.raises(ValueError, match="command_timeout"):
        open_store("redis://h", command_timeout=-1)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def consume(rates: MemoryRateStore, key: str, interval: float, burst: int) -> RateDecision:
    return asyncio.run(rates.aconsume(key, interval, burst))


def test_gcra_burst_at_once_then_one_per_interval() -> None:
    clock = Clock()
    rates = MemoryRateStore(clock=clock)
    seen = [consume(rates, "k", 0.5, 3) for _ in range(3)]
    assert seen == [
        RateDecision(True, 0.0, 2),
        RateDecision(True, 0.0, 1),
        RateDecision(True, 0.0, 0),
    ]
    assert consume(rates, "k", 0.5, 3) == RateDecision(False, 0.5, 0)
    clock.now += 0.2
    assert consume(rates, "k", 0.5, 3) == RateDecision(False, 0.3, 0)
    clock.now += 0.3  # exactly one interval after the burst: one more conforms
    assert consume(rates, "k", 0.5, 3) == RateDecision(True, 0.0, 0)
    assert not consume(rates, "k", 0.5, 3).allowed
    clock.now += 10  # long idle: the whole burst again
    assert consume(rates, "k", 0.5, 3) == RateDecision(True, 0.0, 2)
    asyncio.run(rates.areset("k"))
    assert consume(rates, "k", 0.5, 3).remaining == 2


def test_gcra_burst_of_one_and_independent_keys() -> None:
    clock = Clock()
    rates = MemoryRateStore(clock=clock)
    assert consume(rates, "a", 1.0, 1) == RateDecision(True, 0.0, 0)
    assert consume(rates, "a", 1.0, 1) == RateDecision(False, 1.0, 0)
    assert consume(rates, "b", 1.0, 1).allowed


@pytest.mark.parametrize(
    ("interval", "burst"), [(0, 1), (-1.0, 1), (float("nan"), 1), (1.0, 0), (1.0, 1.5)]
)
def test_gcra_arguments_are_checked(interval: float, burst: int) -> None:
    with pytest.raises(ValueError, match=r"interval|burst"):
        consume(MemoryRateStore(), "k", interval, burst)


@pytest.mark.parametrize("extra", [-1, 0, 1, 50])
def test_max_keys_evicts_the_smallest_tat_when_full(extra: int) -> None:
    """limit - 1, limit, limit + 1 and far over: never more than max_keys states."""
    limit = 10
    clock = Clock()
    rates = MemoryRateStore(max_keys=limit, clock=clock)
    for i in range(limit + extra):
        # key i gets TAT now + (i + 1) s: key 0 has the smallest, then key 1...
        consume(rates, f"k{i}", float(i + 1), 2)
    assert len(rates) == min(limit, limit + extra)
    evicted = max(0, extra)
    for i in reversed(range(limit + extra)):  # newest first: a re-added key evicts a checked one
        fresh = consume(rates, f"k{i}", float(i + 1), 2).remaining == 1
        # an evicted key starts again with a full burst; a kept one has used one place
        assert fresh == (i < evicted), i
        assert len(rates) <= limit


def test_expired_states_are_dropped_first_and_bounded_per_call() -> None:
    clock = Clock()
    rates = MemoryRateStore(max_keys=100, clock=clock)
    for i in range(30):
        consume(rates, f"old{i}", 1.0, 1)
    consume(rates, "young", 60.0, 2)
    clock.now += 2  # every old state expired, the young one not
    consume(rates, "other", 1.0, 5)
    assert len(rates) == 32 - PURGE_PER_CALL
    while len(rates) > 2:
        consume(rates, "other", 1.0, 5)
    assert consume(rates, "young", 60.0, 2) == RateDecision(True, 0.0, 0)  # kept: its second place
    assert consume(rates, "young", 60.0, 2) == RateDecision(False, 58.0, 0)


def test_the_heap_stays_bounded_when_one_key_is_hit_again_and_again() -> None:
    clock = Clock()
    rates = MemoryRateStore(clock=clock)
    for _ in range(1000):
        clock.now += 0.001
        consume(rates, "hot", 0.001, 1)
    assert len(rates) == 1
    assert len(rates._heap) <= 2 * len(rates) + 65


def test_memory_store_defaults() -> None:
    store = MemoryStore()
    assert store.shared is False
    assert store.rates.max_keys == DEFAULT_MAX_KEYS
    small = open_store("memory://", max_keys=5)
    assert isinstance(small, MemoryStore)
    assert small.rates.max_keys == 5


def test_a_sqlite_store_dropped_without_close_closes_its_connections(tmp_path: Path) -> None:
    """Python 3.13 warns about a connection left to the GC: the store's finalizer closes them."""
    import gc
    import sqlite3

    from asyncapy.stores.sqlite import SQLiteStore

    store = SQLiteStore(f"sqlite:///{tmp_path / 'dropped.db'}")
    assert store.keys.get("00" * 32) is None  # opens this thread's connection
    (conn,) = store._conns.values()
    del store
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
