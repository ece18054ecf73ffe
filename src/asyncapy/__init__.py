"""asyncapy: asynchronous API endpoints over AsyncAProto (TCP or TLS).

The seed's module paths are public API: ``asyncapy.server``, ``asyncapy.core``,
``asyncapy.filters``, ``asyncapy.errors``, ``asyncapy.client`` and
``asyncapy.util``; the common names are importable from here as well.

Two kinds of client, not to be confused:

- :class:`Client` (``asyncapy.core.Client``) is the peer a handler receives:
  ``async def handler(client, packet)``. The server builds it.
- :class:`BlockingClient` (the seed's ``asyncapy.client.Client``) and
  :class:`AsyncClient` connect to a server: ``BlockingClient(tls=False)``.
"""

from __future__ import annotations

from .client import AsyncClient
from .client import Client as BlockingClient
from .config import Settings
from .core import Client, Handler, Packet, Session
from .errors import AsyncAPYError, ConfigError, ErrorCode, StopPropagation, TLSMismatchError
from .filters import Filter, Filters
from .protocol import PROTOCOL_VERSION, Encoding
from .server import Server

__version__ = "0.6.0.dev0"

__all__ = [
    "PROTOCOL_VERSION",
    "AsyncAPYError",
    "AsyncClient",
    "BlockingClient",
    "Client",
    "ConfigError",
    "Encoding",
    "ErrorCode",
    "Filter",
    "Filters",
    "Handler",
    "Packet",
    "Server",
    "Session",
    "Settings",
    "StopPropagation",
    "TLSMismatchError",
    "__version__",
]
