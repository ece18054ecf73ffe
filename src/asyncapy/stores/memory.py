"""The ``memory://`` store: one process's dicts, nothing shared, nothing kept.

Theory of operation
-------------------
Keys are kept as JSON text (so a record read back is a fresh copy, and
metadata that SQLite or Redis would refuse is refused here too). Sessions
count one worker's own sessions. Rate states are one integer TAT (theoretical
arrival time, microseconds of :func:`time.monotonic`) per key, bounded by
``max_keys``: a heap of ``(tat, key)`` pairs, with stale pairs skipped when
popped and the heap rebuilt when it holds twice the live keys, finds the key
whose TAT is smallest in O(log n). An entry expires at its TAT, so the
smallest TAT is also the first expired: each call drops up to
:data:`PURGE_PER_CALL` expired entries, and a new key arriving when
``max_keys`` are stored evicts the smallest TAT (the key nearest to being
forgotten anyway; it restarts with a full burst).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from . import KeyRecord, KeyStore, RateDecision, RateStore, SessionRegistry, Store, StoreError
from ._common import US, check_rate_args, check_ttl, dump_metadata, gcra, load_metadata

__all__ = ["MemoryKeyStore", "MemoryRateStore", "MemorySessionRegistry", "MemoryStore"]

DEFAULT_MAX_KEYS: Final = 100_000
"""The rate states a memory store keeps at most, by default."""

PURGE_PER_CALL: Final = 8
"""Expired rate states dropped at most per :meth:`MemoryRateStore.aconsume`."""


class MemoryKeyStore(KeyStore):
    """API key records in a dict of this process. Never raises :class:`StoreError`."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[str, str, float]] = {}

    def get(self, digest: str) -> KeyRecord | None:
        row = self._rows.get(digest)
        return None if row is None else KeyRecord(digest, row[0], load_metadata(row[1]), row[2])

    def add(self, record: KeyRecord) -> bool:
        text = dump_metadata(record.metadata)
        if record.digest in self._rows:
            return False
        self._rows[record.digest] = (record.hint, text, float(record.created))
        return True

    def set_metadata(self, digest: str, metadata: Mapping[str, Any]) -> bool:
        text = dump_metadata(metadata)
        row = self._rows.get(digest)
        if row is None:
            return False
        self._rows[digest] = (row[0], text, row[2])
        return True

    def delete(self, digest: str) -> bool:
        return self._rows.pop(digest, None) is not None

    def replace(self, old: str, record: KeyRecord) -> bool:
        text = dump_metadata(record.metadata)
        if old not in self._rows:
            return False
        if record.digest != old and record.digest in self._rows:
            raise StoreError(
                f"memory://: cannot replace {old[:12]}...: the new digest is already stored"
            )
        del self._rows[old]
        self._rows[record.digest] = (record.hint, text, float(record.created))
        return True

    def records(self) -> list[KeyRecord]:
        rows = sorted(
            self._rows.items(), key=lambda item: item[1][2]
        )  # stable: insertion order on ties
        return [
            KeyRecord(digest, hint, load_metadata(text), created)
            for digest, (hint, text, created) in rows
        ]

    async def aget(self, digest: str) -> KeyRecord | None:
        return self.get(digest)

    async def aadd(self, record: KeyRecord) -> bool:
        return self.add(record)

    async def aset_metadata(self, digest: str, metadata: Mapping[str, Any]) -> bool:
        return self.set_metadata(digest, metadata)

    async def adelete(self, digest: str) -> bool:
        return self.delete(digest)

    async def areplace(self, old: str, record: KeyRecord) -> bool:
        return self.replace(old, record)

    async def arecords(self) -> list[KeyRecord]:
        return self.records()


