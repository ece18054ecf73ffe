"""Worker processes for ``asyncapy run``: spawn, heartbeat, restart, signals, metrics relay.

See :mod:`asyncapy.supervisors.multiprocess` for how the parent works and
:mod:`asyncapy.supervisors._worker` for the worker's side.
"""

from __future__ import annotations

from .multiprocess import Supervisor, WorkerSpec

__all__ = ["Supervisor", "WorkerSpec"]
