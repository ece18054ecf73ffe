"""server.metrics and the access log, after known traffic on a real loopback server."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from asyncapy import Filters, Packet, Server
from asyncapy.core import Client
from asyncapy.logging import ACCESS_FIELDS, JsonFormatter
from tests.conftest import Runner
from tests.helpers import Peer, serving

OK_PACKETS = 5
UNHANDLED = 3


class Records(logging.Handler):
    """Keeps the records it is given."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def access_records() -> Iterator[list[logging.LogRecord]]:
    handler = Records()
    access = logging.getLogger("asyncapy.access")
    access.addHandler(handler)
    try:
        yield handler.records
    finally:
        access.removeHandler(handler)


def traffic_server(**kwargs: Any) -> Server:
    server = Server(port=0, timeout=10, **kwargs)

    @server.add_handler(Filters.Fields(method=r"ok\Z"))
    async def ok(client: Client, packet: Packet) -> None:
        await client.send({"i": packet["i"]})

    @server.add_handler(Filters.Fields(method=r"boom\Z"))
    async def boom(client: Client, packet: Packet) -> None:
        raise RuntimeError("boom")

    @server.add_handler(Filters.Fields(method=r"wait\Z"))
    async def wait(client: Client, packet: Packet) -> None:
        await asyncio.sleep(0.01)  # suspends: its dispatch ends in a Task
        await client.send({"waited": True})

    @server.add_handler(Filters.Fields(method=r"late\Z"))
    async def late(client: Client, packet: Packet) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("late boom")

    return server


async def play(server: Server) -> list[tuple[int, int]]:
    """The known traffic on one connection; returns each request's frame and reply sizes."""
    peer = await Peer.connect(server.port)
    sizes: list[tuple[int, int]] = []

    async def exchange(data: bytes) -> dict[Any, Any]:
        await peer.send_raw(data)
        frame = await peer.frame_in()
        assert frame is not None
        sizes.append((len(data), 4 + 2 + len(frame.payload)))
        reply: dict[Any, Any] = json.loads(bytes(frame.payload))
        return reply

    try:
        for i in range(OK_PACKETS):
            assert await exchange(peer.frame({"method": "ok", "i": i})) == {"i": i}
        for _ in range(UNHANDLED):
            assert (await exchange(peer.frame({"method": "none"})))["error"] == "ERR_NO_HANDLER"
        assert (await exchange(peer.frame({"method": "boom"})))["error"] == "ERR_INTERNAL"
        assert await exchange(peer.frame({"method": "wait"})) == {"waited": True}
        assert (await exchange(peer.frame({"method": "late"})))["error"] == "ERR_INTERNAL"
        malformed = await exchange(peer.frame(b"{not json"))
        assert malformed["error"] == "ERR_REQUEST_MALFORMED"
        assert server.metrics.open_connections == 1
    finally:
        await peer.close()
    return sizes  # read once the server has stopped: every connection is closed then


def test_known_traffic_gives_exact_metrics_and_access_records(
    arun: Runner[Any],
) -> None:
    server = traffic_server(access_log=True)

    async def main() -> list[tuple[int, int]]:
        async with serving(server):
            return await play(server)

    with access_records() as records:
        sizes = arun(main())
    assert server.metrics.open_connections == 0

    snapshot = server.metrics.snapshot()
    assert snapshot["packets"] == {
        "ok": {"OK": OK_PACKETS},
        "": {"ERR_NO_HANDLER": UNHANDLED},
        "boom": {"ERR_INTERNAL": 1},
        "wait": {"OK": 1},
        "late": {"ERR_INTERNAL": 1},
    }
    assert snapshot["rejected"] == {"ERR_REQUEST_MALFORMED": 1}
    assert snapshot["sessions"] == 1
    assert snapshot["received"] == sum(size for size, _ in sizes)
    assert snapshot["sent"] == sum(size for _, size in sizes)
    for handler, codes in snapshot["packets"].items():
        assert sum(snapshot["latency"][handler][1]) == sum(codes.values())
    assert snapshot["latency"]["wait"][0] >= 0.009  # uvloop rounds timers to 1 ms

    # One record per decoded packet (not for the malformed frame), in order.
    assert len(records) == OK_PACKETS + UNHANDLED + 3
    assert all(r.levelno == logging.INFO and r.name == "asyncapy.access" for r in records)
    fields = [{key: getattr(r, key) for key in ACCESS_FIELDS} for r in records]
    assert [f["handler"] for f in fields] == ["ok"] * OK_PACKETS + [None] * UNHANDLED + [
        "boom",
        "wait",
        "late",
    ]
    assert [f["code"] for f in fields[OK_PACKETS:]] == ["ERR_NO_HANDLER"] * UNHANDLED + [
        "ERR_INTERNAL",
        "OK",
        "ERR_INTERNAL",
    ]
    assert len({f["session"] for f in fields}) == 1
    assert fields[0]["peer"].startswith("127.0.0.1:")
    # The malformed frame, last, is no packet: the others are each one record.
    assert [(f["bytes_in"], f["bytes_out"]) for f in fields] == sizes[:-1]
    assert fields[OK_PACKETS + UNHANDLED + 1]["duration_ms"] >= 9.0
    ok = fields[0]
    message = records[0].getMessage()
    assert message.startswith(f'{ok["peer"]} - "ok" OK {ok["bytes_in"]} {ok["bytes_out"]} ')
    assert message.endswith("ms")
    assert records[OK_PACKETS].getMessage().split(" ")[2:4] == ['"-"', "ERR_NO_HANDLER"]

    line = json.loads(JsonFormatter().format(records[0]))
    assert {key: line[key] for key in ACCESS_FIELDS} == fields[0]
    assert line["logger"] == "asyncapy.access"
    assert line["level"] == "INFO"


def test_the_access_log_is_off_by_default_and_metrics_count_all_the_same(
    arun: Runner[Any],
) -> None:
    server = traffic_server()

    async def main() -> None:
        async with serving(server):
            await play(server)

    with access_records() as records:
        arun(main())
    assert records == []
    assert server.metrics.snapshot()["packets"]["ok"] == {"OK": OK_PACKETS}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def test_metrics_port_serves_metrics_from_one_process_until_it_stops(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = traffic_server(metrics_port=0)

    async def main() -> tuple[int, str]:
        async with serving(server):
            await play(server)
            line = next(r.getMessage() for r in caplog.records if "Metrics on" in r.getMessage())
            port = int(line.rsplit(":", 1)[1].split("/")[0])
            return port, await asyncio.to_thread(scrape, port)

    with caplog.at_level(logging.INFO, logger="asyncapy"):
        port, text = arun(main())
    assert 'asyncapy_packets_total{code="OK",handler="ok"} 5.0' in text
    assert 'asyncapy_packets_total{code="ERR_NO_HANDLER",handler=""} 3.0' in text
    assert 'asyncapy_rejected_frames_total{code="ERR_REQUEST_MALFORMED"} 1.0' in text
    with socket.socket() as probe:  # released when the server stopped
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_a_metrics_port_in_use_stops_the_start_with_one_line(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = traffic_server(metrics_port=port)
        with (
            caplog.at_level(logging.INFO, logger="asyncapy"),
            pytest.raises(OSError, match="in use"),
        ):
            arun(server.serve())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    in_use = f"127.0.0.1:{port}: Address already in use"
    assert errors == [f"{{Server}} Cannot serve metrics on {in_use}"]
    assert not any("Stopped" in r.getMessage() for r in caplog.records)
