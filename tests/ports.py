"""Free loopback ports for servers that must be told their port before they start.

Binding port 0 and closing the socket leaves a window in which someone else may get
the same port: another pytest-xdist worker, another test run on the machine, or an
outbound connection. So each worker draws from its own slice of 20000-32767, which
lies below Linux's ephemeral range (32768-60999) that outbound connections use, and
starts at a random place in it so that two runs side by side rarely meet. A port that
is taken now is skipped.
"""

from __future__ import annotations

import os
import random
import socket

__all__ = ["free_port"]

_LOW, _HIGH = 20000, 32768


def _worker_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker) % count if worker.isdigit() else 0
    size = (_HIGH - _LOW) // count
    return range(_LOW + index * size, _LOW + (index + 1) * size)


_SLICE = _worker_slice()
_cursor = random.randrange(len(_SLICE))


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and that no other worker of
    this run will hand out."""
    global _cursor
    for _ in range(len(_SLICE)):
        _cursor = (_cursor + 1) % len(_SLICE)
        port = _SLICE[_cursor]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_SLICE}")
