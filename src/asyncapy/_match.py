"""The check of :class:`Filters.Fields <asyncapy.filters.Filters.Fields>`, compiled.

One function, so that the filter's ``check`` and the dispatcher run the same
code: ``Fields.checker()`` gives the dispatcher this function with the
filter's fields bound (``functools.partial``), which is a call into compiled
code with no Python frame of its own where this module is compiled
(``asyncapy._compiled``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = ["Matchers", "fields_match"]

Matchers = tuple[tuple[str, Callable[[str], object]], ...]
"""(field name, a test of the value as str) for each field given a pattern."""

_MISSING: Final = object()


def fields_match(required: frozenset[str], matchers: Matchers, client: object, packet: Any) -> bool:
    """Return True when ``packet`` has every name of ``required`` and matches ``matchers``.

    Args:
        required: the fields that need only be present.
        matchers: the fields given a pattern, with the test of each.
        client: the sender (not read).
        packet: a :class:`~asyncapy.core.Packet` (its dict is read
            directly) or any mapping.

    Raises:
        Whatever a matcher raises (none of asyncapy's do).
    """
    fields: Any
    try:
        fields = packet._fields
    except AttributeError:  # a test's plain mapping
        fields = packet
    if required and not fields.keys() >= required:
        return False
    for name, match in matchers:
        value = fields.get(name, _MISSING)
        if value is _MISSING:
            return False
        if not match(value if type(value) is str else str(value)):
            return False
    return True
