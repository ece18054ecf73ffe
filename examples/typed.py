"""Typed handlers: declare what a handler accepts and answers, get every error at once.

Run it with ``python examples/typed.py`` (port 1501; ``ASYNCAPY_PORT`` changes
it) and talk to it::

    asyncapy send 127.0.0.1:1501 '{"order_id": 7, "items": [{"sku": "tea", "qty": 2}]}'
    asyncapy send 127.0.0.1:1501 '{"order_id": "7", "items": [{"sku": "tea", "qty": 0}]}'

The second gets ``ERR_REQUEST_INVALID`` with both errors and their paths.
``asyncapy schema examples.typed:server`` prints the JSON Schema of it all.
"""

from typing import Annotated

import msgspec

from asyncapy import Server

server = Server(addr="127.0.0.1", port=1501)

PRICES = {"tea": 300, "cake": 450}


class Item(msgspec.Struct, forbid_unknown_fields=True):
    sku: str
    qty: Annotated[int, msgspec.Meta(ge=1, le=100)]


class Order(msgspec.Struct, forbid_unknown_fields=True):
    order_id: int
    items: Annotated[list[Item], msgspec.Meta(min_length=1)]
    note: str | None = None


class Receipt(msgspec.Struct):
    order_id: int
    total_cents: int
    unknown_skus: list[str]


class Status(msgspec.Struct, forbid_unknown_fields=True):
    status_of: int


class StatusReply(msgspec.Struct):
    order_id: int
    state: str


@server.add_handler()
async def place(client, order: Order) -> Receipt:
    """Packets that convert to an Order come here; the Receipt returned is the reply."""
    total = sum(PRICES.get(item.sku, 0) * item.qty for item in order.items)
    unknown = [item.sku for item in order.items if item.sku not in PRICES]
    return Receipt(order.order_id, total, unknown)


@server.add_handler()
async def status(client, query: Status) -> StatusReply:
    """Dispatch by type: a packet that is a Status, not an Order, comes here."""
    return StatusReply(query.status_of, "shipped")


if __name__ == "__main__":
    server.start()
