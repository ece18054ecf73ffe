"""The ``asyncapy`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asyncapy`` command; return its exit status."""
    parser = argparse.ArgumentParser(prog="asyncapy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"asyncapy {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0
