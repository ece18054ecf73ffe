"""What ``asyncapy bench`` measures: a mergeable latency histogram and the counts.

Theory of operation
-------------------
Latencies are whole nanoseconds, counted in a fixed log-linear histogram, the
same as ``bench/loadgen.c``'s: below 128 ns one bucket per nanosecond; above,
each power of two ``[2**k, 2**(k+1))`` is cut into 128 equal buckets. A
bucket's width is at most 1/128 of its lower bound, so a percentile read as
the upper bound of its bucket is at most 0.79 % above the true value (and
never above the largest latency seen, which is kept exactly). Latencies up to
``2**41`` ns (36 minutes) have their own bucket; longer ones count in the last.

Bucket ``i`` means the same range in every process, so results from several
processes merge by adding their counts, bucket by bucket
(:meth:`LoadResult.merge`); percentiles are read once, from the merged counts.
A result travels between processes as JSON, its histogram sparse
(``{bucket: count}``, the non-zero buckets only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

import msgspec

__all__ = [
    "HIST_LIMIT",
    "NBUCKETS",
    "PERCENTILES",
    "SUB_BITS",
    "LoadResult",
    "bucket",
    "bucket_upper",
    "percentile",
    "sparse",
]

SUB_BITS: Final = 7
"""log2 of the buckets per power of two: 128, so a bucket is < 0.79 % wide."""
_SUB: Final = 1 << SUB_BITS
_TOP_MSB: Final = 40
NBUCKETS: Final = (_TOP_MSB - SUB_BITS + 2) * _SUB
"""Buckets in a histogram (4,480 counts: 35 KiB as a list of small ints)."""
HIST_LIMIT: Final = 1 << (_TOP_MSB + 1)
"""Latencies at or above this many nanoseconds all count in the last bucket."""
PERCENTILES: Final = (0.5, 0.9, 0.99, 0.999)


def bucket(ns: int) -> int:
    """The histogram bucket of a latency of ``ns`` nanoseconds (>= 0)."""
    if ns < _SUB:
        return ns
    if ns >= HIST_LIMIT:
        ns = HIST_LIMIT - 1
    shift = ns.bit_length() - 1 - SUB_BITS
    return shift * _SUB + (ns >> shift)


def bucket_upper(index: int) -> int:
    """The largest latency, in nanoseconds, that falls in bucket ``index``."""
    if index < 2 * _SUB:
        return index
    shift = index // _SUB - 1
    return ((index - shift * _SUB + 1) << shift) - 1


def percentile(hist: Sequence[int], count: int, fraction: float, max_ns: int) -> int:
    """The latency (ns) under which ``fraction`` of the ``count`` samples fall.

    Reads the upper bound of the bucket that holds the sample of rank
    ``ceil(fraction * count)``, capped at ``max_ns``; 0 when there are none.
    """
    if count <= 0:
        return 0
    want = max(1, -int(-fraction * count // 1))
    seen = 0
    for index, n in enumerate(hist):
        seen += n
        if seen >= want:
            return min(bucket_upper(index), max_ns)
    return max_ns


class LoadResult(msgspec.Struct, kw_only=True):
    """The counts of one load process, or of several merged.

    Attributes:
        requests: replies completed inside the measured window (error replies too).
        seconds: length of the measured window.
        hist: latency histogram, sparse: ``{bucket: count}`` (see :func:`bucket`).
        max_ns: the largest latency measured.
        errors: count per kind inside the window: an ``ERR_*`` code of an error
            reply, or a connection error ("connect refused", "closed by the
            server", ...; :mod:`asyncapy._loadgen` names them).
        connected: whether any connection was ever made.
        last_error: the last connection error, for a run that never connected.
    """

    requests: int = 0
    seconds: float = 0.0
    hist: dict[int, int] = msgspec.field(default_factory=dict)
    max_ns: int = 0
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    connected: bool = False
    last_error: str = ""

    @classmethod
    def merge(cls, results: Iterable[LoadResult]) -> LoadResult:
        """One result for processes that ran side by side (same window).

        Counts add up; the window is the longest of them.
        """
        total = cls()
        for result in results:
            total.requests += result.requests
            total.seconds = max(total.seconds, result.seconds)
            for index, n in result.hist.items():
                total.hist[index] = total.hist.get(index, 0) + n
            total.max_ns = max(total.max_ns, result.max_ns)
            for kind, n in result.errors.items():
                total.errors[kind] = total.errors.get(kind, 0) + n
            total.connected = total.connected or result.connected
            total.last_error = result.last_error or total.last_error
        return total

    @property
    def error_count(self) -> int:
        """All errors: error replies and connection errors."""
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        """Replies per second over the window."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def dense(self) -> list[int]:
        """The histogram as a list of :data:`NBUCKETS` counts."""
        counts = [0] * NBUCKETS
        for index, n in self.hist.items():
            counts[index] += n
        return counts

    def latencies_ns(self) -> dict[str, int]:
        """``p50``, ``p90``, ``p99``, ``p99.9`` and ``max``, in nanoseconds."""
        counts = self.dense()
        total = sum(counts)
        found = {f"p{100 * p:g}": percentile(counts, total, p, self.max_ns) for p in PERCENTILES}
        found["max"] = self.max_ns
        return found


def sparse(counts: Sequence[int]) -> dict[int, int]:
    """A dense histogram as ``{bucket: count}`` of its non-zero buckets."""
    return {index: n for index, n in enumerate(counts) if n}
