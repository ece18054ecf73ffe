"""Packet, Handler, registration, the dispatcher and eager stepping, without a network."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from typing import Any

import pytest

from asyncapy import Filters, Packet, Server, StopPropagation
from asyncapy.core import DONE, Client, Handler
from asyncapy.dispatch import Dispatcher
from asyncapy.errors import DecodeError
from tests.conftest import Runner
from tests.helpers import FakePeer

# -- Packet


def test_packet_is_a_read_only_mapping() -> None:
    packet = Packet({"a": 1, "b": [2]}, "json")
    assert packet["a"] == 1
    assert "b" in packet
    assert "z" not in packet
    assert packet.get("z", 5) == 5
    assert len(packet) == 2
    assert list(packet) == ["a", "b"]
    assert dict(packet) == {"a": 1, "b": [2]}
    assert packet == {"a": 1, "b": [2]}
    with pytest.raises(TypeError):
        packet["a"] = 2  # type: ignore[index]
    assert repr(packet) == 'Packet({"a": 1, "b": [2]})'
    assert packet.to_dict() == {"a": 1, "b": [2]}


def test_packet_from_json_text_and_bytes() -> None:
    assert Packet('{"test": 1}', "json") == {"test": 1}
    assert Packet(b'{"test": 1}', "ziproto").encoding == "ziproto"
    with pytest.raises(DecodeError):
        Packet("[1, 2]", "json")
    with pytest.raises(ValueError, match="invalid json"):
        Packet("{nope", "json")
    with pytest.raises(TypeError):
        Packet(42, "json")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown encoding"):
        Packet({}, "xml")


def test_packet_repr_survives_unserialisable_values() -> None:
    assert "Packet(" in repr(Packet({"b": b"\x00", "s": {1, 2}}))


def test_stop_propagation_raises_and_can_be_awaited(arun: Runner[Any]) -> None:
    packet = Packet({})
    with pytest.raises(StopPropagation):
        packet.stop_propagation()

    async def main() -> None:
        with pytest.raises(StopPropagation):
            await packet.stop_propagation()

    arun(main())


def test_done_awaitable_never_suspends() -> None:
    async def uses_it() -> str:
        await DONE
        return "finished"

    coro = uses_it()
    with pytest.raises(StopIteration) as info:
        coro.send(None)
    assert info.value.value == "finished"


# -- registration


async def good(client: Client, packet: Packet) -> None:
    return None


def test_registration_refuses_what_cannot_be_a_handler() -> None:
    server = Server(port=0)

    def sync(client: Any, packet: Any) -> None:
        return None

    async def one_arg(client: Any) -> None:
        return None

    with pytest.raises(TypeError, match="async def"):
        server.register_handler(sync)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="two positional arguments"):
        server.register_handler(one_arg)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async function"):
        server.register_handler(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Filter objects"):
        server.register_handler(good, "not a filter")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="group must be an integer"):
        server.register_handler(good, group="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="with parentheses"):
        server.add_handler(good)  # type: ignore[arg-type]
    assert server.handlers == {}


def test_registration_accepts_async_callables_and_defaults() -> None:
    server = Server(port=0)

    class Callable:
        async def __call__(self, client: Client, packet: Packet) -> None:
            return None

    async def with_default(client: Client, packet: Packet, extra: int = 1) -> None:
        return None

    server.register_handler(Callable())
    server.register_handler(with_default, group=2)
    server.register_handler(functools.partial(with_default, extra=2))
    assert [len(v) for v in server.handlers.values()] == [2, 1]


def test_add_handler_returns_the_function_unchanged() -> None:
    server = Server(port=0)
    decorated = server.add_handler(Filters.Fields(a=None), group=3)(good)
    assert decorated is good
    (handler,) = server.handlers[3]
    assert handler.function is good
    assert handler.name == "good"


def test_groups_are_kept_sorted() -> None:
    dispatcher = Dispatcher()
    for group in (5, -1, 0, 5, -10):
        dispatcher.add(Handler(good), group)
    assert list(dispatcher.groups) == [-10, -1, 0, 5]
    assert len(dispatcher.groups[5]) == 2


def test_handler_check_and_call(arun: Runner[Any]) -> None:
    client: Any = type("C", (), {"address": "127.0.0.1"})()
    handler = Handler(good, [Filters.Fields(a=r"\d")])
    assert handler.check(client, Packet({"a": 1}))
    assert not handler.check(client, Packet({"a": "x"}))
    assert Handler(good).check(client, Packet({}))
    assert arun(handler.call(client, Packet({}))) is None  # type: ignore[arg-type]


# -- eager stepping


# -- the dispatcher with a fake connection


def _dispatch(dispatcher: Dispatcher, payload: dict[str, Any]) -> list[Any]:
    conn = client = FakePeer()

    async def main() -> None:
        packet = Packet(payload, sender=client)
        loop = asyncio.get_running_loop()
        assert dispatcher.run(client, packet, loop, contextvars.copy_context()) is None

    asyncio.run(main())
    return conn.sent


def test_dispatch_order_groups_and_errors() -> None:
    dispatcher = Dispatcher()

    def handler(tag: str, stop: bool = False, fail: bool = False) -> Handler:
        async def function(client: Client, packet: Packet) -> None:
            client.send({"tag": tag})
            if fail:
                raise RuntimeError(tag)
            if stop:
                packet.stop_propagation()

        return Handler(function, [Filters.Fields(kind=f"^{tag[0]}")])

    dispatcher.add(handler("a1"), 0)
    dispatcher.add(handler("a2"), 0)  # shadowed by a1
    dispatcher.add(handler("a3"), 1)
    dispatcher.add(handler("b", stop=True), -1)
    dispatcher.add(handler("c", fail=True), 2)
    dispatcher.add(handler("cc"), 3)  # never reached: c raised
    assert _dispatch(dispatcher, {"kind": "a"}) == [{"tag": "a1"}, {"tag": "a3"}]
    assert _dispatch(dispatcher, {"kind": "b"}) == [{"tag": "b"}]
    assert _dispatch(dispatcher, {"kind": "c"}) == [
        {"tag": "c"},
        {"status": "failure", "error": "ERR_INTERNAL"},
    ]
    assert _dispatch(dispatcher, {"kind": "z"}) == [
        {"status": "failure", "error": "ERR_NO_HANDLER"}
    ]


def test_a_raising_filter_is_an_internal_error() -> None:
    dispatcher = Dispatcher()

    def explode(client: Any, packet: Any) -> bool:
        raise LookupError("bad filter")

    dispatcher.add(Handler(good, [Filters.create(explode)]))
    assert _dispatch(dispatcher, {}) == [{"status": "failure", "error": "ERR_INTERNAL"}]


def _run(function: Any, conn: FakePeer | None = None) -> asyncio.Task[None] | None:
    """Dispatch one packet to ``function`` (the only handler) from the running loop."""
    dispatcher = Dispatcher()
    dispatcher.add(Handler(function))
    client = conn or FakePeer()
    packet = Packet({}, sender=client)
    return dispatcher.run(client, packet, asyncio.get_running_loop(), contextvars.copy_context())


def test_a_handler_that_does_not_suspend_finishes_without_a_task(arun: Runner[Any]) -> None:
    steps: list[str] = []

    async def quick(client: Client, packet: Packet) -> None:
        steps.append("ran")
        await client.send({"ok": True})

    async def main() -> None:
        conn = FakePeer()
        before = len(asyncio.all_tasks())
        assert _run(quick, conn) is None
        assert len(asyncio.all_tasks()) == before
        assert steps == ["ran"]
        assert conn.sent == [{"ok": True}]

    arun(main())


def test_a_suspended_handler_continues_in_a_task(arun: Runner[Any]) -> None:
    steps: list[Any] = []

    async def slow(client: Client, packet: Packet) -> None:
        steps.append("start")
        await asyncio.sleep(0)  # a bare yield
        steps.append("after yield")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        loop.call_later(0.01, future.set_result, 7)
        steps.append(await future)
        failing: asyncio.Future[int] = loop.create_future()
        loop.call_soon(failing.set_exception, KeyError("k"))
        try:
            await failing
        except KeyError:
            steps.append("caught")

    async def main() -> None:
        task = _run(slow)
        assert task is not None
        assert steps == ["start"]
        await task
        assert steps == ["start", "after yield", 7, "caught"]

    arun(main())


def test_cancelling_the_task_cancels_the_handler(arun: Runner[Any]) -> None:
    seen: list[str] = []

    async def waits(client: Client, packet: Packet) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise

    async def main() -> None:
        for delay in (0, 1):  # before and after the Task's first step
            task = _run(waits)
            assert task is not None
            for _ in range(delay):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert seen == ["cancelled inside", "cancelled inside"]

    arun(main())


def test_errors_before_and_after_a_suspension_are_internal(arun: Runner[Any]) -> None:
    async def early(client: Client, packet: Packet) -> None:
        raise ValueError("early")

    async def late(client: Client, packet: Packet) -> None:
        await asyncio.sleep(0)
        raise ValueError("late")

    async def main() -> None:
        internal = [{"status": "failure", "error": "ERR_INTERNAL"}]
        conn = FakePeer()
        assert _run(early, conn) is None
        assert conn.sent == internal
        conn = FakePeer()
        task = _run(late, conn)
        assert task is not None
        await task
        assert conn.sent == internal

    arun(main())


def test_context_changes_stay_inside_the_request(arun: Runner[Any]) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")

    async def sets(client: Client, packet: Packet) -> None:
        var.set("inside")
        await asyncio.sleep(0)
        assert var.get() == "inside"

    async def main() -> None:
        task = _run(sets)
        assert var.get() == "outside"
        assert task is not None
        await task
        assert var.get() == "outside"

    arun(main())


def test_later_groups_run_after_a_suspended_handler(arun: Runner[Any]) -> None:
    order: list[str] = []
    dispatcher = Dispatcher()

    async def first(client: Client, packet: Packet) -> None:
        order.append("first")
        await asyncio.sleep(0.01)
        order.append("first done")

    async def second(client: Client, packet: Packet) -> None:
        order.append("second")
        await asyncio.sleep(0)
        order.append("second done")

    async def third(client: Client, packet: Packet) -> None:
        order.append("third")
        packet.stop_propagation()

    async def never(client: Client, packet: Packet) -> None:
        order.append("never")

    for group, function in enumerate((first, second, third, never)):
        dispatcher.add(Handler(function), group)

    async def main() -> None:
        client = FakePeer()
        packet = Packet({}, sender=client)
        loop = asyncio.get_running_loop()
        task = dispatcher.run(client, packet, loop, contextvars.copy_context())
        assert order == ["first"]
        assert task is not None
        await task
        assert order == ["first", "first done", "second", "second done", "third"]
        await dispatcher.dispatch(client, packet)  # the coroutine form does the same
        assert order[5:] == order[:5]

    arun(main())


def _from_a_callback(function: Any) -> asyncio.Future[asyncio.Task[None] | None]:
    """Run ``_run`` from a loop callback, where no task is current (as a transport does)."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[asyncio.Task[None] | None] = loop.create_future()

    def step() -> None:
        try:
            result.set_result(_run(function))
        except BaseException as exc:  # pragma: no cover - reported through the future
            result.set_exception(exc)

    loop.call_soon(step)
    return result


