"""asyncapy: asynchronous API endpoints over AsyncAProto (TCP or TLS)."""

from __future__ import annotations

from .errors import StopPropagation
from .protocol import PROTOCOL_VERSION, Encoding

__version__ = "0.6.0.dev0"

__all__ = ["PROTOCOL_VERSION", "Encoding", "StopPropagation", "__version__"]
