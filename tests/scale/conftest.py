"""Fixtures of the scale-out tests: one cluster (:func:`tests.scale.harness.cluster`) per module.

The tests skip, saying why, when redis-server or haproxy is not installed
(``scripts/test`` installs them when it runs as root or with sudo). Hosts
are network namespaces when this process may create them, else two ports
of 127.0.0.1; either way the tests run. The client side runs on one event
loop (uvloop's when it imports): what these tests examine is the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scale import harness

try:
    import uvloop  # noqa: F401

    CLIENT_LOOP = "uvloop"
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    CLIENT_LOOP = "asyncio"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scale: two hosts behind a real HAProxy and redis-server (tests/scale)"
    )


@pytest.fixture
def loop_name() -> str:
    """Overrides the root conftest's two-loop parameter: one loop for the clients."""
    return CLIENT_LOOP


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Cluster]:
    """Two hosts, redis-server and HAProxy, ready; taken down after the module."""
    missing = harness.missing_tools()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/test installs them as root)")
    with harness.cluster(tmp_path_factory.mktemp("scale")) as running:
        yield running
