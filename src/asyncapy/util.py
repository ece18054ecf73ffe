"""Extra utilities: :class:`APIKeyFactory`, a small store of API keys."""

from __future__ import annotations

import secrets
import string
from typing import Any, Final

__all__ = ["APIKeyFactory"]

KEY_ALPHABET: Final = string.ascii_letters + string.digits + "-_"
"""The characters of generated keys: the URL-safe base64 alphabet."""

MIN_KEY_SIZE: Final = 8


class APIKeyFactory:
    """Issue, look up, reissue and revoke API keys, each with a metadata dict.

    Keys are random strings of exactly ``size`` characters from the URL-safe
    alphabet ``A-Z a-z 0-9 - _`` (6 bits each), drawn with :mod:`secrets`.
    Keys and metadata are kept in memory. To keep them elsewhere, subclass and
    override the four storage hooks :meth:`_load`, :meth:`_save`,
    :meth:`_delete` and :meth:`_contains`; the public methods only use those.

    Metadata dicts are stored as given (not copied): :meth:`get` returns the
    stored dict itself.

    Args:
        size: the length of the keys, at least 8; 32 by default.

    Raises:
        ValueError: when ``size`` is not an int or is less than 8.
    """

    def __init__(self, size: int = 32) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise ValueError(f"size must be an int, not {type(size).__name__}")
        if size < MIN_KEY_SIZE:
            raise ValueError(f"size must be at least {MIN_KEY_SIZE}, not {size}")
        self.size = size
        self._keys: dict[str, dict[Any, Any]] = {}

    # Storage hooks: override these four to store keys elsewhere.

    def _load(self, key: str) -> dict[Any, Any]:
        """Return the metadata stored for ``key``.

        Raises:
            KeyError: when ``key`` is not stored.
        """
        return self._keys[key]

    def _save(self, key: str, metadata: dict[Any, Any]) -> None:
        """Store ``metadata`` for ``key``, adding or replacing it."""
        self._keys[key] = metadata

    def _delete(self, key: str) -> None:
        """Forget ``key``.

        Raises:
            KeyError: when ``key`` is not stored.
        """
        del self._keys[key]

    def _contains(self, key: str) -> bool:
        """Return True when ``key`` is stored."""
        return key in self._keys

    def _new_key(self) -> str:
        """Return a random key of ``self.size`` characters not yet stored."""
        while True:
            key = "".join(secrets.choice(KEY_ALPHABET) for _ in range(self.size))
            if not self._contains(key):
                return key

    @staticmethod
    def _check_metadata(metadata: object) -> None:
        if not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")

    # Public API.

    def issue(self, metadata: dict[Any, Any] | None = None) -> str:
        """Create a new key and store ``metadata`` with it.

        Args:
            metadata: what :meth:`get` returns for the key; ``{}`` when None.

        Returns:
            The new key, ``self.size`` characters long.

        Raises:
            TypeError: when ``metadata`` is neither a dict nor None.
        """
        if metadata is None:
            metadata = {}
        self._check_metadata(metadata)
        key = self._new_key()
        self._save(key, metadata)
        return key

    def get(self, key: str) -> dict[Any, Any]:
        """Return the metadata stored with ``key``.

        Raises:
            KeyError: when ``key`` was never issued or was revoked.
        """
        return self._load(key)

    def reissue(self, key: str) -> str:
        """Replace ``key`` with a new key that keeps its metadata.

        The old key stops working; the new one is stored before the old one
        is removed.

        Returns:
            The new key.

        Raises:
            KeyError: when ``key`` was never issued or was revoked.
        """
        metadata = self._load(key)
        new_key = self._new_key()
        self._save(new_key, metadata)
        self._delete(key)
        return new_key

    def revoke(self, key: str) -> None:
        """Remove ``key`` and its metadata.

        Raises:
            KeyError: when ``key`` was never issued or was already revoked.
        """
        self._delete(key)

    def update(self, key: str, metadata: dict[Any, Any]) -> None:
        """Replace the metadata stored with ``key`` by ``metadata``.

        Raises:
            KeyError: when ``key`` was never issued or was revoked.
            TypeError: when ``metadata`` is not a dict.
        """
        self._check_metadata(metadata)
        if not self._contains(key):
            raise KeyError(key)
        self._save(key, metadata)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._contains(key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"
