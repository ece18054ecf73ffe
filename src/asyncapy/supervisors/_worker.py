"""One worker process of ``asyncapy run``: ``python -m asyncapy.supervisors._worker SPEC``.

Theory of operation
-------------------
The supervisor starts each worker as a fresh interpreter (never a fork of a
process with a loop or threads) with its pipe's write end and the listening
sockets passed as inherited descriptors, and one JSON argument
(:class:`WorkerArgs`). The worker:

1. ignores SIGINT and SIGHUP (a terminal sends them to the whole process
   group; the parent decides what they mean) and says ``boot``;
2. imports the app, ``module:attribute``, from the current directory; a
   module that calls ``server.start()`` as it loads (the seed's examples do)
   gets a no-op. A failure to import, or an attribute that is not a
   ``Server``, or settings that do not check, is *fatal*: one ``fatal``
   message with one line, exit status 3, and the parent stops everything
   without restarting (it would fail the same way again);
3. completes the server's settings (INI, environment, command line; the
   parent's address) and serves on the inherited sockets, on the loop the
   ``loop`` setting names;
4. says ``ready`` once listening, then ``beat`` at once and every
   ``interval`` seconds from the event loop itself, so a loop that is stuck
   stops the beats and the parent replaces the worker; each beat carries the
   metrics that changed, the open connections, RSS and CPU time;
5. on SIGTERM stops like ``Server.start()`` does (stop accepting, finish the
   requests in flight, ``shutdown()``); a second SIGTERM forces; then says
   ``bye`` with the last metrics and exits 0. A ``setup()`` that raises, or
   anything else that ends ``serve()`` with an exception, exits 1.

If the parent goes away (the pipe breaks) the worker stops gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import logging
import os
import signal
import socket
import sys
from typing import Any

import msgspec

from asyncapy import _signals
from asyncapy import logging as _logging
from asyncapy.config import Settings
from asyncapy.errors import ConfigError
from asyncapy.logging import error_logger as logger
from asyncapy.metrics import process_usage
from asyncapy.server import Server, _new_event_loop

from ._pipe import EXIT_FATAL, WorkerArgs, Writer

__all__ = ["load_app", "main"]


def load_app(app: str) -> Server:
    """Import ``module:attribute`` and return that ``Server``.

    Raises:
        ConfigError: with one line saying what is wrong.
    """
    module_name, sep, attribute = app.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"app {app!r} must be MODULE:ATTRIBUTE, e.g. myapp:server")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")
    Server._supervised = True
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name == module_name or (exc.name and module_name.startswith(exc.name + ".")):
            raise ConfigError(f"cannot import module {module_name!r}: {exc}") from None
        raise ConfigError(
            f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    except Exception as exc:
        where = _where(exc)
        raise ConfigError(
            f"importing {module_name!r} raised {type(exc).__name__}: {exc}{where}"
        ) from None
    try:
        value: object = module
        for part in attribute.split("."):
            value = getattr(value, part)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(value, Server):
        raise ConfigError(f"{app} is a {type(value).__name__}, not an asyncapy.Server")
    return value


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb is not None else ""


class Worker:
    """The worker's side of the supervisor protocol (see the module's docstring)."""

    def __init__(self, args: WorkerArgs, pipe: Writer) -> None:
        self.args = args
        self.pipe = pipe
        self.server: Server | None = None
        self._beat: asyncio.TimerHandle | None = None

    def prepare(self) -> tuple[Server, Settings]:
        """Load the app and complete its settings.

        Raises:
            ConfigError: the app or its settings are wrong (fatal).
        """
        args = self.args
        server = load_app(args.app)
        wanted = server.settings.addr, server.settings.port
        base = dataclasses.replace(server.settings, access_log=True)  # run's default
        settings = base.override(args.options, args.config)
        _logging.configure_from(settings)  # before the first line (serve() keeps it)
        default = Settings()
        if (
            args.worker == 1
            and wanted != (default.addr, default.port)
            and wanted != (settings.addr, settings.port)
        ):
            logger.warning(
                "{Supervisor} %s says addr=%r, port=%d; asyncapy run listens where its"
                " options say (--host/--port, ASYNCAPY_ADDR/PORT, the INI file): %s:%d",
                args.app,
                wanted[0],
                wanted[1],
                settings.addr,
                settings.port,
            )
        return server, settings

    async def serve(self, server: Server) -> None:
        """Serve until stopped, beating meanwhile."""
        self.server = server
        loop = asyncio.get_running_loop()
        self._beat = loop.call_later(self.args.interval, self._on_beat)
        ready = asyncio.ensure_future(self._say_ready(server))
        try:
            await server.serve()
        finally:
            ready.cancel()
            self._beat.cancel()

    async def _say_ready(self, server: Server) -> None:
        await server.wait_started()
        self._send("ready", {"pid": os.getpid()})
        # A first beat at once: the parent has this worker's gauges from now on.
        if self._beat is not None:
            self._beat.cancel()
        self._on_beat()

    def _on_beat(self) -> None:
        server = self.server
        assert server is not None
        self._send("beat", self._report(server))
        self._beat = asyncio.get_running_loop().call_later(self.args.interval, self._on_beat)

    def _report(self, server: Server) -> dict[str, Any]:
        rss, cpu = process_usage()
        return {
            "open": server.metrics.open_connections,
            "rss": rss,
            "cpu": cpu,
            "metrics": server.metrics.delta(),
        }

    def _send(self, kind: str, body: Any) -> None:
        try:
            self.pipe.send(kind, body)
        except OSError:
            if self.server is not None:
                logger.warning("{Supervisor} the supervisor is gone: stopping")
                self.server.stop()

    def finish(self) -> None:
        """Say goodbye with the last metrics."""
        if self.server is not None:
            self._send("bye", self._report(self.server))


def main(argv: list[str] | None = None) -> int:
    """Run one worker; return its exit status (0, 1, or :data:`EXIT_FATAL`)."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    args = msgspec.json.decode(argv[0], type=WorkerArgs)
    pipe = Writer(args.pipe)
    worker = Worker(args, pipe)
    sockets = [socket.socket(fileno=fd) for fd in args.sockets]
    try:
        pipe.send("boot", {"pid": os.getpid()})
        try:
            server, settings = worker.prepare()
            server._supervise(settings, sockets)
            loop_factory = functools.partial(_new_event_loop, settings.loop)
            loop_factory().close()  # a missing uvloop is a ConfigError, now
        except ConfigError as exc:
            pipe.send("fatal", str(exc))
            return EXIT_FATAL
        _signals.router.signals = (signal.SIGTERM,)
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(worker.serve(server))
        except Exception:
            logger.exception("{Supervisor} worker %d (pid %d) failed", args.worker, os.getpid())
            return 1
        worker.finish()
        return 0
    except BrokenPipeError:
        return 1
    finally:
        for sock in sockets:
            sock.close()
        logging.shutdown()
        with contextlib.suppress(OSError):
            pipe.close()


if __name__ == "__main__":
    sys.exit(main())
