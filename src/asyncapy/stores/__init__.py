"""Stores: where API keys, cluster sessions and rate limits live.

Theory of operation
-------------------
One :class:`Store` per URL bundles three small interfaces, each with a
memory, a SQLite and a Redis implementation:

* :class:`KeyStore`: API key records (:class:`KeyRecord`), addressed by the
  key's digest, never by the key (:class:`~asyncapy.util.APIKeyFactory`
  hashes keys before they reach a store).
* :class:`SessionRegistry`: the sessions of every worker of a cluster by peer
  address, for a cluster-wide ``session_limit``. Each worker owns one entry,
  refreshed by :meth:`SessionRegistry.aheartbeat`; a worker that stops
  refreshing (killed) stops counting after ``ttl`` seconds.
* :class:`RateStore`: GCRA state ("theoretical arrival time", one value per
  limited key) for :class:`~asyncapy.filters.Filters.RateLimit`, changed
  atomically with the store's own clock.

Every method has an ``async`` form (``aget``, ``aadd``...), for the event
loop, which never blocks it: SQLite runs on a worker thread, Redis uses
``redis.asyncio``. The key methods also have a blocking form (``get``,
``add``...) for scripts and the ``asyncapy keys`` command; on a SQLite or
Redis store they refuse to run on a thread whose event loop is running
(:class:`StoreError`), where they would block every connection.

URLs (:func:`open_store`): ``memory://`` (one process, the default),
``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (one host,
persistent), ``redis://host:port/db`` (or ``rediss://``, any number of hosts).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "DEFAULT_STORE",
    "KeyRecord",
    "KeyStore",
    "RateDecision",
    "RateStore",
    "SessionRegistry",
    "Store",
    "StoreError",
    "open_store",
]

DEFAULT_STORE: Final = "memory://"


class StoreError(Exception):
    """A store could not do what was asked: bad URL, unreachable, timed out, misuse.

    The message says which store (its URL without a password) and why. A
    failed command never leaves a half-done change behind: each change is one
    transaction (SQLite) or one atomic command or script (Redis).
    """


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key as stored: everything but the key itself.

    Attributes:
        digest: the key's SHA-256 (or HMAC-SHA256) digest, lowercase hex; the
            record's identity in the store.
        hint: what may be shown of the key (its public prefix and last
            characters), never enough to use it.
        metadata: the key's metadata; JSON-serialisable for SQLite and Redis.
        created: when the key was issued, seconds since the epoch.
    """

    digest: str
    hint: str
    metadata: Mapping[str, Any]
    created: float


class KeyStore(abc.ABC):
    """API key records by digest. Each method exists blocking and ``async`` (``a`` prefix).

    Raises:
        StoreError: (any method) the store failed (unreachable, timed out,
            locked for longer than its ``busy_timeout``), or a blocking method
            was called on a thread whose event loop is running (SQLite and
            Redis only).
        TypeError: (a method given metadata) metadata that the store cannot
            serialise (not a JSON object).
    """

    @abc.abstractmethod
    def get(self, digest: str) -> KeyRecord | None:
        """The record of ``digest``, or None."""

    @abc.abstractmethod
    def add(self, record: KeyRecord) -> bool:
        """Store a new record; False (and nothing changes) when its digest exists."""

    @abc.abstractmethod
    def set_metadata(self, digest: str, metadata: Mapping[str, Any]) -> bool:
        """Replace the metadata of ``digest``; False when it is not stored."""

    @abc.abstractmethod
    def delete(self, digest: str) -> bool:
        """Forget ``digest``; False when it was not stored."""

    @abc.abstractmethod
    def replace(self, old: str, record: KeyRecord) -> bool:
        """Atomically store ``record`` and forget ``old``; False (no change) when ``old`` is absent.

        Raises:
            StoreError: also when ``record.digest`` is already stored.
        """

    @abc.abstractmethod
    def records(self) -> list[KeyRecord]:
        """Every record, oldest first."""

    @abc.abstractmethod
    async def aget(self, digest: str) -> KeyRecord | None:
        """:meth:`get`, without blocking the loop."""

    @abc.abstractmethod
    async def aadd(self, record: KeyRecord) -> bool:
        """:meth:`add`, without blocking the loop."""

    @abc.abstractmethod
    async def aset_metadata(self, digest: str, metadata: Mapping[str, Any]) -> bool:
        """:meth:`set_metadata`, without blocking the loop."""

    @abc.abstractmethod
    async def adelete(self, digest: str) -> bool:
        """:meth:`delete`, without blocking the loop."""

    @abc.abstractmethod
    async def areplace(self, old: str, record: KeyRecord) -> bool:
        """:meth:`replace`, without blocking the loop."""

    @abc.abstractmethod
    async def arecords(self) -> list[KeyRecord]:
        """:meth:`records`, without blocking the loop."""


