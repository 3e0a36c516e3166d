"""uvicorn as `dscnet serve` runs it: readiness off as soon as shutdown begins, drain bounded.

On SIGTERM (or SIGINT) uvicorn stops listening, closes idle connections and waits for the
requests in flight; only then does the app's lifespan end. `GracefulServer` marks the service
not ready at the start of that sequence, not at its end, and `DSCNET_SHUTDOWN_TIMEOUT_S`
bounds the wait: a stalled client cannot keep the process alive, and an orchestrator's kill
deadline (Kubernetes: 30 s by default) is not reached while requests are still answered.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from app.api.deps import ServiceState

logger = logging.getLogger("dscnet.service")


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
