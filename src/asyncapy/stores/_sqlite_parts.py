"""The three interfaces of :class:`~asyncapy.stores.sqlite.SQLiteStore`, as SQL.

Each method builds one operation (a function of a connection) on the
caller's thread, where bad arguments and unserialisable metadata raise, and
runs it through the store: blocking on this thread, or async on the store's
worker thread. Operations that change something run in one ``BEGIN
IMMEDIATE`` transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from . import KeyRecord, KeyStore, RateDecision, RateStore, SessionRegistry, StoreError, redact_url
from ._common import check_rate_args, check_ttl, dump_metadata, gcra, load_metadata

if TYPE_CHECKING:
    from .sqlite import SQLiteStore

PURGE_PER_CALL: Final = 16
"""Expired rows (rate states, dead workers) deleted at most per call."""

Op = Callable[[sqlite3.Connection], Any]

SELECT_KEY: Final = "SELECT digest, hint, metadata, created FROM keys"


def _record(row: tuple[str, str, str, float]) -> KeyRecord:
    return KeyRecord(row[0], row[1], load_metadata(row[2]), row[3])


class SQLiteKeyStore(KeyStore):
    """API key records in the ``keys`` table."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    @staticmethod
    def _get(digest: str) -> Op:
        def op(conn: sqlite3.Connection) -> KeyRecord | None:
            row = conn.execute(f"{SELECT_KEY} WHERE digest = ?", (digest,)).fetchone()
            return None if row is None else _record(row)

        return op

    @staticmethod
    def _add(record: KeyRecord) -> Op:
        text = dump_metadata(record.metadata)

        def op(conn: sqlite3.Connection) -> bool:
            sql = "INSERT INTO keys VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING"
            return (
                conn.execute(
                    sql, (record.digest, record.hint, text, float(record.created))
                ).rowcount
                == 1
            )

        return op

    @staticmethod
    def _set_metadata(digest: str, metadata: Mapping[str, Any]) -> Op:
        text = dump_metadata(metadata)

        def op(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE keys SET metadata = ? WHERE digest = ?", (text, digest)
                ).rowcount
                == 1
            )

        return op

    @staticmethod
    def _delete(digest: str) -> Op:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM keys WHERE digest = ?", (digest,)).rowcount == 1

        return op

    def _replace(self, old: str, record: KeyRecord) -> Op:
        text = dump_metadata(record.metadata)
        url = redact_url(self._store.url)

        def op(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM keys WHERE digest = ?", (old,)).fetchone() is None:
                return False
            if (
                record.digest != old
                and conn.execute("SELECT 1 FROM keys WHERE digest = ?", (record.digest,)).fetchone()
            ):
                raise StoreError(
                    f"{url}: cannot replace {old[:12]}...: the new digest is already stored"
                )
            conn.execute("DELETE FROM keys WHERE digest = ?", (old,))
            conn.execute(
                "INSERT INTO keys VALUES (?, ?, ?, ?)",
                (record.digest, record.hint, text, float(record.created)),
            )
            return True

        return op

    @staticmethod
    def _records(conn: sqlite3.Connection) -> list[KeyRecord]:
        return [_record(row) for row in conn.execute(f"{SELECT_KEY} ORDER BY created, rowid")]

    def get(self, digest: str) -> KeyRecord | None:
        result: KeyRecord | None = self._store.call(self._get(digest), write=False)
        return result

    def add(self, record: KeyRecord) -> bool:
        return bool(self._store.call(self._add(record), write=True))

    def set_metadata(self, digest: str, metadata: Mapping[str, Any]) -> bool:
        return bool(self._store.call(self._set_metadata(digest, metadata), write=True))

    def delete(self, digest: str) -> bool:
        return bool(self._store.call(self._delete(digest), write=True))

    def replace(self, old: str, record: KeyRecord) -> bool:
        return bool(self._store.call(self._replace(old, record), write=True))

    def records(self) -> list[KeyRecord]:
        return self._store.call(self._records, write=False)

    async def aget(self, digest: str) -> KeyRecord | None:
        result: KeyRecord | None = await self._store.acall(self._get(digest), write=False)
        return result

    async def aadd(self, record: KeyRecord) -> bool:
        return bool(await self._store.acall(self._add(record), write=True))

    async def aset_metadata(self, digest: str, metadata: Mapping[str, Any]) -> bool:
        return bool(await self._store.acall(self._set_metadata(digest, metadata), write=True))

    async def adelete(self, digest: str) -> bool:
        return bool(await self._store.acall(self._delete(digest), write=True))

    async def areplace(self, old: str, record: KeyRecord) -> bool:
        return bool(await self._store.acall(self._replace(old, record), write=True))

    async def arecords(self) -> list[KeyRecord]:
        return await self._store.acall(self._records, write=False)


LIVE_SUM: Final = (
    "SELECT COALESCE(SUM(s.count), 0) FROM sessions AS s JOIN workers AS w ON s.worker = w.worker "
    "WHERE s.address = ? AND w.expires > ?"
)


def _purge_workers(conn: sqlite3.Connection, now: float) -> None:
    dead = [
        row[0]
        for row in conn.execute(
            "SELECT worker FROM workers WHERE expires <= ? LIMIT ?", (now, PURGE_PER_CALL)
        )
    ]
    for worker in dead:
        conn.execute("DELETE FROM sessions WHERE worker = ?", (worker,))
        conn.execute("DELETE FROM workers WHERE worker = ?", (worker,))


class SQLiteSessionRegistry(SessionRegistry):
    """Sessions in the ``sessions`` table (worker, address, count); liveness in ``workers``.

    Each worker also keeps its own counts: a heartbeat that finds its worker
    row purged (it missed ``ttl``) writes them back.

    Raises:
        StoreError: also when a method other than :meth:`astart` is called before it.
        ValueError: ``ttl`` <= 0.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._worker: str | None = None
        self._ttl = 0.0
        self._mine: dict[str, int] = {}

    def _me(self) -> str:
        if self._worker is None:
            raise StoreError(
                f"{redact_url(self._store.url)}: the session registry is used before astart()"
            )
        return self._worker

    async def astart(self, worker: str, ttl: float) -> None:
        ttl = check_ttl(ttl)

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            _purge_workers(conn, now)
            conn.execute("DELETE FROM sessions WHERE worker = ?", (worker,))
            conn.execute("INSERT OR REPLACE INTO workers VALUES (?, ?)", (worker, now + ttl))

        await self._store.acall(op, write=True)
        self._worker, self._ttl, self._mine = worker, ttl, {}

    async def aheartbeat(self) -> None:
        worker, ttl, mine = self._me(), self._ttl, dict(self._mine)

        def op(conn: sqlite3.Connection) -> None:
            expires = time.time() + ttl
            if conn.execute(
                "UPDATE workers SET expires = ? WHERE worker = ?", (expires, worker)
            ).rowcount:
                return
            conn.execute(
                "INSERT INTO workers VALUES (?, ?)", (worker, expires)
            )  # purged: come back
            conn.execute("DELETE FROM sessions WHERE worker = ?", (worker,))
            conn.executemany(
                "INSERT INTO sessions VALUES (?, ?, ?)", [(worker, a, n) for a, n in mine.items()]
            )

        await self._store.acall(op, write=True)

    async def aacquire(self, address: str, limit: int) -> bool:
        worker = self._me()

        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            _purge_workers(conn, now)
            if conn.execute(LIVE_SUM, (address, now)).fetchone()[0] >= limit:
                return False
            conn.execute(
                "INSERT INTO sessions VALUES (?, ?, 1) "
                "ON CONFLICT (worker, address) DO UPDATE SET count = count + 1",
                (worker, address),
            )
            return True

        counted = bool(await self._store.acall(op, write=True))
        if counted:
            self._mine[address] = self._mine.get(address, 0) + 1
        return counted

    async def arelease(self, address: str) -> None:
        worker = self._me()
        if address in self._mine:
            self._mine[address] -= 1
            if self._mine[address] <= 0:
                del self._mine[address]

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE sessions SET count = count - 1 WHERE worker = ? AND address = ?",
                (worker, address),
            )
            conn.execute(
                "DELETE FROM sessions WHERE worker = ? AND address = ? AND count <= 0",
                (worker, address),
            )

        await self._store.acall(op, write=True)

    async def acount(self, address: str) -> int:
        self._me()

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute(LIVE_SUM, (address, time.time())).fetchone()[0])

        return int(await self._store.acall(op, write=False))

    async def astop(self) -> None:
        worker = self._worker
        self._worker, self._mine = None, {}
        if worker is None:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM sessions WHERE worker = ?", (worker,))
            conn.execute("DELETE FROM workers WHERE worker = ?", (worker,))

        await self._store.acall(op, write=True)


class SQLiteRateStore(RateStore):
    """GCRA states in the ``rates`` table (TAT in microseconds of :func:`time.time`).

    Raises:
        ValueError: from :meth:`aconsume`, an ``interval`` <= 0 or a ``burst`` < 1.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    async def aconsume(self, key: str, interval: float, burst: int) -> RateDecision:
        t_us = check_rate_args(interval, burst)

        def op(conn: sqlite3.Connection) -> RateDecision:
            now = time.time_ns() // 1000
            purge = (
                "DELETE FROM rates WHERE key IN (SELECT key FROM rates WHERE expires <= ? LIMIT ?)"
            )
            conn.execute(purge, (now, PURGE_PER_CALL))
            row = conn.execute("SELECT tat FROM rates WHERE key = ?", (key,)).fetchone()
            new_tat, decision = gcra(None if row is None else int(row[0]), now, t_us, burst)
            if new_tat is not None:
                conn.execute(
                    "INSERT INTO rates VALUES (?, ?, ?) ON CONFLICT (key) "
                    "DO UPDATE SET tat = excluded.tat, expires = excluded.expires",
                    (key, new_tat, new_tat),
                )
            return decision

        result: RateDecision = await self._store.acall(op, write=True)
        return result

    async def areset(self, key: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM rates WHERE key = ?", (key,))

        await self._store.acall(op, write=True)
