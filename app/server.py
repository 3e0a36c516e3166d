"""uvicorn as `dscnet serve` runs it: readiness off as soon as shutdown begins, drain bounded.

On SIGTERM (or SIGINT) uvicorn stops listening, closes idle connections and waits for the
requests in flight; only then does the app's lifespan end. `GracefulServer` marks the service
not ready at the start of that sequence, not at its end, and `DSCNET_SHUTDOWN_TIMEOUT_S`
bounds the wait: a stalled client cannot keep the process alive, and an orchestrator's kill
deadline (Kubernetes: 30 s by default) is not reached while requests are still answered.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket

import uvicorn

from app.api.deps import ServiceState

logger = logging.getLogger("dscnet.service")

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold() -> bool:
    """Make glibc give every allocation over 128 KiB back to the system when it is freed.

    glibc raises its mmap threshold each time a large block is freed, after which decoded
    images and upload buffers come from the heaps of the server's many threads and fragment
    them. In benchmarks/soak.py (10 minutes, 4 clients, tiny model) resident memory rose
    from 232 to 376 MiB with the default; with the threshold fixed it swung between 160
    and 320 MiB and ended at 272 (docs/SERVICE.md, "Overload, faults and shutdown").
    Setting it with mallopt turns the dynamic raising off, as `MALLOC_MMAP_THRESHOLD_`
    would. An explicit `MALLOC_MMAP_THRESHOLD_` is left alone; on a libc without mallopt
    this does nothing.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False


def mark_shutting_down(state: ServiceState) -> None:
    """Readiness false from now on: /health/ready answers 503 and new predictions are refused."""
    state.ready = False
    state.not_ready_reason = "the service is shutting down"
    state.metrics.ready.set(0)


class GracefulServer(uvicorn.Server):
    """A uvicorn server that turns readiness off before draining the requests in flight."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state: ServiceState = self.config.app.state.service
        mark_shutting_down(state)
        logger.info("shutting down: not ready; letting the requests in flight finish", extra={"fields": {
            "in_flight": len(self.server_state.tasks),
            "timeout_s": self.config.timeout_graceful_shutdown,
        }})
        await super().shutdown(sockets)
