"""Instructions per request on the hot path, counted by valgrind (repeatable).

    python bench/instructions.py [--pipeline P] [--target framework]

Runs bench/hotpath.py under ``valgrind --tool=callgrind`` with N and 2N
requests for the bare echo and for asyncapy; the difference divided by N is
the cost of one request, free of start-up and of machine noise. The runs pin
``PYTHONHASHSEED=0``: with hash randomisation the same build moved by about
±2 % from run to run, with it two runs agree to the instruction.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def instructions(only: str, requests: int, pipeline: int, target: str) -> int:
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(HERE / "hotpath.py"), "--only", only, "--target", target,
        "--requests", str(requests), "--pipeline", str(pipeline),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    err = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stderr
    match = re.search(r"Collected : (\d+)", err)
    if match is None:
        raise RuntimeError(err[-2000:])
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", type=int, default=1)
    parser.add_argument("--target", default="framework")
    parser.add_argument("--requests", type=int, default=4000)
    args = parser.parse_args()
    n = args.requests
    per = {}
    for only in ("bare", "asyncapy"):
        small = instructions(only, n, args.pipeline, args.target)
        large = instructions(only, 2 * n, args.pipeline, args.target)
        per[only] = (large - small) / n
    print(
        f"pipeline {args.pipeline}: bare {per['bare']:.0f} instr/req, {args.target}"
        f" {per['asyncapy']:.0f} instr/req, ratio {per['asyncapy'] / per['bare']:.2f}"
    )


if __name__ == "__main__":
    main()
