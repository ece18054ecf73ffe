"""Fuzz one target of ``tests/fuzz/atheris_targets.py`` with atheris (libFuzzer).

Usage, from the project's root::

    python -m tests.fuzz.run_atheris TARGET --seconds N [--corpus DIR] [options] [-- LIBFUZZER_ARGS]

``TARGET`` is a key of ``atheris_targets.TARGETS`` (``frames``, ``json``,
``ziproto``, ``tls``). The seed corpus is built from the shared vectors
(``../shared/vectors/frames.json`` and ``ziproto.json``, when present) into a
temporary directory, never into the project. ``--corpus DIR`` is where
libFuzzer keeps the inputs it finds (none kept without it). A crashing input
is written under ``--artifacts`` (default: ``$TMPDIR/asyncapy-fuzz-artifacts``);
replay it with ``python -m tests.fuzz.run_atheris TARGET -- FILE``.

libFuzzer ends its process without running Python's exit handlers, so the
fuzzing runs in a child process (this module with ``--child``) and this one
removes the seed directory after it. The exit status is libFuzzer's: 0 when
the time ran out with nothing found.

atheris is only installed for Python 3.11.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROJECT: Path = Path(__file__).resolve().parents[2]

DEFAULT_RSS_LIMIT_MB = 2048
DEFAULT_UNIT_TIMEOUT_S = 10
"""libFuzzer's ``-timeout``: one input running this long is a hang (a finding)."""


# This module is also the child's __main__: it imports nothing of asyncapy (nor
# tests.helpers, nor the targets) at the top, so that the child can instrument it.


def vectors_dir() -> Path:
    """Where the shared vectors are (``tests.helpers.VECTORS``)."""
    from tests.helpers import VECTORS

    return VECTORS


def load_vectors() -> Any:
    """The shared vectors as ``atheris_targets.Vectors`` (empty when the files are absent)."""
    from tests.fuzz.atheris_targets import Vectors

    found: dict[str, Any] = {}
    for name in ("frames", "ziproto"):
        path = vectors_dir() / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    return Vectors(**found)


def write_seeds(target: str, directory: Path) -> int:
    """Write ``target``'s seed inputs into ``directory``; return how many."""
    from tests.fuzz.atheris_targets import seed_inputs

    seeds = seed_inputs(target, load_vectors())
    for index, seed in enumerate(seeds):
        (directory / f"seed-{index:04d}").write_bytes(seed)
    return len(seeds)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from tests.fuzz.atheris_targets import MAX_LEN, TARGETS

    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz.run_atheris",
        description="Fuzz one asyncapy target with atheris for a bounded time.",
    )
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument(
        "--seconds", type=int, default=60, help="libFuzzer's -max_total_time (default 60)"
    )
    parser.add_argument("--corpus", type=Path, help="directory libFuzzer keeps new inputs in")
    parser.add_argument(
        "--max-len", type=int, help=f"libFuzzer's -max_len (default per target: {MAX_LEN})"
    )
    parser.add_argument("--rss-limit-mb", type=int, default=DEFAULT_RSS_LIMIT_MB)
    parser.add_argument(
        "--seed", type=int, default=0, help="libFuzzer's -seed (0: a random one, the default)"
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path(tempfile.gettempdir()) / "asyncapy-fuzz-artifacts",
        help="directory crashing inputs are written to",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("libfuzzer", nargs="*", help="more libFuzzer arguments or input files")
    args = parser.parse_args(argv)
    if args.max_len is None:
        args.max_len = MAX_LEN[args.target]
    return args


def libfuzzer_args(args: argparse.Namespace) -> list[str]:
    """The libFuzzer flags (not the corpus directories) for ``args``."""
    return [
        f"-max_total_time={args.seconds}",
        f"-max_len={args.max_len}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-timeout={DEFAULT_UNIT_TIMEOUT_S}",
        f"-seed={args.seed}",
        f"-artifact_prefix={args.artifacts.resolve()}{os.sep}{args.target}-",
        "-print_final_stats=1",
    ]


def fuzz(target: str, argv: list[str]) -> None:
    """Run atheris on ``target`` with libFuzzer ``argv``; does not return."""
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed for this Python (it is a Python 3.11 test extra)")
    if "asyncapy" in sys.modules:
        sys.exit("asyncapy was imported before instrumentation: coverage guidance would be lost")
    # The targets module too: its reference model and its walk of decoded
    # values give coverage where asyncapy calls into C (the codecs).
    with atheris.instrument_imports(include=["asyncapy", "tests.fuzz.atheris_targets"]):
        from tests.fuzz import atheris_targets
    atheris.Setup([sys.argv[0], *argv], atheris_targets.TARGETS[target])
    atheris.Fuzz()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:  # parse as little as possible before instrumenting
        argv.remove("--child")
        fuzz(argv[0], argv[1:])
    args = parse_args(argv)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    flags = libfuzzer_args(args)
    with tempfile.TemporaryDirectory(prefix=f"asyncapy-fuzz-{args.target}-seeds-") as seeds:
        count = write_seeds(args.target, Path(seeds))
        corpora = []
        if args.corpus is not None:
            args.corpus.mkdir(parents=True, exist_ok=True)
            corpora.append(str(args.corpus.resolve()))
        corpora.append(seeds)
        inputs = [str(Path(arg).resolve()) if Path(arg).exists() else arg for arg in args.libfuzzer]
        if any(not arg.startswith("-") for arg in inputs):
            corpora = []  # replaying given inputs: no corpus
        print(
            f"run_atheris: {args.target}, {args.seconds} s, {count} seeds"
            f" (vectors: {vectors_dir() if vectors_dir().is_dir() else 'absent'}),"
            f" artifacts in {args.artifacts.resolve()}",
            file=sys.stderr,
            flush=True,
        )
        command = [
            sys.executable,
            "-m",
            "tests.fuzz.run_atheris",
            "--child",
            args.target,
            *flags,
            *inputs,
            *corpora,
        ]
        try:
            done = subprocess.run(command, cwd=PROJECT, check=False, timeout=args.seconds + 120)
        except subprocess.TimeoutExpired:
            print("run_atheris: libFuzzer overran its time by 120 s: killed", file=sys.stderr)
            return 124
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
