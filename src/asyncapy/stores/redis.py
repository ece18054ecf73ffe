"""The ``redis://`` store: shared by every worker of every host that reaches the server.

Theory of operation
-------------------
Connections: the async methods take a connection from a bounded BLOCKING
pool (``redis.asyncio.BlockingConnectionPool``, ``pool_size``
connections; a command that finds none free waits up to ``pool_timeout``
seconds, then :class:`StoreError`). The pool is created on first use in a
process and event loop, and created again when the process (a fork) or the
loop changed: a connection is never used by two processes or two loops.

A command is sent and its reply read here, not through ``redis.asyncio.Redis``,
so that one rule holds without exception: a command that does not complete
(cancelled by its caller, timed out after ``command_timeout`` seconds, a
broken connection) DROPS its connection before it goes back to the pool. A
reply still on its way can then never be read as the reply of the next
command. A Redis error reply (the connection is fine) keeps it.

The blocking key methods use a separate synchronous ``redis.Redis``
client and pool (same options; redis-py re-creates it after a fork); they
refuse to run on a thread whose event loop is running.

Changes are atomic: each is one command or one Lua script (``EVALSHA``, then
``EVAL`` if the server does not know it yet), and scripts that need the time
read the server's ``TIME``, so the workers' clocks never matter. Scripts
name keys they compute from the ``prefix``: this store needs one Redis (with
replicas if wanted), not a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from typing import Any, Final

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry

from . import Store, StoreError, redact_url
from ._common import refuse_on_loop
from ._redis_parts import RedisKeyStore, RedisRateStore, RedisSessionRegistry

__all__ = ["DEFAULT_COMMAND_TIMEOUT", "DEFAULT_POOL_SIZE", "DEFAULT_POOL_TIMEOUT", "RedisStore"]

DEFAULT_POOL_SIZE: Final = 10
"""Connections per process and event loop, by default."""

DEFAULT_POOL_TIMEOUT: Final = 2.0
"""Seconds a command waits for a free connection, by default."""

DEFAULT_COMMAND_TIMEOUT: Final = 2.0
"""Seconds to connect, and for a command's reply, by default."""


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


class RedisStore(Store):
    """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS).

    Args:
        url: the URL (redis-py's query options, such as ``ssl_ca_certs``, are accepted).
        prefix: the start of every Redis key this store uses.
        pool_size: connections per process and event loop (and for the blocking methods), >= 1.
        pool_timeout: seconds a command waits for a free connection, > 0.
        command_timeout: seconds to connect, and to wait for a command's reply, > 0.

    Raises:
        ValueError: a bad option value.
        StoreError: (from any method) the server is unreachable, slow past
            ``command_timeout``, no connection was free within
            ``pool_timeout``, or it answered an error.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "asyncapy:",
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, not {pool_size!r}")
        for name, value in (("pool_timeout", pool_timeout), ("command_timeout", command_timeout)):
            if not (isinstance(value, int | float) and 0 < value < 1e6):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a str, not {type(prefix).__name__}")
        self.url = url
        self.prefix = prefix
        self.pool_size = pool_size
        self.pool_timeout = float(pool_timeout)
        self.command_timeout = float(command_timeout)
        self._pool: redis.asyncio.BlockingConnectionPool | None = None
        self._pool_owner: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._sync: redis.Redis | None = None
        self._keys = RedisKeyStore(self)
        self._sessions = RedisSessionRegistry(self)
        self._rates = RedisRateStore(self)

    @property
    def keys(self) -> RedisKeyStore:
        return self._keys

    @property
    def sessions(self) -> RedisSessionRegistry:
        return self._sessions

    @property
    def rates(self) -> RedisRateStore:
        return self._rates

    def _options(self, retry: Any) -> dict[str, Any]:
        return {
            "max_connections": self.pool_size,
            "timeout": self.pool_timeout,
            "socket_timeout": self.command_timeout,
            "socket_connect_timeout": self.command_timeout,
            "retry": retry,  # Retry(NoBackoff(), 0): a failure is reported, never repeated
        }

    def _error(self, exc: BaseException) -> StoreError:
        return StoreError(f"{redact_url(self.url)}: {type(exc).__name__}: {exc}")

    def _async_pool(self) -> redis.asyncio.BlockingConnectionPool:
        """This process's and loop's pool, created when there is none."""
        owner = (os.getpid(), asyncio.get_running_loop())
        if self._pool is None or self._pool_owner != owner:
            if self._pool is not None:
                _abandon(self._pool)
            self._pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url, **self._options(AsyncRetry(NoBackoff(), 0))
            )
            self._pool_owner = owner
        return self._pool

    async def execute(self, *args: Any) -> Any:
        """One command on a pooled connection; the connection is dropped unless it completed.

        Raises:
            StoreError: no connection within ``pool_timeout``, unreachable,
                timed out, or an error reply.
        """
        pool = self._async_pool()
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (RedisError, OSError) as exc:
            raise self._error(exc) from None
        try:
            await conn.send_command(*args)
            reply = await conn.read_response()
        except ResponseError as exc:
            await pool.release(conn)  # an error reply: the connection is in step
            if isinstance(exc, NoScriptError):
                raise
            raise self._error(exc) from None
        except BaseException as exc:
            await conn.disconnect(nowait=True)  # a reply may still come: never reuse it
            await pool.release(conn)
            if isinstance(exc, RedisError | OSError):
                raise self._error(exc) from None
            raise
        await pool.release(conn)
        return reply

    async def script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script (EVALSHA, then EVAL when the server lacks it)."""
        try:
            return await self.execute("EVALSHA", _sha(script), len(keys), *keys, *args)
        except NoScriptError:
            return await self.execute("EVAL", script, len(keys), *keys, *args)

    def sync_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """:meth:`script` on the blocking client; refused on a thread whose loop runs."""
        try:
            return self.sync_execute("EVALSHA", _sha(script), len(keys), *keys, *args)
        except NoScriptError:
            return self.sync_execute("EVAL", script, len(keys), *keys, *args)

    def sync_execute(self, *args: Any) -> Any:
        """One command on the blocking client; refused on a thread whose loop runs.

        Raises:
            StoreError: as :meth:`execute` (NoScriptError passes).
        """
        client = self._sync_client()
        try:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]
        except NoScriptError:
            raise
        except (RedisError, OSError) as exc:
            raise self._error(exc) from None

    def _sync_client(self) -> redis.Redis:
        """The blocking client (created on first use)."""
        refuse_on_loop(self.url)
        if self._sync is None:
            pool = redis.BlockingConnectionPool.from_url(
                self.url, **self._options(Retry(NoBackoff(), 0))
            )
            self._sync = redis.Redis(connection_pool=pool)
        return self._sync

    async def aclose(self) -> None:
        """Close this process's and loop's async pool; the next command opens another."""
        pool, owner = self._pool, self._pool_owner
        self._pool = self._pool_owner = None
        if pool is None:
            return
        if owner == (os.getpid(), asyncio.get_running_loop()):
            await pool.disconnect()
        else:
            _abandon(pool)

    def close(self) -> None:
        """Close the blocking client's connections."""
        client, self._sync = self._sync, None
        if client is not None:
            client.close()
            client.connection_pool.disconnect()


def _abandon(pool: redis.asyncio.BlockingConnectionPool) -> None:
    """Forget a pool of another process or loop: its connections are closed if that loop allows."""
    for conn in [*pool._available_connections, *pool._in_use_connections]:
        with contextlib.suppress(RuntimeError, OSError):  # that loop is closed, with its transports
            conn._close()  # type: ignore[no-untyped-call]
        conn._writer = conn._reader = None
