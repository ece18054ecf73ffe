"""The client side of the adversarial tests runs on one event loop.

The server runs in its own process (on uvloop); what these tests examine is
that server, not the loop the attackers and the good client run on. So
``arun`` here uses a single loop, uvloop's when it imports, rather than both.
"""

from __future__ import annotations

import pytest

try:
    import uvloop  # noqa: F401

    CLIENT_LOOP = "uvloop"
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    CLIENT_LOOP = "asyncio"


@pytest.fixture
def loop_name() -> str:
    """Overrides the root conftest's two-loop parameter: one loop for the clients."""
    return CLIENT_LOOP
