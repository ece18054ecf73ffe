"""``asyncapy bench``: a load generator (being written)."""

from __future__ import annotations

import click


@click.command()
def bench() -> int:
    """Load-test a server (not written yet)."""
    raise click.ClickException("asyncapy bench is not written yet")
