"""The filter base: :class:`Filter` and its algebra (``&``, ``|``, ``~``).

Kept apart from :mod:`asyncapy.filters` (the built-in filters) so that
:mod:`asyncapy.core` can use filters without importing the built-ins, which
need the core's classes: ``core`` imports this module, ``filters`` imports
both, and nothing imports back.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

if TYPE_CHECKING:
    from .core import Client, Packet

__all__ = [
    "AndFilter",
    "AsyncFilter",
    "AsyncFilterFunction",
    "Filter",
    "FilterFunction",
    "FunctionFilter",
    "NotFilter",
    "OrFilter",
    "all_of",
]

FilterFunction: TypeAlias = Callable[["Client", "Packet"], bool]
"""What :meth:`Filters.create` wraps: ``def f(client, packet) -> bool``."""

AsyncFilterFunction: TypeAlias = Callable[["Client", "Packet"], Awaitable[bool]]
"""Or ``async def f(client, packet) -> bool``."""


class Filter(abc.ABC):
    """The base of every filter.

    Subclasses implement :meth:`check`. Any two filters combine with ``&``,
    ``|`` and ``~`` into new filters; the operands are not copied, so a
    dynamic filter (such as :class:`Filters.Ip`) stays dynamic inside a
    combination.
    """

    __slots__ = ()

    is_async: ClassVar[bool] = False
    """Whether :meth:`check` is ``async def``: decided once per class, from the method."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check = cls.__dict__.get("check")
        if check is not None:
            cls.is_async = inspect.iscoroutinefunction(check)

    def checker(self) -> Callable[[Client, Packet], bool | Awaitable[bool]]:
        """What a handler calls for this filter: :meth:`check`, unless the filter has
        an equivalent that costs less (``Filters.Fields``: a compiled function).

        Taken once, when the handler is made: a filter whose answer changes at
        runtime (``Filters.Ip``) changes it inside ``check``, which stays the
        default here.
        """
        return self.check

    @abc.abstractmethod
    def check(self, client: Client, packet: Packet) -> bool | Awaitable[bool]:
        """Return True when the handler should see ``packet`` from ``client``.

        A subclass declares ``def check(...) -> bool`` or, for an
        asynchronous filter, ``async def check(...) -> bool`` (see
        :class:`AsyncFilter`).

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


class AsyncFilter(Filter):
    """The base of filters whose :meth:`check` is ``async def``.

    The dispatcher awaits such a filter (a combination containing one is
    asynchronous too); a synchronous filter is called, never awaited, and
    costs what it did before asynchronous filters existed. An asynchronous
    check that finishes without waiting (a cache hit) takes no trip through
    the event loop. Subclassing :class:`Filter` with an ``async def check``
    works the same; this class only gives the right type to ``check``.
    """

    __slots__ = ()

    @abc.abstractmethod
    async def check(self, client: Client, packet: Packet) -> bool:
        """Return True when the handler should see ``packet`` from ``client``.

        Raises:
            Exception: whatever the filter's own logic raises (answered
                ``ERR_INTERNAL``), or :class:`~asyncapy.errors.Reject` to
                answer the packet with an error code of the filter's choice.
        """


def _flatten(kind: type[AndFilter | OrFilter], filters: Iterable[Filter]) -> tuple[Filter, ...]:
    """Return ``filters`` with every nested ``kind`` filter spliced in place."""
    flat: list[Filter] = []
    for item in filters:
        if not isinstance(item, Filter):
            raise TypeError(f"filters must be Filter objects, not {type(item).__name__}")
        if isinstance(item, kind):
            flat.extend(item.filters)
        else:
            flat.append(item)
    return tuple(flat)


def _any_async(filters: Iterable[object]) -> bool:
    """Whether one of ``filters`` (nested combinations included) is asynchronous."""
    return any(isinstance(item, Filter) and item.is_async for item in filters)


_Step: TypeAlias = tuple[Callable[..., Any], bool]


class AndFilter(Filter):
    """Passes when every one of its filters passes (``a & b & c``).

    The filters are checked in order and the first failure ends the check, so
    put the cheapest or most selective filter first. Nested ``AndFilter``
    operands are flattened into one; with no filters it always passes. When
    one of the filters is asynchronous, so is the combination (an instance of
    a private subclass whose ``check`` is ``async def``).

    Args:
        *filters: the filters to combine.

    Raises:
        TypeError: when an operand is not a :class:`Filter`.
    """

    __slots__ = ("_checks", "filters")

    def __new__(cls, *filters: Filter) -> AndFilter:
        if cls is AndFilter and _any_async(filters):
            return super().__new__(_AsyncAndFilter)
        return super().__new__(cls)

    def __init__(self, *filters: Filter) -> None:
        self.filters: tuple[Filter, ...] = _flatten(AndFilter, filters)
        self._checks = tuple(item.checker() for item in self.filters)

    def check(self, client: Client, packet: Packet) -> bool:
        """Return True when all filters pass; stop at the first that fails."""
        return all(check(client, packet) for check in self._checks)

    def __repr__(self) -> str:
        return "(" + " & ".join(map(repr, self.filters)) + ")"


class _AsyncAndFilter(AndFilter):
    """An :class:`AndFilter` with an asynchronous operand: awaited where it must be."""

    __slots__ = ("_steps",)

    def __init__(self, *filters: Filter) -> None:
        super().__init__(*filters)
        self._steps: tuple[_Step, ...] = tuple(
            (item.checker(), item.is_async) for item in self.filters
        )

    async def check(self, client: Client, packet: Packet) -> bool:  # type: ignore[override]
        """Return True when all filters pass; stop at the first that fails."""
        for check, is_async in self._steps:
            result = check(client, packet)
            if is_async:
                result = await result
            if not result:
                return False
        return True


class OrFilter(Filter):
    """Passes when any one of its filters passes (``a | b | c``).

    The filters are checked in order and the first success ends the check.
    Nested ``OrFilter`` operands are flattened into one; with no filters it
    never passes. Asynchronous when one of its filters is.

    Args:
        *filters: the filters to combine.

    Raises:
        TypeError: when an operand is not a :class:`Filter`.
    """

    __slots__ = ("_checks", "filters")

    def __new__(cls, *filters: Filter) -> OrFilter:
        if cls is OrFilter and _any_async(filters):
            return super().__new__(_AsyncOrFilter)
        return super().__new__(cls)

    def __init__(self, *filters: Filter) -> None:
        self.filters: tuple[Filter, ...] = _flatten(OrFilter, filters)
        self._checks = tuple(item.checker() for item in self.filters)

    def check(self, client: Client, packet: Packet) -> bool:
        """Return True as soon as one filter passes."""
        return any(check(client, packet) for check in self._checks)

    def __repr__(self) -> str:
        return "(" + " | ".join(map(repr, self.filters)) + ")"


class _AsyncOrFilter(OrFilter):
    """An :class:`OrFilter` with an asynchronous operand."""

    __slots__ = ("_steps",)

    def __init__(self, *filters: Filter) -> None:
        super().__init__(*filters)
        self._steps: tuple[_Step, ...] = tuple(
            (item.checker(), item.is_async) for item in self.filters
        )

    async def check(self, client: Client, packet: Packet) -> bool:  # type: ignore[override]
        """Return True as soon as one filter passes."""
        for check, is_async in self._steps:
            result = check(client, packet)
            if is_async:
                result = await result
            if result:
                return True
        return False


class NotFilter(Filter):
    """Passes when its filter fails (``~f``); ``~~f`` gives back ``f`` itself.

    Asynchronous when its filter is.

    Args:
        filter: the filter to negate.

    Raises:
        TypeError: when ``filter`` is not a :class:`Filter`.
    """

    __slots__ = ("_check", "filter")

    def __new__(cls, filter: Filter) -> NotFilter:
        if cls is NotFilter and isinstance(filter, Filter) and filter.is_async:
            return super().__new__(_AsyncNotFilter)
        return super().__new__(cls)

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


class _AsyncNotFilter(NotFilter):
    """A :class:`NotFilter` of an asynchronous filter."""

    __slots__ = ()

    async def check(self, client: Client, packet: Packet) -> bool:  # type: ignore[override]
        """Return the negation of the wrapped filter's result."""
        return not await self._check(client, packet)  # type: ignore[misc]


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


