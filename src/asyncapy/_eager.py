"""A handler's first step, run at once under a current-task stand-in (or an eager Task).

Theory of operation
-------------------
Most handlers never wait for I/O: they read the packet and send a reply. A
Task per request that starts on the next turn of the loop costs more than the
rest of the request (0.19 x the bare echo at 16 pipelined requests, against
0.44 without it), so the dispatcher runs the handler's coroutine at once, up
to its end or its first real suspension, inside the request's ``contextvars``
context and with a current task, so that ``asyncio.current_task()``,
``asyncio.timeout()`` and ``TaskGroup`` work from the handler's first line.

Where asyncio keeps its current tasks in a table we can reach
(``asyncio.tasks._current_tasks``: CPython 3.11 to 3.13), the current task
of a first step is a :class:`FirstStepTask`, a stand-in that implements every
public method of ``asyncio.Task``. The table is private, but those versions
take only fixes now, so it will not change under them. If the handler
suspends, a real Task adopts the coroutine exactly where it stopped
(:class:`_Resumed`), and the stand-in forwards every call to it, applying what
was asked of it before (cancellations, done callbacks, a new name). The one
visible difference: after that first suspension, ``current_task()`` is the
adopting Task, not the stand-in.

A connection handles a read's frames in one *turn*, and it makes one stand-in
current for the whole turn (:class:`Steps`): each handler that finishes
without suspending hands the same stand-in, reset, to the next one, so a
request costs no table update and no new object. A stand-in that a handler
used as a Task (a done callback, a cancellation, a new name) or that a Task
adopted is retired, and the next handler gets a new one.

Where the table is gone (Python 3.14 and later, ``EAGER_TASKS``), each first
step is an eager ``asyncio.Task(..., eager_start=True)`` instead: the Task
takes its first step inside its constructor; a handler that returns without
suspending leaves a finished Task behind that was never scheduled.

:func:`first_step` and :meth:`Steps.step` return None when the handler has
finished (re-raising what it raised, ``CancelledError`` if it was
cancelled), or the Task that runs the rest of it.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any, Final, TextIO

__all__ = ["EAGER_TASKS", "FirstStepTask", "Steps", "first_step"]

Handle = Coroutine[Any, Any, Any]

_current_tasks: Final[dict[asyncio.AbstractEventLoop, Any] | None] = getattr(
    asyncio.tasks, "_current_tasks", None
)
EAGER_TASKS: Final = _current_tasks is None
"""True where first steps are eager ``asyncio.Task`` objects (no current-task table)."""


def first_step(
    loop: asyncio.AbstractEventLoop,
    coro: Handle,
    context: contextvars.Context,
    name: str,
) -> asyncio.Task[Any] | None:
    """Run ``coro`` now, up to its end or its first suspension, with a current task.

    Args:
        loop: the running loop.
        coro: the handler's coroutine, not started yet.
        context: the request's context; the coroutine runs in it.
        name: the name of its Task.

    Returns:
        None when the coroutine finished, else the Task that runs the rest.

    Raises:
        Whatever the coroutine raised, ``CancelledError`` if its task was
        cancelled.
    """
    tasks = _current_tasks
    if tasks is None:
        return _eager_step(loop, coro, context, name)
    step = FirstStepTask(loop)
    previous = tasks.get(loop)
    tasks[loop] = step
    try:
        task = _step(step, loop, coro, context, name)
        if task is None and not step._used:
            step._state = _DONE  # it is nobody else's: show it finished
        return task
    finally:
        _restore(tasks, loop, previous)


def _restore(
    tasks: dict[asyncio.AbstractEventLoop, Any], loop: asyncio.AbstractEventLoop, previous: Any
) -> None:
    """Make ``previous`` the current task of ``loop`` again (None: no task)."""
    if previous is None:
        tasks.pop(loop, None)
    else:
        tasks[loop] = previous


def _eager_step(
    loop: asyncio.AbstractEventLoop,
    coro: Handle,
    context: contextvars.Context,
    name: str,
) -> asyncio.Task[Any] | None:
    """:func:`first_step` as an eager Task (where there is no current-task table)."""
    task = asyncio.Task(coro, loop=loop, context=context, name=name, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    try:
        task.result()  # raises what the handler raised, if it finished
    except asyncio.InvalidStateError:
        if task.done():  # the handler itself raised InvalidStateError
            raise
        return task  # it suspended: still running
    return None


def _step(
    step: FirstStepTask,
    loop: asyncio.AbstractEventLoop,
    coro: Handle,
    context: contextvars.Context,
    name: str,
) -> asyncio.Task[Any] | None:
    """Step ``coro`` with ``step``, the current task already, reset for it."""
    step._coro = coro
    step._context = context
    step._name = name
    try:
        # next(coro.__await__(), _FINISHED) rather than coro.send(None):
        # a handler that returns raises no StopIteration on the way out.
        yielded = context.run(_next, coro.__await__(), _FINISHED)
    except BaseException as exc:
        step._finish(exc)
        raise
    if yielded is _FINISHED:
        if step._used:
            step._finish(None)
            if step._exception is not None:  # cancelled while it ran
                raise step._exception
        return None
    task = loop.create_task(_Resumed(coro, yielded), name=step._name, context=context)
    step._adopt(task)
    return task


class Steps:
    """The first steps of the handlers of one connection's turns.

    ``begin()`` makes a stand-in the current task until ``end()``;
    :meth:`step` runs each handler's first step under it. Outside a turn,
    :meth:`step` is :func:`first_step`. Turns may nest (``begin`` twice,
    ``end`` twice): only the outer pair changes the current task.

    Args:
        loop: the running loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._depth = 0
        self._step = FirstStepTask(loop)
        self._previous: Any = None

    def begin(self) -> None:
        """Make this connection's stand-in the current task (a turn starts)."""
        tasks = _current_tasks
        self._depth += 1
        if tasks is None or self._depth > 1:
            return
        if self._step._used:
            self._step = FirstStepTask(self._loop)
        self._previous = tasks.get(self._loop)
        tasks[self._loop] = self._step

    def end(self) -> None:
        """Give the current task back (the turn ends)."""
        tasks = _current_tasks
        self._depth -= 1
        if tasks is None or self._depth:
            return
        previous, self._previous = self._previous, None
        _restore(tasks, self._loop, previous)

    def step(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Handle,
        context: contextvars.Context,
        name: str,
    ) -> asyncio.Task[Any] | None:
        """:func:`first_step`, under the turn's stand-in (same arguments and errors)."""
        tasks = _current_tasks
        if not self._depth or tasks is None:
            return first_step(loop, coro, context, name)
        step = self._step
        try:
            return _step(step, loop, coro, context, name)
        finally:
            if step._used:  # used as a Task, or adopted: the next handler gets a new one
                self._step = step = FirstStepTask(loop)
                tasks[loop] = step


