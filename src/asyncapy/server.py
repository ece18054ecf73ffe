"""The AsyncAPY server: the seed's API on asyncio (and uvloop when installed)."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, ParamSpec, Protocol, TypeVar, cast

from . import logging as _logging
from ._cluster import ClusterSessions
from ._connection import Connection
from ._listener import TLSListener, listening_sockets
from ._signals import router as _signals
from ._state import ServerState, Stats
from ._tls import server_context
from .config import Settings
from .core import Handler, HandlerFunction, Session
from .dispatch import Dispatcher
from .errors import ConfigError, os_reason
from .filters import Filter
from .logging import error_logger as logger
from .metrics import Metrics, MetricsServer, serve_registry
from .protocol import ByteOrder
from .stores import DEFAULT_STORE, Store
from .stores._lazy import LazyStore

__all__ = ["Server", "Stats"]

_DEFAULTS = Settings()

F = TypeVar("F", bound=HandlerFunction)
P = ParamSpec("P")
T = TypeVar("T")


class _Listener(Protocol):
    """What a server listens with: an ``asyncio.Server``, or a ``TLSListener``."""

    @property
    def sockets(self) -> Sequence[Any]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


def _new_event_loop(kind: str = "auto") -> asyncio.AbstractEventLoop:
    """The event loop the ``loop`` setting names: ``auto`` is uvloop's when it imports.

    Raises:
        ConfigError: for ``loop="uvloop"`` when uvloop is not installed.
    """
    if kind == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        if kind == "uvloop":
            raise ConfigError("loop = uvloop, but uvloop is not installed") from None
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _Listeners:
    """Several ``asyncio.Server`` (one per inherited socket) as one listener."""

    def __init__(self, servers: list[asyncio.Server]) -> None:
        self._servers = servers

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(sock for server in self._servers for sock in server.sockets)

    def close(self) -> None:
        for server in self._servers:
            server.close()

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()


class Server:
    """An AsyncAProto server.

    Every argument is also a key of the ``config=`` INI file's ``[AsyncAPY]``
    section and an ``ASYNCAPY_<KEY>`` environment variable; the file overrides
    the arguments and the environment overrides both (see ``docs/configuration.md``).

    Args:
        addr: address to listen on.
        port: port to listen on (0 picks a free one; see :attr:`port`).
        buf: the seed's "TCP buffer" size; accepted and checked, but asyncio
            transports read whatever is available, so it has no effect.
        logging_level: level of the ``asyncapy`` logger (a number or a name).
        console_format: log line format, used when asyncapy installs its own
            log handler (only if logging is not configured yet).
        datefmt: date format of that handler.
        timeout: seconds a connection may go without completing a frame
            (counted from connect, or from the end of the previous frame or of
            its reply) before ``ERR_TIMED_OUT`` closes it.
        header_size: bytes of the Content-Length header, 1 to 8.
        byteorder: ``"big"`` or ``"little"``.
        config: path of an INI file with an ``[AsyncAPY]`` section.
        cfg_parser: the ``configparser.ConfigParser`` to read it with.
        session_limit: open sessions allowed per peer IP address (default
            256; the seed's default was 0, no limit); one more is answered
            ``ERR_SESSION_LIMIT_REACHED`` and closed.
        max_packet_size: largest Content-Length accepted (default 1 MiB); a
            larger one is answered ``ERR_PACKET_TOO_LARGE`` and closed.
        max_connections: open connections allowed (0: no limit). When full, a
            newcomer from an address holding 2+ fewer sessions than the
            largest address takes the place of that address's longest-idle
            session; otherwise it is answered ``ERR_SERVER_BUSY`` and closed.
        max_pending: frames a connection may have received (and delimited)
            ahead of the one being handled; at this many the server stops
            reading from it. Waiting frames are not decoded yet.
        max_frames_per_read: frames one connection may have handled before
            the other connections get their turn.
        max_buffered_bytes: server-wide budget of input bytes held by
            connections (incomplete frames, frames waiting, input not read
            yet); past it, the connection holding the most is answered
            ``ERR_SERVER_BUSY`` and closed (0: no budget).
        write_buffer_size: bytes of unsent replies at which the server stops
            reading from (and handling) a connection until the peer catches
            up; a peer that reads nothing for ``timeout`` seconds is reset.
        tls_handshake_timeout: seconds from accept to the end of a TLS
            handshake; the connection counts toward the limits meanwhile.
        close_timeout: seconds a closing connection may take to deliver its
            last replies (and read the peer's FIN) before it is reset.
        shutdown_timeout: seconds running handlers get to finish at shutdown.
        backlog: the listening socket's accept queue.
        log_rate_limit: log lines per second for each kind of rejection
            (refused connections, rejected frames, timeouts, TLS mismatches);
            the rest are counted and summarised (0: no limit).
        certfile: PEM certificate chain; serves TLS when set.
        keyfile: PEM private key (when not inside ``certfile``).
        ssl_context: a ready ``ssl.SSLContext``, instead of certfile/keyfile.
        encoding: encoding of error replies sent before a session has one.
        access_log: log one INFO record per decoded packet on
            ``asyncapy.access`` (off by default in the library; see
            ``docs/metrics-and-logs.md``).
        log_format: ``"text"`` or ``"json"`` (one JSON object per line): the
            format of the handler asyncapy installs when logging is not set up.
        log_config: a logging configuration file applied when the server
            starts: ``.json`` for ``logging.config.dictConfig``, INI otherwise
            (``logging.config.fileConfig``); ``serve()`` raises ``ConfigError``
            when it cannot be applied.
        loop: the event loop of :meth:`start`: ``"auto"`` (uvloop when it
            imports), ``"uvloop"`` or ``"asyncio"``.
        metrics_port: serve ``server.metrics`` at
            ``http://metrics_addr:metrics_port/metrics`` while serving (0: a
            free port, logged); None (the default): no endpoint. Under
            ``asyncapy run`` the supervisor serves the workers' sum instead.
            A port that cannot be listened on ends ``serve()`` with the
            ``OSError`` (logged first), like the server's own address.
        metrics_addr: the address of ``/metrics`` (``127.0.0.1``).
        store: the URL of the store that holds what workers share (API keys,
            cluster sessions, rate limits): ``memory://`` (this process only),
            ``sqlite:///path.db`` or ``redis://host:port/db``; see
            :attr:`store`. A shared store makes ``session_limit`` hold across
            every worker that uses it.
        session_ttl: seconds after which the sessions of a worker that stopped
            sending heartbeats (killed) no longer count in a shared store; a
            worker beats every ``session_ttl / 3`` seconds.
        proxy_protocol: read a PROXY protocol header (version 1 or 2) at the
            start of every connection, and use the client address it
            carries; a connection from a source outside ``trusted_proxies``
            is closed at once.
        trusted_proxies: the addresses or CIDR networks of the load
            balancers allowed to send PROXY headers (required with
            ``proxy_protocol``); a sequence, or one comma-separated string.
        proxy_header_timeout: seconds a connection has to send its whole
            PROXY header before it is closed.
        max_connection_age: close a connection, gracefully, after about this
            many seconds (None, the default: never), so that load balancers
            can spread long-lived clients again; see ``docs/protocol.md``.
        max_connection_age_jitter: the age varies by this fraction, plus or
            minus (0.1: from 90 % to 110 %), so that connections opened
            together do not all close together; from 0 to below 1.
        max_connection_age_grace: seconds an aged connection's requests in
            flight get to finish before it is reset; None (the default):
            ``shutdown_timeout``.

    Raises:
        ConfigError: (a ``ValueError``) for an unknown key, a value out of
            range, an unreadable config file, or contradictory TLS arguments.
    """

    _supervised: ClassVar[bool] = False
    """True in an ``asyncapy run`` worker: ``start()`` then returns at once."""

    def __init__(
        self,
        addr: str = _DEFAULTS.addr,
        port: int = _DEFAULTS.port,
        buf: int = _DEFAULTS.buf,
        logging_level: int | str = _DEFAULTS.logging_level,
        console_format: str = _DEFAULTS.console_format,
        datefmt: str = _DEFAULTS.datefmt,
        timeout: float = _DEFAULTS.timeout,
        header_size: int = _DEFAULTS.header_size,
        byteorder: str = _DEFAULTS.byteorder,
        config: str | os.PathLike[str] | None = None,
        cfg_parser: configparser.ConfigParser | None = None,
        session_limit: int = _DEFAULTS.session_limit,
        *,
        max_packet_size: int = _DEFAULTS.max_packet_size,
        max_connections: int = _DEFAULTS.max_connections,
        max_pending: int = _DEFAULTS.max_pending,
        max_frames_per_read: int = _DEFAULTS.max_frames_per_read,
        max_buffered_bytes: int = _DEFAULTS.max_buffered_bytes,
        write_buffer_size: int = _DEFAULTS.write_buffer_size,
        tls_handshake_timeout: float = _DEFAULTS.tls_handshake_timeout,
        close_timeout: float = _DEFAULTS.close_timeout,
        shutdown_timeout: float = _DEFAULTS.shutdown_timeout,
        backlog: int = _DEFAULTS.backlog,
        log_rate_limit: int = _DEFAULTS.log_rate_limit,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        encoding: str = _DEFAULTS.encoding,
        access_log: bool = _DEFAULTS.access_log,
        log_format: str = _DEFAULTS.log_format,
        log_config: str | os.PathLike[str] | None = None,
        loop: str = _DEFAULTS.loop,
        metrics_port: int | None = None,
        metrics_addr: str = _DEFAULTS.metrics_addr,
        store: str = _DEFAULTS.store,
        session_ttl: float = _DEFAULTS.session_ttl,
        proxy_protocol: bool = _DEFAULTS.proxy_protocol,
        trusted_proxies: Sequence[str] | str = _DEFAULTS.trusted_proxies,
        proxy_header_timeout: float = _DEFAULTS.proxy_header_timeout,
        max_connection_age: float | None = _DEFAULTS.max_connection_age,
        max_connection_age_jitter: float = _DEFAULTS.max_connection_age_jitter,
        max_connection_age_grace: float | None = _DEFAULTS.max_connection_age_grace,
    ) -> None:
        arguments = {
            "addr": addr,
            "port": port,
            "buf": buf,
            "logging_level": logging_level,
            "console_format": console_format,
            "datefmt": datefmt,
            "timeout": timeout,
            "header_size": header_size,
            "byteorder": byteorder,
            "session_limit": session_limit,
            "max_packet_size": max_packet_size,
            "max_connections": max_connections,
            "max_pending": max_pending,
            "max_frames_per_read": max_frames_per_read,
            "max_buffered_bytes": max_buffered_bytes,
            "write_buffer_size": write_buffer_size,
            "tls_handshake_timeout": tls_handshake_timeout,
            "close_timeout": close_timeout,
            "shutdown_timeout": shutdown_timeout,
            "backlog": backlog,
            "log_rate_limit": log_rate_limit,
            "certfile": certfile,
            "keyfile": keyfile,
            "encoding": encoding,
            "access_log": access_log,
            "log_format": log_format,
            "log_config": log_config,
            "loop": loop,
            "metrics_port": metrics_port,
            "metrics_addr": metrics_addr,
            "store": store,
            "session_ttl": session_ttl,
            "proxy_protocol": proxy_protocol,
            "trusted_proxies": trusted_proxies,
            "proxy_header_timeout": proxy_header_timeout,
            "max_connection_age": max_connection_age,
            "max_connection_age_jitter": max_connection_age_jitter,
            "max_connection_age_grace": max_connection_age_grace,
        }
        self.settings = Settings.load(arguments, config, cfg_parser)
        self._ssl_context = server_context(
            self.settings.certfile, self.settings.keyfile, ssl_context
        )
        self._dispatcher = Dispatcher()
        self._state: ServerState | None = None
        self._server: _Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._started = asyncio.Event()
        self._force = False
        self._lock = threading.Lock()
        self._stop_pending = False
        self._executor: ThreadPoolExecutor | None = None
        self._listen_error: OSError | None = None
        self._sockets: list[socket.socket] = []  # bound by the `asyncapy run` parent
        self._store: Store | None = None
        self.stats = Stats()
        """Counters: sessions opened, connections refused, rejected frames,
        timeouts, TLS mismatches (see :class:`Stats`)."""
        self.metrics = Metrics(self.stats, self._connections)
        """The Prometheus metrics of this server (``metrics.registry``; see
        ``docs/metrics-and-logs.md``)."""

    # -- the seed's attributes, read from the settings

    @property
    def addr(self) -> str:
        return self.settings.addr

    @property
    def port(self) -> int:
        """The port listened on: the real one once serving (also with ``port=0``)."""
        if self._server is not None:
            for sock in self._server.sockets:
                return int(sock.getsockname()[1])
        return self.settings.port

    @property
    def timeout(self) -> float:
        return self.settings.timeout

    @property
    def header_size(self) -> int:
        return self.settings.header_size

    @property
    def byteorder(self) -> ByteOrder:
        return self.settings.byteorder

    @property
    def session_limit(self) -> int:
        return self.settings.session_limit

    @property
    def tls(self) -> bool:
        """True when the server speaks TLS."""
        return self._ssl_context is not None

    @property
    def store(self) -> Store:
        """The :class:`~asyncapy.stores.Store` that the ``store`` setting names.

        A proxy that opens the store the setting names when it is first used,
        in the process that uses it (an ``asyncapy run`` worker opens its
        own): an app may pass it to ``APIKeyFactory(store=server.store)`` or
        ``Filters.RateLimit(store=server.store)`` as its module is imported,
        before ``asyncapy run`` applies ``--store``, the INI file or
        ``ASYNCAPY_STORE``. Its async connections are closed when
        :meth:`serve` ends.

        Raises:
            StoreError: on first use, for a URL the stores do not accept, or a
                Redis URL without the ``redis`` package.
        """
        if self._store is None:
            self._store = LazyStore(lambda: self.settings.store)
        return self._store

    # -- handlers

    def register_handler(self, handler: HandlerFunction, *filters: Filter, group: int = 0) -> None:
        """Register ``handler`` (``async def f(client, packet)``) behind ``filters``.

        Args:
            handler: the coroutine function to call.
            *filters: filters that must all pass.
            group: the group number; lower groups run first (default 0).

        Raises:
            TypeError: when ``handler`` is not an async function taking
                ``(client, packet)``, a filter is not a ``Filter``, or ``group``
                is not an integer.
        """
        self._dispatcher.add(Handler(handler, filters), group)

    def add_handler(self, *filters: Filter, group: int = 0) -> Callable[[F], F]:
        """Decorator form of :meth:`register_handler`; returns the function unchanged.

        Raises:
            TypeError: as :meth:`register_handler` (at decoration time).
        """
        for item in filters:
            if not isinstance(item, Filter):
                hint = " (write @server.add_handler(), with parentheses)" if callable(item) else ""
                raise TypeError(f"filters must be Filter objects, not {type(item).__name__}{hint}")

        def decorator(function: F) -> F:
            self.register_handler(function, *filters, group=group)
            return function

        return decorator

    @property
    def handlers(self) -> Mapping[int, tuple[Handler, ...]]:
        """The registered handlers by group, in dispatch order."""
        return self._dispatcher.groups

    # -- lifecycle

    def setup(self) -> Awaitable[None] | None:
        """Called before the server starts listening; override it (``def`` or ``async def``)."""
        return None

    def shutdown(self) -> Awaitable[None] | None:
        """Called after the server has stopped, on every stop path; override it.

        Runs after every connection is closed, whether the stop came from
        Ctrl+C, SIGTERM, :meth:`stop` or a failure to listen.
        """
        return None

    def start(self) -> None:
        """Serve until stopped (Ctrl+C, SIGTERM or :meth:`stop`), then return.

        Uses uvloop when it is installed. A second Ctrl+C skips the grace period.

        Raises:
            SystemExit: with status 1 when the address cannot be listened on
                (a port in use, say), after one ERROR line in the log that
                names the address; no traceback.
        """
        if self._supervised:
            # `asyncapy run` imports the app, and a module written for
            # `python app.py` (as the seed's are) calls start() as it loads:
            # the worker serves the server itself once the import is done.
            logger.debug("{Server} start() ignored: asyncapy run serves this server")
            return
        loop = functools.partial(_new_event_loop, self.settings.loop)
        try:
            with asyncio.Runner(loop_factory=loop) as runner:
                runner.run(self.serve())
        except OSError as exc:
            if exc is not self._listen_error:
                raise
            raise SystemExit(1) from None

    async def serve(self) -> None:
        """Serve on the running event loop until :meth:`stop` is called.

        ``setup()`` is awaited first and ``shutdown()`` last, whatever happens
        in between. On stop: accept no more, let handlers finish for up to
        ``shutdown_timeout`` seconds, then close what remains.

        Raises:
            RuntimeError: when this server is already serving.
            ConfigError: when the ``log_config`` file cannot be applied
                (before anything else is done).
            OSError: when the address cannot be listened on (logged first as
                one ERROR line naming the address).
        """
        if self._stop_event is not None:
            raise RuntimeError("this server is already serving")
        loop = asyncio.get_running_loop()
        settings = self.settings
        _logging.configure_from(settings)
        with self._lock:
            self._loop = loop
            self._stop_event = asyncio.Event()
            if self._stop_pending:
                self._stop_pending = False
                self._stop_event.set()
        self._force = False
        self.metrics.attach(loop)
        state = self._new_state()
        self._state = state
        _signals.add(loop, self._on_signal)
        try:
            await self._call_hook(self.setup)
            await self._join_cluster(state)
            self._listen_error = None
            metrics_http: MetricsServer | None = None
            try:
                if self._stop_event.is_set():
                    return
                try:
                    self._server = await self._listen(state)
                except OSError as exc:
                    self._cannot("listen on", (settings.addr, settings.port), exc)
                    raise
                logger.info(
                    "{Server} Serving on %s (%s%s)",
                    ", ".join(self._describe(sock.getsockname()) for sock in self._server.sockets),
                    "TLS, " if self._ssl_context else "",
                    type(loop).__module__.split(".")[0],
                )
                metrics_http = self._serve_metrics()
                self._started.set()
                await self._stop_event.wait()
            finally:
                if metrics_http is not None:
                    await asyncio.to_thread(metrics_http.close)
                await self._close_gracefully(state)
                if state.cluster is not None:
                    await state.cluster.stop()
                await self._call_hook(self.shutdown)
                if self._store is not None:
                    await self._store.aclose()
                if self._listen_error is None:  # it never started: the ERROR line said why
                    logger.info("{Server} Stopped")
        finally:
            _signals.discard(loop, self._on_signal)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            self._server = None
            self._state = None
            with self._lock:
                self._stop_event = None
                self._loop = None
            self._started = asyncio.Event()  # a later serve() may run on another loop

    async def _join_cluster(self, state: ServerState) -> None:
        """With a shared store and a ``session_limit``: register in the cluster."""
        if not self.settings.session_limit or self.settings.store == DEFAULT_STORE:
            return
        store = self.store
        if store.shared:
            state.cluster = ClusterSessions(store.sessions, state)
            await state.cluster.start()

    def _serve_metrics(self) -> MetricsServer | None:
        """Serve ``/metrics`` when ``metrics_port`` is set (not in a worker: its parent does).

        Raises:
            OSError: when that address cannot be listened on (logged first).
        """
        settings = self.settings
        if settings.metrics_port is None or self._supervised:
            return None
        addr, port = settings.metrics_addr, settings.metrics_port
        try:
            http = serve_registry(self.metrics.registry, addr, port)
        except OSError as exc:
            self._cannot("serve metrics on", (addr, port), exc)  # start() exits 1, as for its own
            raise
        logger.info(
            "{Server} Metrics on http://%s/metrics",
            self._describe((addr, http.port)),
        )
        return http

    def _cannot(self, what: str, address: tuple[str, int], exc: OSError) -> None:
        """Log the one ERROR line of an address that cannot be listened on; remember why."""
        self._listen_error = exc
        logger.error("{Server} Cannot %s %s: %s", what, self._describe(address), os_reason(exc))

    def stop(self, *, force: bool = False) -> None:
        """Ask the server to stop; safe from any thread, and idempotent.

        A stop asked for while the server is not serving (for example just
        after ``Thread(target=server.start).start()``) is remembered: the next
        :meth:`serve` runs ``setup()`` and ``shutdown()`` and returns at once.

        Args:
            force: skip the grace period: close every connection at once.
        """
        with self._lock:
            loop, event = self._loop, self._stop_event
            if loop is None or event is None or loop.is_closed():
                self._stop_pending = True
                return

        def _stop() -> None:
            self._force = self._force or force
            if force and self._state is not None:
                for conn in list(self._state.connections):
                    conn.abort()
            event.set()

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            _stop()
        else:
            loop.call_soon_threadsafe(_stop)

    async def wait_started(self) -> None:
        """Wait until the server listens (for tests and embedding).

        Raises:
            Nothing; it waits until serve() has started listening.
        """
        await self._started.wait()

    def _connections(self) -> Collection[Connection]:
        state = self._state
        return () if state is None else state.connections

    @property
    def sessions(self) -> list[Session]:
        """The open sessions."""
        state = self._state
        return [] if state is None else [conn.client.session for conn in state.connections]

    async def run_sync_task(
        self,
        sync_fn: Callable[..., T],
        *args: Any,
        cancellable: bool = False,
        limiter: AbstractAsyncContextManager[object] | None = None,
    ) -> T:
        """Run a blocking ``sync_fn(*args)`` in a worker thread; await its result.

        Args:
            sync_fn: the blocking callable.
            *args: its arguments.
            cancellable: if True, cancelling the caller returns at once and
                abandons the thread (its result is discarded); if False (the
                default, as in trio), cancellation waits for the call to end.
            limiter: an async context manager held around the call, such as
                an ``asyncio.Semaphore``, to bound how many run at once.

        Raises:
            Whatever ``sync_fn`` raises.
        """
        if limiter is not None:
            async with limiter:
                return await self._run_in_thread(sync_fn, args, cancellable)
        return await self._run_in_thread(sync_fn, args, cancellable)

    async def _run_in_thread(
        self, sync_fn: Callable[..., T], args: tuple[Any, ...], cancellable: bool
    ) -> T:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(thread_name_prefix="asyncapy-sync")
        context = contextvars.copy_context()
        future = loop.run_in_executor(
            self._executor, functools.partial(context.run, sync_fn, *args)
        )
        if cancellable:
            return await future
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await future
            raise

    # -- internals

    async def _listen(self, state: ServerState) -> _Listener:
        """Listen on the configured address: plain TCP, or TLS or PROXY headers
        (the accept loop of ``asyncapy._listener``).

        Raises:
            OSError: when the address cannot be listened on.
        """
        settings = self.settings
        # A Protocol by its methods (a compiled Connection cannot subclass asyncio.Protocol).
        factory = cast("Callable[[], asyncio.BaseProtocol]", self._protocol_factory(state))
        given = self._sockets
        if self._ssl_context is None and not settings.proxy_protocol:
            loop = asyncio.get_running_loop()
            if given:
                servers = [
                    await loop.create_server(factory, sock=sock, backlog=settings.backlog)
                    for sock in given
                ]
                return _Listeners(servers)
            return await loop.create_server(
                factory, settings.addr, settings.port, backlog=settings.backlog, reuse_address=True
            )
        if given:
            sockets = list(given)
        else:
            sockets = listening_sockets(settings.addr, settings.port, settings.backlog)
        return TLSListener(sockets, factory, self._ssl_context, state)

    def _supervise(self, settings: Settings, sockets: Sequence[socket.socket]) -> None:
        """Serve under ``asyncapy run``: these settings, on sockets the parent bound.

        Called by the worker process once the app is imported.

        Raises:
            ConfigError: when the settings' TLS files cannot be loaded.
        """
        self.settings = settings
        if settings.certfile is not None:
            self._ssl_context = server_context(settings.certfile, settings.keyfile, None)
        self._sockets = list(sockets)

    def _new_state(self) -> ServerState:
        """What the connections of one serve() share (on the running loop)."""
        self._dispatcher.debug = logger.isEnabledFor(logging.DEBUG)
        return ServerState.new(self, self.settings, self.stats)

    def _protocol_factory(self, state: ServerState) -> Callable[[], Connection]:
        """What the loop calls to make the Protocol of each accepted connection."""
        return functools.partial(Connection, self.settings, state, self._dispatcher)

    @staticmethod
    def _describe(sockname: Any) -> str:
        if isinstance(sockname, tuple):
            return _logging.host_port(sockname[0], sockname[1])
        return str(sockname)

    async def _call_hook(self, hook: Callable[[], Any]) -> None:
        result = hook()
        if inspect.isawaitable(result):
            await result

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if self._stop_event is not None and self._stop_event.is_set():
            logger.warning("{Server} %s again: closing every connection now", name)
            self.stop(force=True)
            return
        logger.info("{Server} %s received: shutting down", name)
        self.stop()

    async def _close_gracefully(self, state: ServerState) -> None:
        state.draining = True
        server = self._server
        if server is not None:
            server.close()
        if state.connections:
            state.all_closed = asyncio.Event()
            for conn in list(state.connections):
                if self._force:
                    conn.abort()
                else:
                    conn.drain()
            if state.connections:
                try:
                    await asyncio.wait_for(state.all_closed.wait(), self.settings.shutdown_timeout)
                except TimeoutError:
                    logger.warning(
                        "{Server} %d connection(s) still busy after %s s: closing them",
                        len(state.connections),
                        self.settings.shutdown_timeout,
                    )
                    for conn in list(state.connections):
                        conn.abort()
                    await asyncio.sleep(0)
        if server is not None:
            await server.wait_closed()
        state.log.flush()

    def __repr__(self) -> str:
        return f"<Server {self.settings.addr}:{self.settings.port}>"
