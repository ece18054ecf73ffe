"""An app for the supervisor's tests, run by ``asyncapy run supervised:server``.

Its behaviour comes from the environment, which the tests set:

- ``APP_FAIL_SETUP=1``: ``setup()`` raises (a start-up failure);
- ``APP_SHUTDOWN_LOG=path``: ``shutdown()`` appends ``shutdown <pid>`` there;
- ``APP_PORT=n``: the port the app's constructor names (``asyncapy run``'s wins).

Requests: ``{"sleep": s}`` waits ``s`` seconds first (a request in flight),
``{"block": s}`` blocks the event loop ``s`` seconds (a stuck worker),
``{"fail": true}`` raises; every reply carries the worker's pid.
"""

from __future__ import annotations

import asyncio
import os
import time

from asyncapy import Client, Packet, Server


class App(Server):
    async def setup(self) -> None:
        if os.environ.get("APP_FAIL_SETUP"):
            raise RuntimeError("setup failed on purpose")

    async def shutdown(self) -> None:
        path = os.environ.get("APP_SHUTDOWN_LOG")
        if path:
            with open(path, "a") as log:  # noqa: ASYNC230 - once, at shutdown
                log.write(f"shutdown {os.getpid()}\n")


server = App(port=int(os.environ.get("APP_PORT", "8081")))


@server.add_handler()
async def work(client: Client, packet: Packet) -> None:
    if packet.get("fail"):
        raise ValueError("fail on purpose")
    if packet.get("sleep"):
        await asyncio.sleep(packet["sleep"])
    if packet.get("block"):
        time.sleep(packet["block"])  # noqa: ASYNC251 - a stuck event loop, on purpose
    await client.send({"pid": os.getpid(), "n": packet.get("n")})


server.start()  # a no-op under asyncapy run, as in the seed's examples
