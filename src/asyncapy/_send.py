"""``asyncapy send``: one request from the shell (being written)."""

from __future__ import annotations

import click


@click.command()
def send() -> int:
    """Send one request (not written yet)."""
    raise click.ClickException("asyncapy send is not written yet")
