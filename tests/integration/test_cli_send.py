"""``asyncapy send`` against real servers on loopback (each in a thread, on its own loop).

The command runs in-process through ``asyncapy.cli.main``; its blocking
client talks to the server over a real socket.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from asyncapy import Server
from asyncapy.cli import main
from asyncapy.core import Client, Packet
from tests.helpers import echo_server, server_thread


def send(capsys: pytest.CaptureFixture[str], port: int, *args: str) -> tuple[int, str, str]:
    """Run ``asyncapy send 127.0.0.1:PORT ARGS...``; return (status, stdout, stderr)."""
    status = main(["send", f"127.0.0.1:{port}", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_reply_is_printed_as_indented_json_and_exits_0(
    echo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = send(capsys, echo.port, '{"name": "wörld", "n": [1, {"x": null}]}')
    assert status == 0, err
    assert out == (
        '{\n  "name": "wörld",\n  "n": [\n    1,\n    {\n      "x": null\n    }\n  ]\n}\n'
    )
    assert err == ""


def test_ziproto_is_sent_as_messagepack_and_the_reply_printed_as_json(
    echo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = send(capsys, echo.port, '{"a": 1, "b": [true, 2.5]}', "-e", "ziproto")
    assert status == 0, err
    assert json.loads(out) == {"a": 1, "b": [True, 2.5]}
    status, out, _ = send(capsys, echo.port, '{"a": 1}', "--encoding", "ziproto", "--raw")
    assert status == 0
    assert "01" + " " * 47 + "  Content-Encoding: 1 (ziproto)" in out
    assert "81 a1 61 01" in out  # {"a": 1} as MessagePack


def test_the_payload_comes_from_stdin_or_a_file(
    echo: Server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"from": "stdin"}'))
    status, out, _ = send(capsys, echo.port, "-")
    assert (status, json.loads(out)) == (0, {"from": "stdin"})
    path = tmp_path / "payload.json"
    path.write_text('{"from": "file"}', encoding="utf-8")
    status, out, _ = send(capsys, echo.port, f"@{path}")
    assert (status, json.loads(out)) == (0, {"from": "file"})


def test_an_error_reply_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    server = Server(addr="127.0.0.1", port=0)  # no handler: every request is ERR_NO_HANDLER
    with server_thread(server):
        status, out, _ = send(capsys, server.port, '{"a": 1}')
    assert status == 2
    assert json.loads(out) == {"status": "failure", "error": "ERR_NO_HANDLER"}


def test_the_raw_dump_names_every_field_of_the_frame(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with server_thread(echo_server(header_size=2, byteorder="little")) as server:
        status, out, err = send(
            capsys,
            server.port,
            '{"key": "0123456789abcdef"}',
            "--raw",
            "--header-size",
            "2",
            "--byteorder",
            "little",
        )
    assert status == 0, err
    # the echo writes compact JSON: {"key":"0123456789abcdef"}, 26 bytes
    assert out.splitlines() == [
        f"00000000  1c 00{' ' * 44}  Content-Length: 28 (2 bytes, little endian)"
        " = 2 + payload of 26",
        f"00000002  16{' ' * 47}  Protocol-Version: 22",
        f"00000003  00{' ' * 47}  Content-Encoding: 0 (json)",
        "00000004  7b 22 6b 65 79 22 3a 22  30 31 32 33 34 35 36 37"
        '   |{"key":"01234567|  payload: 26 bytes',
        "00000014  38 39 61 62 63 64 65 66  22 7d" + " " * 19 + '  |89abcdef"}|',
    ]


def test_a_refused_connection_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as closed:  # bound, never listening: connects are refused
        closed.bind(("127.0.0.1", 0))
        status, out, err = send(capsys, closed.getsockname()[1], "{}")
    assert status == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "refused" in err.lower()


def test_a_server_that_never_answers_times_out_with_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as silent:  # the kernel accepts; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        status, _, err = send(capsys, silent.getsockname()[1], "{}", "--timeout", "0.2")
    assert status == 1
    assert "timed out after 0.2 s waiting for the reply" in err


def test_a_server_that_closes_without_a_reply_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = Server(addr="127.0.0.1", port=0)

    @server.add_handler()
    async def hang_up(client: Client, packet: Packet) -> None:
        await client.close()

    with server_thread(server):
        status, _, err = send(capsys, server.port, "{}")
    assert status == 1
    assert "closed the connection without a reply" in err


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{oops", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object {...}, not an array"),
        ('"text"', "not a string"),
    ],
)
def test_a_bad_payload_is_a_usage_error(
    payload: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = send(capsys, 9, payload)  # never connects: fails before
    assert status == 2
    assert out == ""
    assert message in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["localhost:http", "{}"], "is not a number"),
        (["127.0.0.1:0", "{}"], "is not 1 to 65535"),
        (["::1:80", "{}"], "in brackets"),
        (["127.0.0.1:9", "{}", "--insecure", "--cafile", "ca.pem"], "useless with --insecure"),
        (["127.0.0.1:9", "{}", "--header-size", "9"], "--header-size"),
    ],
)
def test_bad_options_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["send", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_payload_too_long_for_the_header_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    payload = json.dumps({"data": "x" * 300})
    status, _, err = send(capsys, 9, payload, "--header-size", "1")
    assert status == 2
    assert "does not fit a 1-byte Content-Length header" in err


# -- TLS


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A TLS echo server for 127.0.0.1, and the path of its CA (made by trustme)."""
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    certfile, cafile = directory / "server.pem", directory / "ca.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(certfile)
    )
    ca.cert_pem.write_to_path(str(cafile))
    with server_thread(echo_server(certfile=str(certfile))) as server:
        yield server, str(cafile)


def test_tls_with_the_servers_ca(
    tls_server: tuple[Server, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, cafile = tls_server
    status, out, err = send(capsys, server.port, '{"secure": true}', "--cafile", cafile)
    assert status == 0, err
    assert json.loads(out) == {"secure": True}
    status, out, err = send(
        capsys, server.port, "{}", "--cafile", cafile, "--server-hostname", "localhost"
    )
    assert (status, json.loads(out)) == (0, {})


def test_tls_insecure_skips_the_check(
    tls_server: tuple[Server, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = tls_server
    status, out, err = send(capsys, server.port, '{"a": 1}', "--insecure")
    assert status == 0, err
    assert json.loads(out) == {"a": 1}


def test_tls_failures_are_connection_errors(
    tls_server: tuple[Server, str], echo: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    server, _ = tls_server
    status, _, err = send(capsys, server.port, "{}", "--tls")  # the system's CAs
    assert status == 1
    assert "does not verify" in err
    assert "--cafile" in err
    status, _, err = send(capsys, server.port, "{}")  # plaintext to a TLS port
    assert status == 1
    assert "speaks TLS: use --tls" in err
    status, _, err = send(capsys, echo.port, "{}", "--insecure")  # TLS to a plaintext port
    assert status == 1
    assert "does not speak TLS" in err
