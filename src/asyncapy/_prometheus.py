"""The Prometheus series of asyncapy: names, help, buckets; rendering and ``/metrics``.

Everything of ``prometheus_client`` is imported inside the functions that
need it, so that counting (:mod:`asyncapy.metrics`) never imports it.
:func:`families` turns a snapshot (plain builtins, see
:meth:`asyncapy.metrics.Metrics.snapshot`) into metric families; a registry
built by :func:`registry` calls a function for them on every scrape.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

__all__ = ["BUCKETS", "EVENTS", "MetricsServer", "families", "registry", "serve_registry"]

BUCKETS: Final = (
    *(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025),
    *(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
"""Upper bounds (seconds) of the handler latency histogram, from 50 µs; +Inf follows."""

EVENTS: Final = {
    "timeouts": ("asyncapy_idle_timeouts", "Sessions closed by the idle timeout."),
    "write_timeouts": (
        "asyncapy_write_timeouts",
        "Sessions reset because the peer read none of its replies for timeout seconds.",
    ),
    "tls_mismatches": (
        "asyncapy_tls_mismatches",
        "Peers that spoke TLS to a plaintext port or plaintext to a TLS port.",
    ),
    "tls_handshake_failures": (
        "asyncapy_tls_handshake_failures",
        "TLS handshakes that failed or did not finish in time.",
    ),
    "evicted": (
        "asyncapy_evicted_sessions",
        "Idle sessions closed to make room for a smaller address (server full).",
    ),
    "over_budget": (
        "asyncapy_over_budget_sessions",
        "Sessions closed because the server held max_buffered_bytes of input.",
    ),
    "throttled": (
        "asyncapy_throttled_turns",
        "Times a connection waited after using more than its share of the loop.",
    ),
    "log_lines_suppressed": (
        "asyncapy_log_lines_suppressed",
        "Log lines held back by log_rate_limit.",
    ),
    "proxy_refused": (
        "asyncapy_proxy_refused",
        "Connections closed for their PROXY header: untrusted source, malformed or late.",
    ),
    "aged": (
        "asyncapy_aged_sessions",
        "Sessions closed gracefully at max_connection_age.",
    ),
    "age_resets": (
        "asyncapy_age_resets",
        "Aged sessions reset after max_connection_age_grace.",
    ),
    "cluster_refused": (
        "asyncapy_cluster_refused",
        "Sessions refused because the cluster (shared store) held session_limit.",
    ),
    "cluster_errors": (
        "asyncapy_cluster_errors",
        "Session registry calls that failed or timed out (the connection was admitted).",
    ),
}
"""The :class:`~asyncapy._state.Stats` counters exported, by field: (name, help)."""

OPEN: Final = ("asyncapy_open_connections", "Open sessions.")
RSS: Final = ("asyncapy_worker_resident_memory_bytes", "Resident memory of the worker process.")
CPU: Final = ("asyncapy_worker_cpu_seconds", "CPU time (user + system) of the worker process.")
WORKER_OPEN: Final = ("asyncapy_worker_open_connections", "Open sessions of the worker process.")
WORKERS: Final = ("asyncapy_workers", "Live worker processes.")
RESTARTS: Final = ("asyncapy_worker_restarts", "Workers started to replace one that exited.")


def families(snap: Mapping[str, Any]) -> Iterator[Any]:
    """The metric families of the counters of a snapshot."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    for key, name, doc in (
        ("sessions", "asyncapy_sessions", "Sessions opened."),
        ("received", "asyncapy_received_bytes", "Bytes read from peers."),
        ("sent", "asyncapy_sent_bytes", "Bytes of frames written to peers."),
    ):
        yield CounterMetricFamily(name, doc, value=snap.get(key, 0))
    packets = CounterMetricFamily(
        "asyncapy_packets",
        "Decoded packets by the last handler called (empty: none matched) and result code.",
        labels=["handler", "code"],
    )
    for handler, codes in sorted(snap.get("packets", {}).items()):
        for code, count in sorted(codes.items()):
            packets.add_metric([handler, code], count)
    yield packets
    latency = HistogramMetricFamily(
        "asyncapy_handler_duration_seconds",
        "Time from taking a packet up (its decoding included) to the end of its last handler.",
        labels=["handler"],
    )
    bounds = [*(repr(bound) for bound in BUCKETS), "+Inf"]
    for handler, (seconds, buckets) in sorted(snap.get("latency", {}).items()):
        cumulative, total = [], 0
        for bound, count in zip(bounds, buckets, strict=True):
            total += count
            cumulative.append((bound, total))
        latency.add_metric([handler], cumulative, sum_value=seconds)
    yield latency
    for key, name, doc in (
        ("rejected", "asyncapy_rejected_frames", "Frames answered with an error code, by code."),
        ("refused", "asyncapy_refused_connections", "Connections refused, by code."),
    ):
        family = CounterMetricFamily(name, doc, labels=["code"])
        for code, count in sorted(snap.get(key, {}).items()):
            family.add_metric([code], count)
        yield family
    events = snap.get("events", {})
    for key, (name, doc) in EVENTS.items():
        yield CounterMetricFamily(name, doc, value=events.get(key, 0))


def worker_families(workers: Mapping[int, tuple[int, int, float]]) -> Iterator[Any]:
    """Per-worker open sessions, RSS and CPU time, by ``worker`` label."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    open_ = GaugeMetricFamily(*WORKER_OPEN, labels=["worker"])
    rss = GaugeMetricFamily(*RSS, labels=["worker"])
    cpu = CounterMetricFamily(*CPU, labels=["worker"])
    for worker, (sessions, memory, seconds) in sorted(workers.items()):
        open_.add_metric([str(worker)], sessions)
        rss.add_metric([str(worker)], memory)
        cpu.add_metric([str(worker)], seconds)
    yield from (open_, rss, cpu)


class _Collector:
    """A ``prometheus_client`` custom collector around a function."""

    def __init__(self, collect: Callable[[], Iterator[Any]]) -> None:
        self.collect = collect

    def describe(self) -> list[Any]:
        return []  # nothing to check at registration: the names are fixed here


def registry(collect: Callable[[], Iterator[Any]]) -> Any:
    """A ``prometheus_client.CollectorRegistry`` that calls ``collect()`` on each scrape."""
    from prometheus_client import CollectorRegistry

    result = CollectorRegistry(auto_describe=False)
    result.register(_Collector(collect))
    return result


class MetricsServer:
    """``/metrics`` served over HTTP from a daemon thread (:func:`serve_registry`)."""

    def __init__(self, httpd: Any) -> None:
        self._httpd = httpd
        self.port: int = httpd.server_address[1]
        """The port listened on (the real one when asked for port 0)."""
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.1,), name="asyncapy-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving (within 0.1 s) and release the port; idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5.0)
        self._httpd.server_close()

    shutdown = close


def serve_registry(registry: Any, addr: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``registry`` at ``http://addr:port/metrics`` (Prometheus text format).

    What ``prometheus_client.start_http_server`` does (its WSGI app, a thread
    per request, no request log, IPv4 or IPv6 as ``addr`` says), with a
    server that :meth:`MetricsServer.close` stops and whose port it releases.

    Raises:
        OSError: when ``addr:port`` cannot be listened on (``socket.gaierror``
            for an address that does not resolve).
    """
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    family, _, _, _, sockaddr = socket.getaddrinfo(
        addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # no line per scrape on stderr

    httpd = make_server(str(sockaddr[0]), port, make_wsgi_app(registry), Server, Quiet)
    return MetricsServer(httpd)
