"""Filters: predicates deciding which handler sees a packet.

A filter's :meth:`Filter.check` gets the :class:`~asyncapy.core.Client` and the
:class:`~asyncapy.core.Packet` and returns a ``bool``; an :class:`AsyncFilter`'s
``check`` is ``async def`` and is awaited (decided at registration). Filters
compose with ``&`` (and), ``|`` (or) and ``~`` (not), which short-circuit left
to right::

    from asyncapy.filters import Filters

    admin = Filters.Ip(["10.0.0.0/8", "::1"]) & Filters.Fields(cmd=r"[a-z]+\\Z")
    public = ~Filters.Ip("192.0.2.7") | Filters.Fields(token=None)

The built-in filters live in the :class:`Filters` namespace:
:class:`Filters.Fields`, :class:`Filters.Ip`, :class:`Filters.APIFactory`,
:class:`Filters.RateLimit` and :meth:`Filters.create` (a filter from a function).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from ._filterbase import (
    AndFilter,
    AsyncFilter,
    AsyncFilterFunction,
    Filter,
    FilterFunction,
    FunctionFilter,
    NotFilter,
    OrFilter,
    all_of,
)
from ._match import Matchers, fields_match
from .errors import ErrorCode, Reject
from .stores import Store

if TYPE_CHECKING:
    from .core import Client, Packet
    from .util import APIKeyFactory

__all__ = [
    "AndFilter",
    "AsyncFilter",
    "AsyncFilterFunction",
    "Filter",
    "FilterFunction",
    "Filters",
    "FunctionFilter",
    "NotFilter",
    "OrFilter",
    "all_of",
]

_MISSING: Final = object()

DEFAULT_KEY_CACHE_SIZE: Final = 10_000
"""The most keys a :class:`Filters.APIFactory` caches, by default."""

_FieldPattern: TypeAlias = str | re.Pattern[str] | None


def _compile_field(name: str, pattern: object) -> re.Pattern[str] | None:
    """Compile one :class:`Filters.Fields` pattern, naming the field on error."""
    if pattern is None:
        return None
    if isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            raise TypeError(f"field {name!r}: the pattern must match str, not bytes")
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(
            f"field {name!r}: expected None, a regex str or a compiled pattern, "
            f"not {type(pattern).__name__}"
        )
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise re.error(
            f"field {name!r}: invalid pattern {pattern!r}: {exc.msg}", exc.pattern, exc.pos
        ) from exc


def _literal_matcher(pattern: re.Pattern[str]) -> Callable[[str], object] | None:
    """A plain string test equivalent to ``pattern.match``, when there is one.

    Patterns that are only literal characters, optionally anchored (``^echo$``,
    ``echo``, ``^echo\\Z``), are the common case of ``Fields``; comparing strings
    is several times cheaper than running the regex engine. Anything else, and
    any flag, keeps the regex (None).
    """
    if pattern.flags & ~re.UNICODE:
        return None
    try:
        from re import _constants as c  # type: ignore[attr-defined]
        from re import _parser  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - a Python without these internals
        return None
    try:
        tokens = list(_parser.parse(pattern.pattern))
    except Exception:  # pragma: no cover - it compiled, so it parses
        return None
    if tokens and tokens[0] in ((c.AT, c.AT_BEGINNING), (c.AT, c.AT_BEGINNING_STRING)):
        tokens = tokens[1:]
    end = None
    if tokens and tokens[-1] in ((c.AT, c.AT_END), (c.AT, c.AT_END_STRING)):
        end = tokens.pop()[1]
    if not all(op is c.LITERAL for op, _ in tokens):
        return None
    literal = "".join(chr(code) for _, code in tokens)
    if end is None:
        return lambda value: value.startswith(literal)
    if end is c.AT_END_STRING:
        return literal.__eq__
    return frozenset((literal, literal + "\n")).__contains__  # $ also matches before a final \n


# One parsed peer address: (normalized text, IP version, integer value).
_Peer: TypeAlias = tuple[str, int, int]
_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_PEER_CACHE_SIZE: Final = 4096


def _normalize_address(ip: _IPAddress) -> _IPAddress:
    """Drop an IPv6 zone id and turn an IPv4-mapped IPv6 address into IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return mapped
        if ip.scope_id is not None:
            return ipaddress.IPv6Address(int(ip))
    return ip


