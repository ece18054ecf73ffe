"""``asyncapy bench HOST:PORT``: a closed-loop load generator for any asyncapy server.

The load itself is :mod:`asyncapy._loadgen` (one process, uvloop) or
:mod:`asyncapy._loadproc` (``--processes N``); this module builds the request,
shows the progress line on a terminal and prints the result: a table, or one
JSON object with ``--json``. Exit status: 0 when it ran (errors are in the
report), 2 on bad usage, 1 when no connection could be made or a load process
failed.
"""

from __future__ import annotations

import sys
import time
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
from ._loadgen import LoadSpec, run_spec
from ._loadproc import LoadProcessError, run_processes
from ._loadstats import LoadResult
from ._tls import client_context
from .codecs import get_codec
from .logging import host_port
from .protocol import FrameEncoder

__all__ = ["bench", "make_payload", "report_json", "report_table"]

_MIN_SIZE_MAP = {"data": ""}


def make_payload(size: int, encoding: str) -> bytes:
    """A request payload of about ``size`` bytes in ``encoding`` (exactly, where it can be).

    The map is ``{"method": "echo", "id": 1, "data": "xxx..."}`` (what the
    echo of ``bench/servers.py`` expects), or ``{"data": "xx..."}`` when
    ``size`` is smaller than that; ``data`` pads it.

    Raises:
        ValueError: when ``size`` is below the smallest such map.
    """
    codec = get_codec(encoding)
    for base in ({"method": "echo", "id": 1, "data": ""}, _MIN_SIZE_MAP):
        empty = len(codec.encode(base))
        if size >= empty:
            break
    else:
        raise ValueError(f"--size must be at least {empty} bytes for {encoding}")
    pad = size - empty
    body = codec.encode({**base, "data": "x" * pad})
    while len(body) > size and pad > 0:  # a longer string header: shrink the padding
        pad -= len(body) - size
        body = codec.encode({**base, "data": "x" * max(pad, 0)})
    return body


class _Progress:
    """The live line on stderr: replies so far and the rate of the last quarter second."""

    def __init__(self, warmup: float) -> None:
        self.start = time.monotonic()
        self.warmup = warmup
        self.last = (self.start, 0)
        self.shown = False

    def __call__(self, count: int) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        then, before = self.last
        self.last = (now, count)
        if elapsed < self.warmup:
            text = f"warming up ... {self.warmup - elapsed:4.1f} s"
        else:
            rate = (count - before) / (now - then) if now > then else 0.0
            text = f"{elapsed - self.warmup:6.1f} s  {count:>12,} requests  {rate:>11,.0f} req/s"
        click.echo(f"\r{text}\x1b[K", err=True, nl=False, color=True)
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            click.echo("\r\x1b[K", err=True, nl=False, color=True)


def _us(ns: int) -> float:
    return round(ns / 1000, 1)


def report_json(result: LoadResult, settings: dict[str, Any]) -> str:
    """The result as one JSON object: the settings, then loadgen.c's fields, then errors."""
    latency = result.latencies_ns()
    fields = {
        **settings,
        "requests": result.requests,
        "seconds": round(result.seconds, 3),
        "rps": round(result.rps, 1),
        "p50_us": _us(latency["p50"]),
        "p90_us": _us(latency["p90"]),
        "p99_us": _us(latency["p99"]),
        "p999_us": _us(latency["p99.9"]),
        "max_us": _us(latency["max"]),
        "errors": result.error_count,
        "errors_by_code": dict(sorted(result.errors.items())),
    }
    return msgspec.json.encode(fields).decode()


