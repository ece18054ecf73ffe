"""The JSON Schema document of a server's handlers (asyncapy._schema), without a network.

The app is ``tests/data/typed_app.py``; its document is checked in as
``tests/data/typed_schema.json``. After a deliberate change, rewrite it with
``asyncapy schema tests.data.typed_app:server`` minus the title (see
``expected_text``), review the diff, and commit both.
"""

from __future__ import annotations

import datetime
import difflib
import json
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from asyncapy import Client, Filters, Packet, Server
from asyncapy._schema import SERVER_ERRORS, build_schema, dump_schema, handler_errors
from asyncapy._schemacli import request_errors
from asyncapy.codecs import JSON, ZIPROTO, Codec
from asyncapy.core import Handler
from asyncapy.dispatch import Dispatcher
from asyncapy.filters import Filter
from tests.data import typed_app
from tests.helpers import FakePeer, run_dispatch

EXPECTED = Path(__file__).resolve().parents[1] / "data" / "typed_schema.json"


async def _untyped(client: Client, packet: Packet) -> None:
    """A handler with no types: its request_type is None."""


def expected_text() -> str:
    return EXPECTED.read_text(encoding="utf-8")


def test_the_document_of_the_typed_app_is_the_checked_in_one() -> None:
    produced = dump_schema(build_schema(typed_app.make_server()))
    expected = expected_text()
    if produced != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            produced.splitlines(keepends=True),
            str(EXPECTED),
            "build_schema(typed_app.make_server())",
        )
        pytest.fail("the schema differs from the checked-in document:\n" + "".join(diff))


def test_the_same_server_gives_the_same_bytes_and_keys_are_sorted() -> None:
    server = typed_app.make_server()
    first, second = dump_schema(build_schema(server)), dump_schema(build_schema(server))
    assert first == second
    assert first.endswith("}\n")
    document = json.loads(first)
    assert list(document) == sorted(document)
    assert list(document["$defs"]) == sorted(document["$defs"])


def test_each_type_is_defined_once_and_referenced() -> None:
    document = build_schema(typed_app.make_server())
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert sorted(document["$defs"]) == [
        "Address",
        "Deposit",
        "Item",
        "Order",
        "Ping",
        "Pong",
        "Receipt",
        "Withdrawal",
    ]
    order = document["$defs"]["Order"]
    assert order["required"] == ["customerId"]  # the renamed field, by its wire name
    assert "customer" not in order["properties"]
    assert order["properties"]["items"]["items"] == {"$ref": "#/$defs/Item"}
    by_name = {entry["name"]: entry for entry in document["x-asyncapy"]["handlers"]}
    assert by_name["place_order"]["request"] == {"$ref": "#/$defs/Order"}
    assert by_name["place_order"]["reply"] == {"$ref": "#/$defs/Receipt"}
    assert by_name["audit"]["request"] is None
    assert by_name["audit"]["reply"] is None
    assert list(document["anyOf"]) == [
        by_name[name]["request"] for name in ("place_order", "move_money", "ping")
    ]


def test_handlers_are_listed_in_dispatch_order_with_their_groups() -> None:
    server = Server()

    @server.add_handler(group=5)
    async def late(client: Client, packet: Packet) -> None: ...

    @server.add_handler(group=-1)
    async def early(client: Client, packet: typed_app.Address) -> None: ...

    @server.add_handler(group=5)
    async def later(client: Client, packet: Packet) -> None: ...

    handlers = build_schema(server)["x-asyncapy"]["handlers"]
    assert [(h["name"], h["group"]) for h in handlers] == [("early", -1), ("late", 5), ("later", 5)]


def test_a_type_shared_by_handlers_is_one_branch_of_any_of() -> None:
    server = Server()

    @server.add_handler(Filters.Fields(city="^Paris$"))
    async def paris(client: Client, packet: typed_app.Address) -> None: ...

    @server.add_handler()
    async def anywhere(client: Client, packet: typed_app.Address) -> typed_app.Address:
        return packet

    document = build_schema(server)
    assert document["anyOf"] == [{"$ref": "#/$defs/Address"}]
    assert list(document["$defs"]) == ["Address"]
    assert [h["filters"] for h in document["x-asyncapy"]["handlers"]] == [
        ["Filters.Fields(city='^Paris$')"],
        [],
    ]


@pytest.mark.parametrize("with_handler", [False, True])
def test_a_server_without_typed_handlers_takes_any_object(with_handler: bool) -> None:
    server = Server()
    if with_handler:
        server.register_handler(_untyped)
    document = build_schema(server)
    assert document["type"] == "object"
    assert "anyOf" not in document
    assert document["$defs"] == {}
    assert len(document["x-asyncapy"]["handlers"]) == int(with_handler)
    assert document["x-asyncapy"]["errors"] == list(SERVER_ERRORS)
    assert "ERR_NO_HANDLER" in SERVER_ERRORS


