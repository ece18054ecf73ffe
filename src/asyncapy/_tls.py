"""TLS contexts, for servers and for clients, built in one place."""

from __future__ import annotations

import os
import ssl

from .errors import ConfigError

__all__ = ["client_context", "server_context"]


def server_context(
    certfile: str | None, keyfile: str | None, given: ssl.SSLContext | None
) -> ssl.SSLContext | None:
    """The context a server serves TLS with, or None for plain TCP.

    Args:
        certfile: PEM certificate chain (with the key, unless ``keyfile``).
        keyfile: PEM private key.
        given: a ready context, instead of certfile/keyfile.

    Raises:
        ConfigError: for both ``given`` and a certfile, a ``given`` that is not
            an ``ssl.SSLContext``, or files that cannot be loaded.
    """
    if given is not None:
        if certfile is not None:
            raise ConfigError("pass either ssl_context or certfile/keyfile, not both")
        if not isinstance(given, ssl.SSLContext):
            raise ConfigError("ssl_context must be an ssl.SSLContext")
        return given
    if certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load certfile={certfile!r} keyfile={keyfile!r}: {exc}") from None
    return context


def client_context(
    tls: bool,
    cafile: str | os.PathLike[str] | None,
    verify: bool,
    given: ssl.SSLContext | None,
    server_hostname: str | None,
) -> ssl.SSLContext | None:
    """The context a client connects with, or None without TLS.

    Verifies the server's certificate and host name against the system's CAs
    (or ``cafile``) unless ``verify`` is False; ``given`` replaces all of it.

    Raises:
        ValueError: for contradictory arguments (one given with
            ``tls=False``; ``cafile`` with ``verify=False``; ``given`` with either).
        TypeError: when ``given`` is not an :class:`ssl.SSLContext`.
        OSError: when ``cafile`` cannot be read (``ssl.SSLError`` when it
            holds no valid certificate).
    """
    if not tls:
        set_anyway = [
            name
            for name, value in (
                ("ssl_context", given is not None),
                ("cafile", cafile is not None),
                ("verify=False", not verify),
                ("server_hostname", server_hostname is not None),
            )
            if value
        ]
        if set_anyway:
            raise ValueError(f"{', '.join(set_anyway)} given with tls=False")
        return None
    if given is not None:
        if cafile is not None or not verify:
            raise ValueError("ssl_context cannot be combined with cafile or verify=False")
        if not isinstance(given, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext, not {type(given)!r}")
        return given
    if not verify:
        if cafile is not None:
            raise ValueError("cafile is useless with verify=False")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)
