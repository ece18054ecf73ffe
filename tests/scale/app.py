"""The app each host of the scale-out test serves: ``asyncapy run tests.scale.app:server``.

Its settings (store, PROXY protocol, trusted proxies, ``session_limit``...)
all come from the ``asyncapy run`` options and the environment; the code
names none. ``SCALE_HOST`` names the host in replies (the harness sets it).

Requests, by ``request_type``:

- ``ping``: ``{"status": "success", "request_type": "pong"}``, byte for byte
  what HAProxy's health check expects (:func:`tests.scale.harness.pong_frame`).
- ``whoami``: the client's address and port as the server sees them, the
  host's name, the worker's pid, and the request's ``id`` back.
- ``issue``: a new API key (``APIKeyFactory`` over the server's store), with
  ``{"owner": ...}`` as its metadata.
- ``revoke`` with ``key``: revokes it; ``revoked`` says whether it existed.
- ``private`` with ``key``: passes ``Filters.APIFactory`` (cache of
  ``REVOCATION_TTL`` seconds) or is answered ``ERR_NO_HANDLER``.
- ``limited`` with ``key``: the same, then ``Filters.RateLimit`` per key
  (``RATE`` per ``RATE_PER`` seconds, ``RATE_BURST`` at once) over the
  server's store, which answers ``ERR_RATE_LIMITED`` with ``retry_after``.
"""

from __future__ import annotations

import os
import socket

from asyncapy import Client, Filters, Packet, Server
from asyncapy.util import APIKeyFactory
from tests.scale.harness import PONG, RATE, RATE_BURST, RATE_PER, REVOCATION_TTL

HOST = os.environ.get("SCALE_HOST") or socket.gethostname()

server = Server()
keys = APIKeyFactory(store=server.store)


def kind(name: str) -> Filters.Fields:
    """Packets whose ``request_type`` is exactly ``name``."""
    return Filters.Fields(request_type=rf"{name}\Z")


def key_filter() -> Filters.APIFactory:
    return Filters.APIFactory(keys, "key", cache_ttl=REVOCATION_TTL)


@server.add_handler(kind("ping"))
async def ping(client: Client, packet: Packet) -> None:
    await client.send(PONG)


@server.add_handler(kind("whoami"))
async def whoami(client: Client, packet: Packet) -> None:
    await client.send(
        {
            "status": "success",
            "address": client.address,
            "port": client.port,
            "host": HOST,
            "pid": os.getpid(),
            "id": packet.get("id"),
        }
    )


@server.add_handler(kind("issue"))
async def issue(client: Client, packet: Packet) -> None:
    key = await keys.aissue({"owner": str(packet.get("owner", ""))})
    await client.send({"status": "success", "key": key, "host": HOST})


@server.add_handler(kind("revoke") & Filters.Fields(key=None))
async def revoke(client: Client, packet: Packet) -> None:
    try:
        await keys.arevoke(str(packet["key"]))
    except KeyError:
        revoked = False
    else:
        revoked = True
    await client.send({"status": "success", "revoked": revoked, "host": HOST})


@server.add_handler(kind("private") & key_filter())
async def private(client: Client, packet: Packet) -> None:
    await client.send({"status": "success", "host": HOST})


@server.add_handler(
    kind("limited")
    & key_filter()
    & Filters.RateLimit(RATE, per=RATE_PER, burst=RATE_BURST, field="key", store=server.store)
)
async def limited(client: Client, packet: Packet) -> None:
    await client.send({"status": "success", "host": HOST})
