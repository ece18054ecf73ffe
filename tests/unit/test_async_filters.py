"""Asynchronous filters: composition, and the dispatcher awaiting them (no network)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from asyncapy import Packet
from asyncapy.core import Client, Handler
from asyncapy.dispatch import Dispatcher
from asyncapy.errors import ErrorCode, Reject
from asyncapy.filters import AndFilter, AsyncFilter, Filter, NotFilter, OrFilter
from tests.helpers import FakePeer, run_dispatch


class Sync(Filter):
    """A synchronous filter with a fixed answer that counts its calls."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls = 0

    def check(self, client: Client, packet: Packet) -> bool:
        self.calls += 1
        return self.answer


class Async(AsyncFilter):
    """An asynchronous filter: answers after ``waits`` real suspensions."""

    def __init__(self, answer: bool, waits: int = 0, error: BaseException | None = None) -> None:
        self.answer = answer
        self.waits = waits
        self.error = error
        self.calls = 0

    async def check(self, client: Client, packet: Packet) -> bool:
        self.calls += 1
        for _ in range(self.waits):
            await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        return self.answer


C: Any = FakePeer()
P = Packet({})


def test_is_async_is_decided_per_class_and_per_combination() -> None:
    assert not Sync(True).is_async
    assert Async(True).is_async
    assert not (Sync(True) & Sync(False)).is_async
    both = Sync(True) & Async(True)
    assert both.is_async
    assert isinstance(both, AndFilter)
    either = Async(True) | Sync(True)
    assert either.is_async
    assert isinstance(either, OrFilter)
    negated = ~Async(True)
    assert negated.is_async
    assert isinstance(negated, NotFilter)
    assert not (~Sync(True)).is_async
    # Nested asynchronous combinations are flattened like synchronous ones.
    nested = (Async(True) & Sync(True)) & Sync(True)
    assert isinstance(nested, AndFilter)
    assert len(nested.filters) == 3

    class Plain(Filter):  # a Filter subclass with an async check is asynchronous too
        async def check(self, client: Client, packet: Packet) -> bool:
            return True

    assert Plain().is_async


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (lambda: Sync(True) & Async(True), True),
        (lambda: Sync(True) & Async(False), False),
        (lambda: Async(False) | Sync(True), True),
        (lambda: Async(False) | Async(False, waits=2), False),
        (lambda: ~Async(False, waits=1), True),
        (lambda: ~(Async(True) & Sync(True)), False),
    ],
)
def test_async_combinations_answer_like_their_logic(flt: Any, expected: bool) -> None:
    assert asyncio.run(flt().check(C, P)) is expected


def test_async_and_or_short_circuit() -> None:
    first, second = Async(False), Sync(True)
    assert asyncio.run((first & second).check(C, P)) is False  # type: ignore[arg-type]
    assert second.calls == 0
    first, second = Async(True), Sync(True)
    assert asyncio.run((first | second).check(C, P)) is True  # type: ignore[arg-type]
    assert second.calls == 0


def test_handler_check_refuses_async_filters_and_acheck_awaits() -> None:
    async def handler(client: Client, packet: Packet) -> None:
        pass

    sync = Handler(handler, [Sync(True)])
    assert not sync.is_async
    assert sync.check(C, P) is True
    assert asyncio.run(sync.acheck(C, P)) is True
    mixed = Handler(handler, [Sync(True), Async(False, waits=1)])
    assert mixed.is_async
    with pytest.raises(TypeError, match="acheck"):
        mixed.check(C, P)
    assert asyncio.run(mixed.acheck(C, P)) is False


# -- the dispatcher


def dispatch(dispatcher: Dispatcher, client: FakePeer, packet: Packet) -> None:
    run_dispatch(dispatcher, client, packet)


def recorder(name: str, calls: list[str]) -> Any:
    async def handler(client: Client, packet: Packet) -> None:
        calls.append(name)
        await client.send({"from": name})

    handler.__name__ = name
    return handler


@pytest.mark.parametrize("waits", [0, 1, 3])
def test_an_async_filter_that_passes_calls_its_handler(waits: int) -> None:
    calls: list[str] = []
    dispatcher = Dispatcher()
    dispatcher.add(Handler(recorder("a", calls), [Async(True, waits=waits)]))
    dispatcher.add(Handler(recorder("b", calls), []))
    client, packet = FakePeer(), Packet({})
    dispatch(dispatcher, client, packet)
    assert calls == ["a"]
    assert client.sent == [{"from": "a"}]
    assert packet._handler == "a"


