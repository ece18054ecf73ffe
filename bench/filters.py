"""The cost of filters in the dispatcher: synchronous, asynchronous, and what a store adds.

    python bench/filters.py [--rounds N]
    BENCH_ASYNCAPY_SRC=/path/to/other/src python bench/filters.py   # a baseline

Times ``Dispatcher.run`` (the dispatch of one packet, no network) for:

* ``sync``: three handlers in one group, each with a ``Filters.Fields``
  filter; the third matches. Compare with a baseline to see what asynchronous
  filters cost the synchronous path.
* ``async-now``: the same with an asynchronous filter on the matching handler
  that answers without waiting (a cache hit).
* ``async-wait``: an asynchronous filter that waits once (``sleep(0)``): the
  dispatch becomes a Task.

Prints microseconds per dispatch, the median of ``--rounds`` rounds. Not part
of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.environ.get("BENCH_ASYNCAPY_SRC") or str(HERE.parent / "src"))

from asyncapy.core import Client, Handler, Packet  # noqa: E402
from asyncapy.dispatch import Dispatcher  # noqa: E402
from asyncapy.filters import Filter, Filters  # noqa: E402

sys.path.insert(0, str(HERE.parent))
from tests.helpers import FakePeer  # noqa: E402


async def _reply(client: Client, packet: Packet) -> None:
    client.send({"ok": 1})


def dispatcher_with(last: Filter) -> Dispatcher:
    dispatcher = Dispatcher()
    dispatcher.add(Handler(_reply, [Filters.Fields(cmd="^one$")]))
    dispatcher.add(Handler(_reply, [Filters.Fields(cmd="^two$")]))
    dispatcher.add(Handler(_reply, [last]))
    return dispatcher


def cases() -> dict[str, Dispatcher]:
    found: dict[str, Dispatcher] = {"sync": dispatcher_with(Filters.Fields(cmd="^three$"))}
    try:
        from asyncapy.filters import AsyncFilter
    except ImportError:  # a baseline from before asynchronous filters
        return found

    class Now(AsyncFilter):
        async def check(self, client: Client, packet: Packet) -> bool:
            return packet.get("cmd") == "three"

    class Wait(AsyncFilter):
        async def check(self, client: Client, packet: Packet) -> bool:
            await asyncio.sleep(0)
            return packet.get("cmd") == "three"

    found["async-now"] = dispatcher_with(Now())
    found["async-wait"] = dispatcher_with(Wait())
    return found


async def measure(dispatcher: Dispatcher, count: int) -> float:
    loop = asyncio.get_running_loop()
    client: Any = FakePeer()
    packet = Packet({"cmd": "three"})
    run = dispatcher.run
    context = contextvars.copy_context()
    started = time.perf_counter()
    for _ in range(count):
        task = run(client, packet, loop, context)
        if task is not None:
            await task
        if len(client.sent) > 1000:
            client.sent.clear()
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--case", action="append", help="only this case (repeatable)")
    args = parser.parse_args()
    for name, dispatcher in cases().items():
        if args.case and name not in args.case:
            continue
        results = [asyncio.run(measure(dispatcher, args.count)) for _ in range(args.rounds)]
        print(f"{name:12} {statistics.median(results):7.3f} us per dispatch")


if __name__ == "__main__":
    main()
