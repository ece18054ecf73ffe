"""``asyncapy run --workers 1|2`` in each socket mode against the bare echo, on all cores.

    python bench/workers.py [--quick] [--rounds N] [--duration S] [--warmup S] [--compiled]

For each scenario (c16 p1, c16 p16, c256 p1, c256 p16; ``--quick`` leaves out
the last) and each round, it runs in turn (A B C A B C ...): bench/servers.py's
``bare`` echo (one process, the reference) and ``python -m asyncapy run
workers_app:server --workers N --socket-mode M`` for N in 1, 2 and M in
``reuseport``, ``shared`` (bench/workers_app.py: the ``framework`` echo of
bench/servers.py). Each server starts on a free loopback port, is loaded by
bench/loadgen.c (built by bench/run.py's ``build_loadgen``) and stopped.

Nothing is pinned: the workers may use both cores, and **the load generator
shares those cores with them** (this machine has 2), so a second worker
competes with the load generator as much as it adds capacity. Server CPU
time is summed over the supervisor and all its descendants (``/proc/PID/stat``
utime + stime; descendants found by the parent pid field of every
``/proc/*/stat``); the load generator's CPU time is reported beside it.
"busiest" is the share of the workers' CPU time spent by the busiest worker
(0.50 is an even spread over 2).

``BENCH_ASYNCAPY_SRC`` (another asyncapy's ``src/``) becomes the started
processes' ``PYTHONPATH``, so it decides which asyncapy runs; ``--compiled``
adds every ``asyncapy run`` target again (``+c``) on today's asyncapy built
as a compiled wheel (bench/run.py's ``compiled_src``), in the same rounds.
Prints a table and writes bench/results/workers-*.json. Loopback only;
bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from run import (
    BUILD,
    RESULTS,
    Result,
    Scenario,
    build_loadgen,
    compiled_src,
    cpu_seconds,
    free_port,
    loadgen_argv,
    loadgen_result,
    request_bytes,
    summarize,
    wait_for_port,
)

HERE = Path(__file__).resolve().parent
MODES = ("reuseport", "shared")
WORKERS = (1, 2)
READY_TIMEOUT = 30.0
"""Seconds ``asyncapy run`` gets until every worker says it is ready."""
STOP_TIMEOUT = 15.0
"""Seconds a server gets to exit after SIGTERM, before SIGKILL."""


def scenarios(quick: bool, targets: list[str]) -> list[Scenario]:
    shapes = [(16, 1), (16, 16), (256, 1)] + ([] if quick else [(256, 16)])
    return [Scenario(f"c{c} p{p}", list(targets), connections=c, pipeline=p) for c, p in shapes]


def run_targets(compiled: bool) -> list[str]:
    """Target names: ``MODE wN``, and ``MODE wN+c`` on the compiled build."""
    names = [f"{mode} w{n}" for mode in MODES for n in WORKERS]
    return names + [f"{name}+c" for name in names] if compiled else names


# -- the process tree


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the ppid field of ``/proc/*/stat``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each of ``pids`` that still exists."""
    usage = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            usage[pid] = cpu_seconds(pid)
    return usage


def sockets(pid: int) -> int:
    """Open sockets of ``pid`` (listeners, connections), from ``/proc/PID/fd``; -1 if gone."""
    count = 0
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                count += os.readlink(fd).startswith("socket:")
    except OSError:
        return -1
    return count


# -- servers


