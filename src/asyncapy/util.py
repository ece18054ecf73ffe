"""Extra utilities: :class:`APIKeyFactory`, API keys over any store.

Theory of operation
-------------------
A key is ``<prefix>_<secret><check>``: the public ``prefix`` (``aapy`` by
default), random characters from :mod:`secrets` in the base62 alphabet, and
six base62 characters of the CRC-32 of everything before them. The checksum
lets garbage be refused without asking the store (a typo, a scanner's
guess), and the prefix with the checksum lets secret scanners find leaked
keys with few false positives. The whole key is ``size`` characters long, as
the seed's keys were.

The store never sees a key: it holds the key's SHA-256 digest (an
HMAC-SHA256 with ``pepper`` when one is given, so that a stolen store cannot
even be used to test guesses offline), the key's hint (prefix and last four
characters) and its metadata. Looking a key up is hashing it and reading one
record by digest; two keys are never compared character by character, and
:func:`hmac.compare_digest` confirms the digest of the record found.

Storage goes through a :class:`~asyncapy.stores.Store` (``store=``, a URL
or an object; ``memory://`` by default), or, for a subclass that overrides
the seed-era hooks ``_load``, ``_save``, ``_delete`` and ``_contains``,
through those hooks, which now receive the digest in place of the key.
Every method has an ``async`` form (``aissue``, ``aget``...) that never blocks
the event loop; the blocking forms refuse to run on a running loop's thread
when the store is SQLite or Redis (:class:`~asyncapy.stores.StoreError`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .stores import DEFAULT_STORE, KeyRecord, Store, open_store
from .stores._lazy import LazyStore

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["KEY_ALPHABET", "MIN_SECRET", "APIKeyFactory", "checksum"]

KEY_ALPHABET: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
"""The characters of a key's secret and checksum: base62 (no separators, one double-click)."""

CHECK_LENGTH: Final = 6
"""Base62 characters of the checksum (62**6 > 2**32)."""

MIN_SECRET: Final = 16
"""The fewest random characters a key may have: 95 bits."""

DEFAULT_PREFIX: Final = "aapy"

_HOOKS: Final = ("_load", "_save", "_delete", "_contains")
_ALPHABET_SET: Final = frozenset(KEY_ALPHABET)


def checksum(text: str) -> str:
    """The six base62 characters of the CRC-32 of ``text``."""
    value = zlib.crc32(text.encode())
    out = []
    for _ in range(CHECK_LENGTH):
        value, digit = divmod(value, 62)
        out.append(KEY_ALPHABET[digit])
    return "".join(reversed(out))


