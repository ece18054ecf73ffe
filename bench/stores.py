"""What a store operation costs (issue 10): microseconds per awaited call, per backend.

    python bench/stores.py [--number 2000] [--rounds 5] [--loop asyncio|uvloop]

Times, one call after another on one event loop, ``KeyStore.aget`` of a
stored record (a hit) and ``RateStore.aconsume`` of one key (burst large
enough that every call is allowed and writes), for ``memory://``, a SQLite
file in a temporary directory, and a real redis-server on a loopback port
(started here with tests/services.py; skipped when it is not installed).
Prints the median of ``--rounds`` timings. Sequential calls measure the
latency one request adds, not the throughput of many concurrent ones.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.services
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tests import services

from asyncapy.stores import KeyRecord, Store, open_store

RECORD = KeyRecord("ab" * 32, "ak_abcd...wxyz", {"user": "alice", "scopes": ["read"]}, 1.7e9)


async def per_call(call: Callable[[], Awaitable[object]], number: int, rounds: int) -> float:
    """The median over ``rounds`` of microseconds per call, ``number`` calls each."""
    for _ in range(min(number, 100)):  # warm up: connections, scripts loaded, caches
        await call()
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            await call()
        timings.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(timings)


async def measure(store: Store, number: int, rounds: int) -> tuple[float, float]:
    await store.keys.aadd(RECORD)
    try:
        aget = await per_call(lambda: store.keys.aget(RECORD.digest), number, rounds)
        consume = await per_call(
            lambda: store.rates.aconsume("ip:192.0.2.1", 1e-9, 10**9), number, rounds
        )
    finally:
        await store.aclose()
    return aget, consume


@contextlib.contextmanager
def urls() -> Iterator[list[tuple[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="asyncapy-bench-") as tmp:
        found = [("memory", "memory://"), ("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}")]
        try:
            server = services.start_redis()
        except FileNotFoundError:
            print("redis-server is not installed: no redis figures", file=sys.stderr)
            yield found
            return
        try:
            yield [*found, ("redis", server.url)]
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    args = parser.parse_args()
    factory = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    print(
        f"Python {sys.version.split()[0]}, {args.loop}, {args.number} calls x {args.rounds} rounds"
    )
    print(f"{'store':<8} {'aget hit µs':>12} {'aconsume µs':>12}")
    with urls() as found:
        for name, url in found:
            store = open_store(url)
            with asyncio.Runner(loop_factory=factory) as runner:
                aget, consume = runner.run(measure(store, args.number, args.rounds))
            store.close()
            print(f"{name:<8} {aget:>12.1f} {consume:>12.1f}")


if __name__ == "__main__":
    main()
