"""Metrics: counted in the process, summed by the supervisor, read by Prometheus.

Theory of operation
-------------------
:class:`Metrics` (``server.metrics``) is what one process counts, written by
the event loop alone and read on it: the hot path costs a few attribute
increments and no locks.

- Per decoded packet: a dict lookup by handler name, one bucket increment
  (a float comparison for the first bucket, where nearly every packet
  lands, else a ``bisect`` into the fixed ``BUCKETS``, 50 µs to 10 s), one
  float addition. The connection does this itself in the usual case (OK, a
  known handler, the first bucket) and calls :meth:`Metrics.packet`
  otherwise. Packets answered ``OK`` are not counted separately: they are
  the histogram's count minus the errors, which are counted by code on
  their own (rare) path.
- Bytes are counted per connection (``Connection.bytes_in`` and
  ``bytes_out``, one integer addition per read and per batch of replies); a connection
  that closes adds its counts to :attr:`Metrics.received` and
  :attr:`Metrics.sent` (:meth:`Metrics.closed`), and a snapshot adds the
  live connections' counts to those.

A total is consistent only when read between two steps of the loop, so
:meth:`Metrics.snapshot` from another thread (the ``/metrics`` server's)
hands the reading to the loop and waits for it (``call_soon_threadsafe``),
at most :data:`READ_TIMEOUT` seconds, then answers the previous reading: a
counter read never goes backwards. Nothing of ``prometheus_client`` runs in
the loop: it is imported when :attr:`Metrics.registry` is first asked for.

:meth:`Metrics.delta` is what grew since its previous call (``{}`` when
nothing did), as plain builtins. A worker of ``asyncapy run`` sends deltas to
the parent, whose :class:`Aggregate` adds them up: a worker that dies has
already sent what it counted (up to its last beat), so the totals never go
backwards, unlike per-PID files that vanish or pile up. The gauges of a
worker (open connections, memory, CPU) come from its beats and go with it
(:meth:`Aggregate.retire`).

Label values come from the server, never from the peer: handler names (the
registered functions') and ``ERR_*`` codes (``docs/threat-model.md``).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import logging
import os
import resource
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from . import _prometheus as _prom
from ._prometheus import BUCKETS, EVENTS, MetricsServer, serve_registry

if TYPE_CHECKING:
    from ._state import Stats

__all__ = [
    "BUCKETS",
    "EVENTS",
    "OK",
    "READ_TIMEOUT",
    "Aggregate",
    "Metrics",
    "MetricsServer",
    "process_usage",
    "serve_registry",
]

OK: Final = "OK"
"""The result code of a packet that a handler took without error."""
READ_TIMEOUT: Final = 2.0
"""Seconds a reading from another thread waits for the loop before it answers the last one."""

_FIRST: Final = BUCKETS[0]
_bisect: Final = bisect.bisect_left  # a value equal to a bound is in its bucket (le)
_log: Final = logging.getLogger("asyncapy.error")


class Counted(Protocol):
    """What :class:`Metrics` reads of a connection: its bytes read and written."""

    bytes_in: int
    bytes_out: int


def process_usage() -> tuple[int, float]:
    """This process's resident memory (bytes) and CPU time (seconds, user + system).

    Reads ``/proc/self/statm`` on Linux; elsewhere the peak RSS from
    ``getrusage`` is the best there is. Never raises.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm", "rb") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = usage.ru_maxrss * 1024
    return rss, usage.ru_utime + usage.ru_stime


class Series:
    """The counts of one handler label: the latency histogram, the errors by code.

    ``fast`` counts the first bucket, ``buckets`` the others (not cumulative;
    the last is +Inf), ``seconds`` is the histogram's sum, ``errors`` counts
    the packets whose result was not OK, by code.
    """

    __slots__ = ("buckets", "errors", "fast", "seconds")

    def __init__(self) -> None:
        self.fast = 0  # the first bucket's count
        self.buckets = [0] * (len(BUCKETS) + 1)  # the others' (not cumulative); the last is +Inf
        self.seconds = 0.0
        self.errors: dict[str, int] = {}

    def counts(self) -> list[int]:
        counts = list(self.buckets)
        counts[0] += self.fast
        return counts


