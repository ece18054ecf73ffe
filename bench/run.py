"""Benchmark asyncapy against what users would pick instead, as ratios in one run.

    python bench/run.py [--quick] [--rounds N] [--duration S] [--only SUBSTRING]
                        [--targets A,B] [--baseline REV] [--compiled]

It builds the C load generator (bench/loadgen.c) with the system compiler,
pins each server to CPU 0 and the load generator to CPU 1 (when there are two),
runs every target of a scenario interleaved (A B C A B C ...) for several
rounds, and prints one table: requests per second, latency percentiles, the
server's CPU time per request (from /proc) and the ratio to the bare uvloop
echo of the same round. Results go to bench/results/ as JSON and as a PNG
chart. Only loopback is used; every run is bounded in time.

``--baseline REV`` adds the target ``framework@REV``: the same ``framework``
server, run with asyncapy's ``src/`` as it was at the git revision REV
(extracted once into bench/.build/; ``BENCH_ASYNCAPY_SRC`` tells
bench/servers.py), interleaved with today's in the same
rounds: a change's cost, measured before and after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

HERE = Path(__file__).resolve().parent
BUILD = HERE / ".build"
RESULTS = HERE / "results"
LOADGEN = BUILD / "loadgen"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Scenario:
    name: str
    targets: list[str]
    connections: int = 16
    pipeline: int = 1
    codec: str = "json"
    size: int = 64


@dataclass
class Result:
    scenario: str
    target: str
    round: int
    rps: float
    errors: int
    p50_us: float
    p99_us: float
    p999_us: float
    cpu_us_per_request: float
    extra: dict[str, Any] = field(default_factory=dict)


def scenarios(quick: bool) -> list[Scenario]:
    core = ["bare", "framework", "plain", "streams", "aiohttp"]
    found = [
        Scenario(f"json64 c{c} p{p}", core, connections=c, pipeline=p)
        for c in (1, 16, 256)
        for p in (1, 16)
    ]
    found += [
        Scenario("ziproto64 c16 p1", ["bare", "framework"], codec="ziproto"),
        Scenario("json1k c16 p1", ["bare", "framework"], size=1024),
        Scenario("json64k c16 p1", ["bare", "framework"], size=64 * 1024),
        Scenario("3 groups c16 p1", ["bare", "groups"]),
        # asyncapy keeps the connection open; the original AsyncAPY closed it
        # after every reply, so its clients reconnect for every request.
        Scenario(
            "keep-alive vs one request per connection c16",
            ["original", "seed-echo", "framework"],
        ),
    ]
    return found


# -- requests


def payload(size: int) -> dict[str, Any]:
    """A request map whose JSON encoding is ``size`` bytes long."""
    base = {"method": "echo", "id": 1, "data": ""}
    overhead = len(msgspec.json.encode(base))
    base["data"] = "x" * max(0, size - overhead)
    return base


def request_bytes(codec: str, size: int) -> bytes:
    body = payload(size)
    data = msgspec.json.encode(body) if codec == "json" else msgspec.msgpack.encode(body)
    encoding = 0 if codec == "json" else 1
    return (len(data) + 2).to_bytes(4, "big") + bytes((22, encoding)) + data


# -- processes


def build_loadgen() -> None:
    source = HERE / "loadgen.c"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= source.stat().st_mtime:
        return
    BUILD.mkdir(exist_ok=True)
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("bench: no C compiler (cc or gcc) found to build bench/loadgen.c")
    subprocess.run([compiler, "-O2", "-o", str(LOADGEN), str(source)], check=True)


def pinned(cpu: int, argv: list[str]) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} in {limit} s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


BASELINES: dict[str, Path] = {}
"""Revision (as given to --baseline) -> the ``src`` directory of asyncapy at it."""


def baseline(rev: str) -> Path:
    """asyncapy's ``src/`` at the git revision ``rev``, extracted into bench/.build/."""
    root = HERE.parent
    sha = subprocess.run(
        ["git", "rev-parse", "--short", f"{rev}^{{commit}}"],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    path = BUILD / f"baseline-{sha}"
    if not (path / "src" / "asyncapy").is_dir():
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", sha, "src"], cwd=root, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True)
    return path / "src"


COMPILED: list[Path] = []
"""The ``src`` directory of today's asyncapy as a compiled wheel (--compiled), once built."""
COMPILED_TARGETS: Final = ("framework", "plain", "groups")


def compiled_src() -> Path:
    """Today's asyncapy built as a wheel (mypyc, the normal build) and unpacked.

    Kept in bench/.build/compiled-HASH/ (HASH: of the sources), so a rerun on
    the same sources builds nothing. Exits when the wheel is pure Python (no
    compiler, or ASYNCAPY_NO_COMPILE set).
    """
    root = HERE.parent
    digest = hashlib.sha256()
    for source in [*sorted((root / "src").rglob("*.py")), root / "hatch_build.py"]:
        digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    path = BUILD / f"compiled-{digest.hexdigest()[:12]}"
    if not (path / "src" / "asyncapy").is_dir():
        wheels = path / "wheel"
        shutil.rmtree(wheels, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet"]
        subprocess.run([*pip, "-w", str(wheels), str(root)], check=True)
        wheel = next(wheels.glob("asyncapy-*.whl"))
        if wheel.name.endswith("-none-any.whl"):
            sys.exit(
                f"bench: {wheel.name} is pure Python: no compiler, or ASYNCAPY_NO_COMPILE is set"
            )
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(path / "src")
    return path / "src"


@contextlib.contextmanager
def server(target: str, port: int) -> Any:
    name, _, rev = target.partition("@")
    env = None
    if rev:  # the same server on an older asyncapy (--baseline)
        env = {**os.environ, "BENCH_ASYNCAPY_SRC": str(BASELINES[rev])}
    if name.endswith("+c"):  # the same server on the compiled build (--compiled)
        name = name[:-2]
        env = {**os.environ, "BENCH_ASYNCAPY_SRC": str(COMPILED[0])}
    argv = [sys.executable, str(HERE / "servers.py"), name, "--port", str(port)]
    process = subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, env=env)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def measure(scenario: Scenario, target: str, rnd: int, warmup: float, duration: float) -> Result:
    port = free_port()
    mode = {"aiohttp": "http", "original": "reconnect", "seed-echo": "reconnect"}.get(
        target, "aproto"
    )
    BUILD.mkdir(exist_ok=True)
    request = BUILD / f"request-{scenario.codec}-{scenario.size}.bin"
    frame = request_bytes(scenario.codec, scenario.size)
    if mode == "http":
        request = BUILD / f"body-{scenario.size}.json"
        request.write_bytes(msgspec.json.encode(payload(scenario.size)))
    else:
        request.write_bytes(frame)
    argv = loadgen_argv(scenario, port, mode, request, warmup, duration)
    with server(target, port) as process:
        loadgen = subprocess.Popen(pinned(1, argv), stdout=subprocess.PIPE)
        time.sleep(warmup)
        cpu_start = cpu_seconds(process.pid)
        time.sleep(duration)
        cpu_end = cpu_seconds(process.pid)
        out, _ = loadgen.communicate(timeout=warmup + duration + 30)
    return loadgen_result(loadgen, out, scenario, target, rnd, cpu_end - cpu_start)


def loadgen_argv(
    scenario: Scenario, port: int, mode: str, request: Path, warmup: float, duration: float
) -> list[str]:
    """The load generator's command line for ``scenario`` against 127.0.0.1:``port``."""
    return [
        str(LOADGEN),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--connections", str(scenario.connections),
        "--pipeline", str(scenario.pipeline),
        "--warmup", str(warmup),
        "--duration", str(duration),
        "--mode", mode,
        "--request-file", str(request),
        "--expect-file", str(request),
    ]  # fmt: skip


def loadgen_result(
    loadgen: subprocess.Popen[bytes],
    out: bytes,
    scenario: Scenario,
    target: str,
    rnd: int,
    server_cpu: float,
    extra: dict[str, Any] | None = None,
) -> Result:
    """The :class:`Result` of one run from the load generator's JSON and the server's CPU seconds.

    Raises:
        RuntimeError: when the load generator failed.
    """
    if loadgen.returncode != 0:
        raise RuntimeError(f"loadgen failed ({loadgen.returncode}) for {scenario.name}/{target}")
    stats = json.loads(out)
    requests = max(int(stats["requests"]), 1)
    return Result(
        scenario=scenario.name,
        target=target,
        round=rnd,
        rps=float(stats["rps"]),
        errors=int(stats["errors"]) + int(stats["connect_errors"]),
        p50_us=float(stats["p50_us"]),
        p99_us=float(stats["p99_us"]),
        p999_us=float(stats["p999_us"]),
        cpu_us_per_request=server_cpu * 1e6 / requests,
        extra={"requests": requests, **(extra or {})},
    )


def idle_memory(target: str, count: int) -> dict[str, Any]:
    """Server RSS growth per idle connection, with ``count`` connections held open."""
    port = free_port()
    sockets: list[socket.socket] = []
    with server(target, port) as process:
        time.sleep(0.3)
        before = rss_bytes(process.pid)
        try:
            for _ in range(count):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                sockets.append(sock)
                if len(sockets) % 500 == 0:
                    time.sleep(0.02)  # let the server accept
            last, stable_since = 0, time.monotonic()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until RSS stops growing for 1 s
                now = rss_bytes(process.pid)
                if now != last:
                    last, stable_since = now, time.monotonic()
                elif time.monotonic() - stable_since > 1.0:
                    break
                time.sleep(0.1)
            after = rss_bytes(process.pid)
        finally:
            for sock in sockets:
                sock.close()
    return {
        "target": target,
        "connections": count,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_connection": (after - before) / count,
    }


# -- reporting


def summarize(results: list[Result], scenario_list: list[Scenario]) -> list[dict[str, Any]]:
    rows = []
    for scenario in scenario_list:
        reference = "bare" if "bare" in scenario.targets else scenario.targets[0]
        by_round: dict[int, dict[str, Result]] = {}
        for result in results:
            if result.scenario == scenario.name:
                by_round.setdefault(result.round, {})[result.target] = result
        for target in scenario.targets:
            runs = [r[target] for r in by_round.values() if target in r]
            if not runs:
                continue
            ratios = [
                r[target].rps / r[reference].rps
                for r in by_round.values()
                if target in r and reference in r and r[reference].rps
            ]
            cpu_ratios = [
                r[target].cpu_us_per_request / r[reference].cpu_us_per_request
                for r in by_round.values()
                if target in r and reference in r and r[reference].cpu_us_per_request
            ]
            rows.append(
                {
                    "scenario": scenario.name,
                    "target": target,
                    "reference": reference,
                    "rps": statistics.median(r.rps for r in runs),
                    "ratio": statistics.median(ratios) if ratios else None,
                    "cpu_us": statistics.median(r.cpu_us_per_request for r in runs),
                    "cpu_ratio": statistics.median(cpu_ratios) if cpu_ratios else None,
                    "p50_us": statistics.median(r.p50_us for r in runs),
                    "p99_us": statistics.median(r.p99_us for r in runs),
                    "p999_us": statistics.median(r.p999_us for r in runs),
                    "errors": sum(r.errors for r in runs),
                    "rounds": len(runs),
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]], memory: list[dict[str, Any]]) -> None:
    header = (
        f"{'scenario':44} {'target':10} {'req/s':>9} {'x ref':>6} {'cpu us':>7} "
        f"{'cpu x':>6} {'p50 us':>8} {'p99 us':>8} {'p99.9':>8} {'err':>4}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
        cpu_ratio = f"{row['cpu_ratio']:.2f}" if row["cpu_ratio"] is not None else "-"
        print(
            f"{row['scenario']:44} {row['target']:10} {row['rps']:9.0f} {ratio:>6} "
            f"{row['cpu_us']:7.2f} {cpu_ratio:>6} {row['p50_us']:8.0f} {row['p99_us']:8.0f} "
            f"{row['p999_us']:8.0f} {row['errors']:4d}"
        )
    for item in memory:
        print(
            f"idle connections: {item['target']:10} {item['connections']} held, "
            f"{item['bytes_per_connection'] / 1024:.2f} KiB each"
        )


def chart(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed; no chart", file=sys.stderr)
        return False
    scenario_names = list(dict.fromkeys(row["scenario"] for row in rows))
    targets = list(dict.fromkeys(row["target"] for row in rows))
    width = 0.8 / max(len(targets), 1)
    fig, ax = plt.subplots(figsize=(14, 6))
    for index, target in enumerate(targets):
        xs, ys = [], []
        for position, name in enumerate(scenario_names):
            for row in rows:
                if row["scenario"] == name and row["target"] == target and row["ratio"]:
                    xs.append(position + index * width)
                    ys.append(row["ratio"])
        ax.bar(xs, ys, width, label=target)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(0.75, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks([p + 0.4 - width / 2 for p in range(len(scenario_names))])
    ax.set_xticklabels(scenario_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("throughput / reference of the same round")
    ax.set_title("asyncapy benchmark: ratio to the bare uvloop echo (dashed: 0.75 target)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 round of short runs (< 5 min)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds per run")
    parser.add_argument("--only", help="run only the scenarios whose name contains this")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections to hold")
    parser.add_argument(
        "--targets", help="comma-separated targets to run (the reference 'bare' is always kept)"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run framework@REV: the framework target on asyncapy as of git revision REV",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also run X+c for the framework, plain and groups targets: the same server on"
        " today's asyncapy built as a compiled wheel (mypyc)",
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (1.5 if args.quick else 4.0)
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)

    build_loadgen()
    scenario_list = [s for s in scenarios(args.quick) if not args.only or args.only in s.name]
    if args.targets:
        keep = {"bare", *args.targets.split(",")}
        for scenario in scenario_list:
            scenario.targets = [t for t in scenario.targets if t in keep]
        scenario_list = [s for s in scenario_list if len(s.targets) > 1]
    for scenario in scenario_list:  # scenarios may share one list: each gets its own
        scenario.targets = list(scenario.targets)
    if args.baseline:
        BASELINES[args.baseline] = baseline(args.baseline)
        for scenario in scenario_list:
            if "framework" in scenario.targets:
                at = scenario.targets.index("framework") + 1
                scenario.targets.insert(at, f"framework@{args.baseline}")
    if args.compiled:
        COMPILED.append(compiled_src())
        for scenario in scenario_list:
            for name in COMPILED_TARGETS:
                if name in scenario.targets:
                    at = scenario.targets.index(name) + 1
                    scenario.targets.insert(at, f"{name}+c")
    results: list[Result] = []
    started = time.time()
    for scenario in scenario_list:
        for rnd in range(rounds):
            for target in scenario.targets:
                result = measure(scenario, target, rnd, warmup, duration)
                results.append(result)
                print(
                    f"  {scenario.name:44} {target:10} round {rnd}: {result.rps:9.0f} req/s"
                    f" {result.cpu_us_per_request:6.2f} us/req",
                    file=sys.stderr,
                    flush=True,
                )
    memory = []
    if args.idle and not args.only:
        for target in ("bare", "framework"):
            memory.append(idle_memory(target, args.idle))
    rows = summarize(results, scenario_list)
    print()
    print_table(rows, memory)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = {
        "started": started,
        "seconds": time.time() - started,
        "rounds": rounds,
        "duration": duration,
        "warmup": warmup,
        "python": sys.version,
        "cpus": os.cpu_count(),
        "summary": rows,
        "idle_memory": memory,
        "runs": [asdict(r) for r in results],
    }
    path = RESULTS / f"results-{stamp}.json"
    path.write_text(json.dumps(report, indent=1))
    shutil.copyfile(path, RESULTS / "latest.json")
    png = RESULTS / f"chart-{stamp}.png"
    if chart(rows, png):
        shutil.copyfile(png, RESULTS / "latest.png")
    print(f"\nresults: {path} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
