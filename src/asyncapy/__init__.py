"""asyncapy: asynchronous API endpoints over AsyncAProto (TCP or TLS).

The seed's module paths are public API: ``asyncapy.server``, ``asyncapy.core``,
``asyncapy.filters``, ``asyncapy.errors``, ``asyncapy.client`` and
``asyncapy.util``; the common names are importable from here as well.
"""

from __future__ import annotations

from .config import ConfigError, Settings
from .core import Client, Handler, Packet, Session
from .errors import ErrorCode, StopPropagation
from .filters import Filter, Filters
from .protocol import PROTOCOL_VERSION, Encoding
from .server import Server

__version__ = "0.6.0.dev0"

__all__ = [
    "PROTOCOL_VERSION",
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
    "__version__",
]
