"""Admission control: at most `DSCNET_MAX_CONCURRENT_REQUESTS` requests in progress; the next
is answered 503 `overloaded` with `Retry-After` at once, before its body is read.

The micro-batcher's queue bounds the images waiting for the model, but not the requests
waiting in front of it: past the thread pool's 40 threads, requests wait for a thread with
their bodies in memory, and their latency grows with the number of clients (the load test
measured a median of 7.6 s at 256 connections, with no 503 at all). Refusing early keeps the
latency of the admitted requests bounded by the limit, and memory by limit x upload size.

Probes, the API description, the page and /metrics are never refused: an orchestrator that
cannot probe a busy service restarts it, which turns overload into an outage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import route_path, send_error
from app.security import METRICS_ROUTE, is_open_path

if TYPE_CHECKING:
    from fastapi import FastAPI

RETRY_AFTER_S = 1  # requests in progress finish in well under a second to a few seconds


class AdmissionMiddleware:
    """Counts the requests in progress (one event loop: a plain counter) and refuses past the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        state = scope["app"].state.service
        limit = state.settings.max_concurrent_requests if state.settings is not None else None
        if limit is None or is_open_path(path) or path == METRICS_ROUTE:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= limit:
            state.metrics.rejected.labels("overloaded").inc()
            detail = f"the service is at its limit of {limit} requests in progress; retry after Retry-After seconds"
            await send_error(scope, send, 503, "overloaded", detail, {"Retry-After": str(RETRY_AFTER_S)})
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


def install_admission_control(app: FastAPI) -> None:
    """Add the middleware, and document its 503 on every operation it can refuse."""
    app.add_middleware(AdmissionMiddleware)
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build_openapi()
        for path, operations in schema.get("paths", {}).items():
            if is_open_path(path) or path == METRICS_ROUTE:
                continue
            for operation in operations.values():
                operation.setdefault("responses", {}).setdefault("503", {
                    "description": "Overloaded (or not ready): retry after Retry-After seconds.",
                    "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                })
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
