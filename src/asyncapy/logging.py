"""asyncapy's loggers, as uvicorn names its own.

- ``asyncapy.error``: what the server has to say: listening, sessions opened
  and closed, rejected frames, handler exceptions with their tracebacks,
  shutdown. (The name is uvicorn's: it is the server's log, not only errors.)
- ``asyncapy.access``: one line per request, for an access log. Nothing is
  logged there yet; it exists so that handlers and deployments can be
  configured for it now.

Both are children of ``asyncapy``, whose level the ``logging_level`` setting
sets; configure them like any logger (``logging.config.dictConfig``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

__all__ = ["ACCESS", "ERROR", "RateLimitedLog", "access_logger", "configure", "error_logger"]

ROOT: Final = "asyncapy"
ERROR: Final = "asyncapy.error"
ACCESS: Final = "asyncapy.access"

error_logger: Final = logging.getLogger(ERROR)
access_logger: Final = logging.getLogger(ACCESS)


def configure(level: int, fmt: str, datefmt: str) -> None:
    """Set the ``asyncapy`` logger's level; give it a console handler if logging is not set up.

    The handler (``fmt``, ``datefmt``) is added only when neither the root
    logger nor ``asyncapy`` has one: an application that configures logging
    keeps its own configuration.
    """
    root = logging.getLogger(ROOT)
    root.setLevel(level)
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(fmt, datefmt))
        root.addHandler(handler)
        root.propagate = False


class RateLimitedLog:
    """Logs at most ``rate`` lines per second of each kind; counts the rest.

    An attacker controls how often the server has something to say about it
    (one rejected frame per 9 bytes): each kind of line (``"rejected"``,
    ``"refused"``...) passes at most ``rate`` times per one-second window; the
    lines held back are counted, and one summary line per window says how
    many ("... 2,310 similar lines suppressed in 1.0 s"). ``rate=0`` logs
    everything.

    Args:
        logger: where the lines go.
        rate: lines per second per kind (0: no limit).
        call_later: schedules the summary, ``loop.call_later``.
        clock: the time, ``loop.time``.
        on_suppressed: called for each line held back (a counter's increment).
    """

    __slots__ = (
        "_call_later",
        "_clock",
        "_logger",
        "_on_suppressed",
        "_rate",
        "_windows",
        "suppressed",
    )

    WINDOW: Final = 1.0

    def __init__(
        self,
        logger: logging.Logger,
        rate: int,
        call_later: Callable[[float, Callable[[], None]], object],
        clock: Callable[[], float],
        on_suppressed: Callable[[], None] | None = None,
    ) -> None:
        self._logger = logger
        self._on_suppressed = on_suppressed
        self._rate = rate
        self._call_later = call_later
        self._clock = clock
        self._windows: dict[str, list[Any]] = {}  # kind -> [start, lines, held back, level]
        self.suppressed = 0
        """Lines held back since the start, all kinds."""

    def log(self, kind: str, level: int, msg: str, *args: object) -> None:
        """Log ``msg % args`` at ``level`` unless ``kind`` has had its lines this second."""
        if not self._logger.isEnabledFor(level):
            return
        if not self._rate:
            self._logger.log(level, msg, *args, stacklevel=2)
            return
        window = self._windows.get(kind)
        now = self._clock()
        if window is None or now - window[0] >= self.WINDOW:
            if window is not None and window[2]:
                self._summary(kind)
            window = self._windows[kind] = [now, 0, 0, level]
        if window[1] < self._rate:
            window[1] += 1
            self._logger.log(level, msg, *args, stacklevel=2)
            return
        if not window[2]:  # the first held back: say how many at the end of the window
            self._call_later(window[0] + self.WINDOW - now, lambda: self._summary(kind))
        window[2] += 1
        window[3] = max(window[3], level)
        self.suppressed += 1
        if self._on_suppressed is not None:
            self._on_suppressed()

    def flush(self) -> None:
        """Write the summary of every window that held lines back (at shutdown)."""
        for kind in list(self._windows):
            self._summary(kind)

    def _summary(self, kind: str) -> None:
        window = self._windows.get(kind)
        if window is None or not window[2]:
            return
        self._logger.log(
            window[3],
            "{Server} %d similar '%s' lines suppressed in %.1f s (log_rate_limit=%d per second)",
            window[2],
            kind,
            max(self._clock() - window[0], self.WINDOW),
            self._rate,
        )
        window[2] = 0
