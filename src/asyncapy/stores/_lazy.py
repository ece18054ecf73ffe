"""A store that opens the URL its owner names now, at first use: ``Server.store``.

An app builds ``APIKeyFactory(store=server.store)`` and
``Filters.RateLimit(..., store=server.store)`` when its module is imported,
but under ``asyncapy run`` the ``store`` setting is only final after that
(the INI file, ``ASYNCAPY_STORE`` and ``--store`` apply to the imported
server). So ``server.store`` is this proxy: each use reads the URL the
server's settings name at that moment, opens that store once (in the
process and loop that use it, as every store does) and delegates to it.
"""

from __future__ import annotations

from collections.abc import Callable

from . import KeyStore, RateStore, SessionRegistry, Store, open_store

__all__ = ["LazyStore"]


class LazyStore(Store):
    """The store that ``url_of()`` names when it is used.

    Args:
        url_of: returns the current URL (the owner's ``store`` setting).

    Raises:
        StoreError: on first use, for a URL the stores do not accept.
    """

    def __init__(self, url_of: Callable[[], str]) -> None:
        self._url_of = url_of
        self._target: Store | None = None
        self.url = url_of()

    @property
    def target(self) -> Store:
        """The store itself, opened (lazily) for the URL named now."""
        url = self._url_of()
        target = self._target
        if target is None or url != self.url:
            # A URL changed before first use (asyncapy run's options): open the new one.
            target = self._target = open_store(url)
            self.url = url
        return target

    @property
    def keys(self) -> KeyStore:
        return self.target.keys

    @property
    def sessions(self) -> SessionRegistry:
        return self.target.sessions

    @property
    def rates(self) -> RateStore:
        return self.target.rates

    @property
    def shared(self) -> bool:
        return self.target.shared

    async def aclose(self) -> None:
        if self._target is not None:
            await self._target.aclose()

    def close(self) -> None:
        if self._target is not None:
            self._target.close()
