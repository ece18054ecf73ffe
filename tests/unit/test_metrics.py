"""Metrics: counting in the process, deltas, the supervisor's sums, the exposition."""

from __future__ import annotations

import logging
import socket
import urllib.request
from typing import Any

import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asyncapy._state import Stats
from asyncapy.metrics import (
    BUCKETS,
    EVENTS,
    Aggregate,
    Metrics,
    process_usage,
    serve_registry,
)


def samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``registry``, as exposed in the text format and parsed back."""
    return parse(generate_latest(registry).decode())


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def counted() -> Metrics:
    """3 OK packets of ``echo``, 1 ERR_INTERNAL of ``boom``, 2 that no handler took."""
    metrics = Metrics()
    for seconds in (0.00001, 0.0001, 0.2):
        metrics.packet("echo", "OK", seconds)
    metrics.packet("boom", "ERR_INTERNAL", 0.003)
    metrics.packet(None, "ERR_NO_HANDLER", 0.00002)
    metrics.packet(None, "ERR_NO_HANDLER", 0.00002)
    return metrics


def test_packets_are_counted_by_handler_and_code() -> None:
    snapshot = counted().snapshot()
    assert snapshot["packets"] == {
        "echo": {"OK": 3},
        "boom": {"ERR_INTERNAL": 1},
        "": {"ERR_NO_HANDLER": 2},
    }
    seconds, buckets = snapshot["latency"]["echo"]
    assert seconds == pytest.approx(0.20011)
    assert sum(buckets) == 3


def test_a_duration_falls_in_the_first_bucket_whose_bound_it_does_not_pass() -> None:
    metrics = Metrics()
    for seconds in (0.0, BUCKETS[0], BUCKETS[0] * 1.01, BUCKETS[5], 10.0, 10.5, 1e9):
        metrics.packet("h", "OK", seconds)
    buckets = metrics.snapshot()["latency"]["h"][1]
    assert len(buckets) == len(BUCKETS) + 1
    expected = [0] * (len(BUCKETS) + 1)
    expected[0] = 2  # 0 and the bound itself (le: less than or equal)
    expected[1] = 1
    expected[5] = 1
    expected[len(BUCKETS) - 1] = 1  # 10.0, the last finite bound
    expected[len(BUCKETS)] = 2  # +Inf
    assert buckets == expected


def test_delta_returns_what_grew_then_nothing() -> None:
    stats = Stats()
    metrics = Metrics(stats)
    assert metrics.delta() == {}
    metrics.packet("echo", "OK", 0.001)
    metrics.sessions += 1
    metrics.received += 100
    metrics.rejected("ERR_HEADER_INVALID")
    stats.timeouts += 2
    first = metrics.delta()
    assert first["packets"] == {"echo": {"OK": 1}}
    assert first["sessions"] == 1
    assert first["received"] == 100
    assert "sent" not in first
    assert first["rejected"] == {"ERR_HEADER_INVALID": 1}
    assert first["events"] == {"timeouts": 2}
    assert metrics.delta() == {}
    metrics.packet("echo", "OK", 0.001)
    metrics.packet("echo", "ERR_INTERNAL", 0.001)
    second = metrics.delta()
    assert set(second) == {"packets", "latency"}
    assert second["packets"] == {"echo": {"OK": 1, "ERR_INTERNAL": 1}}
    assert second["latency"]["echo"][0] == pytest.approx(0.002)
    assert sum(second["latency"]["echo"][1]) == 2
    assert metrics.delta() == {}


def test_a_delta_crosses_msgpack_as_plain_builtins() -> None:
    metrics = counted()
    metrics.refused("ERR_SERVER_BUSY")
    delta = metrics.delta()
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(delta))
    assert back == delta


class Conn:
    """What Metrics reads of a connection."""

    def __init__(self, bytes_in: int = 0, bytes_out: int = 0) -> None:
        self.bytes_in = bytes_in
        self.bytes_out = bytes_out


def test_open_sessions_bytes_count_until_closed_then_stay_in_the_totals() -> None:
    first, second = Conn(10, 20), Conn(1, 2)
    sessions = {first, second}
    metrics = Metrics(None, lambda: sessions)
    assert (metrics.snapshot()["received"], metrics.snapshot()["sent"]) == (11, 22)
    first.bytes_in += 5  # read while open: counted at once
    sessions.discard(first)  # the server's registry lets it go...
    metrics.closed(first)  # ...and tells the metrics
    assert (metrics.snapshot()["received"], metrics.snapshot()["sent"]) == (16, 22)
    assert metrics.open_connections == 1
    sessions.discard(second)
    metrics.closed(second)
    assert (metrics.snapshot()["received"], metrics.snapshot()["sent"]) == (16, 22)
    assert metrics.open_connections == 0


def test_the_registry_exposes_every_series() -> None:
    stats = Stats(timeouts=4, evicted=1)
    sessions = [Conn() for _ in range(7)]
    metrics = Metrics(stats, lambda: sessions)
    for _ in range(5):
        metrics.packet("echo", "OK", 0.0003)
    metrics.packet(None, "ERR_NO_HANDLER", 0.00001)
    metrics.sessions, metrics.received, metrics.sent = 2, 1000, 2000
    metrics.rejected("ERR_PACKET_TOO_LARGE")
    metrics.refused("ERR_SESSION_LIMIT_REACHED")
    found = samples(metrics.registry)
    assert found["asyncapy_open_connections", ()] == 7
    assert found["asyncapy_sessions_total", ()] == 2
    assert found["asyncapy_received_bytes_total", ()] == 1000
    assert found["asyncapy_sent_bytes_total", ()] == 2000
    assert found["asyncapy_packets_total", (("code", "OK"), ("handler", "echo"))] == 5
    assert found["asyncapy_packets_total", (("code", "ERR_NO_HANDLER"), ("handler", ""))] == 1
    le = (("handler", "echo"), ("le", "0.0005"))
    assert found["asyncapy_handler_duration_seconds_bucket", le] == 5
    le = (("handler", "echo"), ("le", "0.00025"))
    assert found["asyncapy_handler_duration_seconds_bucket", le] == 0
    le = (("handler", "echo"), ("le", "+Inf"))
    assert found["asyncapy_handler_duration_seconds_bucket", le] == 5
    assert found["asyncapy_handler_duration_seconds_count", (("handler", "echo"),)] == 5
    assert found["asyncapy_handler_duration_seconds_sum", (("handler", "echo"),)] == (
        pytest.approx(0.0015)
    )
    code = (("code", "ERR_PACKET_TOO_LARGE"),)
    assert found["asyncapy_rejected_frames_total", code] == 1
    code = (("code", "ERR_SESSION_LIMIT_REACHED"),)
    assert found["asyncapy_refused_connections_total", code] == 1
    assert found["asyncapy_idle_timeouts_total", ()] == 4
    assert found["asyncapy_evicted_sessions_total", ()] == 1
    for name, _ in EVENTS.values():
        assert (f"{name}_total", ()) in found
    # In one process, the process itself is worker "0".
    assert found["asyncapy_worker_resident_memory_bytes", (("worker", "0"),)] > 1_000_000
    assert found["asyncapy_worker_cpu_seconds_total", (("worker", "0"),)] > 0


def test_process_usage_reads_this_process() -> None:
    rss, cpu = process_usage()
    assert 1_000_000 < rss < 10_000_000_000
    assert cpu > 0


def worker_delta(ok: int, internal: int = 0, sent: int = 0) -> dict[str, Any]:
    metrics = Metrics()
    for _ in range(ok):
        metrics.packet("echo", "OK", 0.0001)
    for _ in range(internal):
        metrics.packet("echo", "ERR_INTERNAL", 0.01)
    metrics.sent = sent
    wire = msgspec.msgpack.encode(metrics.delta())  # as the pipe carries it
    return msgspec.msgpack.decode(wire, type=dict[str, Any])


def test_the_aggregate_sums_the_workers_exactly() -> None:
    total = Aggregate()
    total.add(1, worker_delta(3, sent=30))
    total.add(2, worker_delta(4, internal=1, sent=50))
    total.add(1, worker_delta(2, sent=20))
    total.add(2, {})
    snapshot = total.snapshot()
    assert snapshot["packets"] == {"echo": {"OK": 9, "ERR_INTERNAL": 1}}
    assert snapshot["sent"] == 100
    seconds, buckets = snapshot["latency"]["echo"]
    assert sum(buckets) == 10
    assert seconds == pytest.approx(0.0109)


def test_a_retired_worker_leaves_its_counts_and_takes_its_gauges() -> None:
    total = Aggregate()
    total.add(1, worker_delta(5, sent=10))
    total.add(2, worker_delta(7, sent=10))
    total.set_worker(1, open_connections=3, rss_bytes=50_000_000, cpu_seconds=1.5)
    total.set_worker(2, open_connections=4, rss_bytes=60_000_000, cpu_seconds=2.5)
    before = samples(total.registry)
    assert before["asyncapy_open_connections", ()] == 7
    assert before["asyncapy_workers", ()] == 2
    assert before["asyncapy_worker_open_connections", (("worker", "2"),)] == 4
    assert before["asyncapy_worker_resident_memory_bytes", (("worker", "1"),)] == 50_000_000
    assert before["asyncapy_worker_cpu_seconds_total", (("worker", "2"),)] == 2.5

    total.retire(2)
    total.count_restart()
    total.add(3, worker_delta(1))
    total.set_worker(3, open_connections=0, rss_bytes=40_000_000, cpu_seconds=0.1)
    after = samples(total.registry)
    assert after["asyncapy_packets_total", (("code", "OK"), ("handler", "echo"))] == 13
    assert after["asyncapy_sent_bytes_total", ()] == 20
    assert after["asyncapy_open_connections", ()] == 3
    assert after["asyncapy_workers", ()] == 2
    assert after["asyncapy_worker_restarts_total", ()] == 1
    assert not any(dict(labels).get("worker") == "2" for _, labels in after)
    for key, value in before.items():  # no counter went backwards
        if key[0].endswith(("_total", "_bucket", "_count", "_sum")) and "worker" not in dict(
            key[1]
        ):
            assert after[key] >= value, key


def test_a_bad_delta_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    total = Aggregate()
    with caplog.at_level(logging.WARNING, logger="asyncapy"):
        total.add(4, {"latency": {"echo": [0.1, [1, 2]]}})
        total.add(4, {"sent": "many"})
    assert [r.getMessage() for r in caplog.records] == [
        "{Supervisor} worker 4 sent bad metrics (echo: 2 buckets): skipped",
        "{Supervisor} worker 4 sent bad metrics (sent: str is not a count): skipped",
    ]
    total.add(4, worker_delta(2))
    assert total.snapshot()["packets"] == {"echo": {"OK": 2}}


def test_metrics_are_served_over_http_then_the_port_is_released() -> None:
    metrics = counted()
    server = serve_registry(metrics.registry, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            found = parse(response.read().decode())
        assert found["asyncapy_packets_total", (("code", "OK"), ("handler", "echo"))] == 3
        metrics.packet("echo", "OK", 0.001)  # read again at each scrape
        with urllib.request.urlopen(url, timeout=5) as response:
            found = parse(response.read().decode())
        assert found["asyncapy_packets_total", (("code", "OK"), ("handler", "echo"))] == 4
    finally:
        server.close()
    server.close()  # idempotent
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", server.port))  # free again


def test_serving_on_a_port_in_use_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="in use"):
            serve_registry(Metrics().registry, "127.0.0.1", taken.getsockname()[1])


def test_every_stats_counter_is_exported() -> None:
    """A Stats field added without a series would be invisible to the scraper."""
    import dataclasses

    from asyncapy._state import Stats

    own_series = {"connections", "refused", "rejected_frames"}  # counted with labels elsewhere
    fields = {field.name for field in dataclasses.fields(Stats)}
    assert fields - own_series == set(EVENTS)
