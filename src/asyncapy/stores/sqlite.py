"""The ``sqlite://`` store: one file, shared by the processes of one host, kept across restarts.

Theory of operation
-------------------
Connections: one per thread (SQLite connections are not shared between
threads), opened lazily, in WAL mode (readers never wait for the writer)
with ``synchronous=NORMAL`` (a committed change survives a process crash; a
power loss may take the last ones) and ``busy_timeout``: a writer waits up
to that long for another process's write lock, then :class:`StoreError`.
Every read-modify-write is one ``BEGIN IMMEDIATE`` transaction (the write
lock is taken before reading, so two processes never both read the old value).

The async methods run on ONE worker thread per store and process (a
``concurrent.futures`` executor, created on first use and created again in a
forked child): the event loop only awaits its future. A cancelled await
does not stop the transaction on the thread; it completes, or not, as a whole.
The blocking methods run on the calling thread and refuse a thread whose
event loop is running.

Clock: :func:`time.time` (shared by the processes of the host). Rate states
and worker liveness are purged opportunistically, at most
``PURGE_PER_CALL`` (16) rows per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Final, TypeVar

from . import Store, StoreError, redact_url
from ._common import refuse_on_loop, sqlite_path
from ._sqlite_parts import PURGE_PER_CALL, SQLiteKeyStore, SQLiteRateStore, SQLiteSessionRegistry

__all__ = ["DEFAULT_BUSY_TIMEOUT", "PURGE_PER_CALL", "SQLiteStore"]

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT: Final = 5.0
"""Seconds a write waits for another connection's lock, by default."""


SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS keys (
    digest TEXT PRIMARY KEY, hint TEXT NOT NULL, metadata TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS keys_created ON keys (created);
CREATE TABLE IF NOT EXISTS workers (worker TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS workers_expires ON workers (expires);
CREATE TABLE IF NOT EXISTS sessions (
    worker TEXT NOT NULL, address TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (worker, address));
CREATE INDEX IF NOT EXISTS sessions_address ON sessions (address);
CREATE TABLE IF NOT EXISTS rates (
    key TEXT PRIMARY KEY, tat INTEGER NOT NULL, expires INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS rates_expires ON rates (expires);
"""


class SQLiteStore(Store):
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db``: a SQLite file (created when absent).

    Args:
        url: the URL.
        busy_timeout: seconds a write waits for the lock of another
            connection (another process, or the blocking methods' thread)
            before :class:`StoreError`; > 0.

    Raises:
        StoreError: a malformed URL; later, from any method, a file that
            cannot be opened, is not a database, or stays locked for longer
            than ``busy_timeout``.
        ValueError: ``busy_timeout`` <= 0.
    """

    def __init__(self, url: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        if not (isinstance(busy_timeout, int | float) and 0 < busy_timeout < 1e6):
            raise ValueError(
                f"busy_timeout must be a positive number of seconds, not {busy_timeout!r}"
            )
        self.url = url
        self.path = sqlite_path(url)
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conns: dict[int, sqlite3.Connection] = {}  # thread id -> its connection (this pid)
        self._worker_ident: int | None = None  # the async worker thread's id
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._abandoned: list[
            object
        ] = []  # a parent's connections, never used nor closed in a child
        self._keys = SQLiteKeyStore(self)
        self._sessions = SQLiteSessionRegistry(self)
        self._rates = SQLiteRateStore(self)
        # Every connection this store opened, with the process that opened it:
        # a store dropped without close() closes them when it is collected
        # (Python 3.13 warns about a connection left to the GC), in that process only.
        self._opened: list[tuple[int, sqlite3.Connection]] = []
        weakref.finalize(self, _close_opened, self._opened)

    @property
    def keys(self) -> SQLiteKeyStore:
        return self._keys

    @property
    def sessions(self) -> SQLiteSessionRegistry:
        return self._sessions

    @property
    def rates(self) -> SQLiteRateStore:
        return self._rates

    def _forked(self) -> None:
        """In a forked child: drop (never use, never close) the parent's connections and thread."""
        with self._lock:
            if self._pid != os.getpid():
                self._abandoned.extend([*self._conns.values(), self._executor])
                self._conns, self._executor, self._worker_ident = {}, None, None
                self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._forked()
        ident = threading.get_ident()
        conn = self._conns.get(ident)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._error("cannot open the database", exc) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(SCHEMA)
        except sqlite3.Error as exc:
            conn.close()
            raise self._error("cannot set the database up", exc) from None
        with self._lock:
            self._conns[ident] = conn
            self._opened.append((os.getpid(), conn))
        return conn

    def _error(self, what: str, exc: BaseException) -> StoreError:
        return StoreError(f"{redact_url(self.url)}: {what}: {exc}")

    def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``fn`` on this thread's connection; a ``write`` in one ``BEGIN IMMEDIATE``.

        Raises:
            StoreError: any SQLite error (the transaction is rolled back).
        """
        conn = self._connection()
        try:
            if not write:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        except sqlite3.OperationalError as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._error(
                f"locked or failed (busy_timeout {self.busy_timeout:.1f} s)", exc
            ) from None
        except sqlite3.Error as exc:
            raise self._error("failed", exc) from None

    def call(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """:meth:`run` for a blocking method: refused on a thread whose event loop runs."""
        refuse_on_loop(self.url)
        return self.run(fn, write=write)

    async def acall(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """:meth:`run` on the store's worker thread, awaited."""
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="asyncapy-sqlite", initializer=self._note_worker
                )
            executor = self._executor
        future = executor.submit(functools.partial(self.run, fn, write=write))
        return await asyncio.wrap_future(future)

    async def aclose(self) -> None:
        """Close the worker thread's connection, stop the thread (both come back when used)."""
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.wrap_future(executor.submit(self._close_this_thread))
        executor.shutdown(wait=False)

    def _note_worker(self) -> None:
        self._worker_ident = threading.get_ident()

    def _close_this_thread(self) -> None:
        with self._lock:
            conn = self._conns.pop(threading.get_ident(), None)
            self._worker_ident = None
            self._opened[:] = [pair for pair in self._opened if pair[1] is not conn]
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close every thread's connection but the async worker's (:meth:`aclose` closes it)."""
        if self._pid != os.getpid():
            self._forked()
        with self._lock:
            doomed = [conn for ident, conn in self._conns.items() if ident != self._worker_ident]
            self._conns = {i: c for i, c in self._conns.items() if i == self._worker_ident}
            self._opened[:] = [pair for pair in self._opened if pair[1] not in doomed]
        for conn in doomed:
            conn.close()


def _close_opened(opened: list[tuple[int, sqlite3.Connection]]) -> None:
    """Close the connections this process opened (a store's finalizer)."""
    pid = os.getpid()
    for owner, conn in opened:
        if owner == pid:
            conn.close()
    opened.clear()
