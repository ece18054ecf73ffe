"""Groups, matching, propagation and handler errors (protocol.md, section 5).

Theory of operation
-------------------
Handlers live in groups, tried lowest group number first; inside a group the
first handler (in registration order) whose filters pass is called and the
rest of the group is skipped. ``StopPropagation`` ends the packet's dispatch.
A handler that raises anything else ends it too, with an ``ERR_INTERNAL``
reply; when no handler of any group matched, the reply is ``ERR_NO_HANDLER``.

The plan (a tuple of ``(group, handlers)``) is rebuilt when a handler is
registered, never per packet. :meth:`Dispatcher.dispatch` is a coroutine, but
the connection does not wrap it in a Task: :func:`run_eagerly` steps it
directly and only hands it to a Task if it really suspends. A handler that
finishes without waiting for I/O (the common case) costs no Task and no trip
through the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import logging
import sys
from collections.abc import Coroutine, Mapping
from collections.abc import Coroutine as CoroutineABC
from typing import Any, Final

from .core import Client, Handler, Packet
from .errors import ErrorCode, StopPropagation

__all__ = ["Dispatcher", "error_payload", "run_eagerly"]

logger = logging.getLogger("asyncapy")

# The table behind asyncio.current_task() (the C one when _asyncio is loaded).
_current_tasks: dict[asyncio.AbstractEventLoop, Any] = asyncio.tasks._current_tasks  # type: ignore[attr-defined]


def error_payload(code: ErrorCode) -> dict[str, str]:
    """The payload of an error reply: ``{"status": "failure", "error": CODE}``."""
    return {"status": "failure", "error": str(code)}


_INTERNAL: Final = error_payload(ErrorCode.ERR_INTERNAL)
_NO_HANDLER: Final = error_payload(ErrorCode.ERR_NO_HANDLER)


class Dispatcher:
    """The handlers of one server, sorted into groups."""

    __slots__ = ("_groups", "_plan", "debug")

    def __init__(self) -> None:
        self._groups: list[tuple[int, list[Handler]]] = []
        self._plan: tuple[tuple[int, tuple[Handler, ...]], ...] = ()
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
        """Run the handlers that match ``packet``, group by group.

        Never raises for a handler's error: it is logged with its traceback and
        answered with ``ERR_INTERNAL``. ``BaseException`` (cancellation, exit)
        propagates.
        """
        matched = False
        debug = self.debug
        session = client.session.session_id
        for number, handlers in self._plan:
            if debug:
                logger.debug("(%s) {API Parser} Checking group %d", session, number)
            for handler in handlers:
                try:
                    match = handler._match
                    if match is not None and not match(client, packet):
                        continue
                    matched = True
                    if debug:
                        logger.debug(
                            "(%s) {API Parser} Calling %r in group %d",
                            session,
                            handler.name,
                            number,
                        )
                    await handler.function(client, packet)
                except StopPropagation:
                    return
                except Exception as exc:
                    self._handler_failed(client, handler, exc)
                    return
                break
            if client.closed:
                return
        if not matched:
            if debug:
                logger.debug("(%s) {API Parser} No handler matched", session)
            client.send(_NO_HANDLER)

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


def _run_eagerly_312(
    coro: Coroutine[Any, Any, None],
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
) -> asyncio.Task[None] | None:
    task: asyncio.Task[None] = asyncio.Task(  # type: ignore[call-arg,unused-ignore]
        coro, loop=loop, context=context, eager_start=True
    )
    if task.done():
        task.result()  # an exception raised before the first suspension propagates
        return None
    return task


class _FirstStep:
    """Stands in for the Task while a coroutine takes its first, eager step.

    So that ``asyncio.current_task()``, ``asyncio.timeout()`` and
    ``asyncio.TaskGroup`` work in a handler before it first suspends. Once the
    coroutine suspends and a real Task takes over, every call is forwarded to
    it; cancellations asked for before that are applied to it then.
    """

    __slots__ = ("_cancels", "_coro", "_message", "task")

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self._coro = coro
        self._cancels = 0
        self._message: Any = None
        self.task: asyncio.Task[None] | None = None

    def adopt(self, task: asyncio.Task[None]) -> None:
        self.task = task
        for _ in range(self._cancels):
            task.cancel(self._message)

    def cancel(self, msg: Any = None) -> bool:
        if self.task is not None:
            return self.task.cancel(msg)
        self._cancels += 1
        self._message = msg
        return True

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else self._cancels

    def uncancel(self) -> int:
        if self.task is not None:
            return self.task.uncancel()
        if self._cancels:
            self._cancels -= 1
        return self._cancels

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def cancelled(self) -> bool:
        return self.task.cancelled() if self.task is not None else False

    def get_coro(self) -> Coroutine[Any, Any, None]:
        return self._coro

    def get_name(self) -> str:
        return self.task.get_name() if self.task is not None else "asyncapy-first-step"

    def __repr__(self) -> str:
        return f"<_FirstStep task={self.task!r}>"


def _run_eagerly_311(
    coro: Coroutine[Any, Any, None],
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
) -> asyncio.Task[None] | None:
    step = _FirstStep(coro)
    # Swap the current task as 3.12's eager tasks do (a task may be current
    # already when the connection is driven from inside one, as in tests).
    previous = _current_tasks.get(loop)
    _current_tasks[loop] = step
    try:
        yielded = context.run(coro.send, None)
    except StopIteration:
        return None
    finally:
        if previous is None:
            del _current_tasks[loop]
        else:
            _current_tasks[loop] = previous
    task = loop.create_task(_Resumed(coro, yielded), context=context)
    step.adopt(task)
    return task


def run_eagerly(
    coro: Coroutine[Any, Any, None],
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
) -> asyncio.Task[None] | None:
    """Step ``coro`` now; return None if it finished, else a Task that finishes it.

    The first step runs inside ``context`` with a current task, as a Task's
    would (Python 3.12+: an eager Task; 3.11: a stand-in, see
    :class:`_FirstStep`). Exceptions raised before the first suspension
    propagate to the caller.
    """
    return _run_eagerly(coro, loop, context)


_run_eagerly = _run_eagerly_312 if sys.version_info >= (3, 12) else _run_eagerly_311


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
