"""The per-request cost of the hot path without the kernel: a microbenchmark.

    python bench/hotpath.py [--requests N] [--pipeline P] [--profile]

Feeds ready-made frames to ``data_received`` of asyncapy's connection and of
the bare echo Protocol (bench/servers.py), on a transport that drops what is
written, and prints microseconds per request for each and their ratio. With
``--profile``, runs the asyncapy case under cProfile and prints the top
functions. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# BENCH_ASYNCAPY_SRC: another asyncapy's src/, to count a change's cost (bench/README.md)
sys.path.insert(0, os.environ.get("BENCH_ASYNCAPY_SRC") or str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from servers import BareEcho, make_framework  # noqa: E402

import asyncapy._connection  # noqa: E402

# Under callgrind (bench/instructions.py) everything runs ~50 times slower, so
# a pipelined turn would pass the fair-share slice and be made to wait, which
# no real run of this single connection does: measure the hot path without it.
asyncapy._connection.FAIR_SLICE = float("inf")  # type: ignore[misc]
# Likewise every echo would take more than the first latency bucket (50 us)
# and be counted on the slow path, which real echoes (a few us) are not.
if hasattr(asyncapy._connection, "_FIRST_BUCKET"):  # (not in a --baseline older than it)
    asyncapy._connection._FIRST_BUCKET = float("inf")  # type: ignore[misc]


class NullTransport:
    """Accepts writes and drops them; enough of a transport for both protocols."""

    def __init__(self) -> None:
        self.bytes = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.bytes += len(data)

    def writelines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.bytes += len(line)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def frame(body: bytes) -> bytes:
    return (len(body) + 2).to_bytes(4, "big") + b"\x16\x00" + body


def run(protocol: Any, chunk: bytes, calls: int) -> float:
    feed = protocol.data_received
    start = time.perf_counter()
    for _ in range(calls):
        feed(chunk)
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument(
        "--target", default="framework", help="framework, plain, groups, typed5 or fields5"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--only", choices=["bare", "asyncapy"], help="run one side once (for callgrind)"
    )
    args = parser.parse_args()
    body = b'{"method":"echo","id":1,"data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
    if args.target in ("typed5", "fields5"):  # five fields, the two ways of checking them
        body = b'{"method":"echo","id":1,"data":"xxxxxxxxxxxxxxxxxxxxxxxx","user":"ann","n":2}'
    chunk = frame(body) * args.pipeline
    calls = args.requests // args.pipeline

    bare = BareEcho()
    bare.connection_made(NullTransport())
    server = make_framework(args.target, 0)
    conn = server._protocol_factory(server._new_state())()
    conn.connection_made(NullTransport())  # type: ignore[arg-type]

    if args.only:
        run(bare if args.only == "bare" else conn, chunk, calls)
        conn.connection_lost(None)
        return
    results = {}
    order = [("bare", bare), (args.target, conn)] * 3  # interleaved, best of three
    for name, protocol in order:
        seconds = run(protocol, chunk, calls)
        results[name] = min(results.get(name, seconds), seconds)
    per = {name: seconds / (calls * args.pipeline) * 1e6 for name, seconds in results.items()}
    print(
        f"pipeline {args.pipeline}: bare {per['bare']:.2f} us/req, {args.target}"
        f" {per[args.target]:.2f} us/req, ratio {per[args.target] / per['bare']:.2f}"
    )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, conn, chunk, calls)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    conn.connection_lost(None)


if __name__ == "__main__":
    asyncio.run(main())
