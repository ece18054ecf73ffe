"""``asyncapy send HOST:PORT PAYLOAD``: one request from the shell.

The request goes out with the blocking :class:`~asyncapy.client.Client`; the
reply is printed as indented JSON, or with ``--raw`` as a hex dump of its
frame with each field named. With ``--validate SCHEMA.json`` (a document of
``asyncapy schema``) the payload is checked first, and nothing is sent when it
does not conform. Exit status: 0 on a reply, 2 on an error reply
(``{"status": "failure", ...}``), on a usage error and on a payload that
``--validate`` refuses (each error on its own line), 1 when the connection
fails or the server answers no valid frame: then one line on stderr.
"""

from __future__ import annotations

import base64
import datetime
import socket
import ssl
from typing import Any, Literal

import click
import msgspec

from ._clicommon import (
    frame_options,
    parse_address,
    read_payload,
    timeout_option,
    tls_options,
    tls_settings,
)
from ._schemacli import payload_refused
from .client import Client
from .codecs import CODECS, get_codec
from .errors import DecodeError, EncodeError, RemoteProtocolError, TLSMismatchError
from .protocol import PROTOCOL_VERSION, Encoding, FrameEncoder

__all__ = ["hexdump_frame", "pretty_json", "send"]

EXIT_FAILURE_REPLY = 2
EXIT_CONNECTION = 1
EXIT_INVALID = 2
_WIDTH = 16  # bytes per line of the dump
_HEX = _WIDTH * 3 + 1  # width of the hex column ("xx " * 16, a gap after 8)


