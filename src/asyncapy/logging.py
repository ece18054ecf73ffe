"""asyncapy's loggers, as uvicorn names its own; a JSON formatter; ``log_config``.

- ``asyncapy.error``: what the server has to say: listening, sessions opened
  and closed, rejected frames, handler exceptions with their tracebacks,
  shutdown. (The name is uvicorn's: it is the server's log, not only errors.)
- ``asyncapy.access``: one INFO record per decoded packet when the
  ``access_log`` setting is on (off in the library, on in ``asyncapy run``),
  with its fields as ``extra`` attributes of the record (:data:`ACCESS_FIELDS`,
  ``docs/metrics-and-logs.md``).

Both are children of ``asyncapy``, whose level the ``logging_level`` setting
sets; configure them like any logger (``logging.config.dictConfig``), or with
the ``log_config`` setting (a dictConfig JSON file, or an INI fileConfig
file); ``log_format = json`` makes the handler asyncapy installs write one
JSON object per line (:class:`JsonFormatter`).
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.config
import os
from collections.abc import Callable
from typing import Any, Final, Protocol

from .errors import ConfigError

__all__ = [
    "ACCESS",
    "ACCESS_FIELDS",
    "ERROR",
    "JsonFormatter",
    "LogSettings",
    "RateLimitedLog",
    "access_logger",
    "configure",
    "configure_from",
    "error_logger",
    "host_port",
]

ROOT: Final = "asyncapy"
ERROR: Final = "asyncapy.error"
ACCESS: Final = "asyncapy.access"

error_logger: Final = logging.getLogger(ERROR)
access_logger: Final = logging.getLogger(ACCESS)


ACCESS_FIELDS: Final = (
    "session", "peer", "handler", "code", "bytes_in", "bytes_out", "duration_ms"
)  # fmt: skip
"""The ``extra`` attributes of an access record (``docs/metrics-and-logs.md``)."""

_RECORD_ATTRIBUTES: Final = frozenset(
    (*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime", "taskName")
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, the extras.

    Every attribute a record has beyond the standard ones (what ``extra=``
    gave, such as the access record's fields) is a key of its own; values
    JSON cannot hold are written as their ``str()``. An exception's traceback
    is in ``exc_info``, a stack in ``stack_info``. ``time`` is ISO 8601 in UTC
    with milliseconds, unless ``datefmt`` is given (then ``time.strftime``'s,
    local time, as for :class:`logging.Formatter`).
    """

    def format(self, record: logging.LogRecord) -> str:
        if self.datefmt:
            when = self.formatTime(record, self.datefmt)
        else:
            utc = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            when = utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        entry: dict[str, Any] = {
            "time": when,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class LogSettings(Protocol):
    """The settings :func:`configure_from` reads (:class:`asyncapy.config.Settings` has them)."""

    @property
    def logging_level(self) -> int: ...
    @property
    def console_format(self) -> str: ...
    @property
    def datefmt(self) -> str: ...
    @property
    def log_format(self) -> str: ...
    @property
    def log_config(self) -> str | None: ...


def host_port(host: object, port: int) -> str:
    """``host:port`` for a log line or a label; ``[host]:port`` for an IPv6 host."""
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def configure_from(settings: LogSettings) -> None:
    """:func:`configure` with what ``settings`` say.

    Raises:
        ConfigError: as :func:`configure`.
    """
    configure(
        settings.logging_level,
        settings.console_format,
        settings.datefmt,
        log_format=settings.log_format,
        log_config=settings.log_config,
    )


def configure(
    level: int,
    fmt: str,
    datefmt: str,
    *,
    log_format: str = "text",
    log_config: str | os.PathLike[str] | None = None,
) -> None:
    """Apply ``log_config`` if given; set the ``asyncapy`` logger's level; add a handler if none.

    The console handler (``fmt`` and ``datefmt``, or :class:`JsonFormatter`
    for ``log_format="json"``) is added only when neither the root logger nor
    ``asyncapy`` has one: an application that configures logging, or a
    ``log_config`` file that gives handlers, keeps its own configuration.

    Args:
        level: the level of the ``asyncapy`` logger.
        fmt: the text handler's format.
        datefmt: the handler's date format.
        log_format: ``"text"`` or ``"json"``.
        log_config: a ``.json`` file for ``logging.config.dictConfig``, or an
            INI file (any other name) for ``logging.config.fileConfig``. Both
            keep the loggers that exist already (``disable_existing_loggers``
            is false unless the JSON file says otherwise).

    Raises:
        ConfigError: when ``log_config`` cannot be read or applied (one line
            naming the file and the reason).
    """
    if log_config is not None:
        _apply(os.fspath(log_config))
    root = logging.getLogger(ROOT)
    root.setLevel(level)
    if not root.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(logging.Formatter(fmt, datefmt))
        root.addHandler(handler)
        root.propagate = False


def _apply(path: str) -> None:
    """Apply a logging configuration file (see :func:`configure`).

    Raises:
        ConfigError: as :func:`configure`.
    """
    try:
        if path.lower().endswith(".json"):
            with open(path, encoding="utf-8") as file:
                config = json.load(file)
            if not isinstance(config, dict):
                raise ValueError("the file holds no JSON object")
            config.setdefault("disable_existing_loggers", False)  # as for INI files
            logging.config.dictConfig(config)
        else:
            if not os.path.isfile(path):  # fileConfig would say "no section: 'formatters'"
                raise FileNotFoundError(2, "No such file or directory")
            logging.config.fileConfig(path, disable_existing_loggers=False)
    except Exception as exc:  # json, configparser, dictConfig: many kinds, one line
        if isinstance(exc, KeyError):  # fileConfig's way of saying a section is missing
            reason = f"no {exc.args[0]!r} in it (INI: [loggers], [handlers], [formatters])"
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            cause = str(exc.__cause__ or "").strip()  # dictConfig: "Unable to configure handler"
            if cause:
                reason += f" ({cause.splitlines()[0]})"
        raise ConfigError(f"log_config {path!r} cannot be applied: {reason}") from exc


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
