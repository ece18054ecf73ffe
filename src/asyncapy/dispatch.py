"""Groups, matching, propagation and handler errors (protocol.md, section 5).

Theory of operation
-------------------
Handlers live in groups, tried lowest group number first; inside a group the
first handler (in registration order) whose filters pass is called and the
rest of the group is skipped. ``StopPropagation`` ends the packet's dispatch.
A handler that raises anything else ends it too, with an ``ERR_INTERNAL``
reply; when no handler of any group matched, the reply is ``ERR_NO_HANDLER``.

The plan (a tuple of ``(group, handlers)``) is rebuilt when a handler is
registered, never per packet.

:meth:`Dispatcher.run` walks the plan in plain, synchronous Python and steps
each handler's coroutine itself (``coro.send(None)``), inside the request's
``contextvars`` context and with a current task (:class:`_FirstStep`), so that
``asyncio.current_task()``, ``asyncio.timeout()`` and ``TaskGroup`` work. A
handler that finishes without waiting for I/O, the common case, costs no Task,
no extra coroutine and no trip through the event loop. Only when a handler
really suspends is the rest of the dispatch (that handler, then the later
groups) handed to a Task, which takes the suspended coroutine over exactly
where it stopped (:class:`_Resumed`), cancellation included.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import logging
import sys
from collections.abc import Callable, Coroutine, Generator, Mapping
from collections.abc import Coroutine as CoroutineABC
from typing import Any, Final

from .core import Client, Handler, Packet
from .errors import ErrorCode, StopPropagation

__all__ = ["Dispatcher", "error_payload"]

logger = logging.getLogger("asyncapy")

Plan = tuple[tuple[int, tuple[Handler, ...]], ...]


# Making a stand-in the current task of a loop (and back), as 3.12's eager
# tasks do; a task may be current already (in tests, or nested dispatches).
# Up to 3.13 asyncio.current_task() reads one dict, which is cheapest to set
# directly; later versions keep it elsewhere and offer _swap_current_task.
_TASKS: dict[asyncio.AbstractEventLoop, Any] | None = (
    asyncio.tasks._current_tasks  # type: ignore[attr-defined]
    if sys.version_info < (3, 14)
    else None
)
_swap_current_task: Callable[[asyncio.AbstractEventLoop, Any], Any] | None = getattr(
    asyncio.tasks, "_swap_current_task", None
)
if _TASKS is None and _swap_current_task is None:  # pragma: no cover
    raise ImportError("asyncapy needs asyncio.tasks._swap_current_task on this Python")


def error_payload(code: ErrorCode) -> dict[str, str]:
    """The payload of an error reply: ``{"status": "failure", "error": CODE}``."""
    return {"status": "failure", "error": str(code)}


_new: Final = object.__new__
_next: Final = next
_FINISHED: Final = object()  # what next() gives back when a handler returned
_INTERNAL: Final = error_payload(ErrorCode.ERR_INTERNAL)
_NO_HANDLER: Final = error_payload(ErrorCode.ERR_NO_HANDLER)


class Dispatcher:
    """The handlers of one server, sorted into groups."""

    __slots__ = ("_groups", "_plan", "debug")

    def __init__(self) -> None:
        self._groups: list[tuple[int, list[Handler]]] = []
        self._plan: Plan = ()
        self.debug = False

    def add(self, handler: Handler, group: int = 0) -> None:
        """Register ``handler`` at the end of ``group``.

        Raises:
            TypeError: when ``group`` is not an integer.
        """
        if not isinstance(group, int) or isinstance(group, bool):
            raise TypeError(f"group must be an integer, not {type(group).__name__}")
        keys = [number for number, _ in self._groups]
        index = bisect.bisect_left(keys, group)
        if index < len(keys) and keys[index] == group:
            self._groups[index][1].append(handler)
        else:
            self._groups.insert(index, (group, [handler]))
        self._plan = tuple((number, tuple(handlers)) for number, handlers in self._groups)

    @property
    def groups(self) -> Mapping[int, tuple[Handler, ...]]:
        """The registered handlers by group number, in dispatch order."""
        return dict(self._plan)

    async def dispatch(self, client: Client, packet: Packet) -> None:
        """Run the handlers that match ``packet``, group by group; return when done.

        Never raises for a handler's error: it is logged with its traceback and
        answered with ``ERR_INTERNAL``. ``BaseException`` (cancellation, exit)
        propagates.
        """
        task = self.run(client, packet, asyncio.get_running_loop(), contextvars.copy_context())
        if task is not None:
            await task

    def run(
        self,
        client: Client,
        packet: Packet,
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
        *,
        plan: Plan | None = None,
        start: int = 0,
        matched: bool = False,
    ) -> asyncio.Task[None] | None:
        """Dispatch ``packet`` now; return None when that finished it, else the Task that will.

        Args:
            client: the sender.
            packet: the packet.
            loop: the running loop (for the Task, if one is needed).
            context: the request's ``contextvars`` context; handlers run in it.
            plan: the groups to walk (the current plan by default).
            start: index of the first group to walk.
            matched: whether an earlier group already matched.

        Raises:
            Only ``BaseException`` that is not an ``Exception``, from a handler.
        """
        if plan is None:
            plan = self._plan
        debug = self.debug
        step: _FirstStep | None = None
        tasks = _TASKS
        for number, handlers in plan[start:] if start else plan:
            if debug:
                logger.debug(
                    "(%s) {API Parser} Checking group %d", client.session.session_id, number
                )
            for handler in handlers:
                try:
                    match = handler._match
                    if match is not None and not match(client, packet):
                        continue
                    matched = True
                    if debug:
                        logger.debug(
                            "(%s) {API Parser} Calling %r in group %d",
                            client.session.session_id,
                            handler.name,
                            number,
                        )
                    coro: Any = handler.function(client, packet)
                    if step is None:  # one stand-in per dispatch, built without a call
                        step = _new(_FirstStep)
                        step.task = None
                        step._cancels = ()
                    step.coro = coro
                    if tasks is not None:
                        previous = tasks.get(loop)
                        tasks[loop] = step
                    else:  # pragma: no cover - Python 3.14+
                        previous = _swap_current_task(loop, step)  # type: ignore[misc]
                    try:
                        # next(coro.__await__(), _FINISHED) rather than
                        # coro.send(None): a handler that returns raises no
                        # StopIteration on the way out (cheaper by a third).
                        yielded = context.run(_next, coro.__await__(), _FINISHED)
                    finally:
                        if tasks is None:  # pragma: no cover - Python 3.14+
                            _swap_current_task(loop, previous)  # type: ignore[misc]
                        elif previous is None:
                            del tasks[loop]
                        else:
                            tasks[loop] = previous
                except StopPropagation:
                    return None
                except Exception as exc:
                    self._handler_failed(client, handler, exc)
                    return None
                if yielded is _FINISHED:
                    break  # the handler returned without suspending
                # It suspended: a Task finishes this handler, then the later groups.
                index = plan.index((number, handlers))
                rest = self._rest(client, packet, loop, plan, index, handler, _Adopted(coro))
                context.run(rest.send, None)  # to the same suspension point
                task = loop.create_task(_Resumed(rest, yielded), context=context)
                step.adopt(task)
                return task
            if client.closed:
                return None
        if not matched:
            if debug:
                logger.debug("(%s) {API Parser} No handler matched", client.session.session_id)
            client.send(_NO_HANDLER)
        return None

    async def _rest(
        self,
        client: Client,
        packet: Packet,
        loop: asyncio.AbstractEventLoop,
        plan: Plan,
        index: int,
        handler: Handler,
        adopted: _Adopted,
    ) -> None:
        """Finish a suspended handler, then walk the groups after it."""
        try:
            await adopted
        except StopPropagation:
            return
        except Exception as exc:
            self._handler_failed(client, handler, exc)
            return
        if client.closed or index + 1 >= len(plan):
            return
        task = self.run(
            client,
            packet,
            loop,
            contextvars.copy_context(),
            plan=plan,
            start=index + 1,
            matched=True,
        )
        if task is not None:
            await task

    @staticmethod
    def _handler_failed(client: Client, handler: Handler, exc: Exception) -> None:
        session = client.session.session_id
        if client.closed and isinstance(exc, ConnectionError):
            logger.debug(
                "(%s) {API Parser} %r stopped: the connection is closed", session, handler.name
            )
            return
        logger.error(
            "(%s) {API Parser} Handler %r raised an exception",
            session,
            handler.name,
            exc_info=exc,
        )
        if not client.closed:
            try:
                client.send(_INTERNAL)
            except Exception:  # pragma: no cover - the connection broke meanwhile
                logger.debug("(%s) could not send ERR_INTERNAL", session, exc_info=True)


class _FirstStep:
    """Stands in for the Task while handlers take their eager steps.

    So that ``asyncio.current_task()``, ``asyncio.timeout()`` and
    ``asyncio.TaskGroup`` work in a handler before it first suspends. Once a
    handler suspends and a real Task takes over, every call is forwarded to
    it; cancellations asked for before that are applied to it then.
    """

    __slots__ = ("_cancels", "coro", "task")

    # Built by Dispatcher.run with object.__new__ (no __init__ call on the hot
    # path), which sets all three slots.
    coro: Any
    _cancels: tuple[Any, ...]  # messages of cancellations asked for early
    task: asyncio.Task[None] | None

    def adopt(self, task: asyncio.Task[None]) -> None:
        self.task = task
        for message in self._cancels:
            task.cancel(message)

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        self._cancels = (*self._cancels, msg)
        return True

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else len(self._cancels)

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        if self._cancels:
            self._cancels = self._cancels[:-1]
        return len(self._cancels)

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def cancelled(self) -> bool:
        return self.task.cancelled() if self.task is not None else False

    def get_coro(self) -> Any:
        return self.coro

    def get_name(self) -> str:
        return self.task.get_name() if self.task is not None else "asyncapy-handler"

    def __repr__(self) -> str:
        return f"<_FirstStep task={self.task!r}>"


class _Adopted:
    """Awaits a coroutine that already took its first step and suspended.

    ``await _Adopted(coro)`` first yields nothing of its own: the first value
    asked of it is the future ``coro`` is waiting for (handed over by
    :class:`_Resumed`); after that it passes every ``send``/``throw`` on to
    ``coro`` and returns its result.
    """

    __slots__ = ("_coro",)

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        error: BaseException | None = None
        value: Any = None
        try:
            # The hand-over: Dispatcher.run primes us up to here, and the Task
            # gets the future ``coro`` waits for from _Resumed, not from us.
            value = yield None
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in before the Task's first step
            error = exc
        while True:
            try:
                out = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                value = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the Task: cancellation
                error = exc


class _Resumed(CoroutineABC[Any, Any, None]):
    """A coroutine that already took its first step, handed over to a Task.

    Its first ``send`` gives the Task what the coroutine yielded when it
    suspended (the future it waits for); every later ``send``/``throw`` goes to
    the coroutine itself. So the Task drives it exactly as if it had started
    it, including a cancellation that arrives before the Task's first step.
    """

    __slots__ = ("_coro", "_pending", "_started")

    def __init__(self, coro: Coroutine[Any, Any, None], yielded: Any) -> None:
        self._coro = coro
        self._pending = yielded
        self._started = False

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            pending, self._pending = self._pending, None
            return pending
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._started = True
        self._pending = None
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # pragma: no cover - the legacy form

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Any:  # pragma: no cover - only Tasks drive it
        raise TypeError("a resumed handler is driven by its Task, not awaited")

    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))
