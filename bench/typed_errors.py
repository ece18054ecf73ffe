"""The cost of a typed handler's error path: a packet with 10 errors, against a valid one.

    python bench/typed_errors.py [--rounds N] [--count N]

Times ``Dispatcher.run`` (no network) of one packet for a handler taking a
five-field Struct (``forbid_unknown_fields``): a valid packet (converted,
handled, the Struct returned as the reply), and a packet with 10 errors (five
fields of the wrong type, five unknown fields) answered ``ERR_REQUEST_INVALID``
with all ten; and ``collect`` alone on that packet. Prints the median of
``--rounds`` rounds in microseconds. Not part of the test suite.
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
sys.path.insert(0, str(HERE.parent))

import msgspec  # noqa: E402
from tests.helpers import FakePeer  # noqa: E402

from asyncapy import Packet  # noqa: E402
from asyncapy._typeerrors import collect  # noqa: E402
from asyncapy.core import Client, Handler  # noqa: E402
from asyncapy.dispatch import Dispatcher  # noqa: E402


class Five(msgspec.Struct, forbid_unknown_fields=True):
    method: str
    id: int
    data: str
    user: str
    n: int


async def echo(client: Client, packet: Five) -> Five:
    return packet


echo.__annotations__.update(packet=Five, **{"return": Five})

GOOD = {"method": "echo", "id": 1, "data": "x" * 24, "user": "ann", "n": 2}
BAD = {"method": 1, "id": "1", "data": 2, "user": None, "n": "2"} | {f"u{i}": i for i in range(5)}


async def per_dispatch(fields: dict[str, Any], count: int) -> float:
    dispatcher = Dispatcher()
    dispatcher.add(Handler(echo))
    loop = asyncio.get_running_loop()
    client: Any = FakePeer()
    context = contextvars.copy_context()
    run = dispatcher.run
    started = time.perf_counter()
    for _ in range(count):
        task = run(client, Packet(fields), loop, context)
        if task is not None:
            await task
        if len(client.sent) > 1000:
            client.sent.clear()
    return (time.perf_counter() - started) / count * 1e6


def per_collect(count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        collect(BAD, Five)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args()
    assert len(collect(BAD, Five)) == 10
    good = [asyncio.run(per_dispatch(GOOD, args.count)) for _ in range(args.rounds)]
    bad = [asyncio.run(per_dispatch(BAD, args.count)) for _ in range(args.rounds)]
    walk = [per_collect(args.count) for _ in range(args.rounds)]
    print(f"valid packet, dispatched       {statistics.median(good):7.2f} us")
    print(f"10 errors, ERR_REQUEST_INVALID {statistics.median(bad):7.2f} us")
    print(f"collect() alone, 10 errors     {statistics.median(walk):7.2f} us")


if __name__ == "__main__":
    main()
