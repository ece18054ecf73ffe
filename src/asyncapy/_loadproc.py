"""``asyncapy bench --processes N``: the load split over fresh processes, results merged.

Theory of operation
-------------------
Each process is a new interpreter, ``python -m asyncapy._loadgen`` (never a
fork), given its share of the connections (and of ``--requests``) as one JSON
line on stdin. The parent waits until every process says ``ready`` (imported,
settings checked), then sends all of them ``go START``, one
``time.monotonic_ns()`` a little ahead: on Linux that clock is the same in
every process, so all the windows open together. It reads their ``progress
N`` lines as they come (one ``selectors`` loop over the pipes, with a
deadline) and merges their ``result`` lines: histograms add bucket by bucket
(:class:`~asyncapy._loadstats.LoadResult`). A process that exits without a
result, or a run that overshoots its deadline, is an error; the processes are
killed on any way out.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

import msgspec

from ._loadgen import LoadSpec
from ._loadstats import LoadResult

__all__ = ["LoadProcessError", "run_processes", "split"]

_START_AHEAD: Final = 0.05  # seconds between "go" and the start of the windows
_READY_TIMEOUT: Final = 30.0


class LoadProcessError(RuntimeError):
    """A load process failed: it did not start, or ended without a result."""


def split(spec: LoadSpec, processes: int) -> list[LoadSpec]:
    """``spec`` cut into ``processes`` specs: the connections and requests shared out.

    Raises:
        ValueError: when there are fewer connections than processes.
    """
    if spec.connections < processes:
        raise ValueError(f"{processes} processes need at least as many connections")
    specs = []
    for k in range(processes):
        connections = spec.connections // processes + (k < spec.connections % processes)
        requests = None
        if spec.requests is not None:
            requests = spec.requests // processes + (k < spec.requests % processes)
        specs.append(msgspec.structs.replace(spec, connections=connections, requests=requests))
    return [s for s in specs if s.requests is None or s.requests > 0]


class _Process:
    def __init__(self, spec: LoadSpec) -> None:
        src = str(Path(__file__).resolve().parent.parent)  # asyncapy importable as here
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "asyncapy._loadgen"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.buffer = b""
        self.ready = False
        self.count = 0
        self.result: LoadResult | None = None
        self.write(msgspec.json.encode(spec) + b"\n")

    def write(self, data: bytes) -> None:
        stdin: IO[bytes] | None = self.popen.stdin
        if stdin is not None:
            try:
                stdin.write(data)
                stdin.flush()
            except BrokenPipeError:  # it died: reported when its output ends
                pass

    def lines(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            word, _, rest = line.partition(b" ")
            if word == b"ready":
                self.ready = True
            elif word == b"progress":
                self.count = int(rest)
            elif word == b"result":
                self.result = msgspec.json.decode(rest, type=LoadResult)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()


def _pump(
    selector: selectors.BaseSelector,
    done: Callable[[], bool],
    deadline: float | None,
    what: str,
    tick: Callable[[], None] | None = None,
) -> None:
    """Read the processes' output until ``done()``; raise on the deadline or an early exit."""
    while not done():
        if deadline is not None and time.monotonic() > deadline:
            raise LoadProcessError(f"the load processes did not {what} in time")
        if not selector.get_map():
            raise LoadProcessError(f"a load process exited before it could {what}")
        for key, _ in selector.select(0.25):
            process: _Process = key.data
            data = os.read(key.fd, 65536)
            if not data:
                selector.unregister(key.fileobj)
                code = process.popen.wait(10)
                if process.result is None:
                    raise LoadProcessError(f"a load process exited ({code}) without a result")
                continue
            process.lines(data)
        if tick is not None:
            tick()


def run_processes(
    spec: LoadSpec, processes: int, progress: Callable[[int], None] | None = None
) -> LoadResult:
    """Run ``spec`` split over ``processes`` new processes; return the merged result.

    Args:
        spec: the whole load.
        processes: how many processes share it.
        progress: called about 4 times a second with the replies counted so far.

    Raises:
        ValueError: from :func:`split`.
        LoadProcessError: when a process fails to start or to report.
    """
    running = [_Process(part) for part in split(spec, processes)]
    selector = selectors.DefaultSelector()
    try:
        for process in running:
            assert process.popen.stdout is not None
            selector.register(process.popen.stdout, selectors.EVENT_READ, process)
        _pump(
            selector,
            lambda: all(p.ready for p in running),
            time.monotonic() + _READY_TIMEOUT,
            "start",
        )
        start = time.monotonic_ns() + int(_START_AHEAD * 1e9)
        for process in running:
            process.write(f"go {start}\n".encode())
        deadline = None
        if spec.duration is not None:
            deadline = time.monotonic() + spec.warmup + spec.duration + spec.timeout + 30
        last = [0.0]

        def tick() -> None:
            now = time.monotonic()
            if progress is not None and now - last[0] >= 0.25:
                last[0] = now
                progress(sum(p.count for p in running))

        _pump(
            selector, lambda: all(p.result is not None for p in running), deadline, "finish", tick
        )
    finally:
        selector.close()
        for process in running:
            process.stop()
    return LoadResult.merge(p.result for p in running if p.result is not None)