def _limit() -> Filter:
    return Filters.RateLimit(5)


@pytest.mark.parametrize(
    ("filters", "rate_limited"),
    [
        ((), False),
        ((Filters.Fields(a=None),), False),
        ((_limit(),), True),
        ((Filters.Fields(a=None) & _limit(),), True),
        ((Filters.Fields(a=None) | Filters.Fields(b="x"),), False),
        ((Filters.Fields(a=None) | (Filters.Fields(b=None) & ~_limit()),), True),
        ((Filters.Fields(a=None), ~_limit()), True),
    ],
)
@pytest.mark.parametrize("typed", [False, True])
def test_the_error_codes_of_a_handler(
    filters: tuple[Filter, ...], rate_limited: bool, typed: bool
) -> None:
    async def untyped(client: Client, packet: Packet) -> None: ...

    async def typed_one(client: Client, packet: typed_app.Address) -> None: ...

    handler = Handler(typed_one if typed else untyped, filters)
    expected = {"ERR_INTERNAL"} | ({"ERR_REQUEST_INVALID"} if typed else set())
    expected |= {"ERR_RATE_LIMITED"} if rate_limited else set()
    assert handler_errors(handler) == sorted(expected)


class WithExt(msgspec.Struct):
    blob: msgspec.msgpack.Ext


def test_a_type_without_a_json_schema_is_refused_with_its_handler_named() -> None:
    server = Server()

    @server.add_handler()
    async def fine(client: Client, packet: typed_app.Address) -> None: ...

    @server.add_handler()
    async def raw_ext(client: Client, packet: WithExt) -> None: ...

    with pytest.raises(TypeError, match=r"handler raw_ext request: WithExt has no JSON Schema"):
        build_schema(server)


# -- the document as a validator sees it


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    pytest.importorskip("jsonschema")
    result: dict[str, Any] = json.loads(expected_text())
    return result


