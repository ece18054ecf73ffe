"""The server the adversarial tests attack: ``python -m tests.adversarial.server_app CONFIG``.

``CONFIG`` is a JSON object: ``{"settings": {...}, "lenient": false}``. The
settings go to :class:`asyncapy.Server` (``addr`` is 127.0.0.1 and ``port`` 0
unless given). A setting that the constructor does not take but
:class:`asyncapy.Settings` knows goes through its ``ASYNCAPY_<KEY>``
environment variable; one that neither knows goes to the constructor anyway,
so that the server fails to start with the constructor's own error, unless
``lenient`` is true: then it is dropped, with a line on stderr (to see how
today's code fares on the rest of a test).

Once listening it prints ``PORT <n>`` on stdout. It serves on uvloop when
uvloop imports, and stops on SIGTERM (``Server.serve()`` installs the handler).
The server logs to stderr, as asyncapy does by default.

Handlers: a packet with a ``sleep`` field sleeps that many seconds (at most
10) and is then echoed; any other packet is echoed at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import os
import sys
from typing import Any

from asyncapy import Client, Filters, Packet, Server, Settings


def build(settings: dict[str, Any], lenient: bool) -> Server:
    """The server, with its two handlers."""
    arguments: dict[str, Any] = {"addr": "127.0.0.1", "port": 0}
    arguments.update(settings)
    accepted = set(inspect.signature(Server.__init__).parameters)
    known = {f.name for f in dataclasses.fields(Settings)}
    kwargs: dict[str, Any] = {}
    for key, value in arguments.items():
        if key in accepted:
            kwargs[key] = value
        elif key in known:
            os.environ[f"ASYNCAPY_{key.upper()}"] = str(value)
        elif lenient:
            print(f"server_app: dropping unknown setting {key}={value!r}", file=sys.stderr)
        else:
            kwargs[key] = value  # the constructor says what is wrong
    server = Server(**kwargs)

    @server.add_handler(Filters.Fields(sleep=None))
    async def slow(client: Client, packet: Packet) -> None:
        await asyncio.sleep(min(float(packet["sleep"]), 10.0))
        await client.send(packet)

    @server.add_handler()
    async def echo(client: Client, packet: Packet) -> None:
        await client.send(packet)

    return server


async def serve(server: Server) -> None:
    task = asyncio.create_task(server.serve())
    started = asyncio.create_task(server.wait_started())
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        started.cancel()
        task.result()  # raises what made it fail
        return
    print(f"PORT {server.port}", flush=True)
    await task


def main(argv: list[str]) -> None:
    config = json.loads(argv[0]) if argv else {}
    server = build(dict(config.get("settings", {})), bool(config.get("lenient", False)))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(serve(server))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(server))


if __name__ == "__main__":
    main(sys.argv[1:])
