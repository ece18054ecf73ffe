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
from typing import Final

__all__ = ["ACCESS", "ERROR", "access_logger", "configure", "error_logger"]

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
