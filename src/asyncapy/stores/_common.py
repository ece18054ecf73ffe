"""What the three store backends share: metadata as JSON, GCRA arithmetic, argument checks.

GCRA runs on integer microseconds in every backend (Redis's ``TIME`` gives
seconds and microseconds; Lua numbers are doubles, exact up to 2**53, which
microseconds since the epoch stay far below), so a burst of ``b`` requests at
one instant conforms exactly ``b`` times, with no floating-point drift.
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from . import RateDecision, StoreError, redact_url

US = 1_000_000
"""Microseconds per second."""


def dump_metadata(metadata: Mapping[str, Any]) -> str:
    """``metadata`` as compact JSON text.

    Raises:
        TypeError: not a mapping, or not JSON-serialisable (a set, bytes, an
            object, NaN or an infinity, a circular reference).
    """
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, not {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # NaN, infinities, circular references
        raise TypeError(f"metadata is not JSON-serialisable: {exc}") from exc


def load_metadata(text: str | bytes) -> dict[str, Any]:
    """The metadata that :func:`dump_metadata` wrote."""
    value: dict[str, Any] = json.loads(text)
    return value


def refuse_on_loop(url: str) -> None:
    """Raise :class:`StoreError` when this thread's event loop is running.

    A blocking store method called there would block every connection of the loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise StoreError(
        f"{redact_url(url)}: a blocking store method was called on a thread whose event "
        "loop is running (it would block every connection): use its async form (a... prefix)"
    )


def check_rate_args(interval: float, burst: int) -> int:
    """``interval`` in whole microseconds (at least 1).

    Raises:
        ValueError: ``interval`` is not a positive finite number or ``burst`` not an int >= 1.
    """
    if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
        raise ValueError(f"burst must be an int >= 1, not {burst!r}")
    if not (isinstance(interval, int | float) and math.isfinite(interval) and interval > 0):
        raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
    return max(1, round(interval * US))


def gcra(tat: int | None, now: int, t_us: int, burst: int) -> tuple[int | None, RateDecision]:
    """One GCRA step in microseconds: (the new TAT or None when refused, the decision).

    ``tat`` is the stored theoretical arrival time (None when absent).
    """
    tau = t_us * (burst - 1)
    current = now if tat is None or tat < now else tat
    if current - tau > now:
        return None, RateDecision(False, (current - tau - now) / US, 0)
    new_tat = current + t_us
    slack = now + tau - new_tat
    return new_tat, RateDecision(True, 0.0, slack // t_us + 1 if slack >= 0 else 0)


def check_ttl(ttl: float) -> float:
    """``ttl`` when it is a positive finite number of seconds.

    Raises:
        ValueError: otherwise.
    """
    if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return float(ttl)


FORMS: Final = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "redis://[[user]:password@]host[:port][/db] or rediss://... (TLS)"
)
"""The store URLs accepted, as error messages list them."""


def bad_url(url: str, why: str) -> StoreError:
    """The error for a malformed store URL (password redacted)."""
    return StoreError(f"bad store URL {redact_url(url)!r}: {why}; accepted forms: {FORMS}")


def sqlite_path(url: str) -> Path:
    """The file that a ``sqlite://`` URL names.

    Raises:
        StoreError: a host, a query or a fragment, or no path.
    """
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or "?" in rest or "#" in rest:
        raise bad_url(url, "a sqlite URL is sqlite:/// and a path, with no host, query or fragment")
    path = urllib.parse.unquote(rest[1:])
    if not path or path.endswith("/") or "\x00" in path:
        raise bad_url(url, "the sqlite URL names no file")
    return Path(path)
