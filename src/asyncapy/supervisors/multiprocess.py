"""The ``asyncapy run`` parent: binds, spawns, watches and replaces worker processes.

Theory of operation
-------------------
The parent never imports the app. It checks the settings it can see (the
defaults, the INI file, the environment, the command line), binds the
listening sockets, and starts ``workers`` fresh interpreters
(:mod:`asyncapy.supervisors._worker`), each with a pipe back to the parent and
the sockets of its *slot*: in ``shared`` mode every slot has the same sockets;
in ``reuseport`` mode each slot has its own ``SO_REUSEPORT`` sockets, which
the parent keeps open, so connections the kernel queued for a slot wait for
that slot's next worker instead of being reset when a worker goes.

One asyncio loop (no app, no threads but the optional ``/metrics`` server)
runs in the parent. A tick every :data:`TICK` seconds reaps workers that
exited, kills the ones that stayed silent past their deadline, and starts
the restarts that are due. Messages from workers (``boot``, ``ready``,
``beat`` with metrics, ``bye``, ``fatal``) arrive on their pipes.

- A worker that exits unasked is replaced. One that exits before it was
  ready is a *quick failure*: its slot restarts after a backoff (0.25 s,
  doubling, at most 8 s), and after :data:`MAX_QUICK_FAILURES` in a row the
  parent stops and exits 1. A ``fatal`` worker (the app does not load) stops
  the parent at once, exit 1, with that worker's one line.
- SIGTERM/SIGINT: every worker gets SIGTERM and ``graceful_timeout`` seconds,
  then SIGKILL. A second signal forwards SIGTERM again (the workers close
  every connection at once) and leaves them :data:`FORCE_GRACE` seconds; a
  third kills them.
- SIGHUP: a rolling restart, slot by slot: a new worker starts, and only when
  it is ready does the old one get SIGTERM. If the new one fails, the restart
  stops there and the old workers keep serving.
- The parent returns once it has no worker left and none to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from asyncapy import logging as _logging
from asyncapy._listener import listening_sockets
from asyncapy._tls import server_context
from asyncapy.config import Settings
from asyncapy.errors import ConfigError, os_reason
from asyncapy.logging import error_logger as logger
from asyncapy.metrics import Aggregate, MetricsServer, serve_registry

from ._pipe import EXIT_FATAL, PipeError, Reader, WorkerArgs

__all__ = ["FORCE_GRACE", "MAX_QUICK_FAILURES", "TICK", "Supervisor", "WorkerSpec"]

TICK: Final = 0.1
"""Seconds between two checks of the workers."""
MAX_QUICK_FAILURES: Final = 5
"""Workers that exit before they are ready, in a row, before the parent gives up."""
BACKOFF_FIRST: Final = 0.25
BACKOFF_MAX: Final = 8.0
BOOT_TIMEOUT: Final = 60.0
"""Seconds a new worker gets to import the app (its beats start after that)."""
FORCE_GRACE: Final = 5.0
"""Seconds workers get after a second stop signal, before SIGKILL."""


def _cannot(what: str, where: str, exc: OSError) -> int:
    """Log that the supervisor cannot ``what`` ``where`` (one ERROR line); return 1."""
    logger.error("{Supervisor} Cannot %s %s: %s", what, where, os_reason(exc))
    return 1


@dataclass(frozen=True)
class WorkerSpec:
    """What to run and how: the app, and the settings the parent can check.

    Build it with :meth:`build`.
    """

    app: str
    options: dict[str, Any]
    config: str | None
    settings: Settings

    @classmethod
    def build(cls, app: str, options: dict[str, Any], config: str | None) -> WorkerSpec:
        """Check ``app`` and the settings (defaults, ``config``, environment, ``options``).

        Raises:
            ConfigError: one line naming what is wrong.
        """
        module, sep, attribute = app.partition(":")
        if not sep or not module.strip() or not attribute.strip():
            raise ConfigError(f"app {app!r} must be MODULE:ATTRIBUTE, e.g. myapp:server")
        settings = Settings().override(options, config)
        if settings.log_config is not None and not os.path.isfile(settings.log_config):
            raise ConfigError(f"log_config file {settings.log_config!r} does not exist")
        server_context(settings.certfile, settings.keyfile, None)  # TLS files load
        return cls(app, dict(options), config, settings)


@dataclass(eq=False)
class _Process:
    """One worker process, as the parent sees it."""

    id: int
    slot: int
    popen: subprocess.Popen[bytes]
    reader: Reader
    started: float
    last_seen: float
    state: str = "booting"  # booting, ready, stopping
    ready_at: float | None = None
    deadline: float | None = None  # stopping: SIGKILL then
    replacing: bool = False  # started by a rolling restart: no restart of its own
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.popen.pid


class Supervisor:
    """Runs ``spec.settings.workers`` workers of ``spec.app`` until told to stop.

    Args:
        spec: the app and settings (:meth:`WorkerSpec.build`).
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.settings = spec.settings
        self._sockets: list[list[socket.socket]] = []
        self._processes: dict[int, _Process] = {}
        self._slots: dict[int, _Process] = {}
        self._restart_at: dict[int, float] = {}
        self._next_id = 0
        self._quick_failures = 0
        self._stopping = 0  # stop signals received
        self._exit = 0
        self._fatal: str | None = None
        self._rolling: asyncio.Task[None] | None = None
        self._done: asyncio.Event | None = None
        self._metrics_server: MetricsServer | None = None
        self.metrics = Aggregate()
        """The workers' metrics, summed (``--metrics-port`` serves them)."""
        self.port = 0

    # -- the whole run

    def run(self) -> int:
        """Bind, serve with workers until stopped; return the exit status (0 or 1)."""
        settings = self.settings
        _logging.configure_from(settings)
        try:
            self._bind()
        except OSError as exc:
            return _cannot("listen on", f"{settings.addr}:{settings.port}", exc)
        try:
            try:
                self._start_metrics()
            except OSError as exc:
                where = f"{settings.metrics_addr}:{settings.metrics_port}"
                return _cannot("serve metrics on", where, exc)
            return asyncio.run(self._main())
        finally:
            for sockets in self._sockets:
                for sock in sockets:
                    sock.close()
            if self._metrics_server is not None:
                self._metrics_server.close()

    def _bind(self) -> None:
        settings = self.settings
        if settings.socket_mode == "shared" or settings.workers == 1:
            self._sockets = [listening_sockets(settings.addr, settings.port, settings.backlog)]
        else:
            first = listening_sockets(
                settings.addr, settings.port, settings.backlog, reuse_port=True
            )
            self._sockets = [first]
            port = first[0].getsockname()[1]
            for _ in range(1, settings.workers):
                self._sockets.append(
                    listening_sockets(settings.addr, port, settings.backlog, reuse_port=True)
                )
        self.port = self._sockets[0][0].getsockname()[1]

    def _start_metrics(self) -> None:
        settings = self.settings
        if settings.metrics_port is not None:
            self._metrics_server = serve_registry(
                self.metrics.registry, settings.metrics_addr, settings.metrics_port
            )
            logger.info(
                "{Supervisor} Metrics on http://%s:%d/metrics",
                settings.metrics_addr,
                self._metrics_server.port,
            )

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        settings = self.settings
        mode = "shared socket" if len(self._sockets) == 1 else "SO_REUSEPORT"
        logger.info(
            "{Supervisor} Listening on %s:%d with %d worker(s) (%s), supervisor pid %d",
            settings.addr,
            self.port,
            settings.workers,
            mode,
            os.getpid(),
        )
        for slot in range(settings.workers):
            self._spawn(slot)
        ticker = loop.create_task(self._tick_forever())
        try:
            await self._done.wait()
        finally:
            ticker.cancel()
            if self._rolling is not None:
                self._rolling.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for process in list(self._processes.values()):  # never leave one behind
                self._kill(process)
                process.popen.wait()
                self._reap(process)
        if self._fatal is not None:
            return 1
        logger.info("{Supervisor} Stopped")
        return self._exit

    # -- workers

    def _spawn(self, slot: int, *, replacing: bool = False) -> _Process:
        self._next_id += 1
        worker_id = self._next_id
        read_fd, write_fd = os.pipe()
        sockets = self._sockets[slot if len(self._sockets) > 1 else 0]
        options = dict(self.spec.options)
        options.update(addr=self.settings.addr, port=self.port)
        args = WorkerArgs(
            app=self.spec.app,
            worker=worker_id,
            pipe=write_fd,
            sockets=[sock.fileno() for sock in sockets],
            options=options,
            config=self.spec.config,
            interval=min(1.0, self.settings.worker_healthcheck_timeout / 4),
        )
        try:
            popen = subprocess.Popen(
                [sys.executable, "-m", "asyncapy.supervisors._worker", msgspec.json.encode(args)],
                pass_fds=(write_fd, *args.sockets),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(write_fd)
        now = time.monotonic()
        process = _Process(worker_id, slot, popen, Reader(read_fd), now, now, replacing=replacing)
        self._processes[worker_id] = process
        if not replacing:
            self._slots[slot] = process
        asyncio.get_running_loop().add_reader(read_fd, self._on_readable, process)
        logger.info("{Supervisor} Started worker %d (pid %d)", worker_id, popen.pid)
        return process

    def _on_readable(self, process: _Process) -> None:
        try:
            messages = process.reader.read()
        except PipeError as exc:
            logger.error("{Supervisor} worker %d wrote garbage (%s): killing it", process.id, exc)
            self._kill(process)
            return
        for kind, body in messages:
            self._on_message(process, kind, body)
        if process.reader.eof:
            asyncio.get_running_loop().remove_reader(process.reader.fd)

    def _on_message(self, process: _Process, kind: str, body: Any) -> None:
        process.last_seen = time.monotonic()
        if kind in ("beat", "bye") and isinstance(body, dict):
            self.metrics.add(process.id, body.get("metrics") or {})
            self.metrics.set_worker(
                process.id,
                open_connections=int(body.get("open", 0)),
                rss_bytes=int(body.get("rss", 0)),
                cpu_seconds=float(body.get("cpu", 0.0)),
            )
        elif kind == "ready":
            process.ready_at = process.last_seen
            if process.state == "booting":
                process.state = "ready"
            self._quick_failures = 0
            process.ready.set()
            logger.info("{Supervisor} Worker %d (pid %d) is ready", process.id, process.pid)
        elif kind == "fatal" and self._fatal is None:
            self._fatal = str(body)
            logger.error("{Supervisor} %s", body)
            self._stop_all()

    def _kill(self, process: _Process) -> None:
        if process.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it just ended
                process.popen.kill()

    def _terminate(self, process: _Process, grace: float) -> None:
        now = time.monotonic()
        process.state = "stopping"
        deadline = now + grace
        process.deadline = deadline if process.deadline is None else min(process.deadline, deadline)
        if process.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.popen.send_signal(signal.SIGTERM)

    def _reap(self, process: _Process) -> None:
        """Forget a worker that exited: its last messages, metrics, and its pipe."""
        if process.id not in self._processes:
            return
        if not process.reader.eof:
            self._on_readable(process)
        loop = asyncio.get_running_loop()
        loop.remove_reader(process.reader.fd)
        process.reader.close()
        del self._processes[process.id]
        if self._slots.get(process.slot) is process:
            del self._slots[process.slot]
        self.metrics.retire(process.id)
        process.gone.set()

    async def _tick_forever(self) -> None:
        while True:
            self._tick()
            await asyncio.sleep(TICK)

    def _tick(self) -> None:
        now = time.monotonic()
        for process in list(self._processes.values()):
            code = process.popen.poll()
            if code is not None:
                self._on_exit(process, code)
                continue
            if process.state == "stopping":
                assert process.deadline is not None
                if now >= process.deadline:
                    logger.warning(
                        "{Supervisor} Worker %d (pid %d) still running after its grace"
                        " time: killing it",
                        process.id,
                        process.pid,
                    )
                    self._kill(process)
                continue
            limit = self.settings.worker_healthcheck_timeout
            if process.ready_at is None and process.last_seen == process.started:
                limit = max(limit, BOOT_TIMEOUT)
            if now - process.last_seen > limit:
                logger.error(
                    "{Supervisor} Worker %d (pid %d) silent for %.1f s: killing it",
                    process.id,
                    process.pid,
                    now - process.last_seen,
                )
                self._kill(process)
                process.last_seen = now  # once
        for slot, when in list(self._restart_at.items()):
            if now >= when and not self._stopping and self._fatal is None:
                del self._restart_at[slot]
                self._spawn(slot)
        if not self._processes and not (self._restart_at and not self._stopping):
            assert self._done is not None
            self._done.set()

    def _on_exit(self, process: _Process, code: int) -> None:
        self._reap(process)
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if process.state == "stopping" or self._stopping or self._fatal is not None:
            logger.info(
                "{Supervisor} Worker %d (pid %d) stopped (%s)", process.id, process.pid, how
            )
            return
        if code == EXIT_FATAL:
            if self._fatal is None:
                self._fatal = f"worker {process.id} could not load the app"
                logger.error("{Supervisor} %s", self._fatal)
                self._stop_all()
            return
        self.metrics.count_restart()
        if process.replacing:
            logger.error(
                "{Supervisor} Worker %d (pid %d), started by a rolling restart, exited (%s)",
                process.id,
                process.pid,
                how,
            )
            return
        delay = 0.0
        if process.ready_at is None:
            self._quick_failures += 1
            if self._quick_failures >= MAX_QUICK_FAILURES:
                logger.error(
                    "{Supervisor} Workers failed to start %d times in a row (the last exited"
                    " with %s): giving up",
                    self._quick_failures,
                    how,
                )
                self._exit = 1
                self._stop_all()
                return
            delay = min(BACKOFF_FIRST * 2 ** (self._quick_failures - 1), BACKOFF_MAX)
        logger.warning(
            "{Supervisor} Worker %d (pid %d) exited (%s)%s: restarting it in %.2f s",
            process.id,
            process.pid,
            how,
            "" if process.ready_at is not None else " before it was ready",
            delay,
        )
        self._restart_at[process.slot] = time.monotonic() + delay

    # -- signals

    def _stop_all(self, grace: float | None = None) -> None:
        self._restart_at.clear()
        if self._rolling is not None:
            self._rolling.cancel()
        for process in list(self._processes.values()):
            self._terminate(process, self.settings.graceful_timeout if grace is None else grace)

    def _on_stop_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        self._stopping += 1
        if self._stopping == 1:
            logger.info(
                "{Supervisor} %s received: stopping %d worker(s) (graceful_timeout %.0f s)",
                name,
                len(self._processes),
                self.settings.graceful_timeout,
            )
            self._stop_all()
        elif self._stopping == 2:
            logger.warning("{Supervisor} %s again: closing every connection now", name)
            self._stop_all(FORCE_GRACE)
        else:
            logger.warning("{Supervisor} %s a third time: killing the workers", name)
            for process in self._processes.values():
                self._kill(process)

    def _on_reload(self) -> None:
        if self._stopping or self._fatal is not None:
            return
        if self._rolling is not None and not self._rolling.done():
            logger.warning("{Supervisor} SIGHUP: a rolling restart is already under way")
            return
        logger.info("{Supervisor} SIGHUP received: replacing the workers one by one")
        self._rolling = asyncio.get_running_loop().create_task(self._roll())

    async def _roll(self) -> None:
        for slot in range(self.settings.workers):
            old = self._slots.get(slot)
            new = self._spawn(slot, replacing=True)
            ready = asyncio.ensure_future(new.ready.wait())
            gone = asyncio.ensure_future(new.gone.wait())
            try:
                await asyncio.wait(
                    (ready, gone),
                    timeout=max(BOOT_TIMEOUT, self.settings.worker_healthcheck_timeout),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                ready.cancel()
                gone.cancel()
            if not new.ready.is_set() or new.gone.is_set():
                logger.error(
                    "{Supervisor} Rolling restart stopped: the new worker for slot %d did not"
                    " start; the others keep serving",
                    slot,
                )
                self._terminate(new, FORCE_GRACE)
                return
            new.replacing = False
            self._slots[slot] = new
            if old is not None:
                self._terminate(old, self.settings.graceful_timeout)
        logger.info("{Supervisor} Rolling restart done")