@pytest.mark.parametrize("waits", [0, 1, 3])
def test_an_async_filter_that_fails_goes_on_with_the_next_handler_and_group(waits: int) -> None:
    calls: list[str] = []
    dispatcher = Dispatcher()
    dispatcher.add(Handler(recorder("a", calls), [Async(False, waits=waits)]))
    dispatcher.add(Handler(recorder("b", calls), [Sync(False)]))
    dispatcher.add(Handler(recorder("c", calls), [Async(True, waits=waits)]))
    dispatcher.add(Handler(recorder("d", calls), []))  # same group: skipped after "c"
    dispatcher.add(Handler(recorder("e", calls), [Async(True, waits=waits)]), group=1)
    client = FakePeer()
    dispatch(dispatcher, client, Packet({}))
    assert calls == ["c", "e"]


@pytest.mark.parametrize("waits", [0, 2])
def test_when_no_async_filter_passes_the_reply_is_err_no_handler(waits: int) -> None:
    calls: list[str] = []
    dispatcher = Dispatcher()
    dispatcher.add(Handler(recorder("a", calls), [Async(False, waits=waits)]))
    dispatcher.add(Handler(recorder("b", calls), [Async(False, waits=waits)]), group=1)
    client, packet = FakePeer(), Packet({})
    dispatch(dispatcher, client, packet)
    assert calls == []
    assert client.sent == [{"status": "failure", "error": "ERR_NO_HANDLER"}]
    assert packet._code == "ERR_NO_HANDLER"


@pytest.mark.parametrize("waits", [0, 2])
def test_an_async_filter_that_raises_is_err_internal(waits: int) -> None:
    calls: list[str] = []
    dispatcher = Dispatcher()
    dispatcher.add(Handler(recorder("a", calls), [Async(True, waits=waits, error=OSError("x"))]))
    dispatcher.add(Handler(recorder("b", calls), []))
    client, packet = FakePeer(), Packet({})
    dispatch(dispatcher, client, packet)
    assert calls == []
    assert client.sent == [{"status": "failure", "error": "ERR_INTERNAL"}]


@pytest.mark.parametrize("waits", [0, 2])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_reject_from_a_filter_answers_its_code_and_ends_the_dispatch(waits: int, kind: str) -> None:
    reject = Reject(ErrorCode.ERR_RATE_LIMITED, retry_after=1.5)
    calls: list[str] = []

    class Refuses(Filter):
        def check(self, client: Client, packet: Packet) -> bool:
            raise reject

    flt: Filter = Refuses() if kind == "sync" else Async(True, waits=waits, error=reject)
    dispatcher = Dispatcher()
    dispatcher.add(Handler(recorder("a", calls), [flt]))
    dispatcher.add(Handler(recorder("b", calls), []))
    dispatcher.add(Handler(recorder("c", calls), []), group=1)
    client, packet = FakePeer(), Packet({})
    dispatch(dispatcher, client, packet)
    assert calls == []
    assert client.sent == [{"status": "failure", "error": "ERR_RATE_LIMITED", "retry_after": 1.5}]
    assert packet._code == "ERR_RATE_LIMITED"


def test_reject_refuses_reserved_fields() -> None:
    with pytest.raises(ValueError, match="status"):
        Reject(ErrorCode.ERR_RATE_LIMITED, status="ok")


def test_async_filter_runs_in_the_request_context_with_a_current_task() -> None:
    seen: list[object] = []

    class NeedsTask(AsyncFilter):
        async def check(self, client: Client, packet: Packet) -> bool:
            seen.append(asyncio.current_task())
            async with asyncio.timeout(1):  # needs a current task from the first line
                await asyncio.sleep(0)
            return True

    calls: list[str] = []
    dispatcher = Dispatcher()
    dispatcher.add(Handler(recorder("a", calls), [NeedsTask()]))
    dispatch(dispatcher, FakePeer(), Packet({}))
    assert calls == ["a"]
    assert seen[0] is not None


def test_sync_filters_still_never_touch_the_loop() -> None:
    """A sync filter's dispatch finishes inside run(): no Task is returned."""
    calls: list[str] = []
    dispatcher = Dispatcher()
    dispatcher.add(Handler(recorder("a", calls), [Sync(False)]))
    dispatcher.add(Handler(recorder("b", calls), [Sync(True)]))

    async def main() -> object:
        return dispatcher.run(
            FakePeer(), Packet({}), asyncio.get_running_loop(), contextvars.copy_context()
        )

    assert asyncio.run(main()) is None
    assert calls == ["b"]
