"""A server with typed handlers, for the schema tests (``tests.data.typed_app:server``).

Its handlers cover what the schema must describe: a nested Struct with a
list of Structs, an Optional, a union, a renamed field, a tagged union of
Structs as a request type, a TypedDict request and a dataclass reply, an
untyped handler in a later group, and RateLimit filters (alone, and inside
an ``&`` combination).

:func:`make_server` builds a fresh one (each test that serves it needs its
own); ``server`` is the one ``asyncapy schema`` imports.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Annotated, Literal, TypedDict

import msgspec

from asyncapy import Client, Filters, Packet, Server


class Item(msgspec.Struct, forbid_unknown_fields=True):
    """One line of an order."""

    sku: Annotated[str, msgspec.Meta(min_length=1)]
    qty: Annotated[int, msgspec.Meta(ge=1)]


class Address(msgspec.Struct):
    street: str
    city: str
    zip: str | None = None


class Order(msgspec.Struct, forbid_unknown_fields=True):
    """An order of items, shipped to an address."""

    customer: str = msgspec.field(name="customerId")
    items: list[Item] = msgspec.field(default_factory=list)
    ship_to: Address | None = None
    note: str | None = None
    ref: int | str = 0
    placed_at: datetime.datetime | None = None


class Receipt(msgspec.Struct):
    order: int
    lines: int
    signature: bytes


class Deposit(msgspec.Struct, tag="deposit"):
    account: str
    amount: Annotated[int, msgspec.Meta(gt=0)]


class Withdrawal(msgspec.Struct, tag="withdrawal"):
    account: str
    amount: Annotated[int, msgspec.Meta(gt=0)]


class Ping(TypedDict):
    request: Literal["ping"]


@dataclasses.dataclass
class Pong:
    reply: str


def make_server() -> Server:
    """A new server on 127.0.0.1, a free port, with the handlers described above."""
    server = Server(addr="127.0.0.1", port=0)

    @server.add_handler(Filters.RateLimit(100, per=60.0, field="customerId"))
    async def place_order(client: Client, order: Order) -> Receipt:
        return Receipt(order=len(order.customer), lines=len(order.items), signature=b"\x00\xff")

    @server.add_handler()
    async def move_money(client: Client, move: Deposit | Withdrawal) -> None:
        await client.send({"status": "success", "kind": type(move).__name__})

    @server.add_handler(Filters.Fields(request="^ping$"))
    async def ping(client: Client, packet: Ping) -> Pong:
        return Pong(reply="pong")

    @server.add_handler(Filters.Fields(request="^audit$") & Filters.RateLimit(10), group=1)
    async def audit(client: Client, packet: Packet) -> None:
        await client.send({"status": "success", "fields": len(packet)})

    return server


server = make_server()