_next: Final = next
_FINISHED: Final = object()  # what next() gives back when the coroutine returned
_PENDING, _DONE, _CANCELLED = "PENDING", "FINISHED", "CANCELLED"


class FirstStepTask:
    """The current task of a handler's first step.

    It answers every public method of ``asyncio.Task`` as a Task running that
    handler would; once the handler suspends and a real Task adopts it, every
    call is forwarded to that Task. Made pending; the step sets its
    coroutine, context and name. ``_used``: it must not serve another
    handler (it finished with an error, was adopted, or its handler used a
    method that changes a Task: a done callback, a cancellation, a name).

    Args:
        loop: the running loop.
    """

    _coro: Handle
    _context: contextvars.Context

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._name = ""
        self._used = False
        self._state = _PENDING
        self._exception: BaseException | None = None
        self._task: asyncio.Task[Any] | None = None
        self._callbacks: tuple[tuple[Callable[[Any], object], contextvars.Context | None], ...] = ()
        self._cancel_requests = 0
        self._must_cancel = False
        self._cancel_message: Any = None

    # -- what first_step drives

    def _finish(self, exc: BaseException | None) -> None:
        """The coroutine ended, raising ``exc`` (None: it returned); schedule the callbacks.

        A coroutine that returns after a ``cancel()`` ends cancelled, as a
        3.11 Task does: ``_exception`` is then a ``CancelledError``.
        """
        self._used = True
        if exc is None and self._must_cancel:
            message = self._cancel_message
            exc = asyncio.CancelledError() if message is None else asyncio.CancelledError(message)
        self._state = _CANCELLED if isinstance(exc, asyncio.CancelledError) else _DONE
        self._exception = exc
        callbacks, self._callbacks = self._callbacks, ()
        for callback, context in callbacks:
            self._loop.call_soon(callback, self, context=context)

    def _adopt(self, task: asyncio.Task[Any]) -> None:
        """Hand everything over to ``task``, which runs the rest of the coroutine."""
        self._used = True
        self._task = task
        for _ in range(self._cancel_requests):  # cancelling() keeps its count
            task.cancel(self._cancel_message)
        if self._must_cancel and not self._cancel_requests:  # uncancel()ed, still pending
            task.cancel(self._cancel_message)
            task.uncancel()
        callbacks, self._callbacks = self._callbacks, ()
        for callback, context in callbacks:
            task.add_done_callback(callback, context=context)

    # -- asyncio.Task's public interface

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def get_coro(self) -> Handle:
        return self._coro

    def get_context(self) -> contextvars.Context:
        return self._context

    def get_name(self) -> str:
        return self._name if self._task is None else self._task.get_name()

    def set_name(self, value: object) -> None:
        self._used = True
        if self._task is not None:
            self._task.set_name(value)
        self._name = str(value)

    def done(self) -> bool:
        return self._state != _PENDING if self._task is None else self._task.done()

    def cancelled(self) -> bool:
        return self._state == _CANCELLED if self._task is None else self._task.cancelled()

    def result(self) -> Any:
        if self._task is not None:
            return self._task.result()
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("Result is not set.")
        if self._exception is not None:  # cancelled, or the handler raised
            raise self._exception
        return None  # what a handler returns is not kept

    def exception(self) -> BaseException | None:
        if self._task is not None:
            return self._task.exception()
        if self._state == _PENDING:
            raise asyncio.InvalidStateError("Exception is not set.")
        if self._state == _CANCELLED:
            assert self._exception is not None
            raise self._exception
        return self._exception

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        self._used = True
        if self._task is not None:
            self._task.add_done_callback(fn, context=context)
        elif self._state != _PENDING:
            self._loop.call_soon(fn, self, context=context)
        else:
            self._callbacks = (*self._callbacks, (fn, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        kept = tuple(item for item in self._callbacks if item[0] != fn)
        removed = len(self._callbacks) - len(kept)
        self._callbacks = kept
        if self._task is not None:
            removed += self._task.remove_done_callback(fn)
        return removed

    def cancel(self, msg: Any = None) -> bool:
        self._used = True
        if self._task is not None:
            return self._task.cancel(msg)
        if self._state != _PENDING:
            return False
        self._cancel_requests += 1
        self._must_cancel = True
        self._cancel_message = msg
        return True

    def cancelling(self) -> int:
        return self._cancel_requests if self._task is None else self._task.cancelling()

    def uncancel(self) -> int:
        if self._task is not None:
            return self._task.uncancel()
        if self._cancel_requests > 0:  # as 3.11's Task: _must_cancel stays set
            self._cancel_requests -= 1
        return self._cancel_requests

    def get_stack(self, *, limit: int | None = None) -> list[Any]:
        if self._task is not None:
            return self._task.get_stack(limit=limit)
        return asyncio.base_tasks._task_get_stack(self, limit)  # type: ignore[attr-defined,no-any-return]

    def print_stack(self, *, limit: int | None = None, file: TextIO | None = None) -> None:
        if self._task is not None:
            self._task.print_stack(limit=limit, file=file)
        else:
            asyncio.base_tasks._task_print_stack(self, limit, file)  # type: ignore[attr-defined]

    def set_result(self, result: object) -> None:
        raise RuntimeError("Task does not support set_result operation")

    def set_exception(self, exception: object) -> None:
        raise RuntimeError("Task does not support set_exception operation")

    def __repr__(self) -> str:
        if self._task is not None:
            return f"<FirstStepTask adopted by {self._task!r}>"
        return f"<FirstStepTask {self._name!r} {self._state.lower()}>"


class _Resumed(Coroutine[Any, Any, Any]):
    """A coroutine that already took its first step, handed over to a Task.

    Its first ``send`` gives the Task what the coroutine yielded when it
    suspended (the future it waits for); every later ``send``/``throw`` goes to
    the coroutine itself. So the Task drives it exactly as if it had started
    it, including a cancellation that arrives before the Task's first step.
    """

    __slots__ = ("_coro", "_pending", "_started")

    def __init__(self, coro: Handle, yielded: Any) -> None:
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