def test_the_document_is_a_valid_draft_2020_12_schema(document: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(document)
    assert request_errors(document, {"request": "ping"}) == []


ITEM = {"sku": "A-1", "qty": 2}
ORDERS: list[tuple[str, dict[str, Any], bool]] = [
    ("minimal order", {"customerId": "c1"}, True),
    (
        "full order",
        {
            "customerId": "c1",
            "items": [ITEM],
            "ship_to": {"street": "1 Main St", "city": "Lyon", "zip": None},
            "note": None,
            "ref": "R-9",
            "placed_at": "2024-05-06T07:08:09Z",
        },
        True,
    ),
    ("int ref", {"customerId": "c1", "ref": 7}, True),
    ("float ref", {"customerId": "c1", "ref": 7.5}, False),
    ("python name of a renamed field", {"customer": "c1"}, False),
    ("qty below its minimum", {"customerId": "c1", "items": [{"sku": "A", "qty": 0}]}, False),
    ("empty sku", {"customerId": "c1", "items": [{"sku": "", "qty": 1}]}, False),
    ("unknown field", {"customerId": "c1", "colour": "red"}, False),
    ("nested struct missing a field", {"customerId": "c1", "ship_to": {"city": "x"}}, False),
    ("deposit", {"type": "deposit", "account": "a", "amount": 5}, True),
    ("withdrawal of nothing", {"type": "withdrawal", "account": "a", "amount": 0}, False),
    ("unknown tag", {"type": "transfer", "account": "a", "amount": 5}, False),
    ("ping", {"request": "ping"}, True),
    ("pong", {"request": "pong"}, False),
    ("a string", {"customerId": "1", "items": "A-1"}, False),
]


def _converts(payload: dict[str, Any]) -> bool:
    """Whether some typed handler of the app converts ``payload`` (as the server does)."""
    for handlers in typed_app.make_server().handlers.values():
        for handler in handlers:
            if handler.request_type is None:
                continue
            try:
                msgspec.convert(payload, handler.request_type, strict=True)
            except msgspec.ValidationError:
                continue
            return True
    return False


@pytest.mark.parametrize(
    ("payload", "valid"), [pytest.param(p, v, id=name) for name, p, v in ORDERS]
)
def test_the_document_and_the_server_agree_on_what_is_a_request(
    document: dict[str, Any], payload: dict[str, Any], valid: bool
) -> None:
    errors = request_errors(document, payload)
    assert (errors == []) is valid, errors
    assert _converts(payload) is valid


def test_every_error_comes_with_its_path_and_its_handler(document: dict[str, Any]) -> None:
    payload = {"customerId": 5, "items": [{"sku": "", "qty": 0}], "bogus": 1}
    errors = request_errors(document, payload)
    assert "[place_order] $.customerId: 5 is not of type 'string'" in errors
    assert "[place_order] $.items[0].qty: 0 is less than the minimum of 1" in errors
    assert "[place_order] $.items[0].sku: '' should be non-empty" in errors
    assert (
        "[place_order] $: Additional properties are not allowed ('bogus' was unexpected)" in errors
    )
    assert "[ping] $: 'request' is a required property" in errors
    assert any(line.startswith("[move_money] ") for line in errors)
    assert errors == request_errors(document, payload)  # the same order every time
    only = request_errors(document, payload, "place_order")
    assert only == [line.removeprefix("[place_order] ") for line in errors if "place" in line]


def test_one_handler_can_be_chosen_by_name(document: dict[str, Any]) -> None:
    assert request_errors(document, {"request": "ping"}, "ping") == []
    assert request_errors(document, {"request": "ping"}, "place_order") == [
        "$: 'customerId' is a required property",
        "$: Additional properties are not allowed ('request' was unexpected)",
    ]
    assert request_errors(document, {"anything": [1]}, "audit") == []  # untyped: any map
    with pytest.raises(ValueError, match=r"no handler named 'nope' .*audit, move_money"):
        request_errors(document, {}, "nope")


def test_a_document_that_is_no_schema_is_an_error(document: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        request_errors({"type": 12}, {})
    with pytest.raises(ValueError, match="no x-asyncapy handlers"):
        request_errors({"type": "object"}, {}, "ping")


# -- the encodings note tells what the codecs and the conversion really do


class Signed(msgspec.Struct):
    data: bytes
    at: datetime.datetime


class Counts(msgspec.Struct):
    counts: dict[int, str]


def _dispatch(handler_type: Any, body: bytes, codec: Codec) -> dict[Any, Any]:
    """Decode ``body`` with ``codec`` and dispatch it as the server does; return the reply.

    A typed handler of ``handler_type`` answers what converts to it; an
    untyped one after it answers ``{"status": "not converted"}``.
    """

    async def take(client: Client, packet: Any) -> None:
        await client.send({"status": "success", "value": msgspec.to_builtins(packet)})

    async def fallback(client: Client, packet: Packet) -> None:
        await client.send({"status": "not converted"})

    take.__annotations__["packet"] = handler_type
    dispatcher = Dispatcher()
    dispatcher.add(Handler(take))
    dispatcher.add(Handler(fallback))  # the same group: tried only when take is not
    client, packet = FakePeer(), Packet(codec.decode(body))
    run_dispatch(dispatcher, client, packet)
    assert len(client.sent) == 1
    return client.sent[0]


UTC = datetime.UTC
MOMENT = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_bytes_are_base64_in_json_and_bin_in_ziproto_both_ways() -> None:
    reply = Signed(data=b"\x00\xff", at=MOMENT)
    assert b'"data":"AP8="' in JSON.encode(reply)
    assert b"\xc4\x02\x00\xff" in ZIPROTO.encode(reply)  # bin 8, 2 bytes
    for codec, body in [
        (JSON, b'{"data": "AP8=", "at": "2024-05-06T07:08:09Z"}'),
        (ZIPROTO, msgspec.msgpack.encode({"data": b"\x00\xff", "at": MOMENT})),
        (ZIPROTO, msgspec.msgpack.encode({"data": "AP8=", "at": "2024-05-06T07:08:09Z"})),
    ]:
        sent = _dispatch(Signed, body, codec)
        assert sent["value"] == {"data": "AP8=", "at": "2024-05-06T07:08:09Z"}, sent


def test_datetimes_are_rfc3339_in_json_and_a_timestamp_or_a_string_in_ziproto() -> None:
    assert JSON.encode({"at": MOMENT}) == b'{"at":"2024-05-06T07:08:09Z"}'
    aware = ZIPROTO.encode({"at": MOMENT})
    assert b"\xd6\xff" in aware  # fixext 4, type -1: the timestamp extension
    naive = ZIPROTO.encode({"at": MOMENT.replace(tzinfo=None)})
    assert naive == msgspec.msgpack.encode({"at": "2024-05-06T07:08:09"})
    assert ZIPROTO.decode(aware)["at"] == MOMENT  # a timestamp arrives in UTC
    assert msgspec.json.schema(datetime.datetime) == {"type": "string"}
    tz_only = msgspec.json.schema(Annotated[datetime.datetime, msgspec.Meta(tz=True)])
    assert tz_only == {"type": "string", "format": "date-time"}


def test_int_map_keys_can_be_sent_in_ziproto_only() -> None:
    sent = _dispatch(Counts, msgspec.msgpack.encode({"counts": {1: "one"}}), ZIPROTO)
    assert sent["value"] == {"counts": {1: "one"}}
    assert _dispatch(Counts, b'{"counts": {"1": "one"}}', JSON) == {"status": "not converted"}
