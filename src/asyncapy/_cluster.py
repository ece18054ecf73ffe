"""A cluster-wide ``session_limit``: this worker's side of the store's session registry.

Theory of operation
-------------------
When ``server.store`` is shared (SQLite, Redis) and ``session_limit`` is set,
each serving worker registers in ``store.sessions`` under a unique id (host,
pid, a random part) and beats every ``session_ttl / 3`` seconds from a loop
task; at shutdown it unregisters, which forgets its sessions at once. A
killed worker stops beating, and the other workers stop counting its
sessions ``session_ttl`` seconds later.

A new connection is first admitted locally (``ServerState.admit``: the fast
path, as with one worker); then the connection reads nothing while
:meth:`ClusterSessions.admit` asks the registry for one more session of its
address (``aacquire``). A yes lets it read; a no answers it
``ERR_SESSION_LIMIT_REACHED`` and closes it; its session is released
(``arelease``) when the connection ends.

**Fail-open.** A registry call that fails (``StoreError``, an ``OSError``)
or takes longer than ``session_ttl / 3`` seconds admits the connection (it
is then not counted in the cluster, and not released), counts
``stats.cluster_errors`` and logs a rate-limited WARNING: a store outage must
not freeze every connection of every worker, and the local ``session_limit``
still holds in each worker. While the registry is down the cluster-wide
limit is at most ``workers * session_limit``. A worker whose registration
failed retries it at each beat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from ._state import ServerState
from .logging import error_logger as logger
from .stores import SessionRegistry, StoreError

__all__ = ["ClusterSessions", "worker_id"]

_FAILURES = (StoreError, OSError, TimeoutError)


def worker_id() -> str:
    """A unique id of this worker: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class ClusterSessions:
    """This worker's registration in a shared :class:`~asyncapy.stores.SessionRegistry`.

    Args:
        registry: the store's session registry.
        state: the serving server's state (settings, counters, rate-limited log).
    """

    def __init__(self, registry: SessionRegistry, state: ServerState) -> None:
        self._registry = registry
        self._state = state
        self._ttl = state.settings.session_ttl
        self._deadline = self._ttl / 3  # every registry call, and the beat's period
        self._limit = state.settings.session_limit
        self._loop = asyncio.get_running_loop()
        self._started = False
        self._beat: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.worker = worker_id()

    async def start(self) -> None:
        """Register this worker (failing open), then beat from a loop task."""
        await self._register()
        self._beat = self._loop.create_task(self._beat_loop())

    async def stop(self) -> None:
        """Stop beating, let the releases under way end, unregister (each bounded)."""
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
            self._beat = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._deadline)
        if self._started:
            await self._call("astop", self._registry.astop)
            self._started = False

    def admit(self, address: str, done: Callable[[bool | None], None]) -> None:
        """Ask the cluster for one more session of ``address``; ``done`` gets the answer.

        ``done(True)``: counted (release it later); ``done(False)``: the cluster
        holds ``session_limit``; ``done(None)``: the registry failed, admitted
        uncounted (fail-open).
        """
        if not self._started:
            done(None)
            return

        def finished(task: asyncio.Task[bool | None]) -> None:
            done(None if task.cancelled() else task.result())

        task = self._spawn(
            self._call("aacquire", lambda: self._registry.aacquire(address, self._limit))
        )
        task.add_done_callback(finished)

    def release(self, address: str) -> None:
        """Count one session of ``address`` fewer in the cluster (in a task)."""
        if self._started:
            self._spawn(self._call("arelease", lambda: self._registry.arelease(address)))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _register(self) -> None:
        try:
            async with asyncio.timeout(self._deadline):
                await self._registry.astart(self.worker, self._ttl)
        except _FAILURES as exc:
            self._failed("astart", exc)
            return
        self._started = True
        logger.info("{Server} Registered as %s in the cluster's session registry", self.worker)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._deadline)
            if not self._started:
                await self._register()
            else:
                await self._call("aheartbeat", self._registry.aheartbeat)

    async def _call(self, what: str, call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """``call()`` within the deadline; None when it fails (counted, logged)."""
        try:
            async with asyncio.timeout(self._deadline):
                return await call()
        except _FAILURES as exc:
            self._failed(what, exc)
            return None

    def _failed(self, what: str, exc: BaseException) -> None:
        self._state.stats.cluster_errors += 1
        self._state.log.log(
            "cluster",
            logging.WARNING,
            "{Server} The session registry failed (%s: %r): connections are admitted on the"
            " local session_limit only until it answers again",
            what,
            exc,
        )
