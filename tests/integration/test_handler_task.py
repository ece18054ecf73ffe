"""A handler's current task is a whole asyncio.Task, from its first line, on every Python.

On 3.12+ it is an eager Task; on 3.11 a stand-in until the first suspension
(``asyncapy._eager``). These tests do not care which: they call every public
method of ``asyncio.Task`` from handlers served on a real loopback socket.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
from typing import Any

import pytest

from asyncapy import Packet, Server
from asyncapy._eager import EAGER_TASKS
from asyncapy.core import Client
from tests.conftest import Runner
from tests.helpers import Peer, ask, serving

PUBLIC_TASK_METHODS = frozenset(name for name in dir(asyncio.Task) if not name.startswith("_"))
REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST")


def test_the_mechanism_is_the_documented_one_for_this_python() -> None:
    # The stand-in where asyncio's current-task table exists (3.11 to 3.13),
    # eager Tasks where it does not (3.14 and later).
    assert EAGER_TASKS is (not hasattr(asyncio.tasks, "_current_tasks"))
    assert EAGER_TASKS is (sys.version_info >= (3, 14))


def test_every_public_task_method_works_in_a_handler_that_never_suspends(
    arun: Runner[Any],
) -> None:
    server = Server(port=0)
    called: set[str] = set()
    seen: dict[str, Any] = {}
    done_calls: list[tuple[str, bool, bool]] = []

    def record(kind: str) -> Any:
        def callback(task: Any) -> None:
            done_calls.append((kind, task.done(), task.cancelled()))

        return callback

    @server.add_handler()
    async def inspect(client: Client, packet: Packet) -> None:
        task: Any = asyncio.current_task()
        assert task is not None

        def call(name: str, *args: Any, **kwargs: Any) -> Any:
            called.add(name)
            return getattr(task, name)(*args, **kwargs)

        REQUEST.set(packet["kind"])
        if packet["kind"] == "cancel":  # a handler that cancels its own task
            seen["cancel"] = call("cancel", "by itself")
            seen["cancelling after cancel"] = call("cancelling")
            call("add_done_callback", record("cancel"))
            return
        seen["get_loop"] = call("get_loop") is asyncio.get_running_loop()
        seen["get_coro"] = call("get_coro").cr_code is inspect.__code__
        if "get_context" in PUBLIC_TASK_METHODS:
            seen["get_context"] = call("get_context").get(REQUEST)
        seen["get_name"] = call("get_name")
        call("set_name", "renamed")
        seen["renamed"] = call("get_name")
        seen["done"] = call("done")
        seen["cancelled"] = call("cancelled")
        seen["cancelling"] = call("cancelling")
        seen["uncancel"] = call("uncancel")  # nothing to uncancel: stays 0
        for name in ("result", "exception"):
            with pytest.raises(asyncio.InvalidStateError):
                call(name)
        with pytest.raises(RuntimeError):
            call("set_result", 1)
        with pytest.raises(RuntimeError):
            call("set_exception", ValueError())
        seen["get_stack"] = any(f.f_code is inspect.__code__ for f in call("get_stack"))
        out = io.StringIO()
        call("print_stack", file=out)
        seen["print_stack"] = "inspect" in out.getvalue()
        call("add_done_callback", record("finished"))
        unwanted = record("removed")
        call("add_done_callback", unwanted)
        seen["remove_done_callback"] = call("remove_done_callback", unwanted)
        client.send({"ok": True})  # not awaited: the handler never suspends

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"kind": "inspect"})
            assert await peer.recv() == {"ok": True}
            await peer.send({"kind": "cancel"})
            assert await peer.recv_error() == "ERR_INTERNAL"  # it ended cancelled
            for _ in range(50):  # done callbacks run on a later turn of the loop
                if len(done_calls) == 2:
                    break
                await asyncio.sleep(0.01)
            await peer.close()

    arun(main())
    assert called == PUBLIC_TASK_METHODS, PUBLIC_TASK_METHODS - called
    expected: dict[str, Any] = {
        "get_loop": True,
        "get_coro": True,
        "get_name": "asyncapy:inspect",
        "renamed": "renamed",
        "done": False,
        "cancelled": False,
        "cancelling": 0,
        "uncancel": 0,
        "get_stack": True,
        "print_stack": True,
        "remove_done_callback": 1,
        "cancel": True,
        "cancelling after cancel": 1,
    }
    if "get_context" in PUBLIC_TASK_METHODS:
        expected["get_context"] = "inspect"
    assert seen == expected
    assert sorted(done_calls) == [("cancel", True, True), ("finished", True, False)]


def test_task_methods_keep_working_across_the_first_suspension(arun: Runner[Any]) -> None:
    server = Server(port=0)
    seen: dict[str, Any] = {}
    finished: list[bool] = []

    @server.add_handler()
    async def waits(client: Client, packet: Packet) -> None:
        first: Any = asyncio.current_task()
        first.set_name("before")
        first.add_done_callback(lambda task: finished.append(task.done()))
        async with asyncio.timeout(5):  # armed on the first step's task
            await asyncio.sleep(0.01)  # a real suspension
        after: Any = asyncio.current_task()
        seen["name"] = after.get_name()
        seen["first name"] = first.get_name()
        seen["done"] = first.done()
        seen["same task"] = after is first
        try:
            async with asyncio.timeout(0.01):  # cancels the task that now runs us
                await asyncio.sleep(5)
        except TimeoutError:
            seen["timeout"] = True
        await client.send({"ok": True})

    async def main() -> None:
        async with serving(server):
            peer = await Peer.connect(server.port)
            await peer.send({"go": 1})
            assert await peer.recv() == {"ok": True}
            for _ in range(50):
                if finished:
                    break
                await asyncio.sleep(0.01)
            await peer.close()

    arun(main())
    assert seen["name"] == seen["first name"] == "before"
    assert seen["done"] is False
    assert seen["timeout"] is True
    # Eager Tasks: one Task throughout. Else the stand-in until the first suspension.
    assert seen["same task"] is EAGER_TASKS
    assert finished == [True]


def test_a_handler_cancelled_before_it_suspends_is_cancelled_at_its_first_await(
    arun: Runner[Any],
) -> None:
    server = Server(port=0)
    seen: list[str] = []

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        task: Any = asyncio.current_task()
        task.cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            seen.append("cancelled at its first await")
            task.uncancel()
        await client.send({"went on": True})

    async def main() -> None:
        async with serving(server):
            assert await ask(server, {"go": 1}) == {"went on": True}

    arun(main())
    assert seen == ["cancelled at its first await"]


def test_a_handler_raising_invalid_state_error_is_an_error_not_a_suspension(
    arun: Runner[Any],
) -> None:
    # first_step tells "still running" from "finished" by Task.result()'s
    # InvalidStateError: a handler that raises one itself has finished.
    server = Server(port=0)

    @server.add_handler()
    async def handler(client: Client, packet: Packet) -> None:
        raise asyncio.InvalidStateError("the handler's own")

    async def main() -> None:
        async with serving(server):
            reply = await ask(server, {"go": 1})
            assert reply == {"status": "failure", "error": "ERR_INTERNAL"}
            assert await ask(server, {"again": 1}) == reply  # the connection went on

    arun(main())
