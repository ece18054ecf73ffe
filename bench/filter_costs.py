"""What issue 10's checks cost per request: APIFactory and RateLimit over each store.

    python bench/filter_costs.py [--number 2000] [--rounds 5] [--loop asyncio|uvloop]

Times one check after another on one event loop, each as the dispatcher runs
it (``check(client, packet)``, awaited when the filter is asynchronous):

* ``Filters.APIFactory`` with a valid key: over ``memory://`` (synchronous),
  over a SQLite file and over a real redis-server (started here with
  tests/services.py), each without a cache and with ``cache_ttl=5`` (hits);
* a malformed key over Redis: refused by its checksum, no lookup;
* ``Filters.RateLimit`` (a limit never reached) over ``memory://`` and Redis;
* for scale, ``Filters.Fields`` (one literal pattern).

Prints the median of ``--rounds`` timings in microseconds per check. The
PROXY header's cost is bench/proxy_header.py's. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.services, tests.helpers
sys.path.insert(0, str(HERE.parent / "src"))

from tests import services  # noqa: E402
from tests.helpers import FakePeer  # noqa: E402

from asyncapy import Packet  # noqa: E402
from asyncapy.filters import Filter, Filters  # noqa: E402
from asyncapy.util import APIKeyFactory  # noqa: E402

Check = Callable[[], Any]


def as_call(flt: Filter, client: Any, packet: Packet) -> Callable[[], Awaitable[object]]:
    check = flt.check
    if flt.is_async:
        return lambda: check(client, packet)  # type: ignore[return-value]

    async def sync() -> object:
        return check(client, packet)

    return sync


async def per_check(call: Callable[[], Awaitable[object]], number: int, rounds: int) -> float:
    for _ in range(min(number, 200)):  # warm up: connections, scripts, caches
        await call()
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(number):
            await call()
        timings.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(timings)


async def cases(
    redis_url: str | None, tmp: Path, number: int, rounds: int
) -> list[tuple[str, float]]:
    client: Any = FakePeer("192.0.2.7")
    results: list[tuple[str, float]] = []
    urls = {"memory": "memory://", "sqlite": f"sqlite:///{tmp / 'keys.db'}"}
    if redis_url is not None:
        urls["redis"] = redis_url
    closers = []
    fields = Filters.Fields(request="^get$")
    results.append(
        (
            "Fields (one literal)",
            await per_check(as_call(fields, client, Packet({"request": "get"})), number, rounds),
        )
    )
    for name, url in urls.items():
        factory = APIKeyFactory(store=url)
        closers.append(factory.backend)
        key = await factory.aissue({"user": "ann"})
        packet = Packet({"key": key})
        plain = Filters.APIFactory(factory, "key")
        results.append(
            (f"APIFactory {name}", await per_check(as_call(plain, client, packet), number, rounds))
        )
        if name != "memory":
            cached = Filters.APIFactory(factory, "key", cache_ttl=5)
            results.append(
                (
                    f"APIFactory {name}, cached",
                    await per_check(as_call(cached, client, packet), number, rounds),
                )
            )
        if name == "redis":
            garbage = Packet({"key": key[:-1] + ("0" if key[-1] != "0" else "1")})
            results.append(
                (
                    "APIFactory redis, bad checksum",
                    await per_check(as_call(plain, client, garbage), number, rounds),
                )
            )
        if name != "sqlite":
            limit = Filters.RateLimit(10**9, per=1, store=url)
            closers.append(limit.store)
            results.append(
                (
                    f"RateLimit {name}",
                    await per_check(as_call(limit, client, Packet({})), number, rounds),
                )
            )
    for store in closers:
        await store.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop
    with tempfile.TemporaryDirectory() as tmp:
        try:
            redis_ctx: Any = services.running_redis()
            server = redis_ctx.__enter__()
        except (FileNotFoundError, RuntimeError) as exc:
            print(f"(no redis-server: {exc})")
            redis_ctx, server = None, None
        try:
            loop = new_loop()
            try:
                found = loop.run_until_complete(
                    cases(
                        None if server is None else server.url, Path(tmp), args.number, args.rounds
                    )
                )
            finally:
                loop.close()
        finally:
            if redis_ctx is not None:
                redis_ctx.__exit__(None, None, None)
    print(f"{'check':34} us per check ({args.loop}, median of {args.rounds} x {args.number})")
    for name, micros in found:
        print(f"{name:34} {micros:9.2f}")


if __name__ == "__main__":
    main()