@pytest.mark.parametrize("where", ["callback", "inside a task"])
def test_first_step_has_a_current_task_for_timeouts_and_task_groups(
    arun: Runner[Any], where: str
) -> None:
    seen: list[Any] = []

    async def handler(client: Client, packet: Packet) -> None:
        seen.append(asyncio.current_task() is not None)
        async with asyncio.timeout(5):  # entered during the eager step
            await asyncio.sleep(0.01)
        seen.append("timeout ok")
        try:
            async with asyncio.timeout(0.02):
                await asyncio.sleep(5)
        except TimeoutError:
            seen.append("timed out")
        async with asyncio.TaskGroup() as group:
            child = group.create_task(asyncio.sleep(0, result="child"))
        seen.append(child.result())

    async def main() -> None:
        outer = asyncio.current_task()
        task = await _from_a_callback(handler) if where == "callback" else _run(handler)
        assert asyncio.current_task() is outer  # restored after the eager step
        assert task is not None
        await task

    arun(main())
    assert seen == [True, "timeout ok", "timed out", "child"]


def test_a_timeout_entered_eagerly_that_expires_before_any_suspension(
    arun: Runner[Any],
) -> None:
    seen: list[str] = []

    async def handler(client: Client, packet: Packet) -> None:
        try:
            async with asyncio.timeout(0):  # already expired: cancels at the first await
                await asyncio.sleep(1)
        except TimeoutError:
            seen.append("timed out")

    async def main() -> None:
        task = await _from_a_callback(handler)
        if task is not None:
            await task

    arun(main())
    assert seen == ["timed out"]