def _jsonable(value: Any) -> Any:
    """``value`` with what JSON lacks made plain: bytes as base64, any key as a string."""
    if isinstance(value, dict):
        return {
            key if isinstance(key, str) else _key(key): _jsonable(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, msgspec.msgpack.Ext):
        return {"ext_type": value.code, "data": _jsonable(value.data)}
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def _key(key: Any) -> str:
    if isinstance(key, bool | int | float) or key is None:
        return msgspec.json.encode(key).decode()
    return str(_jsonable(key))


def pretty_json(value: Any) -> str:
    """``value`` as JSON indented by 2 (UTF-8 text, keys in their order)."""
    return msgspec.json.format(msgspec.json.encode(_jsonable(value)), indent=2).decode()


def _hex(chunk: bytes) -> str:
    left = " ".join(f"{b:02x}" for b in chunk[:8])
    right = " ".join(f"{b:02x}" for b in chunk[8:])
    return f"{left}  {right}" if right else left


def hexdump_frame(frame: bytes, header_size: int, byteorder: str) -> list[str]:
    """The lines of an annotated hex dump of one frame, ``xxd``-like.

    Each line: offset, up to 16 bytes in hex, then what they are: the
    Content-Length header with its value, the Protocol-Version and
    Content-Encoding bytes, and the payload (with its printable ASCII).
    """
    lines: list[str] = []

    def line(offset: int, chunk: bytes, note: str) -> None:
        lines.append(f"{offset:08x}  {_hex(chunk):<{_HEX}}  {note}".rstrip())

    length = int.from_bytes(frame[:header_size], byteorder)  # type: ignore[arg-type]
    body = len(frame) - header_size - 2
    line(
        0,
        frame[:header_size],
        f"Content-Length: {length} ({header_size} bytes, {byteorder} endian)"
        f" = 2 + payload of {body}",
    )
    version, encoding = frame[header_size], frame[header_size + 1]
    known = "" if version == PROTOCOL_VERSION else f", expected {PROTOCOL_VERSION}"
    line(header_size, frame[header_size : header_size + 1], f"Protocol-Version: {version}{known}")
    name = str(Encoding(encoding)) if encoding in (0, 1) else "unknown"
    line(
        header_size + 1,
        frame[header_size + 1 : header_size + 2],
        f"Content-Encoding: {encoding} ({name})",
    )
    start = header_size + 2
    for offset in range(start, len(frame), _WIDTH):
        chunk = frame[offset : offset + _WIDTH]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        note = f"|{text}|"
        if offset == start:
            note = f"{note:<{_WIDTH + 2}}  payload: {body} bytes"
        line(offset, chunk, note)
    return lines


class _FailedError(Exception):
    """The request failed before a reply: exit 1 with this one line."""


def _exchange(
    client: Client, host: str, port: int, payload: dict[Any, Any], timeout: float
) -> bytes:
    """Connect, send, receive one frame; return it (header included).

    Raises:
        _FailedError: with one line, on any connection, TLS or framing failure.
    """
    stage = f"connecting to {host}:{port}"
    try:
        client.connect(host, port)
        stage = f"sending to {host}:{port}"
        client.send(payload)
        stage = f"waiting for the reply of {host}:{port}"
        raw = client.receive_raw()
    except TimeoutError:
        raise _FailedError(f"timed out after {timeout:g} s {stage}") from None
    except TLSMismatchError as exc:
        hint = "use --tls" if exc.peer_speaks_tls else "leave out the TLS options"
        what = "speaks TLS" if exc.peer_speaks_tls else "does not speak TLS"
        raise _FailedError(f"the server at {host}:{port} {what}: {hint}") from None
    except ssl.SSLCertVerificationError as exc:
        raise _FailedError(
            f"TLS: the certificate of {host}:{port} does not verify: {exc.verify_message}"
            " (--cafile FILE to trust its CA, --insecure to skip the check)"
        ) from None
    except ssl.SSLError as exc:
        raise _FailedError(f"TLS failed {stage}: {exc.reason or exc}") from None
    except socket.gaierror as exc:
        raise _FailedError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except RemoteProtocolError as exc:
        raise _FailedError(
            f"bad reply from {host}:{port}: {exc} (do --header-size and --byteorder"
            " match the server's?)"
        ) from None
    except OSError as exc:
        raise _FailedError(f"{stage}: {exc.strerror or exc}") from None
    if not raw:
        raise _FailedError(f"{host}:{port} closed the connection without a reply")
    return raw


@click.command(context_settings={"show_default": True})
@click.argument("address", metavar="HOST:PORT")
@click.argument("payload_text", metavar="PAYLOAD")
@frame_options
@tls_options
@timeout_option("the connect (and TLS handshake), the send and the reply, each")
@click.option("--raw", is_flag=True, help="Print the reply frame as an annotated hex dump.")
@click.option(
    "--validate",
    "schema_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="SCHEMA.json",
    help="Check PAYLOAD against this `asyncapy schema` document first; send nothing"
    " if it does not conform (needs jsonschema).",
)
@click.option(
    "--handler",
    metavar="NAME",
    default=None,
    help="With --validate: check against this handler's request type only.",
)
def send(
    address: str,
    payload_text: str,
    encoding: str,
    header_size: int,
    byteorder: Literal["big", "little"],
    tls: bool,
    cafile: str | None,
    insecure: bool,
    server_hostname: str | None,
    timeout: float,
    raw: bool,
    schema_path: str | None,
    handler: str | None,
) -> int:
    """Send one request to HOST:PORT and print the reply.

    HOST:PORT may also be [IPv6]:PORT, or PORT alone for 127.0.0.1.
    PAYLOAD is a JSON object: the text itself, '-' to read it from stdin, or
    @FILE. It is sent in --encoding (MessagePack for ziproto). The reply is
    printed as indented JSON (binary strings as base64), or with --raw as a
    hex dump of its frame. --validate SCHEMA.json checks PAYLOAD first against
    the document that `asyncapy schema` wrote (the request of any typed
    handler, or of --handler NAME's) and, when it does not conform, prints
    every error with its JSON path and sends nothing.

    Exit status: 0 on a reply; 2 on an error reply ({"status": "failure",
    "error": "ERR_..."}), on bad usage and on a payload --validate refuses;
    1 when the connection fails (refused, timed out, reset, TLS) or the reply
    is not a valid frame.
    """
    host, port = parse_address(address)
    payload = read_payload(payload_text, "PAYLOAD")
    if handler is not None and schema_path is None:
        raise click.BadParameter("is only useful with --validate", param_hint="--handler")
    if schema_path is not None and payload_refused(schema_path, payload, handler):
        return EXIT_INVALID
    use_tls = tls_settings(tls, cafile, insecure, server_hostname)
    try:
        client = Client(
            byteorder,
            header_size,
            use_tls,
            encoding,
            timeout,
            cafile=cafile,
            verify=not insecure,
            server_hostname=server_hostname,
        )
        codec = get_codec(encoding)  # a payload that cannot be framed: usage error, now
        FrameEncoder(header_size, byteorder).encode(codec.encode_payload(payload), codec.encoding)
    except (OSError, ssl.SSLError) as exc:
        raise click.BadParameter(f"cannot load {cafile!r}: {exc}", param_hint="--cafile") from None
    except (EncodeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="PAYLOAD") from None
    try:
        with client:
            frame = _exchange(client, host, port, payload, timeout)
    except _FailedError as exc:
        click.echo(f"asyncapy send: {exc}", err=True)
        return EXIT_CONNECTION
    if raw:
        click.echo("\n".join(hexdump_frame(frame, header_size, byteorder)))
    body = frame[header_size + 2 :]
    try:
        reply = CODECS[Encoding(frame[header_size + 1])].decode(body)
    except DecodeError as exc:
        click.echo(f"asyncapy send: the reply does not decode: {exc}", err=True)
        return EXIT_CONNECTION
    if not raw:
        click.echo(pretty_json(reply))
    return EXIT_FAILURE_REPLY if reply.get("status") == "failure" else 0
