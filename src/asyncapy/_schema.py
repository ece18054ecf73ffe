"""One JSON Schema document (draft 2020-12) describing a server's handlers.

Theory of operation
-------------------
:func:`build_schema` walks the server's handlers in dispatch order (groups
lowest first, registration order inside a group) and gathers every request
and reply type a typed handler declares (``Handler.request_type`` and
``Handler.reply_type``, see :mod:`asyncapy._typed`). One call of
:func:`msgspec.json.schema_components` over all of them at once makes the
schemas: each Struct, TypedDict or dataclass appears once under ``$defs``
and is named by ``{"$ref": "#/$defs/Name"}`` wherever it is used; a union
of them is written inline, as an ``anyOf`` of such references.

The document itself is the schema of a request the server's typed handlers
take: ``"type": "object"`` and an ``anyOf`` of the distinct request schemas,
so any JSON Schema validator can check "is this a valid request for some
handler". It is ``anyOf``, not ``oneOf``: two handlers' types may both
accept one payload (the first matching handler runs), and that is not an
error. An untyped handler takes any map, so it adds nothing to ``anyOf``.

The top-level ``x-asyncapy`` object (ignored by validators) lists, per
handler, its name, group, filters (their ``repr``), request and reply
schemas (null when untyped or undeclared) and the error codes it can answer
with; the codes of the server itself; and how JSON and ZiProto (MessagePack)
write the values whose forms differ. The schemas describe the JSON form.

:func:`dump_schema` writes the document with sorted keys and a final
newline: the same server gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import msgspec

from ._filterbase import AndFilter, Filter, NotFilter, OrFilter
from .errors import ErrorCode
from .filters import Filters

if TYPE_CHECKING:
    from .core import Handler
    from .server import Server

__all__ = [
    "DIALECT",
    "ENCODINGS",
    "FORMAT",
    "SERVER_ERRORS",
    "build_schema",
    "dump_schema",
    "handler_errors",
]

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
REF_TEMPLATE: Final = "#/$defs/{name}"
FORMAT: Final = 1
"""Version of the ``x-asyncapy`` object's layout."""

SERVER_ERRORS: Final[tuple[str, ...]] = tuple(
    sorted(
        code.value
        for code in (
            ErrorCode.ERR_HEADER_INVALID,
            ErrorCode.ERR_REQUEST_MALFORMED,
            ErrorCode.ERR_PACKET_TOO_LARGE,
            ErrorCode.ERR_TIMED_OUT,
            ErrorCode.ERR_SESSION_LIMIT_REACHED,
            ErrorCode.ERR_SERVER_BUSY,
            ErrorCode.ERR_NO_HANDLER,
        )
    )
)
"""The codes the server answers with before (or instead of) any handler."""

ENCODINGS: Final[dict[str, Any]] = {
    "note": "The schemas describe a payload in JSON (Content-Encoding 0). ZiProto"
    " (Content-Encoding 1) is MessagePack, where msgspec writes a few types differently."
    " The server converts a request's map to the handler's type strictly (a \"1\" is not"
    " an int) and takes either form listed for ZiProto.",
    "differences": [
        {
            "type": "bytes, bytearray",
            "json": "a base64 string (RFC 4648, padded): contentEncoding base64",
            "ziproto": "bin; a base64 str is taken in requests too",
        },
        {
            "type": "datetime",
            "json": "an RFC 3339 string (format date-time only for Meta(tz=True):"
            " without an offset it is not RFC 3339)",
            "ziproto": "the timestamp extension (ext type -1) for a datetime with a time zone,"
            " an RFC 3339 string without offset for a naive one; requests may send either"
            " (a timestamp arrives in UTC)",
        },
        {
            "type": "date, time, timedelta, UUID, Decimal",
            "json": "a string: format date, time or partial-time, duration, uuid, decimal",
            "ziproto": "the same str as in JSON",
        },
        {
            "type": "dict with int (non-str) keys",
            "json": "object keys are strings, and strict conversion refuses a str key for"
            " an int: such a field cannot be sent in JSON",
            "ziproto": "integer (or other scalar) map keys, as the type declares",
        },
        {
            "type": "msgspec.msgpack.Ext",
            "json": "none: a type that holds one has no JSON Schema (build_schema refuses it)",
            "ziproto": "ext, with its type code",
        },
    ],
}
"""How JSON and ZiProto write the types whose forms differ (as msgspec does)."""