def report_table(result: LoadResult, settings: dict[str, Any]) -> list[str]:
    """The result as the lines of a small table (latencies in microseconds)."""
    s = settings
    if s["requests_limit"] is not None:
        run = f"{s['requests_limit']:,} requests after {s['warmup']:g} s of warm-up"
    else:
        run = f"{s['duration']:g} s after {s['warmup']:g} s of warm-up"
    plural = "es" if s["processes"] > 1 else ""
    lines = [
        f"asyncapy bench {s['target']}{' (TLS)' if s['tls'] else ''}: {s['connections']}"
        f" connections x {s['pipeline']} in flight, {s['encoding']} payload of"
        f" {s['payload_bytes']} bytes, {run}, {s['processes']} process{plural}",
        "",
    ]
    latency = result.latencies_ns()
    head = ["requests", "seconds", "requests/s", "p50 us", "p90 us", "p99 us", "p99.9 us"]
    head += ["max us", "errors"]
    row = [f"{result.requests:,}", f"{result.seconds:.2f}", f"{result.rps:,.1f}"]
    row += [f"{_us(latency[k]):,.1f}" for k in ("p50", "p90", "p99", "p99.9", "max")]
    row.append(f"{result.error_count:,}")
    widths = [max(len(h), len(v)) for h, v in zip(head, row, strict=True)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    lines.append("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    if result.errors:
        kinds = sorted(result.errors.items(), key=lambda item: (-item[1], item[0]))
        width = max(len(kind) for kind, _ in kinds)
        lines += ["", "errors by code:"]
        lines += [f"  {kind:<{width}}  {count:>12,}" for kind, count in kinds]
    return lines


@click.command(context_settings={"show_default": True})
@click.argument("address", metavar="HOST:PORT")
@click.option("-c", "--connections", type=click.IntRange(1), default=16, help="Connections.")
@click.option(
    "-d",
    "--duration",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Length of the measured window.  [default: 10, unless --requests]",
)
@click.option(
    "-n",
    "--requests",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many replies instead of after --duration.",
)
@click.option(
    "-p",
    "--pipeline",
    type=click.IntRange(1, 65536),
    default=1,
    help="Requests in flight per connection.",
)
@click.option(
    "-s",
    "--size",
    type=click.IntRange(3),
    default=None,
    metavar="BYTES",
    help="Payload size of the generated request, an echo map.  [default: 64]",
)
@click.option(
    "--payload",
    "payload_text",
    metavar="JSON",
    default=None,
    help="The request payload instead: a JSON object, or @FILE.",
)
@frame_options
@tls_options
@click.option(
    "-w",
    "--warmup",
    type=click.FloatRange(0),
    default=None,
    metavar="SECONDS",
    help="Load before the window opens, not counted.  [default: 1, 0 with --requests]",
)
@click.option(
    "--processes",
    type=click.IntRange(1),
    default=1,
    help="Processes sharing the connections (fresh interpreters, results merged).",
)
@timeout_option("a connect, and on a connection's silence while it waits for replies")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, not the table.")
def bench(
    address: str,
    connections: int,
    duration: float | None,
    requests: int | None,
    pipeline: int,
    size: int | None,
    payload_text: str | None,
    encoding: str,
    header_size: int,
    byteorder: Literal["big", "little"],
    tls: bool,
    cafile: str | None,
    insecure: bool,
    server_hostname: str | None,
    warmup: float | None,
    processes: int,
    timeout: float,
    as_json: bool,
) -> int:
    """Load-test the asyncapy server at HOST:PORT; print requests/s, latency and errors.

    Each connection keeps --pipeline requests in flight and sends the next one
    as soon as a reply comes back (a closed loop). Latency runs from writing a
    request to reading its whole reply; percentiles are read from a
    log-linear histogram, at most 0.8 % above the true value. Errors are
    counted by code: the ERR_* of error replies, and connection errors
    (refused, closed by the server, reset, reply timeout), after which the
    connection is replaced. A live line on stderr shows the progress when it
    is a terminal.

    Run it on other cores than the server's (taskset), or it measures itself.
    """
    host, port = parse_address(address)
    if duration is not None and requests is not None:
        raise click.UsageError("give --duration or --requests, not both")
    if size is not None and payload_text is not None:
        raise click.UsageError("give --size or --payload, not both")
    if processes > connections:
        raise click.BadParameter(
            f"{processes} processes need at least {processes} connections", param_hint="--processes"
        )
    if requests is None and duration is None:
        duration = 10.0
    if warmup is None:
        warmup = 0.0 if requests is not None else 1.0
    codec = get_codec(encoding)
    try:
        if payload_text is not None:
            body = codec.encode_payload(read_payload(payload_text, "--payload"))
        else:
            body = make_payload(64 if size is None else size, encoding)
        request = FrameEncoder(header_size, byteorder).encode(body, codec.encoding)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--size/--payload") from None
    use_tls = tls_settings(tls, cafile, insecure, server_hostname)
    try:
        client_context(use_tls, cafile, not insecure, None, server_hostname)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise click.BadParameter(f"cannot load {cafile!r}: {exc}", param_hint="--cafile") from None
    spec = LoadSpec(
        host=host,
        port=port,
        request=request,
        connections=connections,
        pipeline=pipeline,
        duration=duration,
        requests=requests,
        warmup=warmup,
        header_size=header_size,
        byteorder=byteorder,
        timeout=timeout,
        tls=use_tls,
        cafile=cafile,
        insecure=insecure,
        server_hostname=server_hostname,
    )
    progress = _Progress(warmup) if sys.stderr.isatty() else None
    try:
        if processes == 1:
            result = run_spec(spec, progress=progress)
        else:
            result = run_processes(spec, processes, progress)
    except LoadProcessError as exc:
        click.echo(f"asyncapy bench: {exc}", err=True)
        return 1
    finally:
        if progress is not None:
            progress.clear()
    target = host_port(host, port)
    if not result.connected:
        why = result.last_error or "no connection"
        click.echo(f"asyncapy bench: cannot connect to {target}: {why}", err=True)
        return 1
    settings: dict[str, Any] = {
        "target": target,
        "tls": use_tls,
        "connections": connections,
        "pipeline": pipeline,
        "processes": processes,
        "encoding": encoding,
        "payload_bytes": len(body),
        "header_size": header_size,
        "byteorder": byteorder,
        "warmup": warmup,
        "duration": duration,
        "requests_limit": requests,
    }
    if as_json:
        click.echo(report_json(result, settings))
    else:
        click.echo("\n".join(report_table(result, settings)))
    return 0
