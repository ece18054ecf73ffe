"""How evenly ``asyncapy run --workers 2`` spreads connections, per socket mode.

    python bench/spread.py [--connections 1000] [--workers 2] [--rounds 3]

For each mode (``reuseport``, ``shared``) it starts ``asyncapy run`` on
``bench/spread_app.py`` (a handler that answers its worker's pid), opens
``--connections`` connections and keeps them open, sends one request on each,
and counts the connections each worker took. Two ways to arrive: ``burst``
(all connects at once) and ``paced`` (one after another, each answered
before the next connects). Prints one line per mode, way and round, and the
share of the busiest worker (0.5 is even for 2 workers). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent
HEADER = 4


def frame(payload: bytes) -> bytes:
    return (len(payload) + 2).to_bytes(HEADER, "big") + b"\x16\x00" + payload


async def one(port: int, keep: list[asyncio.StreamWriter]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame(b'{"q": 1}'))
    size = int.from_bytes(await reader.readexactly(HEADER), "big")
    body = await reader.readexactly(size)
    keep.append(writer)
    return int(msgspec.json.decode(body[2:])["pid"])


async def measure(port: int, connections: int, paced: bool) -> collections.Counter[int]:
    keep: list[asyncio.StreamWriter] = []
    try:
        if paced:
            pids = [await one(port, keep) for _ in range(connections)]
        else:
            pids = list(await asyncio.gather(*(one(port, keep) for _ in range(connections))))
    finally:
        for writer in keep:
            writer.close()
    return collections.Counter(pids)


def start(mode: str, workers: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    log = Path(f"/tmp/asyncapy-spread-{os.getpid()}.log")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asyncapy",
                "run",
                "spread_app:server",
                "--port",
                "0",
                "--workers",
                str(workers),
                "--socket-mode",
                mode,
                "--no-access-log",
                "-s",
                "session_limit=0",
            ],
            cwd=HERE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(r"Listening on [^:]+:(\d+)", text)
        if found and len(re.findall(r"is ready", text)) >= workers:
            return process, int(found.group(1)), log
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"asyncapy run did not start:\n{log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for mode in ("reuseport", "shared"):
        process, port, log = start(mode, args.workers)
        try:
            for way in ("burst", "paced"):
                for round_ in range(args.rounds):
                    counts = asyncio.run(measure(port, args.connections, way == "paced"))
                    shares = sorted(counts.values(), reverse=True)
                    shares += [0] * (args.workers - len(shares))
                    busiest = shares[0] / args.connections
                    print(
                        f"{mode:9} {way:5} round {round_ + 1}: per worker {shares}"
                        f"  busiest {busiest:.2f}",
                        flush=True,
                    )
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
            log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
