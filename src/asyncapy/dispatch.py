"""Groups, matching, propagation and handler errors (protocol.md, section 5).

Theory of operation
-------------------
Handlers live in groups, tried lowest group number first; inside a group the
first handler (in registration order) whose filters pass is called and the
rest of the group is skipped. ``StopPropagation`` ends the packet's dispatch.
A handler that raises anything else ends it too, with an ``ERR_INTERNAL``
reply; when no handler of any group matched, the reply is ``ERR_NO_HANDLER``.

The plan (a tuple of ``(group, entries)``, each entry a handler with its
check, its call and its names, read from it once) is rebuilt when a handler
is registered, never per packet.

:meth:`Dispatcher.run` walks the plan in plain, synchronous Python and starts
each handler with :func:`~asyncapy._eager.first_step`, which runs it at once,
in the request's ``contextvars`` context and with a current task (a stand-in;
an eager Task on 3.14+), up to its end or its first real suspension. A
handler that finishes without waiting for I/O, the common case, costs no trip
through the event loop. Only when a handler really suspends does the rest of
the dispatch become a Task (:func:`asyncapy._suspended.rest`, plain Python
even where this module is compiled): it waits for that handler's Task, then
walks the later groups the same way.

The dispatch leaves on the packet the name of the last handler it called
(``Packet._handler``) and its result (``Packet._code``: ``"OK"``,
``ERR_NO_HANDLER`` or ``ERR_INTERNAL``), for the metrics and the access log.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import functools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from . import _suspended
from ._eager import Steps, first_step
from ._typed import invalid_payload
from .core import Client, Handler, HandlerFunction, NoMatch, Packet
from .errors import ErrorCode, Reject, StopPropagation
from .logging import error_logger as logger

__all__ = ["Dispatcher", "error_payload"]


Entry = tuple[Handler, "Callable[[Client, Packet], bool] | None", HandlerFunction, str, str]
"""A handler as the dispatch reads it: (handler, its check, its call, name, task name)."""
Plan = tuple[tuple[int, tuple[Entry, ...]], ...]


def _entry(handler: Handler) -> Entry:
    """What the dispatch reads of ``handler``, read once, at registration."""
    return (handler, handler._match, handler._call, handler.name, handler.task_name)


def error_payload(code: ErrorCode) -> dict[str, str]:
    """The payload of an error reply: ``{"status": "failure", "error": CODE}``."""
    return {"status": "failure", "error": str(code)}


_first_step: Final = first_step
_INTERNAL: Final = error_payload(ErrorCode.ERR_INTERNAL)
_NO_HANDLER: Final = error_payload(ErrorCode.ERR_NO_HANDLER)
# The result codes a dispatch leaves on the packet (``Packet._code``), as plain str.
_ERR_INTERNAL: Final = ErrorCode.ERR_INTERNAL.value
_ERR_NO_HANDLER: Final = ErrorCode.ERR_NO_HANDLER.value
_ERR_REQUEST_INVALID: Final = ErrorCode.ERR_REQUEST_INVALID.value


def _cancel_if(running: asyncio.Task[object], done: asyncio.Task[None]) -> None:
    """Cancel ``running`` when ``done`` (the dispatch waiting for it) was cancelled."""
    if done.cancelled():
        running.cancel()


class Dispatcher:
    """The handlers of one server, sorted into groups."""

    __slots__ = ("_groups", "_plan", "debug")

    def __init__(self) -> None:
        self._groups: list[tuple[int, list[Handler]]] = []
        self._plan: Plan = ()
        self.debug = False

    def add(self, handler: Handler, group: object = 0) -> None:
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
        self._plan = tuple(
            (number, tuple(_entry(each) for each in handlers)) for number, handlers in self._groups
        )

    @property
    def groups(self) -> Mapping[int, tuple[Handler, ...]]:
        """The registered handlers by group number, in dispatch order."""
        return {number: tuple(entry[0] for entry in entries) for number, entries in self._plan}

    def dispatch(self, client: Client, packet: Packet) -> Coroutine[Any, Any, None]:
        """Run the handlers that match ``packet``, group by group; return when done.

        A coroutine (``await dispatcher.dispatch(client, packet)``), from
        :mod:`asyncapy._suspended`, which stays plain Python.

        Never raises for a handler's error: it is logged with its traceback and
        answered with ``ERR_INTERNAL``. ``BaseException`` (cancellation, exit)
        propagates.
        """
        return _suspended.dispatch(self, client, packet)

    def run(
        self,
        client: Client,
        packet: Packet,
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context,
        steps: Steps | None = None,
        *,
        plan: Plan | None = None,
        start: int = 0,
        matched: bool = False,
    ) -> asyncio.Task[None] | None:
        """Dispatch ``packet`` now; return None when that finished it, else the Task that will.

        Args:
            client: the sender.
            packet: the packet.
            loop: the running loop.
            context: the request's ``contextvars`` context; handlers run in it.
            steps: the connection's turn (its handlers' first steps share
                one current-task stand-in); None: :func:`first_step` each.
            plan: the groups to walk (the current plan by default).
            start: index of the first group to walk.
            matched: whether an earlier group already matched.

        Raises:
            Only ``BaseException`` that is neither an ``Exception`` nor a
            ``CancelledError``, from a handler.
        """
        if plan is None:
            plan = self._plan
        debug = self.debug
        for number, entries in plan[start:] if start else plan:
            if debug:
                logger.debug(
                    "(%s) {API Parser} Checking group %d", client.session.session_id, number
                )
            for handler, match, call, name, task_name in entries:
                try:
                    if match is not None and not match(client, packet):
                        continue
                    if debug:
                        self._log_call(client, handler, number)
                    coro = call(client, packet)
                    if steps is None:
                        task = _first_step(loop, coro, context, task_name)
                    else:
                        task = steps.step(loop, coro, context, task_name)
                except NoMatch:
                    continue  # its asynchronous filters did not pass
                except StopPropagation:
                    packet._handler = name
                    return None
                except Reject as exc:
                    self._rejected(client, packet, exc)
                    return None
                except Exception as exc:
                    packet._handler = name
                    packet._code = _ERR_INTERNAL
                    self._handler_failed(client, handler, exc)
                    return None
                except asyncio.CancelledError:
                    packet._handler = name
                    packet._code = _ERR_INTERNAL
                    self._handler_cancelled(client, handler)
                    return None
                if task is None:
                    packet._handler = name
                    matched = True
                    break  # the handler finished without suspending
                # It suspended: a Task waits for it, then walks the later groups
                # (or the rest of this one, if its asynchronous filters fail).
                before = (matched, packet._handler)
                packet._handler = name
                index = plan.index((number, entries))
                rest = loop.create_task(
                    _suspended.rest(self, client, packet, plan, index, handler, task, before),
                    context=context,
                )
                # Cancelling the dispatch cancels the handler, even before
                # ``rest`` has taken its first step (and awaits it).
                rest.add_done_callback(functools.partial(_cancel_if, task))
                return rest
            if client.closed:
                return None
        if not matched:
            if debug:
                logger.debug("(%s) {API Parser} No handler matched", client.session.session_id)
            refused_by = getattr(packet, "_invalid", None)
            if refused_by:  # typed handlers refused it: say why (asyncapy._typed)
                packet._code = _ERR_REQUEST_INVALID
                client.send(invalid_payload(packet._fields, refused_by))
                return None
            packet._code = _ERR_NO_HANDLER
            client.send(_NO_HANDLER)
        return None

    @staticmethod
    def _log_call(client: Client, handler: Handler, number: int) -> None:
        logger.debug(
            "(%s) {API Parser} Calling %r in group %d",
            client.session.session_id,
            handler.name,
            number,
        )

    @staticmethod
    def _rejected(client: Client, packet: Packet, exc: Reject) -> None:
        """A filter (or handler) raised :class:`Reject`: answer with its code and fields."""
        packet._code = exc.code.value
        if not client.closed:
            client.send(exc.payload())

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
        Dispatcher._answer_internal(client)

    @staticmethod
    def _handler_cancelled(client: Client, handler: Handler) -> None:
        """A handler's Task ended cancelled, though the server did not cancel it."""
        logger.warning(
            "(%s) {API Parser} Handler %r was cancelled", client.session.session_id, handler.name
        )
        Dispatcher._answer_internal(client)

    @staticmethod
    def _answer_internal(client: Client) -> None:
        if not client.closed:
            try:
                client.send(_INTERNAL)
            except Exception:  # pragma: no cover - the connection broke meanwhile
                logger.debug(
                    "(%s) could not send ERR_INTERNAL", client.session.session_id, exc_info=True
                )