def asyncapy_env(src: Path) -> dict[str, str]:
    """The environment of ``asyncapy run``: asyncapy from ``src``, no ASYNCAPY_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCAPY_")}
    env["PYTHONPATH"] = str(src)
    env["BENCH_ASYNCAPY_SRC"] = str(src)  # bench/servers.py's make_framework, in the app
    return env


def version(src: Path) -> str:
    """``asyncapy --version`` as the started processes see it (says what is compiled)."""
    argv = [sys.executable, "-m", "asyncapy", "--version"]
    done = subprocess.run(
        argv, cwd=HERE, env=asyncapy_env(src), capture_output=True, text=True, timeout=60
    )
    return done.stdout.strip() or done.stderr.strip()


def stop(process: subprocess.Popen[bytes], group: bool) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        if group:  # the supervisor and its workers (start_new_session: pgid == pid)
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(5)


@contextlib.contextmanager
def server(target: str, port: int, sources: dict[str, Path]) -> Iterator[tuple[int, int]]:
    """Start ``target`` on ``port``; yield (its pid, its workers) once it answers."""
    if target == "bare":
        argv = [sys.executable, str(HERE / "servers.py"), "bare", "--port", str(port)]
        bare = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            wait_for_port(port, bare)
            yield bare.pid, 1
        finally:
            stop(bare, group=False)
        return
    name, _, build = target.partition("+")
    mode, workers = name.split()[0], int(name.split()[1][1:])
    log = BUILD / f"workers-{os.getpid()}.log"
    argv = [
        sys.executable, "-m", "asyncapy", "run", "workers_app:server",
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--socket-mode", mode,
        "--loop", "uvloop", "--no-access-log", "--log-level", "INFO",
        "--graceful-timeout", "5",
        "-s", "session_limit=0", "-s", "max_connections=0",
        "-s", "timeout=600", "-s", "backlog=4096",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=HERE,
            env=asyncapy_env(sources[build or "pure"]),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while len(re.findall(r"is ready", log.read_text(errors="replace"))) < workers:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{target} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        wait_for_port(port, process)
        yield process.pid, workers
    finally:
        stop(process, group=True)
        log.unlink(missing_ok=True)


# -- one run


def measure(
    scenario: Scenario,
    target: str,
    rnd: int,
    warmup: float,
    duration: float,
    sources: dict[str, Path],
) -> Result:
    port = free_port()
    request = BUILD / "request-json-64.bin"
    request.write_bytes(request_bytes("json", 64))
    argv = loadgen_argv(scenario, port, "aproto", request, warmup, duration)
    with server(target, port, sources) as (pid, workers):
        pids = descendants(pid)
        workers_pids = [p for p in pids if p != pid] or [pid]
        idle = [sockets(p) for p in workers_pids]
        loadgen = subprocess.Popen(argv, stdout=subprocess.PIPE)
        time.sleep(warmup)
        held = [sockets(p) - before for p, before in zip(workers_pids, idle, strict=True)]
        start, load_start = tree_cpu(pids), cpu_seconds(loadgen.pid)
        time.sleep(duration)
        end, load_end = tree_cpu(pids), cpu_seconds(loadgen.pid)
        out, _ = loadgen.communicate(timeout=warmup + duration + 30)
    if len(pids) != workers + (target != "bare") or set(end) != set(pids) or min(held) < 0:
        raise RuntimeError(f"{target}: processes {pids} changed or are not 1 + {workers}")
    used = {p: end[p] - start[p] for p in pids}
    worker_cpu = [used[p] for p in workers_pids]
    result = loadgen_result(
        loadgen,
        out,
        scenario,
        target,
        rnd,
        sum(used.values()),
        {
            "workers": workers,
            "worker_cpu_s": worker_cpu,
            "worker_connections": held,
            "supervisor_cpu_s": used[pid] if target != "bare" else 0.0,
            "busiest": max(worker_cpu) / sum(worker_cpu) if sum(worker_cpu) else 0.0,
        },
    )
    requests = result.extra["requests"]
    result.extra["loadgen_cpu_us_per_request"] = (load_end - load_start) * 1e6 / requests
    return result


# -- reporting


def enrich(rows: list[dict[str, Any]], results: list[Result]) -> None:
    """Add the spread over workers and the load generator's CPU to each summary row."""
    for row in rows:
        runs = [r for r in results if (r.scenario, r.target) == (row["scenario"], row["target"])]
        worst = max(runs, key=lambda r: r.extra["busiest"])
        row["busiest"] = worst.extra["busiest"]  # the least even round
        row["connections"] = sorted(worst.extra["worker_connections"], reverse=True)
        loads = sorted(r.extra["loadgen_cpu_us_per_request"] for r in runs)
        row["loadgen_cpu_us"] = loads[len(loads) // 2]


def print_table(rows: list[dict[str, Any]]) -> None:
    print("load generator and servers share the cores (nothing pinned)")
    header = (
        f"{'scenario':9} {'target':15} {'req/s':>8} {'x ref':>6} {'cpu us':>7} {'cpu x':>6} "
        f"{'p50 us':>7} {'p99 us':>7} {'err':>4} {'busiest':>7} {'conns':>8} {'load us':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        cpu_ratio = f"{row['cpu_ratio']:.2f}" if row["cpu_ratio"] is not None else "-"
        conns = "/".join(map(str, row["connections"]))
        print(
            f"{row['scenario']:9} {row['target']:15} {row['rps']:8.0f} {ratio:>6} "
            f"{row['cpu_us']:7.2f} {cpu_ratio:>6} {row['p50_us']:7.0f} {row['p99_us']:7.0f} "
            f"{row['errors']:4d} {row['busiest']:7.2f} {conns:>8} {row['loadgen_cpu_us']:7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1.5 s runs, 3 scenarios")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 2, quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds (default 3, quick 1.5)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds (default 1, quick 0.5)")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also run every asyncapy target on today's asyncapy as a compiled wheel (+c)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 2)
    duration = args.duration or (1.5 if args.quick else 3.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)

    build_loadgen()
    pure = Path(os.environ.get("BENCH_ASYNCAPY_SRC") or HERE.parent / "src").resolve()
    sources = {"pure": pure}
    if args.compiled:
        sources["c"] = compiled_src()
    versions = {name: version(path) for name, path in sources.items()}
    for name, line in versions.items():
        print(f"{name}: {line} ({sources[name]})", file=sys.stderr)
    scenario_list = scenarios(args.quick, ["bare", *run_targets(args.compiled)])
    results: list[Result] = []
    started = time.time()
    for scenario in scenario_list:
        for rnd in range(rounds):
            for target in scenario.targets:
                result = measure(scenario, target, rnd, warmup, duration, sources)
                results.append(result)
                print(
                    f"  {scenario.name:9} {target:15} round {rnd}: {result.rps:8.0f} req/s"
                    f" {result.cpu_us_per_request:6.2f} us/req busiest"
                    f" {result.extra['busiest']:.2f} held {result.extra['worker_connections']}",
                    file=sys.stderr,
                    flush=True,
                )
    rows = summarize(results, scenario_list)
    print()
    enrich(rows, results)
    print_table(rows)
    RESULTS.mkdir(exist_ok=True)
    report = {
        "started": started,
        "seconds": time.time() - started,
        "rounds": rounds,
        "duration": duration,
        "warmup": warmup,
        "python": sys.version,
        "cpus": os.cpu_count(),
        "pinned": False,
        "note": "the load generator shares the cores with the servers",
        "asyncapy_src": {name: str(path) for name, path in sources.items()},
        "asyncapy_version": versions,
        "summary": rows,
        "runs": [asdict(r) for r in results],
    }
    path = RESULTS / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {path} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
