"""``asyncapy bench`` against ``bench/loadgen.c``, both loading the bare uvloop echo.

    python bench/cli_vs_loadgen.py [--rounds 3] [--duration 4] [--processes 1]

The bare echo of bench/servers.py (the ceiling of every ratio in
bench/README.md) runs pinned to CPU 0; each load generator runs pinned to
CPU 1, one after the other, interleaved for ``--rounds`` rounds, with the
same connections, pipelining and 64-byte JSON echo request. Prints, per
scenario, the median requests per second of each and their ratio: how close
the Python load generator comes to the C one, i.e. whether it can be the
bottleneck of a measurement. Loopback only; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench_run  # bench/run.py: the loadgen build, pinning, ports

SCENARIOS = ((16, 1), (16, 16), (1, 1), (256, 1))


def loadgen(port: int, connections: int, pipeline: int, warmup: float, duration: float) -> float:
    request = bench_run.BUILD / "request-json-64.bin"
    request.write_bytes(bench_run.request_bytes("json", 64))
    argv = [
        str(bench_run.LOADGEN), "--host", "127.0.0.1", "--port", str(port),
        "--connections", str(connections), "--pipeline", str(pipeline),
        "--warmup", str(warmup), "--duration", str(duration), "--mode", "aproto",
        "--request-file", str(request), "--expect-file", str(request),
    ]  # fmt: skip
    out = subprocess.run(bench_run.pinned(1, argv), capture_output=True, check=True).stdout
    stats = json.loads(out)
    assert int(stats["errors"]) == 0, stats
    return float(stats["rps"])


def asyncapy_bench(
    port: int, connections: int, pipeline: int, warmup: float, duration: float, processes: int
) -> float:
    command = shutil.which("asyncapy", path=str(Path(sys.executable).parent)) or "asyncapy"
    argv = [
        command, "bench", f"127.0.0.1:{port}", "-c", str(connections), "-p", str(pipeline),
        "-w", str(warmup), "-d", str(duration), "-s", "64", "--processes", str(processes),
        "--json",
    ]  # fmt: skip
    out = subprocess.run(bench_run.pinned(1, argv), capture_output=True, check=True).stdout
    stats = json.loads(out)
    assert stats["errors"] == 0, stats
    return float(stats["rps"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=1, help="asyncapy bench --processes")
    args = parser.parse_args()
    bench_run.build_loadgen()
    results: dict[tuple[int, int], dict[str, list[float]]] = {}
    started = time.time()
    for connections, pipeline in SCENARIOS:
        runs = results.setdefault((connections, pipeline), {"loadgen.c": [], "asyncapy": []})
        for _ in range(args.rounds):
            for tool in ("loadgen.c", "asyncapy"):
                port = bench_run.free_port()
                with bench_run.server("bare", port):
                    if tool == "loadgen.c":
                        rps = loadgen(port, connections, pipeline, args.warmup, args.duration)
                    else:
                        rps = asyncapy_bench(
                            port, connections, pipeline, args.warmup, args.duration,
                            args.processes,
                        )  # fmt: skip
                runs[tool].append(rps)
                print(f"  c{connections} p{pipeline} {tool:9} {rps:10,.0f} req/s", file=sys.stderr)
    print(f"\nbare uvloop echo on CPU 0, load on CPU 1, median of {args.rounds} rounds")
    print(f"{'scenario':10} {'loadgen.c':>12} {'asyncapy bench':>15} {'ratio':>6}")
    for (connections, pipeline), runs in results.items():
        c_rps = statistics.median(runs["loadgen.c"])
        py_rps = statistics.median(runs["asyncapy"])
        print(f"c{connections} p{pipeline:<6} {c_rps:12,.0f} {py_rps:15,.0f} {py_rps / c_rps:6.2f}")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
