"""pytest configuration shared by every test layer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]

try:
    import uvloop

    LOOPS = ["asyncio", "uvloop"]
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    LOOPS = ["asyncio"]


@pytest.fixture(params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    """Each test that uses it runs on asyncio's loop and on uvloop's."""
    name: str = request.param
    return name


@pytest.fixture
def arun(loop_name: str) -> Iterator[Runner[Any]]:
    """Run a coroutine to completion on the chosen loop, within 30 seconds."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop_name == "uvloop":
        factory = uvloop.new_event_loop

    with asyncio.Runner(loop_factory=factory) as runner:

        def run(coro: Coroutine[Any, Any, T]) -> T:
            async def bounded() -> T:
                async with asyncio.timeout(30):
                    return await coro

            return runner.run(bounded())

        yield run


@pytest.fixture(autouse=True)
def _reset_asyncapy_logger() -> Iterator[None]:
    """Servers set the asyncapy logger's level; give every test a clean one."""
    logger = logging.getLogger("asyncapy")
    level, propagate = logger.level, logger.propagate
    yield
    logger.setLevel(level)
    logger.propagate = propagate