class Metrics:
    """What one process counts: ``server.metrics``.

    Counting happens on the server's event loop (the connections call
    :meth:`packet`, :meth:`rejected`, :meth:`refused`, :meth:`closed` and add
    to ``sessions``); reading from any thread (:meth:`snapshot`,
    :attr:`registry`).

    Args:
        stats: the server's :class:`~asyncapy._state.Stats`, exported as
            counters (``EVENTS``).
        connections: returns the open sessions now (the server's own
            registry of them, not a copy), whose bytes count until
            :meth:`closed`.
    """

    __slots__ = (
        "_connections",
        "_last",
        "_loop",
        "_read",
        "_refused",
        "_registry",
        "_rejected",
        "_stats",
        "_thread",
        "received",
        "sent",
        "series",
        "sessions",
    )

    def __init__(
        self,
        stats: Stats | None = None,
        connections: Callable[[], Collection[Counted]] | None = None,
    ) -> None:
        self._stats = stats
        self._connections = connections
        self.series: dict[str | None, Series] = {}
        """The counts by handler name (None: none matched). The connection
        updates an existing ``Series`` itself in the usual case (OK, first
        bucket), as :meth:`packet` would."""
        self._rejected: dict[str, int] = {}
        self._refused: dict[str, int] = {}
        self._last: dict[str, Any] = {}  # what delta() sent last
        self._read: dict[str, Any] | None = None  # what the last reading from a thread got
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._registry: Any = None
        self.sessions = 0
        """Sessions opened."""
        self.received = 0
        """Bytes read by the connections that closed (:meth:`closed`)."""
        self.sent = 0
        """Bytes written by the connections that closed (:meth:`closed`)."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count on ``loop`` (the server's, when it starts serving): read there."""
        self._loop = loop
        self._thread = threading.get_ident()

    # -- counting (on the loop)

    def packet(self, handler: str | None, code: str, seconds: float) -> None:
        """Count one decoded packet.

        Args:
            handler: the name of the last handler called (None: none matched).
            code: ``"OK"`` or the ``ERR_*`` code of its result.
            seconds: the time from taking it up (decoding included) to its end.
        """
        try:
            series = self.series[handler]
        except KeyError:
            series = self.series[handler] = Series()
        if seconds <= _FIRST:
            series.fast += 1
        else:
            series.buckets[_bisect(BUCKETS, seconds)] += 1
        series.seconds += seconds
        if code != OK:
            errors = series.errors
            errors[code] = errors.get(code, 0) + 1

    def rejected(self, code: str) -> None:
        """Count a frame answered with the error ``code`` and never handled."""
        self._rejected[code] = self._rejected.get(code, 0) + 1

    def refused(self, code: str) -> None:
        """Count a connection refused with ``code`` before it had a session."""
        self._refused[code] = self._refused.get(code, 0) + 1

    def closed(self, conn: Counted) -> None:
        """Add the bytes of ``conn``, which has just left the open sessions, to the totals.

        Call it once per session, as it leaves ``connections()``.
        """
        self.received += conn.bytes_in
        self.sent += conn.bytes_out

    # -- reading

    @property
    def open_connections(self) -> int:
        """Open sessions now."""
        return len(self._connections()) if self._connections is not None else 0

    def snapshot(self) -> dict[str, Any]:
        """Every counter, as plain builtins (the shape of :meth:`delta`). Any thread.

        From a thread other than the loop's, while it runs, the loop reads
        (see the module's docstring).
        """
        loop = self._loop
        if (
            loop is None
            or threading.get_ident() == self._thread
            or loop.is_closed()
            or not loop.is_running()
        ):
            return self._snapshot()
        future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

        def read() -> None:
            if future.set_running_or_notify_cancel():
                future.set_result(self._snapshot())

        try:
            loop.call_soon_threadsafe(read)
            self._read = future.result(READ_TIMEOUT)
        except (RuntimeError, concurrent.futures.TimeoutError):  # closed, or not answering
            future.cancel()
            if self._read is None:
                self._read = self._snapshot()
        return self._read

    def delta(self) -> dict[str, Any]:
        """What grew since the previous call (since the start, the first time). On the loop.

        Returns:
            The shape of :meth:`snapshot`, with only the entries that changed
            (differences) and without empty parts: ``{}`` when nothing
            changed. Plain builtins only (msgpack, JSON). Call it from one
            place (the worker's beat): each call moves the mark.
        """
        now = self._snapshot()
        delta = _subtract(now, self._last)
        self._last = now
        return delta

    def _snapshot(self) -> dict[str, Any]:
        packets: dict[str, dict[str, int]] = {}
        latency: dict[str, list[Any]] = {}
        for handler, series in self.series.items():
            name = handler or ""
            counts = series.counts()
            codes = dict(series.errors)
            ok = sum(counts) - sum(codes.values())
            if ok:
                codes[OK] = ok
            packets[name] = codes
            latency[name] = [series.seconds, counts]
        live = list(self._connections()) if self._connections is not None else []
        stats = self._stats
        return {
            "sessions": self.sessions,
            "received": self.received + sum(conn.bytes_in for conn in live),
            "sent": self.sent + sum(conn.bytes_out for conn in live),
            "packets": packets,
            "latency": latency,
            "rejected": {str(code): n for code, n in self._rejected.items()},
            "refused": {str(code): n for code, n in self._refused.items()},
            "events": {} if stats is None else {key: getattr(stats, key) for key in EVENTS},
        }

    @property
    def registry(self) -> Any:
        """A ``prometheus_client.CollectorRegistry`` that reads these counters when scraped.

        Built (and ``prometheus_client`` imported) on first use.
        """
        if self._registry is None:
            self._registry = _prom.registry(self._collect)
        return self._registry

    def _collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield from _prom.families(self.snapshot())
        yield GaugeMetricFamily(*_prom.OPEN, value=self.open_connections)
        rss, cpu = process_usage()  # this process is the one worker, "0"
        yield from _prom.worker_families({0: (self.open_connections, rss, cpu)})


