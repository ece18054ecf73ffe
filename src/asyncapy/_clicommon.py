"""What ``asyncapy send`` and ``asyncapy bench`` share: the address, the frame and TLS options.

Every helper here reports a bad value as a :class:`click.BadParameter` (a usage
error: exit status 2, one line), never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from .protocol import MAX_HEADER_SIZE, MIN_HEADER_SIZE

__all__ = ["frame_options", "parse_address", "read_payload", "tls_options", "tls_settings"]

F = TypeVar("F", bound=Callable[..., Any])

LOCALHOST = "127.0.0.1"
_JSON_TYPES: dict[type, str] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` or ``PORT`` as ``(host, port)``.

    A missing host is ``127.0.0.1``.

    Raises:
        click.BadParameter: when the text is none of these, or the port is not 1 to 65535.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise click.BadParameter(
            f"{text!r}: write an IPv6 address in brackets, [::1]:8081", param_hint="HOST:PORT"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not HOST:PORT (port {port_text!r} is not a number)",
            param_hint="HOST:PORT",
        ) from None
    if not 0 < port < 65536:
        raise click.BadParameter(f"port {port} is not 1 to 65535", param_hint="HOST:PORT")
    return host or LOCALHOST, port


def read_payload(text: str, param_hint: str) -> dict[Any, Any]:
    """The JSON object in ``text``, or read from stdin (``-``) or a file (``@PATH``).

    Raises:
        click.BadParameter: when the file cannot be read or the text is not one JSON object.
    """
    where = "the payload"
    if text == "-":
        text, where = sys.stdin.read(), "the payload on stdin"
    elif text.startswith("@"):
        path = text[1:]
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(
                f"cannot read {path!r}: {exc}", param_hint=param_hint
            ) from None
        where = f"the payload in {path!r}"
    try:
        value = orjson.loads(text.encode("utf-8", "surrogatepass"))
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{where} is not valid JSON: {exc}", param_hint=param_hint
        ) from None
    if not isinstance(value, dict):
        raise click.BadParameter(
            f"{where} must be a JSON object {{...}}, not {_JSON_TYPES.get(type(value), 'that')}",
            param_hint=param_hint,
        )
    return value


def frame_options(function: F) -> F:
    """Add ``--encoding``, ``--header-size`` and ``--byteorder``."""
    for option in reversed(
        [
            click.option(
                "-e",
                "--encoding",
                type=click.Choice(["json", "ziproto"]),
                default="json",
                show_default=True,
                help="Encoding of the request payloads (ziproto is MessagePack).",
            ),
            click.option(
                "--header-size",
                type=click.IntRange(MIN_HEADER_SIZE, MAX_HEADER_SIZE),
                default=4,
                show_default=True,
                help="Bytes of the Content-Length header: the server's header_size.",
            ),
            click.option(
                "--byteorder",
                type=click.Choice(["big", "little"]),
                default="big",
                show_default=True,
                help="Byte order of the Content-Length header: the server's byteorder.",
            ),
        ]
    ):
        function = option(function)
    return function


def tls_options(function: F) -> F:
    """Add ``--tls``, ``--cafile``, ``--insecure`` and ``--server-hostname``."""
    for option in reversed(
        [
            click.option(
                "--tls", is_flag=True, help="Connect with TLS, verified against the system's CAs."
            ),
            click.option(
                "--cafile",
                type=click.Path(dir_okay=False),
                default=None,
                help="PEM file of the CAs to trust instead (implies --tls).",
            ),
            click.option(
                "--insecure",
                is_flag=True,
                help="TLS without checking the certificate or host name (implies --tls).",
            ),
            click.option(
                "--server-hostname",
                metavar="NAME",
                default=None,
                help="Name to verify the certificate against and send as SNI (implies --tls)."
                "  [default: HOST]",
            ),
        ]
    ):
        function = option(function)
    return function


def timeout_option(what: str) -> Callable[[F], F]:
    """The ``-t/--timeout SECONDS`` option (default 10), ``what`` saying what it limits."""
    return click.option(
        "-t",
        "--timeout",
        type=click.FloatRange(0, min_open=True),
        default=10.0,
        metavar="SECONDS",
        help=f"Limit on {what}.",
    )


def tls_settings(
    tls: bool, cafile: str | None, insecure: bool, server_hostname: str | None
) -> bool:
    """Whether to speak TLS: ``--tls``, or any option that implies it.

    Raises:
        click.BadParameter: for ``--cafile`` with ``--insecure``.
    """
    if cafile is not None and insecure:
        raise click.BadParameter("--cafile is useless with --insecure", param_hint="--cafile")
    return tls or cafile is not None or insecure or server_hostname is not None
