"""The named loggers, the JSON formatter, and log_config files (JSON and INI)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from asyncapy import ConfigError, Packet, Server
from asyncapy import logging as asyncapy_logging
from asyncapy.core import Client
from asyncapy.logging import JsonFormatter
from tests.conftest import Runner
from tests.helpers import ask, serving


def test_the_loggers_are_children_of_asyncapy() -> None:
    assert asyncapy_logging.error_logger.name == "asyncapy.error"
    assert asyncapy_logging.access_logger.name == "asyncapy.access"
    for logger in (asyncapy_logging.error_logger, asyncapy_logging.access_logger):
        assert logger.parent is logging.getLogger("asyncapy")


def test_server_messages_and_handler_errors_go_to_asyncapy_error(
    arun: Runner[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = Server(port=0)

    @server.add_handler()
    async def broken(client: Client, packet: Packet) -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        async with serving(server):
            assert await ask(server, {"a": 1}) == {"status": "failure", "error": "ERR_INTERNAL"}

    with caplog.at_level(logging.INFO, logger="asyncapy"):
        arun(main())
    names = {record.name for record in caplog.records}
    assert names == {"asyncapy.error"}, names
    boom = [r for r in caplog.records if r.exc_info and "boom" in str(r.exc_info[1])]
    assert boom
    assert boom[0].levelno == logging.ERROR


def test_logging_level_applies_to_both_loggers(arun: Runner[Any]) -> None:
    server = Server(port=0, logging_level="WARNING")

    async def main() -> None:
        async with serving(server):
            pass

    arun(main())
    for logger in (asyncapy_logging.error_logger, asyncapy_logging.access_logger):
        assert logger.getEffectiveLevel() == logging.WARNING


# -- the JSON formatter


def record(msg: str, *args: object, **extra: Any) -> logging.LogRecord:
    logger = logging.getLogger("asyncapy.access")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None, extra=extra)


def test_the_json_formatter_writes_one_object_per_line_with_the_extras() -> None:
    line = JsonFormatter().format(
        record('%s - "%s"', "127.0.0.1:5000", "echo", peer="127.0.0.1:5000", bytes_in=70, odd={1})
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == '127.0.0.1:5000 - "echo"'
    assert entry["level"] == "INFO"
    assert entry["logger"] == "asyncapy.access"
    assert entry["time"].endswith("Z")
    assert entry["peer"] == "127.0.0.1:5000"
    assert entry["bytes_in"] == 70
    assert entry["odd"] == "{1}"  # what JSON cannot hold is its str()
    assert not {"args", "msg", "exc_info"} & set(entry)


def test_the_json_formatter_keeps_the_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.getLogger("asyncapy.error").makeRecord(
            "asyncapy.error", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    entry = json.loads(JsonFormatter(datefmt="%Y").format(failed))
    assert entry["exc_info"].startswith("Traceback")
    assert "RuntimeError: boom" in entry["exc_info"]
    assert entry["time"].isdigit()


# -- log_format and log_config (in a child process: they change the logging of the process)

CHILD = """
import logging, sys
from asyncapy.logging import configure
configure(logging.INFO, "%(levelname)s %(message)s", "", log_format=sys.argv[1],
          log_config=sys.argv[2] or None)
logging.getLogger("asyncapy.access").info("one %s", "packet", extra={"peer": "p:1"})
logging.getLogger("asyncapy.error").debug("not shown")
logging.getLogger("asyncapy.error").warning("careful")
"""


def child(log_format: str = "text", log_config: Path | None = None) -> str:
    argv = [sys.executable, "-c", CHILD, log_format, str(log_config or "")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return done.stderr


def test_log_format_json_makes_the_installed_handler_write_json() -> None:
    lines = [json.loads(line) for line in child("json").splitlines()]
    assert [(e["logger"], e["message"]) for e in lines] == [
        ("asyncapy.access", "one packet"),
        ("asyncapy.error", "careful"),
    ]
    assert lines[0]["peer"] == "p:1"


def test_log_format_text_is_the_console_format() -> None:
    assert child("text").splitlines() == ["INFO one packet", "WARNING careful"]


def test_a_json_log_config_is_applied_with_dictconfig(tmp_path: Path) -> None:
    out = tmp_path / "access.log"
    config = {
        "version": 1,
        "formatters": {"json": {"()": "asyncapy.logging.JsonFormatter"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "json"}
        },
        "loggers": {"asyncapy.access": {"handlers": ["file"], "propagate": False}},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    stderr = child("text", path)
    assert stderr.splitlines() == ["WARNING careful"]  # asyncapy.error still logs
    entry = json.loads(out.read_text(encoding="utf-8"))
    assert (entry["message"], entry["peer"]) == ("one packet", "p:1")


def test_an_ini_log_config_is_applied_with_fileconfig(tmp_path: Path) -> None:
    out = tmp_path / "access.log"
    path = tmp_path / "logging.ini"
    path.write_text(
        textwrap.dedent(
            f"""\
            [loggers]
            keys = root, access

            [handlers]
            keys = file

            [formatters]
            keys = plain

            [logger_root]
            handlers =

            [logger_access]
            qualname = asyncapy.access
            handlers = file
            propagate = 0

            [handler_file]
            class = FileHandler
            args = ({str(out)!r},)
            formatter = plain

            [formatter_plain]
            format = ACCESS %(peer)s %(message)s
            """
        ),
        encoding="utf-8",
    )
    stderr = child("text", path)
    assert out.read_text(encoding="utf-8") == "ACCESS p:1 one packet\n"
    assert stderr.splitlines() == ["WARNING careful"]


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("missing.json", None, "No such file"),
        ("missing.ini", None, "No such file"),
        ("broken.json", '{"version": 1,', "Expecting"),
        ("list.json", "[1, 2]", "the file holds no JSON object"),
        ("empty.conf", "[other]\nx = 1\n", "formatters"),
    ],
)
def test_a_bad_log_config_is_one_config_error(
    tmp_path: Path, name: str, text: str | None, reason: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^log_config '.*{name}' cannot be applied: .*{reason}"):
        asyncapy_logging.configure(logging.INFO, "%(message)s", "", log_config=path)


def test_a_log_config_that_dictconfig_refuses_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}')
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "text", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"asyncapy.errors.ConfigError: log_config '{path}' cannot be applied:")
    assert "'h'" in last


def test_server_takes_the_log_settings() -> None:
    server = Server(port=0, access_log=True, log_format="json", log_config="x.json")
    assert server.settings.access_log is True
    assert server.settings.log_format == "json"
    assert server.settings.log_config == "x.json"
    with pytest.raises(ConfigError):
        Server(port=0, log_format="xml")