class APIKeyFactory:
    """Issue, look up, reissue and revoke API keys, each with a metadata dict.

    The seed's API (``size``, ``issue``, ``get``, ``reissue``, ``revoke``,
    ``update``, ``in``), each also ``async`` (``a`` prefix), over any store.
    Metadata must be JSON-serialisable (a dict of str keys); :meth:`get`
    returns a copy, except through a subclass's own hooks.

    Args:
        size: the length of a key, prefix and checksum included; 32 by default.
        store: a store URL (``memory://``, ``sqlite:///keys.db``,
            ``redis://host:6379/0``) or a :class:`~asyncapy.stores.Store`.
        prefix: the public start of every key, letters and digits (may be
            ``""``: no prefix and no ``_``).
        pepper: a server secret: digests become HMAC-SHA256 with it. Keys
            stored with one pepper are not found with another.
        legacy: also accept keys without the checksum format (issued by
            asyncapy before 0.6, or by hand, and stored with :meth:`import_key`).

    Raises:
        ValueError: when ``size`` is not an int or leaves fewer than
            :data:`MIN_SECRET` random characters, or ``prefix`` is not
            letters and digits.
        StoreError: when ``store`` is a malformed URL.
    """

    def __init__(
        self,
        size: int = 32,
        *,
        store: str | Store | None = None,
        prefix: str = DEFAULT_PREFIX,
        pepper: str | bytes | None = None,
        legacy: bool = False,
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"size must be an int, not {type(size).__name__}")
        if not isinstance(prefix, str) or not (
            prefix == "" or (prefix.isascii() and prefix.isalnum())
        ):
            raise ValueError(f"prefix must be ASCII letters and digits, not {prefix!r}")
        self._head = f"{prefix}_" if prefix else ""
        smallest = len(self._head) + MIN_SECRET + CHECK_LENGTH
        if size < smallest:
            raise ValueError(
                f"size must be at least {smallest} with prefix {prefix!r} "
                f"({MIN_SECRET} random characters, a {CHECK_LENGTH}-character checksum), not {size}"
            )
        self.size = size
        self.prefix = prefix
        self.legacy = legacy
        self._secret_length = size - len(self._head) - CHECK_LENGTH
        key = pepper.encode() if isinstance(pepper, str) else pepper
        self._pepper = key
        self._hooked = any(
            getattr(type(self), hook) is not getattr(APIKeyFactory, hook) for hook in _HOOKS
        )
        # (Named so that a seed-era subclass's own ``self.store`` does not clash.)
        self._backend = store if isinstance(store, Store) else open_store(store or DEFAULT_STORE)
        self._invalidators: list[Callable[[str], None]] = []

    # -- keys and digests

    @property
    def backend(self) -> Store:
        """The :class:`~asyncapy.stores.Store` of the keys (unused by hooks that are overridden)."""
        return self._backend

    @property
    def is_async(self) -> bool:
        """Whether lookups should be awaited: no hooks are overridden and the store is shared.

        True too for ``server.store``, whose URL may change until the server
        serves (``asyncapy run --store``): awaiting a memory store costs
        little, blocking on Redis would cost every connection.
        """
        if self._hooked:
            return False
        return isinstance(self._backend, LazyStore) or self._backend.shared

    def digest(self, key: str) -> str:
        """What the store holds for ``key``: SHA-256, or HMAC-SHA256 with the pepper (hex)."""
        data = key.encode()
        if self._pepper is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self._pepper, data, hashlib.sha256).hexdigest()

    def well_formed(self, key: object) -> bool:
        """Whether ``key`` could be one of this factory's keys (prefix, length, checksum).

        Always True for a non-empty str when ``legacy`` is on. Costs no store lookup.
        """
        if type(key) is not str:
            return False
        if len(key) != self.size or not key.startswith(self._head):
            return bool(self.legacy and key)
        body = key[len(self._head) :]
        if (
            not _ALPHABET_SET.issuperset(body)
            or checksum(key[:-CHECK_LENGTH]) != key[-CHECK_LENGTH:]
        ):
            return bool(self.legacy)
        return True

    def _new_key(self) -> str:
        secret = "".join(secrets.choice(KEY_ALPHABET) for _ in range(self._secret_length))
        start = self._head + secret
        return start + checksum(start)

    def _record(self, key: str, metadata: Mapping[str, Any]) -> KeyRecord:
        hint = f"{self._head}...{key[-4:]}"
        return KeyRecord(self.digest(key), hint, dict(metadata), time.time())

    @staticmethod
    def _check_metadata(metadata: object) -> dict[Any, Any]:
        if metadata is None:
            return {}
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
        return metadata

    def _forget(self, digest: str) -> None:
        for invalidate in self._invalidators:
            invalidate(digest)

    def add_invalidator(self, callback: Callable[[str], None]) -> None:
        """Have ``callback(digest)`` called when this factory revokes or reissues a key.

        :class:`~asyncapy.filters.Filters.APIFactory` uses it to drop a key
        from its cache at once in this process (other processes see the
        change within ``cache_ttl``).
        """
        self._invalidators.append(callback)

    # -- the seed-era storage hooks (they receive digests)

    def _load(self, key: str) -> dict[Any, Any]:
        """Return the metadata stored under digest ``key``.

        Raises:
            KeyError: when it is not stored.
        """
        record = self._backend.keys.get(key)
        if record is None:
            raise KeyError(key)
        return dict(record.metadata)

    def _save(self, key: str, metadata: dict[Any, Any]) -> None:
        """Store ``metadata`` under digest ``key``, adding or replacing it."""
        if not self._backend.keys.set_metadata(key, metadata):
            self._backend.keys.add(KeyRecord(key, "", metadata, time.time()))

    def _delete(self, key: str) -> None:
        """Forget digest ``key``.

        Raises:
            KeyError: when it is not stored.
        """
        if not self._backend.keys.delete(key):
            raise KeyError(key)

    def _contains(self, key: str) -> bool:
        """Return True when digest ``key`` is stored."""
        return self._backend.keys.get(key) is not None

    # -- the seed's API (blocking)

    def issue(self, metadata: dict[Any, Any] | None = None) -> str:
        """Create a new key and store ``metadata`` with it.

        Args:
            metadata: what :meth:`get` returns for the key; ``{}`` when None.

        Returns:
            The new key, ``size`` characters. It is shown once: only its
            digest is stored.

        Raises:
            TypeError: when ``metadata`` is neither a dict nor None, or not
                JSON-serialisable (stores).
            StoreError: the store failed, or was called on a running loop.
        """
        metadata = self._check_metadata(metadata)
        while True:
            key = self._new_key()
            if self._hooked:
                digest = self.digest(key)
                if self._contains(digest):
                    continue
                self._save(digest, metadata)
                return key
            if self._backend.keys.add(self._record(key, metadata)):
                return key

    def import_key(self, key: str, metadata: dict[Any, Any] | None = None) -> None:
        """Store a key made elsewhere (to migrate keys issued before 0.6).

        Raises:
            ValueError: when the key is already stored, or is neither
                well-formed nor accepted by ``legacy``.
        """
        metadata = self._check_metadata(metadata)
        if not self.well_formed(key):
            raise ValueError("not a key of this factory (pass legacy=True for old keys)")
        digest = self.digest(key)
        if self._hooked:
            if self._contains(digest):
                raise ValueError("the key is already stored")
            self._save(digest, metadata)
        elif not self._backend.keys.add(self._record(key, metadata)):
            raise ValueError("the key is already stored")

    def get(self, key: str) -> dict[Any, Any]:
        """Return the metadata stored with ``key``.

        Raises:
            KeyError: when ``key`` is malformed, was never issued or was revoked.
            StoreError: the store failed, or was called on a running loop.
        """
        if not self.well_formed(key):
            raise KeyError(key)
        if self._hooked:
            return self._load(self.digest(key))
        digest = self.digest(key)
        record = self._backend.keys.get(digest)
        if record is None or not hmac.compare_digest(record.digest, digest):
            raise KeyError(key)
        return dict(record.metadata)

    def reissue(self, key: str) -> str:
        """Replace ``key`` by a new key with its metadata; the old key stops working.

        Atomic on a store: there is no moment when both keys or neither work.

        Returns:
            The new key.

        Raises:
            KeyError: when ``key`` was never issued or was revoked.
            StoreError: the store failed, or was called on a running loop.
        """
        if not self.well_formed(key):
            raise KeyError(key)
        old = self.digest(key)
        if self._hooked:
            metadata = self._load(old)
            new_key = self.issue(metadata)
            self._delete(old)
        else:
            record = self._backend.keys.get(old)
            if record is None:
                raise KeyError(key)
            new_key = self._new_key()
            if not self._backend.keys.replace(old, self._record(new_key, record.metadata)):
                raise KeyError(key)
        self._forget(old)
        return new_key

    def revoke(self, key: str) -> None:
        """Remove ``key`` and its metadata.

        Raises:
            KeyError: when ``key`` was never issued or was already revoked.
            StoreError: the store failed, or was called on a running loop.
        """
        if not self.well_formed(key):
            raise KeyError(key)
        digest = self.digest(key)
        if self._hooked:
            self._delete(digest)
        elif not self._backend.keys.delete(digest):
            raise KeyError(key)
        self._forget(digest)

    def update(self, key: str, metadata: dict[Any, Any]) -> None:
        """Replace the metadata stored with ``key`` by ``metadata``.

        Raises:
            KeyError: when ``key`` was never issued or was revoked.
            TypeError: when ``metadata`` is not a dict (or not JSON-serialisable).
            StoreError: the store failed, or was called on a running loop.
        """
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
        if not self.well_formed(key):
            raise KeyError(key)
        digest = self.digest(key)
        if self._hooked:
            if not self._contains(digest):
                raise KeyError(key)
            self._save(digest, metadata)
        elif not self._backend.keys.set_metadata(digest, metadata):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not self.well_formed(key):
            return False
        if self._hooked:
            return self._contains(self.digest(key))
        return self._backend.keys.get(self.digest(key)) is not None

    # -- async forms (never block the loop)

    async def aissue(self, metadata: dict[Any, Any] | None = None) -> str:
        """:meth:`issue`, awaiting the store."""
        if self._hooked:
            return self.issue(metadata)
        metadata = self._check_metadata(metadata)
        while True:
            key = self._new_key()
            if await self._backend.keys.aadd(self._record(key, metadata)):
                return key

    async def aget(self, key: str) -> dict[Any, Any]:
        """:meth:`get`, awaiting the store."""
        if self._hooked:
            return self.get(key)
        if not self.well_formed(key):
            raise KeyError(key)
        digest = self.digest(key)
        record = await self._backend.keys.aget(digest)
        if record is None or not hmac.compare_digest(record.digest, digest):
            raise KeyError(key)
        return dict(record.metadata)

    async def acontains(self, key: object) -> bool:
        """``key in factory``, awaiting the store."""
        if self._hooked:
            return key in self
        if not isinstance(key, str) or not self.well_formed(key):
            return False
        return await self._backend.keys.aget(self.digest(key)) is not None

    async def areissue(self, key: str) -> str:
        """:meth:`reissue`, awaiting the store."""
        if self._hooked:
            return self.reissue(key)
        if not self.well_formed(key):
            raise KeyError(key)
        old = self.digest(key)
        record = await self._backend.keys.aget(old)
        if record is None:
            raise KeyError(key)
        new_key = self._new_key()
        if not await self._backend.keys.areplace(old, self._record(new_key, record.metadata)):
            raise KeyError(key)
        self._forget(old)
        return new_key

    async def arevoke(self, key: str) -> None:
        """:meth:`revoke`, awaiting the store."""
        if self._hooked:
            return self.revoke(key)
        if not self.well_formed(key):
            raise KeyError(key)
        digest = self.digest(key)
        if not await self._backend.keys.adelete(digest):
            raise KeyError(key)
        self._forget(digest)
        return None

    async def aupdate(self, key: str, metadata: dict[Any, Any]) -> None:
        """:meth:`update`, awaiting the store."""
        if self._hooked:
            return self.update(key, metadata)
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
        if not self.well_formed(key):
            raise KeyError(key)
        if not await self._backend.keys.aset_metadata(self.digest(key), metadata):
            raise KeyError(key)
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"
