"""SIGINT and SIGTERM for every server serving on one event loop.

``loop.add_signal_handler`` keeps one handler per signal and loop, so a
second server on the same loop would take the signal from the first. The
router installs one handler per signal and loop, delivers each signal to
every callback registered for that loop, and removes the handlers when the
last callback goes. Only the main thread can install signal handlers; from
another thread registering does nothing (that server then stops only through
``stop()``).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable

__all__ = ["SIGNALS", "SignalRouter", "router"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)

OnSignal = Callable[[int], None]


class SignalRouter:
    """Signal callbacks per event loop (see the module's docstring)."""

    def __init__(self) -> None:
        self._callbacks: dict[asyncio.AbstractEventLoop, list[OnSignal]] = {}
        self.signals: tuple[int, ...] = SIGNALS
        """The signals handled (a supervised worker leaves SIGINT to its parent)."""

    def add(self, loop: asyncio.AbstractEventLoop, callback: OnSignal) -> None:
        """Call ``callback(signum)`` on SIGINT and SIGTERM while ``loop`` runs."""
        if threading.current_thread() is not threading.main_thread():
            return
        callbacks = self._callbacks.get(loop)
        if callbacks is None:
            callbacks = self._callbacks[loop] = []
            for sig in self.signals:
                try:
                    loop.add_signal_handler(sig, self._deliver, loop, sig)
                except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                    continue
        callbacks.append(callback)

    def discard(self, loop: asyncio.AbstractEventLoop, callback: OnSignal) -> None:
        """Forget ``callback``; the last one to go removes the loop's handlers."""
        callbacks = self._callbacks.get(loop)
        if callbacks is None or callback not in callbacks:
            return
        callbacks.remove(callback)
        if not callbacks:
            del self._callbacks[loop]
            if not loop.is_closed():
                for sig in self.signals:
                    loop.remove_signal_handler(sig)

    def _deliver(self, loop: asyncio.AbstractEventLoop, sig: int) -> None:
        for callback in list(self._callbacks.get(loop, ())):
            callback(sig)


router = SignalRouter()
"""The process's router: signal handlers are per process and loop."""
