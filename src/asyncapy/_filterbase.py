"""The filter base: :class:`Filter` and its algebra (``&``, ``|``, ``~``).

Kept apart from :mod:`asyncapy.filters` (the built-in filters) so that
:mod:`asyncapy.core` can use filters without importing the built-ins, which
need the core's classes: ``core`` imports this module, ``filters`` imports
both, and nothing imports back.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from .core import Client, Packet

__all__ = [
    "AndFilter",
    "Filter",
    "FilterFunction",
    "FunctionFilter",
    "NotFilter",
    "OrFilter",
    "all_of",
]

FilterFunction: TypeAlias = Callable[["Client", "Packet"], bool]
"""What :meth:`Filters.create` wraps: ``def f(client, packet) -> bool``."""


class Filter(abc.ABC):
    """The base of every filter.

    Subclasses implement :meth:`check`. Any two filters combine with ``&``,
    ``|`` and ``~`` into new filters; the operands are not copied, so a
    dynamic filter (such as :class:`Filters.Ip`) stays dynamic inside a
    combination.
    """

    __slots__ = ()

    @abc.abstractmethod
    def check(self, client: Client, packet: Packet) -> bool:
        """Return True when the handler should see ``packet`` from ``client``.

        Args:
            client: the sender.
            packet: the incoming packet, a read-only mapping.

        Returns:
            Whether the filter passes.

        Raises:
            Exception: whatever the filter's own logic raises; the built-in
                filters raise nothing for any client or packet.
        """

    def __and__(self, other: Filter) -> Filter:
        if not isinstance(other, Filter):
            return NotImplemented
        return AndFilter(self, other)

    def __or__(self, other: Filter) -> Filter:
        if not isinstance(other, Filter):
            return NotImplemented
        return OrFilter(self, other)

    def __invert__(self) -> Filter:
        return NotFilter(self)


def _flatten(kind: type[AndFilter | OrFilter], filters: Iterable[Filter]) -> tuple[Filter, ...]:
    """Return ``filters`` with every nested ``kind`` filter spliced in place."""
    flat: list[Filter] = []
    for item in filters:
        if not isinstance(item, Filter):
            raise TypeError(f"filters must be Filter objects, not {type(item).__name__}")
        if type(item) is kind:
            flat.extend(item.filters)
        else:
            flat.append(item)
    return tuple(flat)


class AndFilter(Filter):
    """Passes when every one of its filters passes (``a & b & c``).

    The filters are checked in order and the first failure ends the check, so
    put the cheapest or most selective filter first. Nested ``AndFilter``
    operands are flattened into one; with no filters it always passes.

    Args:
        *filters: the filters to combine.

    Raises:
        TypeError: when an operand is not a :class:`Filter`.
    """

    __slots__ = ("_checks", "filters")

    def __init__(self, *filters: Filter) -> None:
        self.filters: tuple[Filter, ...] = _flatten(AndFilter, filters)
        self._checks = tuple(item.check for item in self.filters)

    def check(self, client: Client, packet: Packet) -> bool:
        """Return True when all filters pass; stop at the first that fails."""
        return all(check(client, packet) for check in self._checks)

    def __repr__(self) -> str:
        return "(" + " & ".join(map(repr, self.filters)) + ")"


class OrFilter(Filter):
    """Passes when any one of its filters passes (``a | b | c``).

    The filters are checked in order and the first success ends the check.
    Nested ``OrFilter`` operands are flattened into one; with no filters it
    never passes.

    Args:
        *filters: the filters to combine.

    Raises:
        TypeError: when an operand is not a :class:`Filter`.
    """

    __slots__ = ("_checks", "filters")

    def __init__(self, *filters: Filter) -> None:
        self.filters: tuple[Filter, ...] = _flatten(OrFilter, filters)
        self._checks = tuple(item.check for item in self.filters)

    def check(self, client: Client, packet: Packet) -> bool:
        """Return True as soon as one filter passes."""
        return any(check(client, packet) for check in self._checks)

    def __repr__(self) -> str:
        return "(" + " | ".join(map(repr, self.filters)) + ")"


class NotFilter(Filter):
    """Passes when its filter fails (``~f``); ``~~f`` gives back ``f`` itself.

    Args:
        filter: the filter to negate.

    Raises:
        TypeError: when ``filter`` is not a :class:`Filter`.
    """

    __slots__ = ("_check", "filter")

    def __init__(self, filter: Filter) -> None:
        if not isinstance(filter, Filter):
            raise TypeError(f"can only negate a Filter, not {type(filter).__name__}")
        self.filter = filter
        self._check = filter.check

    def check(self, client: Client, packet: Packet) -> bool:
        """Return the negation of the wrapped filter's result."""
        return not self._check(client, packet)

    def __invert__(self) -> Filter:
        return self.filter

    def __repr__(self) -> str:
        return f"~{self.filter!r}"


def all_of(filters: Sequence[Filter]) -> Filter | None:
    """Combine ``filters`` into the one filter that passes when all of them pass.

    Args:
        filters: the filters, checked in this order.

    Returns:
        None for no filters, the filter itself for one, otherwise one
        :class:`AndFilter` (nested ANDs flattened).

    Raises:
        TypeError: when an item is not a :class:`Filter`.
    """
    if not filters:
        return None
    if len(filters) == 1:
        only = filters[0]
        if not isinstance(only, Filter):
            raise TypeError(f"filters must be Filter objects, not {type(only).__name__}")
        return only
    return AndFilter(*filters)


def require_client_and_packet(func: Callable[..., object], what: str) -> None:
    """Refuse ``func`` unless it can be called with two positional arguments.

    Raises:
        TypeError: naming ``what`` (a handler, a filter function).
    """
    try:
        inspect.signature(func).bind(None, None)
    except TypeError:
        raise TypeError(f"{what} must accept two positional arguments (client, packet)") from None
    except ValueError:  # no signature available (some builtins): trust it
        pass


def _is_async_callable(func: object) -> bool:
    """True for ``async def`` functions (or async generators), directly or as ``__call__``."""
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func):
        return False
    call = getattr(func, "__call__", None)  # noqa: B004 - an object with a __call__ method
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


class FunctionFilter(Filter):
    """A filter made from a plain function; build it with :meth:`Filters.create`.

    Args:
        func: ``def func(client, packet) -> bool``; its result is taken as a bool.
        name: the name shown by ``repr``; the function's name by default.

    Raises:
        TypeError: when ``func`` is not callable, is asynchronous (``async
            def``), cannot take ``(client, packet)``, or ``name`` is not a str.
    """

    __slots__ = ("func", "name")

    def __init__(self, func: FilterFunction, name: str | None = None) -> None:
        if not callable(func):
            raise TypeError(f"a filter function must be callable, not {type(func).__name__}")
        label = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
        label = label if isinstance(label, str) else repr(func)
        if _is_async_callable(func):
            raise TypeError(
                f"filter function {label} must be synchronous: filters are checked "
                "without awaiting (use 'def', not 'async def')"
            )
        require_client_and_packet(func, f"filter function {label}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        self.func = func
        self.name: str = label if name is None else name

    def check(self, client: Client, packet: Packet) -> bool:
        """Call the function and return its result as a bool.

        Raises:
            TypeError: when the function returned an awaitable (it is closed,
                never awaited): an awaitable is not an answer.
            Exception: whatever the function raises.
        """
        result = self.func(client, packet)
        if result is True or result is False:
            return result
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if callable(close):
                close()
            raise TypeError(f"filter function {self.name} returned an awaitable, not a bool")
        return bool(result)

    def __repr__(self) -> str:
        return f"Filters.create({self.name})"
