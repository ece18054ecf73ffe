"""The fuzz targets of ``atheris_targets``: fuzzed briefly with atheris, and replayed.

* ``test_fuzzing_finds_nothing``: ``python -m tests.fuzz.run_atheris`` on each
  target for ``ASYNCAPY_FUZZ_SECONDS`` (default 5) seconds, with a fixed
  libFuzzer seed. Only where atheris is installed (Python 3.11). A run that
  executes (almost) nothing fails: a broken harness must not pass silently.
* ``test_seed_corpus_replays``: every target on its seed corpus and a few
  deterministic mutants of it, without atheris, on every Python.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuzz.atheris_targets import TARGETS, Vectors, seed_inputs
from tests.helpers import VECTORS, load_vectors

PROJECT = Path(__file__).resolve().parents[2]
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None


def _fuzz_seconds() -> int:
    text = os.environ.get("ASYNCAPY_FUZZ_SECONDS", "5")
    try:
        seconds = int(text)
    except ValueError:
        raise ValueError(f"ASYNCAPY_FUZZ_SECONDS must be a whole number, not {text!r}") from None
    return max(1, seconds)


FUZZ_SECONDS = _fuzz_seconds()
"""libFuzzer's -max_total_time per target (it overruns it by about a second)."""
STARTUP_ALLOWANCE_S = 60
"""Start-up, seed loading and libFuzzer's final report, on a slow machine."""
MIN_EXECUTIONS = 100 * FUZZ_SECONDS
"""Executions a run must reach. The slowest target does over 1,000 a second
instrumented; below 100 a second the harness is broken (or the machine is)."""


def executions(output: str) -> int:
    """The number of inputs libFuzzer ran, from its final report (0 when absent)."""
    for pattern in (
        r"stat::number_of_executed_units:\s*(\d+)",
        r"#(\d+)\s+DONE",
        r"Done (\d+) runs",
    ):
        found = re.findall(pattern, output)
        if found:
            return int(found[-1])
    return 0


def test_executions_are_read_from_libfuzzer_output() -> None:
    assert executions("#5100\tDONE   cov: 71 ft: 331\nDone 5100 runs in 6 second(s)\n") == 5100
    assert executions("stat::number_of_executed_units: 53008\nstat::x: 1\n") == 53008
    assert executions("INFO: Seed: 1\n#2\tINITED exec/s: 0\n") == 0


def _crash_report(artifacts: Path) -> str:
    lines = []
    for path in sorted(artifacts.glob("*")) if artifacts.is_dir() else []:
        data = path.read_bytes()
        lines.append(f"{path.name} ({len(data)} bytes): {data[:512].hex()}")
    return "\n".join(lines) or "(no artifact written)"


@pytest.mark.skipif(
    not HAVE_ATHERIS, reason="atheris is not installed: it is a test extra for Python 3.11 only"
)
@pytest.mark.timeout(FUZZ_SECONDS + STARTUP_ALLOWANCE_S + 30)
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzzing_finds_nothing(
    target: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    artifacts = tmp_path / "artifacts"
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.run_atheris",
        target,
        f"--seconds={FUZZ_SECONDS}",
        f"--corpus={tmp_path / 'corpus'}",
        f"--artifacts={artifacts}",
        "--seed=1",
    ]
    start = time.monotonic()
    done = subprocess.run(
        command,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=FUZZ_SECONDS + STARTUP_ALLOWANCE_S,
        check=False,
    )
    elapsed = time.monotonic() - start
    output = done.stdout + done.stderr
    runs = executions(output)
    rate = re.findall(r"stat::average_exec_per_sec:\s*(\d+)", output)
    record_property("fuzz_executions", runs)
    record_property("fuzz_seconds", round(elapsed, 1))
    record_property("fuzz_exec_per_s", int(rate[-1]) if rate else 0)
    print(f"{target}: {runs} executions in {elapsed:.1f} s")
    tail = "\n".join(output.splitlines()[-40:])
    assert done.returncode == 0, (
        f"fuzzing {target} failed (exit {done.returncode}); crashing input(s):\n"
        f"{_crash_report(artifacts)}\n--- end of its output:\n{tail}"
    )
    assert runs >= MIN_EXECUTIONS, (
        f"fuzzing {target} ran {runs} inputs in {FUZZ_SECONDS} s, fewer than {MIN_EXECUTIONS}:"
        f" is the harness fuzzing at all?\n--- end of its output:\n{tail}"
    )


def _vectors() -> Vectors:
    """The shared vectors where present; the targets' own seeds work without them."""
    found = {
        name: load_vectors(name)
        for name in ("frames", "ziproto")
        if (VECTORS / f"{name}.json").is_file()
    }
    return Vectors(**found)


def _mutants(seed: bytes) -> list[bytes]:
    """A few deterministic neighbours of ``seed``: truncated, and with one byte changed."""
    found = [
        seed[:cut] for cut in {0, 1, 2, 3, 7, len(seed) // 2, len(seed) - 1} if cut < len(seed)
    ]
    for position in sorted({0, 1, 2, 3, 4, 5, 6, 7, len(seed) // 2, len(seed) - 1}):
        if 0 <= position < len(seed):
            for value in (0x00, 0x16, 0xFF, seed[position] ^ 0x01):
                found.append(seed[:position] + bytes((value,)) + seed[position + 1 :])
    return found


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_seed_corpus_replays(target: str) -> None:
    run = TARGETS[target]
    seeds = seed_inputs(target, _vectors())
    assert seeds, f"{target} has no seed inputs"
    for seed in seeds:
        for data in [seed, *_mutants(seed)]:
            try:
                run(data)
            except AssertionError as exc:
                raise AssertionError(f"{target} on {data[:256].hex()}: {exc}") from exc
