"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asyncapy import Server
from tests.helpers import echo_server, server_thread


@pytest.fixture(scope="module")
def echo() -> Iterator[Server]:
    """An echo server (``tests.helpers.echo_server``) in a thread, for the whole module."""
    with server_thread(echo_server()) as server:
        yield server
