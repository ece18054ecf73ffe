"""Typed handlers: what a handler's annotations ask for, decided once at registration.

Theory of operation
-------------------
``async def h(client, packet: Order) -> Receipt`` declares that ``h`` takes
only packets that convert to ``Order`` (a :class:`msgspec.Struct`, a
TypedDict, a dataclass: whatever :func:`msgspec.convert` takes) and answers
with a ``Receipt``. :func:`handler_types` reads the annotations once, when
the handler is registered; an unannotated handler, or one annotated
``Packet``, a ``Mapping`` or ``Any``, is untyped and runs exactly as before.

The payload is converted with ``msgspec.convert(fields, Order,
strict=True)`` from the map the frame decoder made: JSON goes through
orjson first, whose float parser is linear where msgspec's is not (a MiB of
``1e308`` takes msgspec 0.8 s: docs/threat-model.md, T2), and MessagePack
through msgpack, which refuses array map keys (T1). Converting a decoded map
costs about as much as decoding into the type would, and every typed
handler of a group converts the same map.

A conversion that fails is not an error yet: the dispatcher tries the next
handler. Only when no handler of any group took the packet and at least one
typed handler refused it, the reply is ``ERR_REQUEST_INVALID`` with the
errors of the closest type (:func:`invalid_payload`: the fewest fields
missing or unknown, then the fewest errors, from
:func:`asyncapy._typeerrors.collect`), the first one tried on a tie.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable
from typing import Any, Final

import msgspec

from ._typeerrors import collect

__all__ = ["TypeMismatch", "converter", "handler_types", "invalid_payload", "reply_payload"]

_UNTYPED: Final = (inspect.Parameter.empty, Any, dict, collections.abc.Mapping, typing.Mapping)


class TypeMismatch(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a typed handler's check when the payload does not convert (internal)."""


def handler_types(function: Callable[..., Any], packet_class: type) -> tuple[Any, Any]:
    """The request and reply types a handler's annotations declare: ``(None, None)`` when untyped.

    String annotations (``from __future__ import annotations``) are resolved
    in the function's module, one by one, so that a name imported only under
    ``TYPE_CHECKING`` for another parameter does not matter. One that stays
    unresolved is untyped when it names ``Packet``, ``Any``, ``dict``,
    ``Mapping`` (or, for the reply, ``None``, ``NoReturn``, ``object``).

    Args:
        function: the handler, ``async def f(client, packet: T) -> R``.
        packet_class: :class:`~asyncapy.core.Packet`, which means untyped.

    Raises:
        TypeError: when an annotation names something :mod:`msgspec` cannot
            convert to, or cannot be resolved at registration (the message
            names the handler and the annotation).
    """
    name = getattr(function, "__qualname__", repr(function))
    raw = getattr(function, "__annotations__", None) or {}
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None, None
    request: Any = None
    if len(params) >= 2 and params[1].name in raw:
        annotation = _resolve(function, raw[params[1].name], name, _UNTYPED_NAMES)
        if not _untyped(annotation, packet_class):
            request = annotation
    reply: Any = None
    if "return" in raw:
        reply = _resolve(function, raw["return"], name, _NO_REPLY_NAMES)
        if reply in (None, type(None), typing.NoReturn, object) or _untyped(reply, packet_class):
            reply = None
    for what, kind in (("request", request), ("reply", reply)):
        if kind is not None:
            try:
                info = msgspec.inspect.type_info(kind)
            except Exception as exc:
                raise TypeError(
                    f"handler {name}: its {what} type {kind!r} is not one msgspec converts: {exc}"
                ) from None
            if isinstance(info, msgspec.inspect.CustomType):  # a plain class: no map converts
                raise TypeError(
                    f"handler {name}: its {what} type {kind!r} is not one msgspec converts"
                    " (use a msgspec.Struct, a TypedDict or a dataclass)"
                )
    return request, reply


_UNTYPED_NAMES: Final = frozenset(("Packet", "Any", "dict", "Mapping", "typing.Any"))
_NO_REPLY_NAMES: Final = _UNTYPED_NAMES | {"None", "NoReturn", "object", "typing.NoReturn"}


def _untyped(annotation: Any, packet_class: type) -> bool:
    if annotation is packet_class or annotation in _UNTYPED:
        return True
    origin = typing.get_origin(annotation)
    return origin in (dict, collections.abc.Mapping)


def _resolve(
    function: Callable[..., Any], annotation: Any, name: str, untyped: frozenset[str]
) -> Any:
    """``annotation`` itself, or the object a string annotation names in the function's module."""
    if not isinstance(annotation, str):
        return annotation
    namespace = dict(getattr(function, "__globals__", {}))
    try:
        return eval(annotation, namespace)  # what typing.get_type_hints does
    except Exception:
        bare = annotation.strip().strip("'\"")
        if bare in untyped or bare.endswith(".Packet") or bare.startswith(("dict[", "Mapping[")):
            return Any
        raise TypeError(
            f"handler {name}: cannot resolve the annotation {annotation!r} when it is"
            " registered; define or import it at module level (or leave it out)"
        ) from None


def converter(request: Any) -> Callable[[dict[Any, Any]], Any]:
    """``convert(fields) -> value``, strict; raises :class:`msgspec.ValidationError`."""
    convert = msgspec.convert

    def to_request(fields: dict[Any, Any]) -> Any:
        return convert(fields, request, strict=True)

    return to_request


def invalid_payload(fields: dict[Any, Any], candidates: list[Any]) -> dict[str, Any]:
    """The ``ERR_REQUEST_INVALID`` reply: the errors of the closest of ``candidates`` (types).

    Closest: the fewest fields missing or unknown, then the fewest errors;
    the first on a tie. A type whose fields are all there with a wrong value
    is closer than one the payload lacks fields of.
    """
    best: list[dict[str, Any]] | None = None
    best_key = (0, 0)
    for candidate in candidates:
        errors = collect(fields, candidate)
        key = (sum(1 for error in errors if error["code"] in _STRUCTURAL), len(errors))
        if best is None or key < best_key:
            best, best_key = errors, key
    return {"status": "failure", "error": "ERR_REQUEST_INVALID", "errors": best or []}


_STRUCTURAL: Final = frozenset(("missing", "unknown"))
"""Error codes that say the payload is another shape, not a wrong value."""


def reply_payload(value: Any) -> Any:
    """What ``client.send`` writes for a typed reply: Structs and dataclasses as they are.

    msgspec's encoders write Structs and dataclasses directly; anything else
    goes to the codec as before (a map, or a JSON object in a str).
    """
    return value


def check_reply(value: Any, reply: Any, name: str) -> None:
    """Debug mode: raise TypeError when a handler's reply is not its declared type."""
    plain_class = isinstance(reply, type) and not typing.is_typeddict(reply)
    if plain_class and isinstance(value, reply):
        return
    try:
        msgspec.convert(msgspec.to_builtins(value), reply, strict=True)
    except (msgspec.ValidationError, TypeError) as exc:
        raise TypeError(
            f"handler {name} replied {type(value).__name__}, not {reply!r}: {exc}"
        ) from None
