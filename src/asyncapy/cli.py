"""The ``asyncapy`` command line: ``run``, ``send``, ``bench`` and ``keys``.

``asyncapy run module:server`` serves a :class:`~asyncapy.Server` in
supervised worker processes (see :mod:`asyncapy.supervisors`). Every option
of ``run`` is also a setting: the ``[AsyncAPY]`` section of ``--config`` and
``ASYNCAPY_<NAME>`` set it too, and the precedence, lowest first, is the
``Server(...)`` constructor, the INI file, the environment, the command line.

Errors: a wrong option, a bad setting or an app that does not load gives one
line on stderr and a non-zero exit status (2 for usage, 1 otherwise), never a
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from . import __version__
from ._bench import bench
from ._compiled import describe as describe_build
from ._keys import keys
from ._schemacli import schema
from ._send import send
from .errors import ConfigError

__all__ = ["RUN_OPTIONS", "cli", "main"]

#: ``asyncapy run`` option -> setting it feeds (see ``docs/configuration.md``).
RUN_OPTIONS: dict[str, str] = {
    "host": "addr",
    "port": "port",
    "certfile": "certfile",
    "keyfile": "keyfile",
    "log_level": "logging_level",
    "access_log": "access_log",
    "log_format": "log_format",
    "log_config": "log_config",
    "loop": "loop",
    "workers": "workers",
    "socket_mode": "socket_mode",
    "worker_healthcheck_timeout": "worker_healthcheck_timeout",
    "graceful_timeout": "graceful_timeout",
    "metrics_port": "metrics_port",
    "metrics_addr": "metrics_addr",
    "store": "store",
    "session_ttl": "session_ttl",
    "proxy_protocol": "proxy_protocol",
    "trusted_proxy": "trusted_proxies",
    "proxy_header_timeout": "proxy_header_timeout",
    "max_connection_age": "max_connection_age",
    "max_connection_age_grace": "max_connection_age_grace",
}


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--version``: the version and which hot modules run compiled (docs/compiled.md)."""
    if value and not ctx.resilient_parsing:
        click.echo(f"asyncapy {__version__} ({describe_build()})")
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-V",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and the build (compiled or pure Python), and exit.",
)
def cli() -> None:
    """asyncapy: asynchronous API endpoints over AsyncAProto (TCP or TLS)."""


@cli.command(context_settings={"show_default": True})
@click.argument("app", metavar="MODULE:SERVER")
@click.option("--host", default=None, help="Address to listen on.  [setting: addr; 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port to listen on.  [setting: port; 8081]")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    help="INI file with an [AsyncAPY] section (any setting).",
)
@click.option(
    "-s",
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other setting, e.g. -s timeout=30 (repeatable).",
)
@click.option("--certfile", default=None, help="PEM certificate chain: serve TLS.")
@click.option("--keyfile", default=None, help="PEM private key, when not in --certfile.")
@click.option(
    "--log-level",
    default=None,
    help="Level of the asyncapy loggers (DEBUG, INFO...).  [setting: logging_level; INFO]",
)
@click.option(
    "--access-log/--no-access-log",
    default=None,
    help="One asyncapy.access record per packet.  [default: on]",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Console log lines as text or one JSON object each.  [default: text]",
)
@click.option(
    "--log-config",
    type=click.Path(dir_okay=False),
    default=None,
    help="Logging configuration: dictConfig as .json, or a fileConfig .ini.",
)
@click.option(
    "--loop",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default=None,
    help="Event loop; auto picks uvloop when it imports.  [default: auto]",
)
@click.option("--workers", type=int, default=None, help="Worker processes.  [default: 1]")
@click.option(
    "--socket-mode",
    type=click.Choice(["reuseport", "shared"]),
    default=None,
    help="One SO_REUSEPORT listener per worker, or one socket shared by all.  [default: reuseport]",
)
@click.option(
    "--worker-healthcheck-timeout",
    type=float,
    default=None,
    help="Seconds a worker may stay silent before it is replaced.  [default: 10]",
)
@click.option(
    "--graceful-timeout",
    type=float,
    default=None,
    help="Seconds a stopping worker gets to finish and run shutdown().  [default: 30]",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve Prometheus /metrics on this port.  [default: off]",
)
@click.option("--metrics-addr", default=None, help="Address of /metrics.  [default: 127.0.0.1]")
@click.option(
    "--store",
    metavar="URL",
    default=None,
    help="Shared state: memory://, sqlite:///path.db or redis://host:port/db; a shared"
    " store makes session_limit cluster-wide.  [default: memory://]",
)
@click.option(
    "--session-ttl",
    type=float,
    default=None,
    help="Seconds after which a dead worker's sessions stop counting.  [default: 10]",
)
@click.option(
    "--proxy-protocol/--no-proxy-protocol",
    default=None,
    help="Read a PROXY v1/v2 header from the trusted proxies first.  [default: off]",
)
@click.option(
    "--trusted-proxy",
    multiple=True,
    metavar="ADDR[/BITS]",
    help="A load balancer allowed to send PROXY headers (repeatable).",
)
@click.option(
    "--proxy-header-timeout",
    type=float,
    default=None,
    help="Seconds to receive the whole PROXY header.  [default: 5]",
)
@click.option(
    "--max-connection-age",
    type=float,
    default=None,
    help="Close connections gracefully after about this many seconds.  [default: never]",
)
@click.option(
    "--max-connection-age-grace",
    type=float,
    default=None,
    help="Seconds an aged connection's requests get before a reset.  [default: shutdown_timeout]",
)
def run(app: str, config: str | None, assignments: tuple[str, ...], **options: Any) -> int:
    """Serve MODULE:SERVER (an asyncapy.Server) in supervised worker processes.

    The parent process binds the listening sockets and never imports the
    app; each worker imports it, serves, and reports to the parent over a
    pipe. SIGTERM or SIGINT stops gracefully (a second one forces), SIGHUP
    replaces the workers one by one.
    """
    from .supervisors import Supervisor, WorkerSpec

    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{assignment!r} is not KEY=VALUE", param_hint="--set")
        overrides[key.strip().lower()] = value
    for option, value in options.items():
        if value is not None and value != ():  # () is a repeatable option not given
            overrides[RUN_OPTIONS[option]] = value
    spec = WorkerSpec.build(app, overrides, config)
    return Supervisor(spec).run()


cli.add_command(send)
cli.add_command(bench)
cli.add_command(keys)
cli.add_command(schema)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asyncapy`` command; return its exit status.

    Usage errors exit 2, other errors 1, both with one line on stderr.
    """
    try:
        result = cli.main(args=argv, prog_name="asyncapy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("asyncapy: aborted", err=True)
        return 1
    except ConfigError as exc:
        click.echo(f"asyncapy: error: {exc}", err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