class SessionRegistry(abc.ABC):
    """Open sessions by peer address, summed over the live workers of a cluster.

    A worker registers under a unique ``worker`` id (host, pid and a random
    part) with :meth:`astart`, calls :meth:`aheartbeat` at least every
    ``ttl / 3`` seconds, and :meth:`astop` when it stops (which forgets its
    sessions at once). Counts of a worker whose last heartbeat is older than
    ``ttl`` seconds are ignored, then deleted.

    Raises:
        StoreError: (any method) the store failed.
    """

    @abc.abstractmethod
    async def astart(self, worker: str, ttl: float) -> None:
        """Register ``worker`` with no sessions, alive for ``ttl`` seconds."""

    @abc.abstractmethod
    async def aheartbeat(self) -> None:
        """Keep this worker alive for another ``ttl`` seconds."""

    @abc.abstractmethod
    async def aacquire(self, address: str, limit: int) -> bool:
        """Count one more session of ``address`` unless the live workers hold ``limit``.

        Atomic across workers: two workers never both take the last place.

        Returns:
            True when counted (the caller must :meth:`arelease` it later).
        """

    @abc.abstractmethod
    async def arelease(self, address: str) -> None:
        """Count one session of ``address`` fewer (never below zero)."""

    @abc.abstractmethod
    async def acount(self, address: str) -> int:
        """The sessions of ``address`` over the live workers."""

    @abc.abstractmethod
    async def astop(self) -> None:
        """Forget this worker and its sessions."""


@dataclasses.dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer of :meth:`RateStore.aconsume`.

    Attributes:
        allowed: whether the request conforms (and was counted).
        retry_after: seconds until one more request would conform (0.0 when allowed).
        remaining: requests that would conform right now, after this one.
    """

    allowed: bool
    retry_after: float
    remaining: int


class RateStore(abc.ABC):
    """GCRA state by key: one stored number per limited key.

    For a limit of ``rate`` requests per ``period`` with a ``burst``: the
    emission interval is ``T = period / rate`` and the tolerance ``tau = T *
    (burst - 1)``. A request at time ``now`` conforms when ``tat - tau <=
    now``, where ``tat`` is the stored theoretical arrival time (``now`` when
    absent); when it conforms, ``tat`` becomes ``max(tat, now) + T`` and
    expires at that time. Times come from the store's clock (Redis ``TIME``).

    Raises:
        StoreError: (any method) the store failed.
    """

    @abc.abstractmethod
    async def aconsume(self, key: str, interval: float, burst: int) -> RateDecision:
        """Count one request of ``key`` if it conforms.

        Args:
            key: the limited thing (``"ip:10.0.0.1"``, ``"key:<digest>"``), prefixed by the limit.
            interval: ``T``, seconds between requests at the sustained rate (> 0).
            burst: requests that may come at once (>= 1).
        """

    @abc.abstractmethod
    async def areset(self, key: str) -> None:
        """Forget ``key``'s state (its next request conforms)."""


class Store(abc.ABC):
    """The three interfaces of one store URL, and its lifetime.

    Connections are opened lazily, in the process and event loop that uses
    them (a Redis pool is never shared across a fork or across loops).
    """

    url: str
    """The URL, as given (with any password)."""

    @property
    @abc.abstractmethod
    def keys(self) -> KeyStore:
        """The API key records."""

    @property
    @abc.abstractmethod
    def sessions(self) -> SessionRegistry:
        """The cluster's session registry."""

    @property
    @abc.abstractmethod
    def rates(self) -> RateStore:
        """The GCRA states of the rate limits."""

    @property
    def shared(self) -> bool:
        """Whether other processes see this store (False for ``memory://``)."""
        return True

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close this process's connections; the store may be used again after."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the blocking connections (:meth:`aclose` closes the async ones)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact_url(self.url)!r})"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def open_store(url: str, **options: Any) -> Store:
    """The store that ``url`` names; it connects when first used.

    Args:
        url: ``memory://``, ``sqlite:///path.db`` or ``redis://host:port/db``.
        **options: passed to the store's class (see each one: ``busy_timeout``,
            ``pool_size``, ``command_timeout``...).

    Raises:
        StoreError: unknown scheme or malformed URL (the message gives the
            accepted forms), or the ``redis`` package missing for a Redis URL.
    """
    from ._url import open_url

    return open_url(url, **options)
