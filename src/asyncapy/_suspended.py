"""The part of a dispatch that awaits: after a handler suspends, and ``dispatch()``.

Plain Python on purpose, where :mod:`asyncapy.dispatch` is compiled with
mypyc (``asyncapy._compiled``): a compiled coroutine that is cancelled while
it awaits passes the cancellation on with the three-argument
``throw(type, value, traceback)``, which Python 3.12 and later deprecate
(a ``DeprecationWarning``, an error under ``-W error``). The synchronous
walk, where the time goes, stays compiled; this runs once per suspended
dispatch.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING

from .core import Client, Handler, NoMatch, Packet
from .errors import ErrorCode, Reject, StopPropagation

if TYPE_CHECKING:
    from .dispatch import Dispatcher, Plan

__all__ = ["dispatch", "rest"]

_ERR_INTERNAL = ErrorCode.ERR_INTERNAL.value


async def dispatch(dispatcher: Dispatcher, client: Client, packet: Packet) -> None:
    """:meth:`Dispatcher.dispatch <asyncapy.dispatch.Dispatcher.dispatch>`."""
    task = dispatcher.run(client, packet, asyncio.get_running_loop(), contextvars.copy_context())
    if task is not None:
        await task


async def rest(
    dispatcher: Dispatcher,
    client: Client,
    packet: Packet,
    plan: Plan,
    index: int,
    handler: Handler,
    running: asyncio.Task[object],
    before: tuple[bool, str | None],
) -> None:
    """Wait for the suspended handler's Task, then walk the handlers after it.

    Args:
        dispatcher: the dispatcher whose walk this goes on with.
        client: the sender.
        packet: the packet.
        plan: the groups being walked.
        index: the index in ``plan`` of the suspended handler's group.
        handler: the suspended handler.
        running: its Task.
        before: (whether an earlier group matched, the packet's handler name)
            before this handler was called: restored if its asynchronous
            filters fail.

    Raises:
        CancelledError: when this Task itself is cancelled (the connection
            goes away); a handler's errors are answered, never raised.
    """
    start, matched = index + 1, True
    try:
        await running
    except NoMatch:
        # Its asynchronous filters failed: the next handlers of its group, then the rest.
        matched, packet._handler = before
        number, entries = plan[index]
        at = next(i for i, entry in enumerate(entries) if entry[0] is handler)
        plan, start = ((number, entries[at + 1 :]), *plan[index + 1 :]), 0
    except StopPropagation:
        return
    except Reject as exc:
        dispatcher._rejected(client, packet, exc)
        return
    except Exception as exc:
        packet._code = _ERR_INTERNAL
        dispatcher._handler_failed(client, handler, exc)
        return
    except asyncio.CancelledError:
        packet._code = _ERR_INTERNAL
        this = asyncio.current_task()
        if this is not None and this.cancelling():
            raise  # we are cancelled (the connection is going away)
        dispatcher._handler_cancelled(client, handler)  # the handler's own Task was
        return
    if client.closed:
        return
    task = dispatcher.run(
        client,
        packet,
        asyncio.get_running_loop(),
        contextvars.copy_context(),
        plan=plan,
        start=start,
        matched=matched,
    )
    if task is not None:
        await task