class MemorySessionRegistry(SessionRegistry):
    """This process's sessions by address (the only worker it sees).

    Raises:
        StoreError: a method other than :meth:`astart` was called before it.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._worker: str | None = None

    def _check(self) -> None:
        if self._worker is None:
            raise StoreError("memory://: the session registry is used before astart()")

    async def astart(self, worker: str, ttl: float) -> None:
        check_ttl(ttl)
        self._worker = worker
        self._counts.clear()

    async def aheartbeat(self) -> None:
        self._check()

    async def aacquire(self, address: str, limit: int) -> bool:
        self._check()
        count = self._counts.get(address, 0)
        if count >= limit:
            return False
        self._counts[address] = count + 1
        return True

    async def arelease(self, address: str) -> None:
        self._check()
        count = self._counts.get(address, 0)
        if count <= 1:
            self._counts.pop(address, None)
        else:
            self._counts[address] = count - 1

    async def acount(self, address: str) -> int:
        self._check()
        return self._counts.get(address, 0)

    async def astop(self) -> None:
        self._counts.clear()
        self._worker = None


class MemoryRateStore(RateStore):
    """GCRA states of this process, at most ``max_keys`` of them.

    Args:
        max_keys: the states kept at most (>= 1); see the module's theory of operation.
        clock: seconds of a monotonic clock (:func:`time.monotonic`; tests pass their own).

    Raises:
        ValueError: ``max_keys`` < 1; from :meth:`aconsume`, an ``interval`` <= 0 or ``burst`` < 1.
    """

    def __init__(
        self, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not isinstance(max_keys, int) or isinstance(max_keys, bool) or max_keys < 1:
            raise ValueError(f"max_keys must be an int >= 1, not {max_keys!r}")
        self.max_keys = max_keys
        self._clock = clock
        self._tat: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        """The rate states stored now (expired ones not purged yet included)."""
        return len(self._tat)

    def _pop_smallest(self, before: int | None) -> bool:
        """Forget the smallest TAT if <= ``before`` (None: any); whether one was."""
        heap, tats = self._heap, self._tat
        while heap:
            tat, key = heap[0]
            if tats.get(key) != tat:  # stale pair: the key moved on or was forgotten
                heapq.heappop(heap)
                continue
            if before is not None and tat > before:
                return False
            heapq.heappop(heap)
            del tats[key]
            return True
        return False

    async def aconsume(self, key: str, interval: float, burst: int) -> RateDecision:
        t_us = check_rate_args(interval, burst)
        now = round(self._clock() * US)
        for _ in range(PURGE_PER_CALL):
            if not self._pop_smallest(now):
                break
        tat = self._tat.get(key)
        new_tat, decision = gcra(tat, now, t_us, burst)
        if new_tat is None:
            return decision
        if tat is None and len(self._tat) >= self.max_keys:
            self._pop_smallest(None)
        self._tat[key] = new_tat
        heapq.heappush(self._heap, (new_tat, key))
        if len(self._heap) > 2 * len(self._tat) + 64:
            self._heap = [(value, name) for name, value in self._tat.items()]
            heapq.heapify(self._heap)
        return decision

    async def areset(self, key: str) -> None:
        self._tat.pop(key, None)  # its heap pair goes stale


class MemoryStore(Store):
    """``memory://``: keys, sessions and rate states of this process only.

    Args:
        url: the URL it was opened with.
        max_keys: passed to :class:`MemoryRateStore`.
    """

    def __init__(self, url: str = "memory://", *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.url = url
        self._keys = MemoryKeyStore()
        self._sessions = MemorySessionRegistry()
        self._rates = MemoryRateStore(max_keys=max_keys)

    @property
    def keys(self) -> MemoryKeyStore:
        return self._keys

    @property
    def sessions(self) -> MemorySessionRegistry:
        return self._sessions

    @property
    def rates(self) -> MemoryRateStore:
        return self._rates

    @property
    def shared(self) -> bool:
        return False

    async def aclose(self) -> None:
        """Nothing to close: the data stays, as for the other stores."""

    def close(self) -> None:
        """Nothing to close."""
