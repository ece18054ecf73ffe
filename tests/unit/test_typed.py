"""Typed handlers: conversion, dispatch by type, ERR_REQUEST_INVALID, typed replies (no network)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Annotated, Any, TypedDict

import msgspec
import pytest

from asyncapy import Packet, Server
from asyncapy.client import AsyncClient
from asyncapy.client import Client as BlockingClient
from asyncapy.core import Client, Handler
from asyncapy.dispatch import Dispatcher
from asyncapy.errors import DecodeError
from asyncapy.filters import AsyncFilter, Filters
from asyncapy.testing import TestClient
from tests.helpers import FakePeer, run_dispatch, server_thread, serving


class Item(msgspec.Struct):
    sku: str
    qty: Annotated[int, msgspec.Meta(ge=1)]


class Order(msgspec.Struct, forbid_unknown_fields=True):
    order_id: int
    items: list[Item]
    note: str | None = None


class Receipt(msgspec.Struct):
    order_id: int
    total: int


class Ping(TypedDict):
    ping: int


@dataclasses.dataclass
class Echo:
    text: str


def dispatch(dispatcher: Dispatcher, fields: dict[str, Any]) -> tuple[FakePeer, Packet]:
    client, packet = FakePeer(), Packet(fields)
    run_dispatch(dispatcher, client, packet)
    return client, packet


GOOD = {"order_id": 7, "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}]}


def test_annotations_are_read_once_at_registration() -> None:
    async def typed(client: Client, packet: Order) -> Receipt:
        return Receipt(packet.order_id, 0)

    async def untyped(client: Client, packet: Packet) -> None:
        pass

    async def bare(client, packet):  # type: ignore[no-untyped-def]
        pass

    async def mapping(client: Client, packet: dict[str, Any]) -> None:
        pass

    handler = Handler(typed)
    assert handler.request_type is Order
    assert handler.reply_type is Receipt
    for function in (untyped, bare, mapping):
        plain = Handler(function)
        assert plain.request_type is None
        assert plain.reply_type is None


class NotConvertible:
    """A plain class: msgspec cannot convert a map to it."""


def test_an_unsupported_annotation_is_refused_at_registration() -> None:
    async def handler(client: Client, packet: NotConvertible) -> None:
        pass

    with pytest.raises(TypeError, match="msgspec"):
        Handler(handler)


def test_a_typed_handler_gets_the_converted_value_and_its_return_is_the_reply() -> None:
    seen: list[Order] = []

    async def place(client: Client, packet: Order) -> Receipt:
        seen.append(packet)
        return Receipt(packet.order_id, sum(item.qty for item in packet.items))

    dispatcher = Dispatcher()
    dispatcher.add(Handler(place))
    client, packet = dispatch(dispatcher, GOOD)
    assert seen == [Order(7, [Item("a", 2), Item("b", 3)])]
    assert client.sent == [{"order_id": 7, "total": 5}]
    assert packet._handler == "place"
    assert packet._code == "OK"


@pytest.mark.parametrize("kind", [Ping, Echo])
def test_typeddicts_and_dataclasses_work_too(kind: Any) -> None:
    got: list[Any] = []

    async def handler(client: Client, packet: Any) -> None:
        got.append(packet)

    handler.__annotations__["packet"] = kind  # (a local name: no string annotation)

    dispatcher = Dispatcher()
    dispatcher.add(Handler(handler))
    fields = {"ping": 1} if kind is Ping else {"text": "hi"}
    dispatch(dispatcher, fields)
    assert got == [{"ping": 1} if kind is Ping else Echo("hi")]


def test_dispatch_by_type_within_a_group() -> None:
    calls: list[str] = []

    async def on_order(client: Client, packet: Order) -> None:
        calls.append("order")

    async def on_echo(client: Client, packet: Echo) -> None:
        calls.append("echo")

    async def fallback(client: Client, packet: Packet) -> None:
        calls.append("fallback")

    dispatcher = Dispatcher()
    for function in (on_order, on_echo, fallback):
        dispatcher.add(Handler(function))
    dispatch(dispatcher, {"text": "x"})
    dispatch(dispatcher, GOOD)
    dispatch(dispatcher, {"other": 1})
    assert calls == ["echo", "order", "fallback"]


def test_conversion_is_strict() -> None:
    async def on_order(client: Client, packet: Order) -> None:
        pass

    dispatcher = Dispatcher()
    dispatcher.add(Handler(on_order))
    client, packet = dispatch(dispatcher, {"order_id": "7", "items": []})
    assert client.sent[0]["error"] == "ERR_REQUEST_INVALID"
    assert packet._code == "ERR_REQUEST_INVALID"


def test_no_typed_handler_takes_it_the_closest_types_errors_are_the_reply() -> None:
    async def on_order(client: Client, packet: Order) -> None:
        pass

    async def on_echo(client: Client, packet: Echo) -> None:
        pass

    dispatcher = Dispatcher()
    dispatcher.add(Handler(on_echo))  # tried first, but further from the packet
    dispatcher.add(Handler(on_order))
    bad = {"order_id": 7, "items": [{"sku": "a", "qty": 0}]}
    client, _ = dispatch(dispatcher, bad)
    (reply,) = client.sent
    assert reply["status"] == "failure"
    assert reply["error"] == "ERR_REQUEST_INVALID"
    assert [error["path"] for error in reply["errors"]] == [["items", 0, "qty"]]


def test_filters_run_before_the_conversion_and_a_filtered_packet_is_no_handler() -> None:
    async def on_order(client: Client, packet: Order) -> None:
        pass

    dispatcher = Dispatcher()
    dispatcher.add(Handler(on_order, [Filters.Fields(kind="^order$")]))
    client, _ = dispatch(dispatcher, {"order_id": "not even close"})
    assert client.sent == [{"status": "failure", "error": "ERR_NO_HANDLER"}]


def test_a_handler_of_a_later_group_that_matches_means_no_error() -> None:
    calls: list[str] = []

    async def on_order(client: Client, packet: Order) -> None:
        calls.append("order")

    async def audit(client: Client, packet: Packet) -> None:
        calls.append("audit")

    dispatcher = Dispatcher()
    dispatcher.add(Handler(on_order))
    dispatcher.add(Handler(audit), group=1)
    client, _ = dispatch(dispatcher, {"x": 1})
    assert calls == ["audit"]
    assert client.sent == []


@pytest.mark.parametrize("waits", [0, 1])
def test_typed_handlers_with_async_filters(waits: int) -> None:
    class Allow(AsyncFilter):
        async def check(self, client: Client, packet: Packet) -> bool:
            for _ in range(waits):
                await asyncio.sleep(0)
            return True

    async def place(client: Client, packet: Order) -> Receipt:
        return Receipt(packet.order_id, len(packet.items))

    dispatcher = Dispatcher()
    dispatcher.add(Handler(place, [Allow()]))
    client, _ = dispatch(dispatcher, GOOD)
    assert client.sent == [{"order_id": 7, "total": 2}]
    client, _ = dispatch(dispatcher, {"order_id": 1, "items": "no"})
    assert client.sent[0]["error"] == "ERR_REQUEST_INVALID"


def test_a_reply_of_the_wrong_type_is_err_internal_in_debug_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def place(client: Client, packet: Order) -> Receipt:
        return {"order_id": "x"}  # type: ignore[return-value]

    dispatcher = Dispatcher()
    dispatcher.add(Handler(place))
    client, _ = dispatch(dispatcher, GOOD)  # not in debug mode: sent as it is
    assert client.sent == [{"order_id": "x"}]
    with caplog.at_level(logging.DEBUG, logger="asyncapy"):
        client, _ = dispatch(dispatcher, GOOD)
    assert client.sent == [{"status": "failure", "error": "ERR_INTERNAL"}]
    assert any("not" in record.getMessage() or record.exc_info for record in caplog.records)


@pytest.mark.parametrize("encoding", ["json", "ziproto"])
def test_structs_and_dataclasses_go_out_through_a_real_connection(encoding: str) -> None:
    server = Server(addr="127.0.0.1", port=0)

    @server.add_handler()
    async def place(client: Client, packet: Order) -> Receipt:
        return Receipt(packet.order_id, len(packet.items))

    @server.add_handler(Filters.Fields(text=None))
    async def echo(client: Client, packet: Packet) -> None:
        await client.send(Echo(packet["text"]))

    async def main() -> list[Any]:
        async with TestClient(server, encoding=encoding) as conn:
            replies = []
            for payload in (GOOD, {"text": "hi"}, {"order_id": 1}):
                await conn.send(payload)
                replies.append(await conn.receive())
            return replies

    replies = asyncio.run(main())
    assert replies[0] == {"order_id": 7, "total": 2}
    assert replies[1] == {"text": "hi"}
    assert replies[2]["error"] == "ERR_REQUEST_INVALID"
    assert {"path": ["items"], "code": "missing"}.items() <= replies[2]["errors"][0].items()


class Node(msgspec.Struct, forbid_unknown_fields=True):
    child: Node | None = None


def test_a_value_nested_too_deep_for_msgspec_is_invalid_not_internal() -> None:
    """msgspec.convert raises RecursionError there on 3.11 and 3.12: still a refusal."""

    async def walk(client: Client, packet: Node) -> None:
        pass

    dispatcher = Dispatcher()
    dispatcher.add(Handler(walk))
    deep: dict[str, Any] = {"child": None}
    for _ in range(1_000):
        deep = {"child": deep, "x": 1}  # "x" is not a field: invalid at every level
    client, packet = dispatch(dispatcher, deep)
    assert client.sent[0]["error"] == "ERR_REQUEST_INVALID"
    assert client.sent[0]["errors"]
    assert packet._code == "ERR_REQUEST_INVALID"


def typed_server() -> Server:
    server = Server(addr="127.0.0.1", port=0)

    @server.add_handler()
    async def place(client: Client, packet: Order) -> Receipt:
        return Receipt(packet.order_id, sum(item.qty for item in packet.items))

    return server


def test_async_client_request_returns_the_typed_reply() -> None:
    async def main() -> None:
        server = typed_server()
        async with serving(server), AsyncClient(tls=False, timeout=5) as client:
            await client.connect("127.0.0.1", server.port)
            order = Order(7, [Item("a", 2), Item("b", 3)])
            assert await client.request(order, Receipt) == Receipt(7, 5)
            with pytest.raises(DecodeError, match="ERR_REQUEST_INVALID"):
                await client.request({"order_id": "7", "items": []}, Receipt)
            with pytest.raises(DecodeError, match="not a Item"):
                await client.request(order, Item)  # a reply of another shape

    asyncio.run(main())


def test_blocking_client_request_returns_the_typed_reply() -> None:
    with server_thread(typed_server()) as server:
        client = BlockingClient(tls=False, timeout=5)
        client.connect("127.0.0.1", server.port)
        try:
            assert client.request({"order_id": 1, "items": []}, Receipt) == Receipt(1, 0)
        finally:
            client.disconnect()


def test_string_annotations_resolve_one_by_one_and_none_is_no_reply() -> None:
    """The soak's handler: local, ``-> None``, a Client name the module may not have."""

    async def local(client: Client, packet: Packet) -> None:
        pass

    local.__annotations__ = {"client": "NotImportedHere", "packet": "Packet", "return": "None"}
    handler = Handler(local)
    assert handler.request_type is None
    assert handler.reply_type is None
    local.__annotations__ = {"client": "NotImportedHere", "packet": "Order", "return": "Receipt"}
    handler = Handler(local)  # Order and Receipt are this module's: resolved
    assert handler.request_type is Order
    assert handler.reply_type is Receipt


def test_an_unresolvable_request_annotation_is_refused_at_registration() -> None:
    async def local(client: Client, packet: Any) -> None:
        pass

    local.__annotations__ = {"packet": "DefinedNowhere"}
    with pytest.raises(TypeError, match="cannot resolve the annotation 'DefinedNowhere'"):
        Handler(local)
