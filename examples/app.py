"""A small application to test: a key-value store over AsyncAProto.

``python examples/app.py`` serves it on 127.0.0.1:1500. Importing the module
builds the server and registers its handlers, but does not serve: that is
what lets ``examples/test_app.py`` import ``server`` and test it with
``asyncapy.testing.TestClient`` (see docs/testing.md).

Requests are maps with a ``method``:

- ``{"method": "put", "key": "k", "value": ...}`` stores a value (only from
  the machine itself: a remote peer is answered ``forbidden``);
- ``{"method": "get", "key": "k"}`` returns it;
- ``{"method": "bye"}`` answers and closes the connection.
"""

from asyncapy import Server
from asyncapy.filters import Filters


class Store(Server):
    """The server, with its store opened in setup() and closed in shutdown()."""

    async def setup(self):
        self.data = {}  # a real application would connect to its database here
        self.requests = 0
        self.open = True

    async def shutdown(self):
        self.open = False


server = Store(addr="127.0.0.1", port=1500)


@server.add_handler(Filters.Fields(method="^put$") & ~Filters.Ip("127.0.0.0/8"), group=-1)
async def read_only_for_remote_peers(client, packet):
    """Group -1 runs first: a remote peer's write stops here."""
    await client.send({"status": "failure", "error": "forbidden"})
    packet.stop_propagation()


@server.add_handler(Filters.Fields(method="^put$", key=r"\w+\Z", value=None))
async def put(client, packet):
    server.data[packet["key"]] = packet["value"]
    server.requests += 1
    await client.send({"status": "success"})


@server.add_handler(Filters.Fields(method="^get$", key=None))
async def get(client, packet):
    server.requests += 1
    if packet["key"] not in server.data:
        await client.send({"status": "failure", "error": "no such key"})
    else:
        await client.send({"status": "success", "value": server.data[packet["key"]]})


@server.add_handler(Filters.Fields(method="^bye$"))
async def bye(client, packet):
    await client.send({"status": "success", "requests": server.requests}, close=True)


if __name__ == "__main__":
    server.start()