class Aggregate:
    """The supervisor's sum of its workers' :meth:`Metrics.delta`, and their gauges.

    Every method may be called from the parent's loop while the registry is
    scraped from another thread (a lock keeps the two apart).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, Any] = {}
        self._workers: dict[int, tuple[int, int, float]] = {}
        self._restarts = 0
        self._registry: Any = None

    def add(self, worker: int, delta: Mapping[str, Any]) -> None:
        """Add a worker's ``delta`` to the totals.

        A part of ``delta`` that is not of :meth:`Metrics.delta`'s shape is
        skipped and logged (the parent must not fail on one bad message).
        """
        with self._lock:
            try:
                _add(self._totals, delta)
            except (TypeError, ValueError, AttributeError, IndexError) as exc:
                _log.warning("{Supervisor} worker %d sent bad metrics (%s): skipped", worker, exc)

    def set_worker(
        self, worker: int, *, open_connections: int, rss_bytes: int, cpu_seconds: float
    ) -> None:
        """Set the gauges of a live ``worker`` (from its beat)."""
        with self._lock:
            self._workers[worker] = (open_connections, rss_bytes, cpu_seconds)

    def retire(self, worker: int) -> None:
        """Forget the gauges of a ``worker`` that exited; its counters stay in the totals."""
        with self._lock:
            self._workers.pop(worker, None)

    def count_restart(self) -> None:
        """Count a worker started to replace one that exited unasked."""
        with self._lock:
            self._restarts += 1

    def snapshot(self) -> dict[str, Any]:
        """The totals so far, in :meth:`Metrics.snapshot`'s shape (a deep copy)."""
        with self._lock:
            return _add({}, self._totals)

    @property
    def open_connections(self) -> int:
        """Open sessions of the live workers, at their last beat."""
        with self._lock:
            return sum(gauges[0] for gauges in self._workers.values())

    @property
    def registry(self) -> Any:
        """A ``prometheus_client.CollectorRegistry`` of the totals and the worker gauges."""
        if self._registry is None:
            self._registry = _prom.registry(self._collect)
        return self._registry

    def _collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            totals = _add({}, self._totals)
            workers = dict(self._workers)
            restarts = self._restarts
        yield from _prom.families(totals)
        yield GaugeMetricFamily(*_prom.OPEN, value=sum(w[0] for w in workers.values()))
        yield GaugeMetricFamily(*_prom.WORKERS, value=len(workers))
        yield CounterMetricFamily(*_prom.RESTARTS, value=restarts)
        yield from _prom.worker_families(workers)


def _subtract(now: Mapping[str, Any], before: Mapping[str, Any]) -> dict[str, Any]:
    """``now - before`` for the shape of a snapshot, keeping only what changed."""
    delta: dict[str, Any] = {}
    for key, value in now.items():
        old = before.get(key)
        if isinstance(value, dict):
            part = _subtract(value, old or {})
            if part:
                delta[key] = part
        elif isinstance(value, list):  # [seconds, buckets]
            if old is None:
                old = [0.0, [0] * len(value[1])]
            if value[1] != old[1]:
                buckets = [n - o for n, o in zip(value[1], old[1], strict=True)]
                delta[key] = [value[0] - old[0], buckets]
        elif value != (old or 0):
            delta[key] = value - (old or 0)
    return delta


def _add(into: dict[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``delta`` (a snapshot's shape) into ``into``; return ``into``.

    Raises:
        TypeError, ValueError: for a part that is not of that shape (what came
            before it is added).
    """
    for key, value in delta.items():
        if not isinstance(key, str):
            raise TypeError(f"key {key!r} is not a str")
        if isinstance(value, Mapping):
            _add(into.setdefault(key, {}), value)
        elif isinstance(value, (list, tuple)):
            seconds, buckets = value
            if len(buckets) != len(BUCKETS) + 1:
                raise ValueError(f"{key}: {len(buckets)} buckets")
            old = into.get(key) or [0.0, [0] * len(buckets)]
            into[key] = [
                old[0] + float(seconds),
                [a + int(b) for a, b in zip(old[1], buckets, strict=True)],
            ]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
        else:
            raise TypeError(f"{key}: {type(value).__name__} is not a count")
    return into
