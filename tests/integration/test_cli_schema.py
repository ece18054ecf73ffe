"""``asyncapy schema`` and ``asyncapy send --validate``, in-process through ``asyncapy.cli.main``.

The app is ``tests/data/typed_app.py``; ``send --validate`` talks to a real
server on loopback (in a thread) when the payload conforms, and must not
even connect when it does not.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncapy.cli import main
from asyncapy.server import Server
from tests.data import typed_app
from tests.helpers import server_thread

APP = "tests.data.typed_app:server"
EXPECTED = Path(__file__).resolve().parents[1] / "data" / "typed_schema.json"
ORDER = '{"customerId": "c-42", "items": [{"sku": "A-1", "qty": 3}]}'
BAD_ORDER = '{"customerId": 42, "items": [{"sku": "A-1", "qty": 0}]}'


_modules = itertools.count()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``asyncapy ARGS...``; return (status, stdout, stderr)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def expected_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(EXPECTED.read_text(encoding="utf-8"))
    document["title"] = f"Requests of {APP}"
    return document


@pytest.fixture(scope="module")
def schema_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "typed.json"
    assert main(["schema", APP, "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def typed_server() -> Iterator[Server]:
    with server_thread(typed_app.make_server()) as server:
        yield server


# -- asyncapy schema


def test_schema_prints_the_document_with_sorted_keys(capsys: pytest.CaptureFixture[str]) -> None:
    supervised = Server._supervised
    status, out, err = run(capsys, "schema", APP)
    assert (status, err) == (0, "")
    assert json.loads(out) == expected_document()
    assert out == json.dumps(expected_document(), indent=2, sort_keys=True) + "\n"
    assert Server._supervised is supervised  # importing the app left no trace


def test_schema_writes_the_file_and_prints_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "out.json"
    status, out, err = run(capsys, "schema", APP, "--output", str(path))
    assert (status, out, err) == (0, "", "")
    assert json.loads(path.read_text(encoding="utf-8")) == expected_document()


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("no_such_module_here:server", "cannot import module 'no_such_module_here'"),
        ("tests.data.typed_app:nothing", "has no attribute 'nothing'"),
        ("tests.data.typed_app:make_server", "is a function, not an asyncapy.Server"),
        ("tests.data.typed_app", "must be MODULE:ATTRIBUTE"),
    ],
)
def test_an_app_that_does_not_load_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], app: str, message: str
) -> None:
    status, out, err = run(capsys, "schema", app)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("asyncapy: error: ")
    assert message in err


def test_a_type_without_a_json_schema_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"ext_app_{next(_modules)}"
    (tmp_path / f"{name}.py").write_text(
        "import msgspec\n"
        "from asyncapy import Client, Server\n"
        "class Raw(msgspec.Struct):\n"
        "    blob: msgspec.msgpack.Ext\n"
        "server = Server()\n"
        "@server.add_handler()\n"
        "async def raw(client: Client, packet: Raw) -> None: ...\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        status, out, err = run(capsys, "schema", f"{name}:server")
    finally:
        sys.modules.pop(name, None)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert "handler raw request: Raw has no JSON Schema" in err


def test_an_unwritable_output_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, err = run(capsys, "schema", APP, "-o", str(tmp_path / "missing" / "x.json"))
    assert (status, out) == (1, "")
    assert (
        err
        == f"asyncapy: error: cannot write '{tmp_path}/missing/x.json': No such file or directory\n"
    )


def test_schema_without_an_app_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "schema")
    assert status == 2
    assert "Missing argument 'MODULE:SERVER'" in err


# -- asyncapy send --validate


@pytest.mark.parametrize(
    "extra",
    [(), ("--handler", "place_order"), ("-e", "ziproto")],
    ids=["any-handler", "one-handler", "ziproto"],
)
def test_a_conforming_payload_is_sent(
    capsys: pytest.CaptureFixture[str],
    typed_server: Server,
    schema_file: Path,
    extra: tuple[str, ...],
) -> None:
    pytest.importorskip("jsonschema")
    status, out, err = run(
        capsys,
        "send",
        f"127.0.0.1:{typed_server.port}",
        ORDER,
        "--validate",
        str(schema_file),
        *extra,
    )
    assert (status, err) == (0, "")
    assert json.loads(out) == {"order": 4, "lines": 1, "signature": "AP8="}


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: a connection would wait in its backlog."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock


def nothing_connected(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        connection, _ = sock.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False


def test_a_payload_that_does_not_conform_is_not_sent(
    capsys: pytest.CaptureFixture[str], schema_file: Path, listener: socket.socket
) -> None:
    pytest.importorskip("jsonschema")
    port = listener.getsockname()[1]
    args = ["send", f"127.0.0.1:{port}", BAD_ORDER, "--validate", str(schema_file), "-t", "2"]
    status, out, err = run(capsys, *args)
    assert (status, out) == (2, "")
    lines = err.splitlines()
    assert lines[0] == (
        f"asyncapy send: the payload is not a request of '{schema_file}' (6 errors);"
        " nothing was sent:"
    )
    assert "  [place_order] $.customerId: 42 is not of type 'string'" in lines
    assert "  [place_order] $.items[0].qty: 0 is less than the minimum of 1" in lines
    assert "  [ping] $: 'request' is a required property" in lines
    assert nothing_connected(listener)
    status, _, err = run(capsys, *args, "--handler", "place_order")
    assert status == 2
    assert err.splitlines()[1:] == [
        "  $.customerId: 42 is not of type 'string'",
        "  $.items[0].qty: 0 is less than the minimum of 1",
    ]
    assert nothing_connected(listener)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--handler", "nope"), "no handler named 'nope' in the document"),
        (("--handler", "place_order"), "the request of handler 'place_order'"),
    ],
)
def test_validate_errors_are_exit_2(
    capsys: pytest.CaptureFixture[str],
    schema_file: Path,
    listener: socket.socket,
    args: tuple[str, ...],
    message: str,
) -> None:
    pytest.importorskip("jsonschema")
    port = listener.getsockname()[1]
    status, out, err = run(
        capsys, "send", str(port), '{"request": "ping"}', "--validate", str(schema_file), *args
    )
    assert (status, out) == (2, "")
    assert message in err
    assert nothing_connected(listener)


def test_a_schema_file_that_is_not_json_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, listener: socket.socket
) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    port = listener.getsockname()[1]
    status, out, err = run(capsys, "send", str(port), ORDER, "--validate", str(path))
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    assert err.startswith(f"asyncapy send: --validate: cannot read '{path}': ")
    assert nothing_connected(listener)


def test_without_jsonschema_validate_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str],
    schema_file: Path,
    listener: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # what an absent package looks like
    port = listener.getsockname()[1]
    status, out, err = run(capsys, "send", str(port), ORDER, "--validate", str(schema_file))
    assert (status, out) == (2, "")
    assert err == (
        "asyncapy send: --validate needs the jsonschema package: pip install 'asyncapy[schema]'\n"
    )
    assert nothing_connected(listener)


def test_handler_without_validate_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "send", "1", ORDER, "--handler", "ping")
    assert status == 2
    assert "--handler" in err
    assert "only useful with --validate" in err
