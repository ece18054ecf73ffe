"""``asyncapy bench`` against real servers on loopback (each in a thread, on its own loop).

The command runs in-process through ``asyncapy.cli.main`` (its load on a
uvloop loop of its own), or with ``--processes`` in fresh subprocesses; every
run is short and bounded (``--requests`` where the count can be exact).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trustme

from asyncapy import Server
from asyncapy._bench import _Progress, make_payload
from asyncapy._loadstats import NBUCKETS, LoadResult, bucket, bucket_upper, percentile
from asyncapy.cli import main
from asyncapy.codecs import get_codec
from asyncapy.core import Client, Packet
from tests.helpers import echo_server, server_thread


def bench_json(capsys: pytest.CaptureFixture[str], port: int, *args: str) -> dict[str, Any]:
    """Run ``asyncapy bench 127.0.0.1:PORT --json ARGS...``; return its JSON (exit 0)."""
    status = main(["bench", f"127.0.0.1:{port}", "--json", "--timeout", "5", *args])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert err == ""  # no progress line: stderr is not a terminal
    result: dict[str, Any] = json.loads(out)
    return result


def assert_latencies_ordered(result: dict[str, Any]) -> None:
    values = [result[k] for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")]
    assert values[0] > 0, result
    assert values == sorted(values), result


def test_a_one_second_run_counts_consistently(
    echo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench_json(capsys, echo.port, "-d", "1", "-w", "0", "-c", "2", "-p", "2")
    assert result["requests"] > 100
    assert result["seconds"] == 1.0
    assert result["rps"] == pytest.approx(result["requests"] / result["seconds"], rel=1e-3)
    assert result["errors"] == 0
    assert result["errors_by_code"] == {}
    assert_latencies_ordered(result)
    assert result["connections"] == 2
    assert result["pipeline"] == 2
    assert result["payload_bytes"] == 64


def test_requests_stops_at_that_count_exactly(
    echo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench_json(capsys, echo.port, "-n", "777", "-c", "3", "-p", "5", "-e", "ziproto")
    assert result["requests"] == 777
    assert result["errors"] == 0
    assert result["seconds"] > 0
    assert_latencies_ordered(result)


def test_error_replies_are_counted_by_code(capsys: pytest.CaptureFixture[str]) -> None:
    server = Server(addr="127.0.0.1", port=0)  # no handler: every reply is ERR_NO_HANDLER
    with server_thread(server):
        result = bench_json(capsys, server.port, "-n", "300", "-c", "2", "-p", "4")
    assert result["requests"] == 300
    assert result["errors"] == 300
    assert result["errors_by_code"] == {"ERR_NO_HANDLER": 300}


def test_connections_the_server_closes_are_counted_and_replaced(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = Server(addr="127.0.0.1", port=0)

    @server.add_handler()
    async def once(client: Client, packet: Packet) -> None:
        await client.send(packet, close=True)  # the seed's echo: one request per connection

    with server_thread(server):
        result = bench_json(capsys, server.port, "-n", "40", "-c", "2")
    assert result["requests"] == 40
    assert set(result["errors_by_code"]) == {"closed by the server"}
    assert 38 <= result["errors_by_code"]["closed by the server"] <= 40


def test_a_reply_that_differs_from_the_request_is_learned_with_deep_pipelines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = Server(addr="127.0.0.1", port=0)

    @server.add_handler()
    async def ok(client: Client, packet: Packet) -> None:
        await client.send({"ok": True, "status": "success"})

    with server_thread(server):
        # 100 in flight: chunks of more replies than the prebuilt copies (64)
        result = bench_json(
            capsys, server.port, "-n", "3000", "-c", "2", "-p", "100", "--payload", '{"q": 1}'
        )
    assert result["requests"] == 3000
    assert result["errors"] == 0
    assert result["payload_bytes"] == len(b'{"q":1}')


def test_processes_share_the_load_and_merge_their_counts(
    echo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    result = bench_json(capsys, echo.port, "-n", "1001", "-c", "3", "-p", "2", "--processes", "2")
    assert result["requests"] == 1001  # 501 + 500
    assert result["processes"] == 2
    assert result["errors"] == 0
    assert_latencies_ordered(result)


def test_the_table_names_every_column(echo: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", f"127.0.0.1:{echo.port}", "-n", "200", "-c", "2", "-s", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"asyncapy bench 127.0.0.1:{echo.port}: 2 connections x 1")
    assert "json payload of 100 bytes, 200 requests" in lines[0]
    assert lines[2].split() == [
        "requests", "seconds", "requests/s", "p50", "us", "p90", "us", "p99", "us",
        "p99.9", "us", "max", "us", "errors",
    ]  # fmt: skip
    assert lines[3].split()[0] == "200"
    assert lines[3].split()[-1] == "0"


def test_tls_with_the_servers_ca(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    certfile, cafile = directory / "server.pem", directory / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    with server_thread(echo_server(certfile=str(certfile))) as server:
        result = bench_json(capsys, server.port, "-n", "200", "-c", "2", "--cafile", str(cafile))
        assert (result["requests"], result["errors"], result["tls"]) == (200, 0, True)
        status = main(["bench", f"127.0.0.1:{server.port}", "-n", "10", "--tls", "-t", "0.5"])
    assert status == 1  # the system's CAs do not know trustme's
    assert "cannot connect" in capsys.readouterr().err


def test_nothing_to_connect_to_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:  # bound, never listening: connects are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        status = main(["bench", f"127.0.0.1:{port}", "-d", "1", "-t", "0.3"])
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert f"cannot connect to 127.0.0.1:{port}: connect refused" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "1", "-n", "5"], "--duration or --requests"),
        (["-s", "100", "--payload", "{}"], "--size or --payload"),
        (["-c", "1", "--processes", "2"], "need at least 2 connections"),
        (["-s", "5"], "--size must be at least"),
        (["--payload", "[]"], "must be a JSON object"),
        (["-p", "0"], "--pipeline"),
    ],
)
def test_bad_options_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "127.0.0.1:9", *args]) == 2
    assert message in capsys.readouterr().err


# -- the pieces


@pytest.mark.parametrize("encoding", ["json", "ziproto"])
@pytest.mark.parametrize("size", [11, 33, 64, 200, 1000, 70000])
def test_generated_payloads_have_the_size_asked_for(encoding: str, size: int) -> None:
    body = make_payload(size, encoding)
    assert abs(len(body) - size) <= 2  # exact, but where a string header grows
    assert "data" in get_codec(encoding).decode(body)


def test_percentiles_are_at_most_0_8_percent_high() -> None:
    for value in [*range(300), 1000, 65_535, 123_456_789, 2**40 + 12345]:
        index = bucket(value)
        assert index < NBUCKETS
        assert value <= bucket_upper(index) <= value * (1 + 1 / 128)
    counts = [0] * NBUCKETS
    for value in range(1, 1001):  # 1 .. 1000 us
        counts[bucket(value * 1000)] += 1
    assert percentile(counts, 1000, 0.5, 1_000_000) == pytest.approx(500_000, rel=0.008)
    assert percentile(counts, 1000, 0.999, 1_000_000) == pytest.approx(999_000, rel=0.008)
    assert percentile(counts, 1000, 1.0, 1_000_000) == 1_000_000  # capped at the max seen


def test_results_merge_bucket_by_bucket() -> None:
    one = LoadResult(requests=2, seconds=1.0, hist={5: 2}, max_ns=5, errors={"E": 1})
    two = LoadResult(requests=3, seconds=1.5, hist={5: 1, 9: 2}, max_ns=9, connected=True)
    merged = LoadResult.merge([one, two])
    assert (merged.requests, merged.seconds, merged.max_ns) == (5, 1.5, 9)
    assert merged.hist == {5: 3, 9: 2}
    assert merged.errors == {"E": 1}
    assert merged.connected


def test_the_progress_line_rewrites_itself_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress = _Progress(warmup=0.0)
    progress(1000)
    progress(2000)
    progress.clear()
    err = capsys.readouterr().err
    assert err.count("\r") == 3
    assert "2,000 requests" in err
    assert "req/s" in err
    assert err.endswith("\r\x1b[K")
