"""Reading a store URL (:func:`asyncapy.stores.open_store`)."""

from __future__ import annotations

import inspect
import urllib.parse
from typing import Any

from . import Store, StoreError, redact_url
from ._common import FORMS, bad_url, sqlite_path


def _bad(url: str, why: str) -> StoreError:
    return bad_url(url, why)


def _check_options(url: str, cls: type[Store], options: dict[str, Any]) -> None:
    params = inspect.signature(cls).parameters
    unknown = sorted(
        set(options) - {name for name, p in params.items() if p.kind is p.KEYWORD_ONLY}
    )
    if unknown:
        accepted = ", ".join(name for name, p in params.items() if p.kind is p.KEYWORD_ONLY)
        raise StoreError(
            f"{redact_url(url)}: unknown option(s) {', '.join(unknown)} (accepted: {accepted})"
        )


def check_redis_url(url: str) -> None:
    """Refuse a ``redis://`` or ``rediss://`` URL that redis-py would misread.

    Raises:
        StoreError: no host, a port that is not a number, a database that is not a number.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _bad(url, f"the port is not a number from 0 to 65535 ({exc})") from None
    if not parts.hostname:
        raise _bad(url, "a redis URL names a host")
    if port == 0:
        raise _bad(url, "port 0 is not a port to connect to")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise _bad(url, f"the database is a number, not {db!r}")
    if parts.fragment:
        raise _bad(url, "a redis URL has no fragment")


def open_url(url: str, **options: Any) -> Store:
    """See :func:`asyncapy.stores.open_store`."""
    if not isinstance(url, str):
        raise StoreError(f"a store URL is a str, not {type(url).__name__}; accepted forms: {FORMS}")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    cls: Any
    if scheme == "memory":
        if url[len("memory://") :]:
            raise _bad(url, "memory:// takes nothing after the scheme")
        from .memory import MemoryStore

        cls = MemoryStore
    elif scheme == "sqlite":
        sqlite_path(url)
        from .sqlite import SQLiteStore

        cls = SQLiteStore
    elif scheme in ("redis", "rediss"):
        check_redis_url(url)
        try:
            from .redis import RedisStore
        except ImportError as exc:
            raise StoreError(
                f"{redact_url(url)}: the redis package is not installed "
                f"(pip install 'asyncapy[redis]'): {exc}"
            ) from None
        cls = RedisStore
    else:
        raise _bad(url, "unknown scheme")
    _check_options(url, cls, options)
    store: Store = cls(url, **options)
    return store