def _filter_tree(filters: list[Filter] | tuple[Filter, ...]) -> Iterator[Filter]:
    """Every filter, those inside ``&``, ``|`` and ``~`` combinations included."""
    for item in filters:
        yield item
        if isinstance(item, AndFilter | OrFilter):
            yield from _filter_tree(item.filters)
        elif isinstance(item, NotFilter):
            yield from _filter_tree((item.filter,))


def handler_errors(handler: Handler) -> list[str]:
    """The ``ERR_*`` codes a handler can answer with, sorted.

    ``ERR_INTERNAL`` always (the handler may raise); ``ERR_REQUEST_INVALID``
    when it is typed; ``ERR_RATE_LIMITED`` when one of its filters, at any
    depth, is a :class:`~asyncapy.filters.Filters.RateLimit`. A handler or
    filter that raises :class:`~asyncapy.errors.Reject` itself can answer
    other codes: they are not visible from outside.
    """
    codes = {ErrorCode.ERR_INTERNAL.value}
    if getattr(handler, "request_type", None) is not None:
        codes.add(ErrorCode.ERR_REQUEST_INVALID.value)
    if any(isinstance(item, Filters.RateLimit) for item in _filter_tree(handler.filters)):
        codes.add(ErrorCode.ERR_RATE_LIMITED.value)
    return sorted(codes)


def _describe(kind: Any) -> str:
    return getattr(kind, "__qualname__", None) or repr(kind)


def _components(
    types: list[Any], owners: list[str]
) -> tuple[tuple[dict[str, Any], ...], dict[str, Any]]:
    """``schema_components`` over ``types``; a type without a schema is named with its handler."""
    try:
        return msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    except (TypeError, ValueError):
        for kind, owner in zip(types, owners, strict=True):
            try:
                msgspec.json.schema(kind)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{owner}: {_describe(kind)} has no JSON Schema: {exc}") from None
        raise


def build_schema(server: Server, title: str = "asyncapy requests") -> dict[str, Any]:
    """The JSON Schema document of ``server``'s handlers (see the module's docstring).

    Args:
        server: the server whose registered handlers to describe.
        title: the document's ``title``.

    Returns:
        A dict ready for :func:`dump_schema` (JSON types only).

    Raises:
        TypeError: when a request or reply type has no JSON Schema (one that
            holds a :class:`msgspec.msgpack.Ext`, say); the message names the
            handler and the type.
    """
    entries: list[tuple[int, Handler]] = [
        (group, handler) for group, handlers in server.handlers.items() for handler in handlers
    ]
    types: list[Any] = []
    owners: list[str] = []
    slots: list[tuple[int | None, int | None]] = []  # per handler: index of request, reply

    def index_of(kind: Any, owner: str) -> int | None:
        if kind is None:
            return None
        for index, known in enumerate(types):
            if known is kind or known == kind:
                return index
        types.append(kind)
        owners.append(owner)
        return len(types) - 1

    for _, handler in entries:
        slots.append(
            (
                index_of(getattr(handler, "request_type", None), f"handler {handler.name} request"),
                index_of(getattr(handler, "reply_type", None), f"handler {handler.name} reply"),
            )
        )
    schemas, components = _components(types, owners) if types else ((), {})
    described: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    for (group, handler), (request, reply) in zip(entries, slots, strict=True):
        request_schema = None if request is None else schemas[request]
        if request_schema is not None and request_schema not in requests:
            requests.append(request_schema)
        described.append(
            {
                "name": handler.name,
                "group": group,
                "filters": [repr(item) for item in handler.filters],
                "request": request_schema,
                "reply": None if reply is None else schemas[reply],
                "errors": handler_errors(handler),
            }
        )
    document: dict[str, Any] = {
        "$schema": DIALECT,
        "title": title,
        "description": "A request that some typed handler of the server takes (anyOf);"
        " x-asyncapy describes every handler, its filters, reply and error codes.",
        "type": "object",
        "$defs": components,
        "x-asyncapy": {
            "format": FORMAT,
            "handlers": described,
            "errors": list(SERVER_ERRORS),
            "encodings": ENCODINGS,
        },
    }
    if requests:
        document["anyOf"] = requests
    return document


def dump_schema(document: dict[str, Any]) -> str:
    """``document`` as JSON text: keys sorted, indented by 2, UTF-8 as is, a final newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