def _callable_kind(func: object) -> str:
    """``"coroutine"``, ``"asyncgen"`` or ``"sync"``: what calling ``func`` gives."""
    for candidate in (func, getattr(func, "__call__", None)):  # noqa: B004 - an object's __call__
        if inspect.iscoroutinefunction(candidate):
            return "coroutine"
        if inspect.isasyncgenfunction(candidate):
            return "asyncgen"
        if inspect.isfunction(func) or inspect.ismethod(func):
            break
    return "sync"


class FunctionFilter(Filter):
    """A filter made from a plain function; build it with :meth:`Filters.create`.

    Args:
        func: ``def func(client, packet) -> bool`` or ``async def`` (the filter
            is then asynchronous); its result is taken as a bool.
        name: the name shown by ``repr``; the function's name by default.

    Raises:
        TypeError: when ``func`` is not callable, is an async generator,
            cannot take ``(client, packet)``, or ``name`` is not a str.
    """

    __slots__ = ("func", "name")

    def __new__(
        cls, func: FilterFunction | AsyncFilterFunction, name: str | None = None
    ) -> FunctionFilter:
        if cls is FunctionFilter and _callable_kind(func) == "coroutine":
            return super().__new__(_AsyncFunctionFilter)
        return super().__new__(cls)

    def __init__(self, func: FilterFunction | AsyncFilterFunction, name: str | None = None) -> None:
        if not callable(func):
            raise TypeError(f"a filter function must be callable, not {type(func).__name__}")
        label = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
        label = label if isinstance(label, str) else repr(func)
        if _callable_kind(func) == "asyncgen":
            raise TypeError(
                f"filter function {label} is an async generator: a filter returns a bool "
                "(use 'def' or 'async def' with return)"
            )
        require_client_and_packet(func, f"filter function {label}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        self.func = func
        self.name: str = label if name is None else name

    def check(self, client: Client, packet: Packet) -> bool:
        """Call the function and return its result as a bool.

        Raises:
            TypeError: when a synchronous function returned an awaitable (it
                is closed, never awaited): make the function ``async def``.
            Exception: whatever the function raises.
        """
        result = self.func(client, packet)
        if result is True or result is False:
            return result
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if callable(close):
                close()
            raise TypeError(
                f"filter function {self.name} returned an awaitable, not a bool "
                "(declare it 'async def' to have it awaited)"
            )
        return bool(result)

    def __repr__(self) -> str:
        return f"Filters.create({self.name})"


class _AsyncFunctionFilter(FunctionFilter):
    """A :class:`FunctionFilter` of an ``async def`` function: awaited."""

    __slots__ = ()

    async def check(self, client: Client, packet: Packet) -> bool:  # type: ignore[override]
        """Await the function and return its result as a bool."""
        return bool(await self.func(client, packet))  # type: ignore[misc]
