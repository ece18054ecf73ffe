"""The seed's filters examples: one Fields filter, then several filters at once."""

from asyncapy import Server
from asyncapy.filters import Filters

server = Server(addr="0.0.0.0", port=1500)

# This filter will match any digit in the 'foo' field,
# and anything in the 'bar' field, e.g.:
# {"foo": 12355, "bar": "anything"}


@server.add_handler(Filters.Fields(foo=r"\d+", bar=None))
async def filtered_handler(client, packet):
    print(f"Look at this! {client} sent me {packet}!")
    await client.close()


# You can also use multiple Filters objects: every one must pass.


@server.add_handler(Filters.Fields(name=None), Filters.Ip(["127.0.0.1", "::1"]))
async def multiple_filters(client, packet):
    print(f"{client} is local and sent a name: {packet['name']}")
    await client.send({"hello": packet["name"]})


server.start()