@functools.lru_cache(maxsize=_PEER_CACHE_SIZE)
def _parse_peer(address: str) -> _Peer | None:
    """Parse a peer's address string; None when it is not an IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    ip = _normalize_address(ip)
    return str(ip), ip.version, int(ip)


def _parse_ip_entry(entry: object) -> tuple[str, _IPNetwork | None]:
    """Parse one :class:`Filters.Ip` entry into (normalized text, network or None).

    An exact address (or a network of a single address) has no network.
    """
    if not isinstance(entry, str):
        raise TypeError(f"IP entries must be str, not {type(entry).__name__}")
    try:
        if "/" not in entry:
            ip = _normalize_address(ipaddress.ip_address(entry))
            return str(ip), None
        network = ipaddress.ip_network(entry, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid IP address or network {entry!r}: {exc}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:a.b.c.d/n is the IPv4 network a.b.c.d/(n - 96)
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address), None
    return str(network), network


_Compiled: TypeAlias = tuple[
    frozenset[str], tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]
]


class Filters(Filter):
    """The namespace of the built-in filters.

    ``Filters.Fields``, ``Filters.Ip``, ``Filters.APIFactory`` and
    ``Filters.create``. An instance of ``Filters`` itself is a filter that
    always passes (the seed's dummy check).
    """

    __slots__ = ()

    def check(self, client: Client, packet: Packet) -> bool:
        """Always return True."""
        return True

    def __repr__(self) -> str:
        return "Filters()"

    @staticmethod
    def create(
        func: FilterFunction | AsyncFilterFunction, name: str | None = None
    ) -> FunctionFilter:
        """Make a filter from a function ``func(client, packet) -> bool``.

        Args:
            func: a callable, or an ``async def`` one (the filter is then
                asynchronous, awaited by the dispatcher); its result is
                taken as a bool.
            name: the name shown by ``repr``; the function's name by default.

        Returns:
            The filter, a :class:`FunctionFilter`.

        Raises:
            TypeError: when ``func`` is not callable, is an async generator,
                cannot take ``(client, packet)``, or ``name`` is not a str.
        """
        return FunctionFilter(func, name)

    class Fields(Filter):
        r"""Passes when the packet has the given fields, with matching values.

        A field given as None must be present (any value); a field given a
        pattern must be present and ``pattern.match(str(value))`` must succeed.
        Like :func:`re.match`, the pattern is anchored at the start only:
        ``r"\d+"`` accepts ``"12ab"``; end it with ``\Z`` to match the whole
        value. Non-str values are matched through ``str()`` (``12355`` as
        ``"12355"``, ``True`` as ``"True"``). With no fields it always passes.

        Args:
            **fields: field name to None, a regex str, or a compiled
                ``re.Pattern[str]`` (compiled once, here).

        Raises:
            re.error: when a pattern is not a valid regex; the message names
                the field.
            TypeError: when a value is of another type, or a bytes pattern.
        """

        __slots__ = ("_fields", "_matchers", "_required")

        def __init__(self, **fields: _FieldPattern) -> None:
            self._fields: tuple[tuple[str, re.Pattern[str] | None], ...] = tuple(
                (name, _compile_field(name, pattern)) for name, pattern in fields.items()
            )
            # Decided here: the fields that need only be present are one key
            # test (a set against the dict's keys, in C); check() walks the
            # others, (name, a test of str(value)).
            self._required = frozenset(name for name, pattern in self._fields if pattern is None)
            self._matchers: Matchers = tuple(
                (name, _literal_matcher(pattern) or pattern.match)
                for name, pattern in self._fields
                if pattern is not None
            )

        @property
        def fields(self) -> dict[str, re.Pattern[str] | None]:
            """The fields and their compiled patterns (a new dict each time)."""
            return dict(self._fields)

        def check(self, client: Client, packet: Packet) -> bool:
            """Return True when every field is present and matches its pattern."""
            return fields_match(self._required, self._matchers, client, packet)

        def checker(self) -> Callable[[Client, Packet], bool]:
            """:meth:`check` as the compiled function itself, the fields bound.

            A subclass that overrides :meth:`check` gets its own ``check``.
            """
            if type(self).check is not Filters.Fields.check:
                return self.check
            return functools.partial(fields_match, self._required, self._matchers)

        def __repr__(self) -> str:
            args = ", ".join(
                f"{name}={None if pattern is None else pattern.pattern!r}"
                for name, pattern in self._fields
            )
            return f"Filters.Fields({args})"

    class Ip(Filter):
        """Passes when the client's IP address is one of the given ones.

        Entries are IPv4 or IPv6 addresses (``"127.0.0.1"``, ``"::1"``) or
        networks in CIDR notation (``"10.0.0.0/8"``, ``"fd00::/8"``). An
        IPv4-mapped IPv6 address (``::ffff:127.0.0.1``), as a peer or as an
        entry, is treated as the IPv4 address; IPv6 zone ids (``%eth0``) are
        ignored. A client whose address is not an IP address (a Unix socket
        path, ``""``) never matches.

        The filter is dynamic: :meth:`add`, :meth:`remove` or assigning
        :attr:`ips` change it at runtime, also inside handlers already
        registered and inside ``&``/``|``/``~`` combinations.

        Args:
            ips: one entry, or an iterable of entries (possibly empty).

        Raises:
            ValueError: when an entry is not a valid address or network (a
                network with host bits set, like ``"10.0.0.1/8"``, is
                invalid); the message names the entry.
            TypeError: when an entry is not a str.
        """

        __slots__ = ("_compiled", "_entries")

        def __init__(self, ips: str | Iterable[str]) -> None:
            self._entries: dict[str, _IPNetwork | None] = {}
            self._compiled: _Compiled = (frozenset(), (), ())
            self.ips = ips

        @staticmethod
        def _parse_all(ips: str | Iterable[str]) -> dict[str, _IPNetwork | None]:
            if isinstance(ips, str):
                ips = (ips,)
            elif not isinstance(ips, Iterable):
                raise TypeError(f"ips must be a str or an iterable of str, not {type(ips)}")
            return dict(_parse_ip_entry(entry) for entry in ips)

        def _commit(self, entries: dict[str, _IPNetwork | None]) -> None:
            """Install ``entries``; checks see either the old or the new set, whole."""
            exact = frozenset(text for text, network in entries.items() if network is None)
            nets4: list[tuple[int, int]] = []
            nets6: list[tuple[int, int]] = []
            for network in entries.values():
                if network is not None:
                    target = nets4 if network.version == 4 else nets6
                    target.append((int(network.network_address), int(network.netmask)))
            self._entries = entries
            self._compiled = (exact, tuple(nets4), tuple(nets6))

        @property
        def ips(self) -> tuple[str, ...]:
            """The entries, normalized (``"::1/128"`` reads ``"::1"``), in insertion order.

            Assigning a str or an iterable of str replaces them all; nothing
            changes when an entry is invalid (ValueError or TypeError).
            """
            return tuple(self._entries)

        @ips.setter
        def ips(self, ips: str | Iterable[str]) -> None:
            self._commit(self._parse_all(ips))

        def add(self, ip: str) -> None:
            """Allow one more address or network; nothing happens if it is already there.

            Raises:
                ValueError: when ``ip`` is not a valid address or network.
                TypeError: when ``ip`` is not a str.
            """
            text, network = _parse_ip_entry(ip)
            if text not in self._entries:
                self._commit({**self._entries, text: network})

        def remove(self, ip: str) -> None:
            """Stop allowing an address or network, in any spelling of it.

            Raises:
                KeyError: when ``ip`` is not one of the entries.
                ValueError: when ``ip`` is not a valid address or network.
                TypeError: when ``ip`` is not a str.
            """
            text, _ = _parse_ip_entry(ip)
            if text not in self._entries:
                raise KeyError(ip)
            entries = dict(self._entries)
            del entries[text]
            self._commit(entries)

        def check(self, client: Client, packet: Packet) -> bool:
            """Return True when ``client.address`` is allowed, exactly or by a network."""
            address = client.address
            if not isinstance(address, str):
                return False
            peer = _parse_peer(address)
            if peer is None:
                return False
            exact, nets4, nets6 = self._compiled
            text, version, value = peer
            if text in exact:
                return True
            for network, mask in nets4 if version == 4 else nets6:
                if value & mask == network:
                    return True
            return False

        def __repr__(self) -> str:
            return f"Filters.Ip({list(self._entries)!r})"

    class APIFactory(Filter):
        """Passes when a packet field holds an API key the factory knows.

        The field must be present, its value a str that is well-formed for
        the factory (prefix, length, checksum: garbage costs no lookup), and
        the key must be stored. Over a memory store (or a factory whose
        subclass overrides the storage hooks) the filter is synchronous, as
        the seed's was; over SQLite or Redis it is asynchronous and never
        blocks the loop.

        Without a cache, every check asks the store: a key issued or revoked
        anywhere counts at once. With ``cache_ttl``, a key found is trusted
        for that many seconds without asking again (at most ``cache_size``
        keys, least recently used dropped first): a key revoked by another
        process keeps working here for at most ``cache_ttl`` seconds; one
        revoked or reissued through the same factory in this process stops at
        once. Keys not found are never cached.

        Args:
            factory: an :class:`~asyncapy.util.APIKeyFactory` (or subclass).
            field_name: the packet field holding the key.
            cache_ttl: seconds a found key is trusted without a lookup; 0 (the
                default) for no cache. Asynchronous filters only.
            cache_size: the most keys the cache holds.

        Raises:
            TypeError: when ``field_name`` is not a str.
            ValueError: when ``cache_ttl`` is negative or not finite, or
                ``cache_size`` is not an int >= 1.
        """

        __slots__ = ("_cache", "cache_size", "cache_ttl", "factory", "field_name")

        def __new__(
            cls,
            factory: APIKeyFactory,
            field_name: str,
            *,
            cache_ttl: float = 0.0,
            cache_size: int = DEFAULT_KEY_CACHE_SIZE,
        ) -> Filters.APIFactory:
            if cls is Filters.APIFactory and getattr(factory, "is_async", False):
                return super().__new__(_AsyncAPIFactory)
            return super().__new__(cls)

        def __init__(
            self,
            factory: APIKeyFactory,
            field_name: str,
            *,
            cache_ttl: float = 0.0,
            cache_size: int = DEFAULT_KEY_CACHE_SIZE,
        ) -> None:
            if not isinstance(field_name, str):
                raise TypeError(f"field_name must be a str, not {type(field_name).__name__}")
            if not isinstance(cache_ttl, int | float) or not 0 <= cache_ttl < math.inf:
                raise ValueError(f"cache_ttl must be a finite number >= 0, not {cache_ttl!r}")
            if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 1:
                raise ValueError(f"cache_size must be an int >= 1, not {cache_size!r}")
            self.factory = factory
            self.field_name = field_name
            self.cache_ttl = float(cache_ttl)
            self.cache_size = cache_size
            self._cache: OrderedDict[str, float] = OrderedDict()

        def check(self, client: Client, packet: Packet) -> bool:
            """Return True when the field's value is a known API key.

            Raises:
                Exception: whatever ``factory.get`` raises other than KeyError.
            """
            key: Any = packet.get(self.field_name, _MISSING)
            if not isinstance(key, str):
                return False
            try:
                self.factory.get(key)
            except KeyError:
                return False
            return True

        def __repr__(self) -> str:
            return f"Filters.APIFactory({self.factory!r}, {self.field_name!r})"

    class RateLimit(AsyncFilter):
        """Refuses packets beyond ``rate`` per ``per`` seconds, with ``burst`` at once.

        GCRA (the generic cell rate algorithm): one stored time per limited
        key, changed atomically in the store with the store's own clock, so
        every worker and host sharing a store shares the limit. The key is
        the peer's address (``client.address``: the real client's behind a
        trusted PROXY header), or, with ``field``, the packet field's value
        (an API key, a user id: hashed, so a long value costs one digest).

        The filter passes a conforming packet and counts it. A packet over the
        limit is not "filtered out": it is answered ``ERR_RATE_LIMITED`` with
        ``retry_after`` (seconds until a request of this key would conform)
        and its dispatch ends (:class:`~asyncapy.errors.Reject`). A packet
        without ``field`` (or with a value that is not a str or an int) does
        not pass, and is not counted. Over a memory store it answers without
        waiting; the limit then holds per process.

        Args:
            rate: requests allowed per period, sustained (int >= 1).
            per: the period in seconds (> 0); ``rate=10, per=1`` is 10 per second.
            burst: requests that may come at once after a quiet time (int >=
                1); ``rate`` by default.
            field: the packet field whose value is limited, or None for the
                peer's address.
            store: a store URL or :class:`~asyncapy.stores.Store` (``memory://``
                by default: one process). Pass the server's ``server.store`` to
                share the server's.
            name: what tells this limit's keys from another's in the store;
                made from the arguments by default.

        Raises:
            ValueError: an argument out of its range.
            TypeError: ``field`` or ``name`` not a str.
            StoreError: ``store`` is a malformed URL.
        """

        __slots__ = ("_interval", "_prefix", "burst", "field", "per", "rate", "store")

        def __init__(
            self,
            rate: int,
            per: float = 1.0,
            *,
            burst: int | None = None,
            field: str | None = None,
            store: str | Store | None = None,
            name: str | None = None,
        ) -> None:
            if not isinstance(rate, int) or isinstance(rate, bool) or rate < 1:
                raise ValueError(f"rate must be an int >= 1, not {rate!r}")
            if not isinstance(per, int | float) or isinstance(per, bool) or not 0 < per < math.inf:
                raise ValueError(f"per must be a positive number of seconds, not {per!r}")
            burst = rate if burst is None else burst
            if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
                raise ValueError(f"burst must be an int >= 1, not {burst!r}")
            if field is not None and not isinstance(field, str):
                raise TypeError(f"field must be a str or None, not {type(field).__name__}")
            if name is not None and not isinstance(name, str):
                raise TypeError(f"name must be a str or None, not {type(name).__name__}")
            from .stores import DEFAULT_STORE, open_store

            self.rate, self.per, self.burst, self.field = rate, float(per), burst, field
            self._interval = self.per / rate
            if name is None:
                name = f"{rate}/{self.per:g}s/{burst}:" + ("ip" if field is None else f"f.{field}")
            self._prefix = f"rl:{name}:"
            self.store = store if isinstance(store, Store) else open_store(store or DEFAULT_STORE)

        async def check(self, client: Client, packet: Packet) -> bool:
            """Count the packet if it conforms; otherwise refuse it.

            Raises:
                Reject: ``ERR_RATE_LIMITED`` with ``retry_after``, over the limit.
                StoreError: the store failed (answered ``ERR_INTERNAL``).
            """
            field = self.field
            if field is None:
                what = client.address
                if not isinstance(what, str):
                    return False
            else:
                value = packet.get(field, _MISSING)
                if type(value) is int:
                    value = str(value)
                elif type(value) is not str:
                    return False
                what = value if len(value) <= 64 else hashlib.sha256(value.encode()).hexdigest()
            decision = await self.store.rates.aconsume(
                self._prefix + what, self._interval, self.burst
            )
            if not decision.allowed:
                raise Reject(ErrorCode.ERR_RATE_LIMITED, retry_after=round(decision.retry_after, 3))
            return True

        def __repr__(self) -> str:
            by = "address" if self.field is None else repr(self.field)
            return f"Filters.RateLimit({self.rate}, per={self.per:g}, burst={self.burst}, by {by})"


class _AsyncAPIFactory(Filters.APIFactory):
    """A :class:`Filters.APIFactory` over a shared store: awaited, with an optional cache."""

    __slots__ = ()

    def __init__(
        self,
        factory: APIKeyFactory,
        field_name: str,
        *,
        cache_ttl: float = 0.0,
        cache_size: int = DEFAULT_KEY_CACHE_SIZE,
    ) -> None:
        super().__init__(factory, field_name, cache_ttl=cache_ttl, cache_size=cache_size)
        if self.cache_ttl:
            factory.add_invalidator(self._invalidate)

    def _invalidate(self, digest: str) -> None:
        self._cache.pop(digest, None)

    async def check(self, client: Client, packet: Packet) -> bool:  # type: ignore[override]
        """Return True when the field's value is a known API key (cached for ``cache_ttl``).

        Raises:
            StoreError: the store failed (answered ``ERR_INTERNAL``).
        """
        key: Any = packet.get(self.field_name, _MISSING)
        factory = self.factory
        if not isinstance(key, str) or not factory.well_formed(key):
            return False
        if not self.cache_ttl:
            return await factory.acontains(key)
        digest = factory.digest(key)
        cache = self._cache
        now = time.monotonic()
        expires = cache.get(digest)
        if expires is not None:
            if expires > now:
                cache.move_to_end(digest)
                return True
            del cache[digest]
        if await factory.acontains(key):
            cache[digest] = now + self.cache_ttl
            cache.move_to_end(digest)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
            return True
        return False
