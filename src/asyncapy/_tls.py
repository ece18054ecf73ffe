"""TLS: the contexts of servers and clients, and what a failed handshake means.

A peer that speaks plaintext to a TLS port (or TLS to a plaintext port) gets
a clear answer and leaves one clear log line, on both sides:

* On a **plaintext port**, the frame decoder recognises a TLS record at the
  start of the stream (:func:`~asyncapy.protocol.looks_like_tls`); the
  connection logs it and answers with an AsyncAProto error frame, which a TLS
  client reports as ``WRONG_VERSION_NUMBER``: :func:`handshake_error` turns
  that into a :class:`~asyncapy.errors.TLSMismatchError` ("the server does
  not speak TLS").
* On a **TLS port**, the listener (:mod:`asyncapy._listener`) answers a
  plaintext peer with :data:`TLS_ALERT`, which the plaintext
  :class:`~asyncapy.client.Client` recognises ("the server speaks TLS").

Clients import this module only: no server-side module comes with it.
"""

from __future__ import annotations

import os
import ssl
from typing import Final

from .errors import ConfigError, TLSMismatchError

__all__ = ["TLS_ALERT", "client_context", "handshake_error", "server_context"]

TLS_ALERT: Final = bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0A))
"""A TLS record: a fatal ``unexpected_message`` alert. What a plaintext peer of
a TLS port gets before the close."""

_NOT_TLS: Final = frozenset(
    ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "HTTP_REQUEST")
)
"""OpenSSL's reasons for a handshake that got a reply that is not TLS at all."""


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


def handshake_error(exc: BaseException) -> TLSMismatchError | None:
    """The :class:`TLSMismatchError` that a client's failed TLS handshake means, if any.

    A handshake answered with bytes that are not TLS (OpenSSL's
    ``WRONG_VERSION_NUMBER`` and kin) means a plaintext server.
    """
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None) in _NOT_TLS:
        return TLSMismatchError(
            "the server does not speak TLS (it answered the TLS handshake in plaintext):"
            " connect with tls=False, or serve TLS there",
            peer_speaks_tls=False,
        )
    return None
