"""One current-task stand-in per turn (asyncapy._eager.Steps): reused, retired, restored."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Any

import pytest

from asyncapy._eager import EAGER_TASKS, Steps

pytestmark = pytest.mark.skipif(EAGER_TASKS, reason="eager Tasks: no stand-in on this Python")


async def _seen(into: list[Any]) -> None:
    into.append(asyncio.current_task())


def _run_turn(steps: Steps, loop: asyncio.AbstractEventLoop, *coros: Any) -> list[Any]:
    """Begin a turn, step each coroutine, end it; return what each step returned."""
    results: list[Any] = []
    steps.begin()
    try:
        for coro in coros:
            results.append(steps.step(loop, coro, contextvars.copy_context(), "h"))
    finally:
        steps.end()
    return results


def test_handlers_that_leave_the_task_alone_share_one_stand_in() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        outer = asyncio.current_task()
        seen: list[Any] = []
        steps = Steps(loop)
        assert _run_turn(steps, loop, _seen(seen), _seen(seen), _seen(seen)) == [None] * 3
        assert len({id(task) for task in seen}) == 1
        assert seen[0] is not outer
        assert seen[0] is not None
        assert asyncio.current_task() is outer  # given back at the end of the turn

    asyncio.run(main())


@pytest.mark.parametrize(
    "use",
    [
        lambda task: task.add_done_callback(lambda _: None),
        lambda task: task.set_name("mine"),
        lambda task: task.cancel(),
    ],
    ids=["add_done_callback", "set_name", "cancel"],
)
def test_a_stand_in_used_as_a_task_serves_no_other_handler(use: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[Any] = []

        async def user() -> None:
            task = asyncio.current_task()
            seen.append(task)
            use(task)

        steps = Steps(loop)
        steps.begin()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                steps.step(loop, user(), contextvars.copy_context(), "h")
            steps.step(loop, _seen(seen), contextvars.copy_context(), "h")
        finally:
            steps.end()
        assert seen[0] is not seen[1]
        assert seen[0].done()  # it finished as its handler's task
        assert not seen[1].done()

    asyncio.run(main())


def test_after_an_adoption_the_next_handler_gets_a_new_stand_in_and_the_task_is_restored() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        outer = asyncio.current_task()
        seen: list[Any] = []

        async def suspends() -> str:
            seen.append(asyncio.current_task())
            await asyncio.sleep(0)
            return "rest"

        steps = Steps(loop)
        first, second = _run_turn(steps, loop, suspends(), _seen(seen))
        assert isinstance(first, asyncio.Task)
        assert second is None
        assert seen[0] is not seen[1]
        assert asyncio.current_task() is outer
        assert await first == "rest"

    asyncio.run(main())


def test_turns_nest_and_outside_a_turn_each_step_has_its_own_task() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        outer = asyncio.current_task()
        seen: list[Any] = []
        steps = Steps(loop)
        steps.begin()
        steps.begin()
        steps.end()
        inner = asyncio.current_task()
        assert inner is not outer  # still the turn's stand-in
        steps.end()
        assert asyncio.current_task() is outer
        ctx = contextvars.copy_context
        assert steps.step(loop, _seen(seen), ctx(), "h") is None
        assert steps.step(loop, _seen(seen), ctx(), "h") is None
        assert seen[0] is not seen[1]
        assert seen[0].done()  # first_step: a finished, one-off stand-in
        assert asyncio.current_task() is outer

    asyncio.run(main())


def test_a_handler_error_propagates_and_retires_the_stand_in() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[Any] = []

        async def fails() -> None:
            seen.append(asyncio.current_task())
            raise ValueError("boom")

        steps = Steps(loop)
        steps.begin()
        try:
            with pytest.raises(ValueError, match="boom"):
                steps.step(loop, fails(), contextvars.copy_context(), "h")
            steps.step(loop, _seen(seen), contextvars.copy_context(), "h")
        finally:
            steps.end()
        assert seen[0] is not seen[1]
        assert seen[0].done()
        with pytest.raises(ValueError, match="boom"):
            seen[0].result()

    asyncio.run(main())
