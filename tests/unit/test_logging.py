"""The named loggers: asyncapy.error for the server's own messages, asyncapy.access ready."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from asyncapy import Packet, Server
from asyncapy import logging as asyncapy_logging
from asyncapy.core import Client
from tests.conftest import Runner
from tests.helpers import ask, serving


def test_the_loggers_are_children_of_asyncapy() -> None:
    assert asyncapy_logging.error_logger.name == "asyncapy.error"
    assert asyncapy_logging.access_logger.name == "asyncapy.access"
    for logger in (asyncapy_logging.error_logger, asyncapy_logging.access_logger):
        assert logger.parent is logging.getLogger("asyncapy")


def test_server_messages_and_handler_errors_go_to_asyncapy_error(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(port=0)

    @server.add_handler()
    async def broken(client: Client, packet: Packet) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        async with serving(server):
            assert await ask(server, {"a": 1}) == {"status": "failure", "error": "ERR_INTERNAL"}

    with caplog.at_level(logging.INFO, logger="asyncapy"):
        arun(main())
    names = {record.name for record in caplog.records}
    assert names == {"asyncapy.error"}, names
    boom = [r for r in caplog.records if r.exc_info and "boom" in str(r.exc_info[1])]
    assert boom
    assert boom[0].levelno == logging.ERROR


def test_logging_level_applies_to_both_loggers(arun: Runner[Any]) -> None:
    server = Server(port=0, logging_level="WARNING")

    async def main() -> None:
        async with serving(server):
            pass

    arun(main())
    for logger in (asyncapy_logging.error_logger, asyncapy_logging.access_logger):
        assert logger.getEffectiveLevel() == logging.WARNING
