"""Servers with setup/shutdown hooks, run as processes by ``test_lifecycle.py``.

``python lifecycle_server.py`` runs one server whose address comes from
``ASYNCAPY_ADDR``/``ASYNCAPY_PORT`` (the environment overrides the
constructor) with ``Server.start()``. ``python lifecycle_server.py PORT PORT``
serves two servers on those ports in one event loop (run it without
``ASYNCAPY_PORT``). Hooks print ``SETUP`` and ``SHUTDOWN`` (followed by the
server's name when there are two); the handler prints ``HANDLING <n>``, sleeps
``packet["sleep"]`` seconds (0 by default) and replies ``{"slept": <n>}``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from asyncapy import Client, Packet, Server


class LifecycleServer(Server):
    def __init__(self, name: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name

        @self.add_handler()
        async def sleeper(client: Client, packet: Packet) -> None:
            seconds = float(packet.get("sleep", 0))
            print(f"HANDLING {seconds:g}", flush=True)
            await asyncio.sleep(seconds)
            await client.send({"slept": seconds})

    async def setup(self) -> None:
        print(f"SETUP {self.name}".strip(), flush=True)

    async def shutdown(self) -> None:
        print(f"SHUTDOWN {self.name}".strip(), flush=True)


async def serve_together(servers: list[LifecycleServer]) -> None:
    await asyncio.gather(*(server.serve() for server in servers))


def main(argv: list[str]) -> None:
    if not argv:
        LifecycleServer(port=1500).start()
        return
    servers = [LifecycleServer(f"#{n}", port=int(port)) for n, port in enumerate(argv)]
    asyncio.run(serve_together(servers))


if __name__ == "__main__":
    main(sys.argv[1:])
