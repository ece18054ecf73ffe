"""One error tree under AsyncAPYError, with the peer's faults apart from ours."""

from __future__ import annotations

import pytest

import asyncapy
import asyncapy.client
import asyncapy.config
from asyncapy import errors
from asyncapy.errors import (
    AsyncAPYError,
    ConfigError,
    ConnectionClosedError,
    DecodeError,
    EncodeError,
    ErrorCode,
    LocalProtocolError,
    NotConnectedError,
    ProtocolError,
    RemoteProtocolError,
    TLSMismatchError,
)


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (ConfigError, (AsyncAPYError, ValueError)),
        (ProtocolError, (AsyncAPYError,)),
        (RemoteProtocolError, (ProtocolError,)),
        (LocalProtocolError, (ProtocolError,)),
        (DecodeError, (RemoteProtocolError, ValueError)),
        (TLSMismatchError, (RemoteProtocolError, ConnectionError)),
        (EncodeError, (LocalProtocolError, TypeError)),
        (NotConnectedError, (AsyncAPYError, ConnectionError)),
        (ConnectionClosedError, (AsyncAPYError, ConnectionError)),
    ],
)
def test_the_tree(error: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    for base in bases:
        assert issubclass(error, base)


def test_every_exported_error_is_in_the_tree() -> None:
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, AsyncAPYError) or value in (
                errors.StopPropagation,
                errors.Reject,
            ), name


def test_the_seed_paths_give_the_same_classes() -> None:
    assert asyncapy.config.ConfigError is ConfigError
    assert asyncapy.ConfigError is ConfigError
    assert asyncapy.client.NotConnectedError is NotConnectedError
    assert asyncapy.client.ConnectionClosedError is ConnectionClosedError


def test_codes_and_keep_connection() -> None:
    assert DecodeError("x").code is ErrorCode.ERR_REQUEST_MALFORMED
    assert DecodeError("x").keep_connection
    assert EncodeError("x").code is ErrorCode.ERR_INTERNAL  # to the peer, our fault
    mismatch = TLSMismatchError("x", peer_speaks_tls=True)
    assert mismatch.peer_speaks_tls
    assert not mismatch.keep_connection
