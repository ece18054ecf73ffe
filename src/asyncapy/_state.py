"""What the connections of one serving server share, and who may hold how much of it.

Theory of operation
-------------------
Every resource a peer can make the server hold is bounded per connection
(``_connection``) and here, server-wide (``docs/threat-model.md``):

* **Connections.** A new connection (a TLS one from its first byte, before
  the handshake) is admitted by :meth:`ServerState.admit`: at most
  ``session_limit`` from one address, at most ``max_connections`` in all.
  When the server is full, a newcomer from an address that holds at least two
  sessions fewer than the address holding the most takes the place of that
  address's longest-idle session, which is answered ``ERR_SERVER_BUSY`` and
  closed. A closing connection counts until its transport is gone (at most
  ``close_timeout`` seconds): one address, or a few, cannot lock the others out. Otherwise the
  newcomer is refused. Finding the largest holder walks the addresses, once
  per connection made while full.
* **Buffered bytes.** Each connection reports the bytes it holds (an
  incomplete frame, input left unread, frames waiting) with
  :meth:`ServerState.hold`; when the sum passes ``max_buffered_bytes``, the
  connection holding the most is answered ``ERR_SERVER_BUSY`` and closed,
  until the sum is back under the budget.
* **Turns.** A connection with input left after its turn asks for another
  (:meth:`ServerState.want_turn`); turns are queued by address, and each
  address with waiting connections gets one turn per loop iteration. While
  an address has connections waiting, a read from another of its connections
  waits too (when peers of other addresses are connected), and a turn of an
  address whose other connections wait is a quarter of ``max_frames_per_read``:
  fifty connections from one address get less than the share of one. ``turns`` counts reads, all
  connections together: a connection that has used more than its share of
  the loop waits while it moves (``_connection``, fair share).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import Settings
from .errors import ErrorCode
from .logging import RateLimitedLog, error_logger

if TYPE_CHECKING:
    from ._cluster import ClusterSessions
    from ._connection import Connection
    from .server import Server

__all__ = ["ServerState", "Stats"]


@dataclass(slots=True)
class Stats:
    """Counters of one server, kept across its runs of ``serve()``."""

    connections: int = 0
    """Sessions opened."""
    refused: int = 0
    """Connections closed before a session: busy, session limit, shutting down."""
    rejected_frames: int = 0
    """Frames answered with an error code and never handled."""
    timeouts: int = 0
    """Sessions closed by the idle ``timeout``."""
    write_timeouts: int = 0
    """Sessions closed because the peer read none of its replies for ``timeout`` seconds."""
    tls_mismatches: int = 0
    """Peers that started TLS on a plaintext port, or spoke plaintext to a TLS port."""
    tls_handshake_failures: int = 0
    """TLS handshakes that failed or did not finish within ``tls_handshake_timeout``."""
    evicted: int = 0
    """Idle sessions closed to make room for a peer of a smaller address (server full)."""
    over_budget: int = 0
    """Sessions closed because the server held ``max_buffered_bytes`` of input."""
    throttled: int = 0
    """Times a connection waited for others after using more than its share of the loop."""
    log_lines_suppressed: int = 0
    """Log lines held back by ``log_rate_limit`` (each window ends with one summary line)."""
    proxy_refused: int = 0
    """Connections closed for their PROXY header (also in ``refused``): from a source
    outside ``trusted_proxies``, or a header that was malformed or late."""
    aged: int = 0
    """Sessions closed gracefully because they reached ``max_connection_age``."""
    age_resets: int = 0
    """Aged sessions reset because their requests outlasted ``max_connection_age_grace``."""
    cluster_refused: int = 0
    """Sessions refused because the cluster (a shared store) held ``session_limit``."""
    cluster_errors: int = 0
    """Session registry calls that failed or timed out (the connection was admitted)."""


@dataclass(eq=False, slots=True)
class ServerState:
    """What the connections of one serving server share and change."""

    server: Server
    settings: Settings
    stats: Stats
    log: RateLimitedLog
    connections: set[Connection] = field(default_factory=set)
    """Every connection with a session, until its transport is lost."""
    by_address: dict[str, set[Connection]] = field(default_factory=dict)
    handshakes: dict[str, int] = field(default_factory=dict)
    """TLS handshakes under way, by address: they count toward the limits."""
    handshaking: int = 0
    buffered: int = 0
    """Bytes held by all connections (``Connection.held``)."""
    turns: int = 0
    turn_queues: dict[str, deque[Connection]] = field(default_factory=dict)
    """By address: its connections waiting for a turn (input received, not handled)."""
    call_soon: Callable[..., object] | None = None
    draining: bool = False
    all_closed: asyncio.Event | None = None
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """``trusted_proxies``, parsed."""
    cluster: ClusterSessions | None = None
    """The cluster-wide ``session_limit`` (a shared store), or None."""

    @classmethod
    def new(cls, server: Server, settings: Settings, stats: Stats) -> ServerState:
        """A state for one ``serve()`` on the running loop."""
        loop = asyncio.get_running_loop()

        def count() -> None:
            stats.log_lines_suppressed += 1

        log = RateLimitedLog(
            error_logger, settings.log_rate_limit, loop.call_later, loop.time, count
        )
        trusted = tuple(ipaddress.ip_network(net) for net in settings.trusted_proxies)
        return cls(
            server=server,
            settings=settings,
            stats=stats,
            log=log,
            call_soon=loop.call_soon,
            trusted=trusted,
        )

    # -- admission

    def admit(self, address: str) -> tuple[ErrorCode, str] | None:
        """Whether a new connection from ``address`` may have a session.

        Returns:
            None to admit it (perhaps after evicting another: see the module's
            docstring), or the error code and reason to refuse it with.
        """
        settings = self.settings
        # (While draining, one accepted as the listener closed is admitted: it
        # gets its first request answered; see Connection.drain.)
        mine = len(self.by_address.get(address, ())) + self.handshakes.get(address, 0)
        limit = settings.session_limit
        if limit and mine >= limit:
            return ErrorCode.ERR_SESSION_LIMIT_REACHED, f"session_limit ({limit}) reached"
        full = settings.max_connections
        if full and len(self.connections) + self.handshaking >= full and not self._evict_for(mine):
            return ErrorCode.ERR_SERVER_BUSY, f"max_connections ({full}) reached"
        return None

    def is_trusted(self, address: str) -> bool:
        """Whether ``address`` is one of ``trusted_proxies`` (IPv4-mapped IPv6 as IPv4)."""
        try:
            ip = ipaddress.ip_address(address.partition("%")[0])
        except ValueError:  # not an IP address (a UNIX socket's name): never a proxy
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.trusted)

    def full(self) -> bool:
        """Whether ``max_connections`` are open (handshakes and pending headers included)."""
        limit = self.settings.max_connections
        return bool(limit) and len(self.connections) + self.handshaking >= limit

    def proxy_refused(self, peer: str, reason: str, why: str) -> None:
        """Count and log (rate-limited) a connection closed for its PROXY header.

        Args:
            peer: ``host:port`` of the connection (the proxy, or whoever it is).
            reason: the metrics label: ``PROXY_UNTRUSTED``, ``PROXY_MALFORMED``,
                ``PROXY_TIMEOUT`` or ``SERVER_BUSY``.
            why: what the log line says.
        """
        self.stats.refused += 1
        self.stats.proxy_refused += 1
        self.server.metrics.refused(reason)
        self.log.log("proxy", logging.WARNING, "{Server} Closed %s: %s (%s)", peer, why, reason)

    def refused(self, peer: str, code: ErrorCode, why: str) -> None:
        """Count and log (rate-limited) a connection refused before it had a session."""
        self.stats.refused += 1
        self.server.metrics.refused(str(code))
        self.log.log("refused", logging.WARNING, "{Server} Refused %s: %s (%s)", peer, why, code)

    def _evict_for(self, mine: int) -> bool:
        """Close the largest address's longest-idle session, if it holds ``mine`` + 2 or more."""
        most, largest = 0, None
        for peers in self.by_address.values():
            if len(peers) > most:
                most, largest = len(peers), peers
        if largest is None or most < mine + 2:
            return False
        victim = min(largest, key=lambda conn: (conn.closing, conn.busy, conn.last_activity))
        if victim.closing:  # all of them are on their way out already
            return False
        self.stats.evicted += 1
        victim.evict(ErrorCode.ERR_SERVER_BUSY, "evicted: the server is full")
        return True

    def join(self, conn: Connection) -> None:
        """Count ``conn``'s session (and so, from now on, its bytes in the metrics)."""
        self.connections.add(conn)
        peers = self.by_address.get(conn.address)
        if peers is None:
            self.by_address[conn.address] = {conn}
        else:
            peers.add(conn)

    def leave(self, conn: Connection) -> None:
        """Stop counting ``conn``; release what it held."""
        self.hold(conn, 0)
        self.connections.discard(conn)
        self.server.metrics.closed(conn)
        peers = self.by_address.get(conn.address)
        if peers is not None:
            peers.discard(conn)
            if not peers:
                del self.by_address[conn.address]
        if self.all_closed is not None and not self.connections:
            self.all_closed.set()

    def handshake_started(self, address: str) -> None:
        self.handshaking += 1
        self.handshakes[address] = self.handshakes.get(address, 0) + 1

    def handshake_ended(self, address: str) -> None:
        self.handshaking -= 1
        left = self.handshakes[address] - 1
        if left:
            self.handshakes[address] = left
        else:
            del self.handshakes[address]

    # -- turns

    def shares_turns(self, address: str) -> bool:
        """Whether a read from ``address`` must wait for the address's turn.

        True while other connections of the address wait for theirs, and
        peers of other addresses are connected: one address, whatever its
        number of connections, then gets one turn per loop iteration. (Alone,
        an address is not held back: behind a proxy, every client shares it.)
        """
        return address in self.turn_queues and len(self.by_address) > 1

    def want_turn(self, conn: Connection) -> None:
        """Give ``conn`` a turn soon: one turn per address per loop iteration."""
        queue = self.turn_queues.get(conn.address)
        if queue is not None:
            queue.append(conn)
            return
        self.turn_queues[conn.address] = deque((conn,))
        assert self.call_soon is not None
        self.call_soon(self._next_turn, conn.address)

    def _next_turn(self, address: str) -> None:
        queue = self.turn_queues[address]
        conn = queue.popleft()
        try:
            conn.next_turn(shared=bool(queue))  # may ask for another: back of the queue
        finally:
            if queue:
                assert self.call_soon is not None
                self.call_soon(self._next_turn, address)
            else:
                del self.turn_queues[address]

    # -- buffered bytes

    def hold(self, conn: Connection, held: int) -> None:
        """Record that ``conn`` now holds ``held`` bytes; enforce ``max_buffered_bytes``."""
        self.buffered += held - conn.held
        conn.held = held
        budget = self.settings.max_buffered_bytes
        while budget and self.buffered > budget:
            largest = max(self.connections, key=lambda member: member.held, default=None)
            if largest is None or not largest.held:
                return
            self.stats.over_budget += 1
            largest.evict(
                ErrorCode.ERR_SERVER_BUSY,
                f"max_buffered_bytes ({budget}) reached: it held the most ({largest.held} bytes)",
            )
            self.hold(largest, 0)
